"""Save and load a trained autoencoder as a state dict plus a JSON config: no pickled code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ae_models.variants.base import Autoencoder
from ae_models.variants.registry import create_model

WEIGHTS, CONFIG = "weights.pt", "model.json"


def save_model(model: Autoencoder, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``weights.pt`` (tensors only) and ``model.json`` (variant, config, ``extra``)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, out / WEIGHTS)
    meta = {"model": model.model_name, "config": model.config.to_dict(), **(extra or {})}
    (out / CONFIG).write_text(json.dumps(meta, indent=1))
    return out


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a saved model (variant, config, extras), without its weights."""
    return json.loads((Path(folder) / CONFIG).read_text())


def load_model(folder: str | Path) -> tuple[Autoencoder, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model`; ``torch.load(weights_only=True)`` refuses
    anything but tensors, so a crafted pickle cannot run code."""
    src = Path(folder)
    meta = read_meta(src)
    model = create_model(meta["model"], **meta["config"])
    state = torch.load(src / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, meta
