"""Device choice, precision and seeding: the run-time facts every training run needs."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Literal

import numpy as np
import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def select_device(preference: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU for ``"auto"``; otherwise the named device, checked to exist."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {preference!r} requested but MPS is not available")
    return device


def resolve_precision(
    precision: Precision, device: torch.device
) -> Literal["fp32", "bf16", "fp16"]:
    """Concrete precision for ``device``: ``auto`` is bf16 on CUDA that supports it, else fp32."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; available: auto, fp32, bf16, fp16")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs a GPU; use 'bf16' or 'fp32' on the CPU")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for mixed precision, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for shuffling drawn from ``seed``."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
