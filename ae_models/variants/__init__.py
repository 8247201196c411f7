"""The autoencoder variants and their registry: the one interface every variant implements
(:mod:`~ae_models.variants.base`), the registry that builds them by name
(:mod:`~ae_models.variants.registry`), the six variants, and saving and loading a trained
one (:mod:`~ae_models.variants.serialization`)."""
