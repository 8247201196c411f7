"""Variational autoencoder: Gaussian latent, reparameterization, beta-weighted KL (Kingma)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ae_models.variants.base import AEOutput, Autoencoder
from ae_models.variants.deep import DeepConfig, mlp
from ae_models.variants.registry import register_model


@dataclass(frozen=True)
class VAEConfig(DeepConfig):
    """Deep layer settings plus ``beta``, the weight of the KL term (1 is the plain ELBO).

    The reconstruction loss is a mean over input columns, so the KL term is divided by the
    input width to keep the ELBO's balance.
    """

    beta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.pca_start:
            raise ValueError(
                "pca_start is for the deep, denoising, sparse and contractive variants; the "
                "VAE's code is a posterior sample, not a projection"
            )


@register_model("vae")
class VariationalAutoencoder(Autoencoder):
    """VAE whose features are the posterior mean; ``sample(n)`` draws new data."""

    config_class = VAEConfig
    config: VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        widths = config.widths
        self.trunk = mlp(widths[:-1], config.activation, last_activation=True)
        self.mu = nn.Linear(widths[-2], config.code_size)
        self.logvar = nn.Linear(widths[-2], config.code_size)
        self.decoder = mlp(widths[::-1], config.activation, last_activation=False)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x)."""
        h = self.trunk(x)
        return self.mu(h), self.logvar(h).clamp(-20.0, 20.0)

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean: the code used as features."""
        return self.posterior(x)[0]

    def forward(self, x: Tensor) -> AEOutput:
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        raw = self.decoder(z)
        kl_rows = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).float().sum(dim=1)
        logits = raw if self.config.output == "sigmoid" else None
        penalty = self.config.beta * kl_rows / self.config.input_dim
        return AEOutput(self._head(raw), mu, penalty.mean(), logits, penalty)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` new rows decoded from z ~ N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.code_size, generator=generator).to(device)
        return self.decode(z)
