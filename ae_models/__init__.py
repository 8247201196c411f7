"""Autoencoders in pure PyTorch: a registry of variants, one interface, one training loop.

Nothing here touches disk, MLflow, Prefect or a catalog; see ``tasks/`` for that. The names
below are loaded on first use, so importing the package (or reading a config) does not
import PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AEConfig": "ae_models.base",
    "AEOutput": "ae_models.base",
    "Autoencoder": "ae_models.base",
    "reconstruction_error": "ae_models.base",
    "ProgressBar": "ae_models.callbacks",
    "DeepAutoencoder": "ae_models.deep",
    "DeepConfig": "ae_models.deep",
    "AutoencoderReducer": "ae_models.estimator",
    "create_model": "ae_models.registry",
    "get_model_class": "ae_models.registry",
    "list_models": "ae_models.registry",
    "register_model": "ae_models.registry",
    "resolve_precision": "ae_models.runtime",
    "seed_everything": "ae_models.runtime",
    "select_device": "ae_models.runtime",
    "load_model": "ae_models.serialization",
    "read_meta": "ae_models.serialization",
    "save_model": "ae_models.serialization",
    "TrainConfig": "ae_models.train_config",
    "Callback": "ae_models.training",
    "TrainResult": "ae_models.training",
    "encode_and_score": "ae_models.training",
    "train": "ae_models.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load an exported name's module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ae_models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
