"""The error every stage raises for a problem only the user can fix, at the floor of
``tasks`` so the readers and the config that names them both import it (this module imports
nothing of aepipe)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration or input problem the user can fix; its message is one line."""
