"""aepipe: learned feature reduction with autoencoders, orchestrated by Prefect."""

__version__ = "0.1.0"
