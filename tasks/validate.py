"""Up-front checks of a pipeline config against its source, and of the stores, before
anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import ae_models
from ae_models.training.config import auto_code_size
from stores import Stores
from tasks.config import ConfigError, PipelineConfig
from tasks.io.sources import inspect_source
from tasks.tracking import check_tracking


def validate_config(cfg: PipelineConfig, training: bool = True) -> None:
    """Raise ConfigError (one line) if the source, model name or sizes cannot work together.
    ``training=False`` (scoring, downstream) checks only the source: the model's settings
    come from the registered version used."""
    info = inspect_source(cfg.source)
    if not training:
        return
    if cfg.model.name not in ae_models.list_models():
        raise ConfigError(f"unknown model {cfg.model.name!r}; available: {ae_models.list_models()}")
    width = len(info.features)
    # arrays (images, IDX, NPZ, the built-in digits) give the model one input per column;
    # a table's one-hot levels widen it, so its code size is checked once it is normalized
    exact = info.reader.kind == "array"
    if exact and cfg.model.code_size != "auto" and cfg.model.code_size >= width:
        raise ConfigError(
            f"model.code_size {cfg.model.code_size} must be smaller than the input width "
            f"({width} feature columns in {cfg.source.path!r}); leave it 'auto' for "
            f"{auto_code_size(width)}"
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


def check_stores(cfg: PipelineConfig, stores: Stores) -> None:
    """Before any work: the config writes only inside the stores, each local store folder
    can be created and written (nothing is created here), and each remote store answers (the
    MLflow server, a catalog database or REST catalog, an S3 warehouse or data store: reachable,
    credentials taken, bucket there); else a ConfigError that names the store, credentials
    blanked, so a run does not train for an hour to fail at its first write."""
    from urllib.parse import unquote, urlsplit

    if cfg.train.checkpoint_dir is not None:
        resolved = stores.under_models(cfg.train.checkpoint_dir)
        if not resolved.is_relative_to(stores.data_root):
            raise ConfigError(
                f"train.checkpoint_dir {cfg.train.checkpoint_dir!r} resolves to {resolved}, "
                f"outside the data store {stores.data_root}; aepipe writes only inside its "
                "stores (set AEPIPE_HOME or AEPIPE_DATA to move them)"
            )

    folders = {"home": stores.home, "data": stores.data_dir, "models": stores.models_dir}
    if stores.warehouse.startswith("file://") or "://" not in stores.warehouse:
        folders["warehouse"] = Path(unquote(urlsplit(stores.warehouse).path))
    for name, folder in folders.items():
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(
                f"cannot use {folder} as the {name} folder: {existing} is a file, not a folder"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(
                f"cannot write the {name} folder {folder}: no write permission on {existing}"
            )
    check_tracking(stores)
    from tasks.registry import check_model_binding, registry_client

    try:
        client = registry_client(stores)  # nothing created: no store yet, nothing bound
    except ConfigError:
        client = None
    if client is not None:
        check_model_binding(cfg.model_name, cfg.dataset, client)
    from feature_store.catalog import check_catalog
    from stores.remote import StoreUnavailable, check_object_store

    try:
        check_catalog(stores)
        check_object_store(stores.warehouse, "warehouse")
        check_object_store(stores.data, "data store")
    except StoreUnavailable as err:
        raise ConfigError(str(err)) from None
