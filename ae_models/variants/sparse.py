"""Sparse autoencoder: a penalty keeps most code units near zero for any one input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ae_models.variants.base import AEOutput
from ae_models.variants.deep import DeepAutoencoder, DeepConfig
from ae_models.variants.registry import register_model


@dataclass(frozen=True)
class SparseConfig(DeepConfig):
    """Deep autoencoder settings plus the sparsity penalty.

    ``l1``: ``weight`` x mean over the batch of the summed absolute code activations (ReLU code,
    like Keras's ``activity_regularizer=l1``). ``kl``: ``weight`` x the summed KL divergence
    between ``target`` and each code unit's mean activation over the batch (sigmoid code).
    """

    penalty: Literal["l1", "kl"] = "l1"
    weight: float = 1e-3
    target: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.penalty not in ("l1", "kl"):
            raise ValueError(f"penalty must be 'l1' or 'kl', got {self.penalty!r}")
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if not 0 < self.target < 1:
            raise ValueError(f"target must be in (0, 1), got {self.target}")


def kl_sparsity(code: Tensor, target: float) -> Tensor:
    """Sum over units of KL(target || mean activation of the unit over the batch)."""
    rho_hat = code.float().mean(dim=0).clamp(1e-6, 1 - 1e-6)
    rho = torch.full_like(rho_hat, target)
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return kl.sum()


@register_model("sparse")
class SparseAutoencoder(DeepAutoencoder):
    """Deep autoencoder whose code is pushed toward sparsity by an L1 or KL penalty."""

    config_class = SparseConfig
    config: SparseConfig

    def encode(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        return torch.relu(z) if self.config.penalty == "l1" else torch.sigmoid(z)

    def forward(self, x: Tensor) -> AEOutput:
        out = super().forward(x)
        z = out.latent
        if self.config.penalty == "l1":
            penalty = z.float().abs().sum(dim=1).mean()
        else:
            penalty = kl_sparsity(z, self.config.target)
        out.aux_loss = self.config.weight * penalty
        return out
