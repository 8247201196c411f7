"""Device choice, precision and seeding: the run-time facts every training run needs."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Literal

import numpy as np
import torch

from ae_models.training.config import Precision


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


BF16_MIN_WIDTH = 256  # narrower models gain nothing from bf16 on the CPU; its casts cost more


# how codes and scores are computed wherever they are written or served (feature table,
# pyfunc, the training-time threshold): one rule, so a row scores the same everywhere. fp32,
# not bf16 where the CPU is fast at it: downstream models read the codes as features, and
# bf16 rounds them to 8 significant bits (10,000 MNIST rows got 793 distinct z_0 values);
# training still uses bf16 autocast where it is native (`precision: auto`)
SCORING_PRECISION: Precision = "fp32"


def resolve_precision(
    precision: Precision, device: torch.device, width: int | None = None
) -> Literal["fp32", "bf16", "fp16"]:
    """Concrete precision for ``device``.

    ``auto`` is bf16 where the hardware computes it natively (CUDA with bf16; CPUs with AMX or
    AVX512-BF16; ``benchmarks/train.py`` measures the gain) and fp32 elsewhere; on the CPU
    only for inputs at least ``BF16_MIN_WIDTH`` wide, since small matrices run slower in bf16.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        wide = width is None or width >= BF16_MIN_WIDTH
        if device.type == "cpu" and wide and cpu_has_fast_bf16():
            return "bf16"
        return "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; available: auto, fp32, bf16, fp16")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs a GPU; use 'bf16' or 'fp32' on the CPU")
    return precision


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX512-BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            continue
    return False


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
