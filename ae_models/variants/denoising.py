"""Denoising autoencoder: reconstruct the clean input from a corrupted copy (Vincent et al.)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ae_models.variants.base import AEOutput
from ae_models.variants.deep import DeepAutoencoder, DeepConfig
from ae_models.variants.registry import register_model


@dataclass(frozen=True)
class DenoisingConfig(DeepConfig):
    """Deep autoencoder settings plus the corruption applied while training.

    ``gaussian`` adds N(0, noise_level^2) noise (clipped to [0, 1] for a sigmoid head);
    ``masking`` sets a random ``noise_level`` share of the inputs to zero.
    """

    noise: Literal["gaussian", "masking"] = "gaussian"
    noise_level: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise not in ("gaussian", "masking"):
            raise ValueError(f"noise must be 'gaussian' or 'masking', got {self.noise!r}")
        if self.noise_level < 0 or (self.noise == "masking" and self.noise_level >= 1):
            raise ValueError(
                f"noise_level must be >= 0 (and < 1 for masking), got {self.noise_level}"
            )


def corrupt(x: Tensor, noise: str, level: float, clip: bool) -> Tensor:
    """A corrupted copy of ``x``: additive Gaussian noise or masking noise."""
    if noise == "gaussian":
        out = x + level * torch.randn_like(x)
        return out.clamp(0.0, 1.0) if clip else out
    keep = torch.rand_like(x) >= level
    return x * keep


@register_model("denoising")
class DenoisingAutoencoder(DeepAutoencoder):
    """Deep autoencoder trained to map corrupted inputs back to the clean ones."""

    config_class = DenoisingConfig
    config: DenoisingConfig

    def forward(self, x: Tensor) -> AEOutput:
        if self.training and self.config.noise_level > 0:
            x = corrupt(
                x, self.config.noise, self.config.noise_level, clip=self.config.output == "sigmoid"
            )
        return super().forward(x)
