"""Autoencoders in pure PyTorch, in rooms: the variants and their registry (``variants``),
training (``training``), anomaly scores and drift (``scoring``), and the normalizer that
makes model input (``preprocessing``); on top, what a model gives each row (``outputs``),
the run-time facts (``runtime``), the scikit-learn estimator (``estimator``), and the names
every package shares (``vocabulary``, which imports nothing).

Nothing here touches disk, MLflow, Prefect or a catalog; see ``tasks/`` for that. The names
below are loaded on first use, so importing the package (or reading a config) does not
import PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AEConfig": "ae_models.variants.base",
    "AEOutput": "ae_models.variants.base",
    "Autoencoder": "ae_models.variants.base",
    "reconstruction_error": "ae_models.variants.base",
    "ProgressBar": "ae_models.training.callbacks",
    "DeepAutoencoder": "ae_models.variants.deep",
    "DeepConfig": "ae_models.variants.deep",
    "AutoencoderReducer": "ae_models.estimator",
    "create_model": "ae_models.variants.registry",
    "get_model_class": "ae_models.variants.registry",
    "list_models": "ae_models.variants.registry",
    "register_model": "ae_models.variants.registry",
    "resolve_precision": "ae_models.runtime",
    "seed_everything": "ae_models.runtime",
    "select_device": "ae_models.runtime",
    "load_model": "ae_models.variants.serialization",
    "read_meta": "ae_models.variants.serialization",
    "save_model": "ae_models.variants.serialization",
    "TrainConfig": "ae_models.training.config",
    "Callback": "ae_models.training.loop",
    "TrainResult": "ae_models.training.loop",
    "encode_and_score": "ae_models.training.loop",
    "train": "ae_models.training.loop",
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
