"""Up-front checks of a pipeline config against its source, before anything is written."""

from __future__ import annotations

import ae_models
from tasks.config import ConfigError, PipelineConfig
from tasks.ingest import inspect_source


def validate_config(cfg: PipelineConfig) -> None:
    """Raise ConfigError (one line) if the source, model name or sizes cannot work together."""
    if cfg.model.name not in ae_models.list_models():
        raise ConfigError(f"unknown model {cfg.model.name!r}; available: {ae_models.list_models()}")
    info = inspect_source(cfg.source)
    width = len(info.features)
    if cfg.model.code_size >= width:
        raise ConfigError(
            f"model.code_size {cfg.model.code_size} must be smaller than the input width "
            f"({width} feature columns in {cfg.source.path!r})"
        )
    named = [*cfg.normalize.columns, *cfg.normalize.log1p]
    unknown = [c for c in named if c not in info.features]
    if unknown:
        raise ConfigError(
            f"normalize.columns/log1p name columns that are not features of "
            f"{cfg.source.path!r}: {unknown}"
        )
    if cfg.test_fraction + cfg.val_fraction >= 0.9:
        raise ConfigError(
            f"test_fraction {cfg.test_fraction} + val_fraction {cfg.val_fraction} leave "
            "too little for training (keep their sum below 0.9)"
        )
