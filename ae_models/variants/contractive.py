"""Contractive autoencoder: penalize the Frobenius norm of the encoder's Jacobian (Rifai et al.)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ae_models.variants.base import AEOutput
from ae_models.variants.deep import DeepAutoencoder, DeepConfig
from ae_models.variants.registry import register_model


@dataclass(frozen=True)
class ContractiveConfig(DeepConfig):
    """Deep autoencoder settings plus the contractive penalty.

    ``weight`` scales the mean over the batch of ||dz/dx||_F^2. ``projections=0`` computes the
    Jacobian exactly (one backward pass per code unit); ``projections=k`` uses k random
    projections (Hutchinson's unbiased estimate), cheaper for wide codes.
    """

    weight: float = 1e-4
    projections: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if self.projections < 0:
            raise ValueError(f"projections must be >= 0, got {self.projections}")


def jacobian_frobenius_sq(
    encode, x: Tensor, projections: int = 0, create_graph: bool = True
) -> tuple[Tensor, Tensor]:
    """Per-row ||d encode(x) / dx||_F^2 (exact, or estimated with random projections) and the
    code itself."""
    x = x.detach().requires_grad_(True)
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = encode(x.float())
    if projections == 0:
        total = x.new_zeros(len(x))
        for k in range(z.shape[1]):
            (g,) = torch.autograd.grad(z[:, k].sum(), x, create_graph=create_graph)
            total = total + g.pow(2).flatten(1).sum(dim=1)
        return total, z
    total = x.new_zeros(len(x))
    for _ in range(projections):
        v = torch.randn_like(z)
        (g,) = torch.autograd.grad((z * v).sum(), x, create_graph=create_graph)
        total = total + g.pow(2).flatten(1).sum(dim=1)
    return total / projections, z


@register_model("contractive")
class ContractiveAutoencoder(DeepAutoencoder):
    """Deep autoencoder whose code is made locally insensitive to small input changes."""

    config_class = ContractiveConfig
    config: ContractiveConfig

    def forward(self, x: Tensor) -> AEOutput:
        if not (self.training and self.config.weight > 0):
            return super().forward(x)
        with torch.enable_grad():
            jac, z = jacobian_frobenius_sq(self.encode, x, self.config.projections)
        raw = self.decoder(z)
        logits = raw if self.config.output == "sigmoid" else None
        return AEOutput(self._head(raw), z, self.config.weight * jac.mean(), logits)
