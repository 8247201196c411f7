"""Autoencoders in pure PyTorch: a registry of variants, one interface, one training loop.

Nothing here touches disk, MLflow, Prefect or a catalog; see ``tasks/`` for that.
"""

# importing each variant registers it
from ae_models import contractive, conv, deep, denoising, sparse, vae  # noqa: F401
from ae_models.base import AEConfig, AEOutput, Autoencoder, reconstruction_error
from ae_models.callbacks import ProgressBar
from ae_models.deep import DeepAutoencoder, DeepConfig
from ae_models.estimator import AutoencoderReducer, check_array
from ae_models.registry import create_model, get_model_class, list_models, register_model
from ae_models.runtime import resolve_precision, seed_everything, select_device
from ae_models.serialization import load_model, read_meta, save_model
from ae_models.training import Callback, TrainConfig, TrainResult, encode_and_score, train

__all__ = [
    "AEConfig",
    "AEOutput",
    "Autoencoder",
    "AutoencoderReducer",
    "Callback",
    "DeepAutoencoder",
    "DeepConfig",
    "ProgressBar",
    "TrainConfig",
    "TrainResult",
    "check_array",
    "create_model",
    "encode_and_score",
    "get_model_class",
    "list_models",
    "load_model",
    "read_meta",
    "reconstruction_error",
    "register_model",
    "resolve_precision",
    "save_model",
    "seed_everything",
    "select_device",
    "train",
]
