"""The one interface every autoencoder variant implements, and the reconstruction scores."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

OutputHead = Literal["sigmoid", "linear"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "selu": nn.SELU,
}


@dataclass
class AEOutput:
    """What ``forward`` returns: reconstruction (data space), code, and the variant's penalty.

    ``logits`` is the decoder output before the sigmoid head (None for a linear head); the
    loss uses it so binary cross-entropy stays numerically stable. ``row_penalty`` is the
    penalty per row where it has one (the VAE's KL term), for negative-ELBO scores.
    """

    recon: Tensor
    latent: Tensor
    aux_loss: Tensor
    logits: Tensor | None = None
    row_penalty: Tensor | None = None  # per-row share of aux_loss (the VAE's weighted KL)


@dataclass(frozen=True)
class AEConfig:
    """Fields every variant's config has; variants subclass it with their own."""

    input_dim: int
    code_size: int = 16
    output: OutputHead = "sigmoid"

    def __post_init__(self) -> None:
        if self.input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {self.input_dim}")
        if self.code_size < 1:
            raise ValueError(f"code_size must be >= 1, got {self.code_size}")
        if self.output not in ("sigmoid", "linear"):
            raise ValueError(f"output must be 'sigmoid' or 'linear', got {self.output!r}")

    @property
    def loss_name(self) -> Literal["bce", "mse"]:
        """Loss that goes with the output head: sigmoid + BCE, linear + MSE."""
        return "bce" if self.output == "sigmoid" else "mse"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the config (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def activation(name: str) -> nn.Module:
    """An activation module by name; ValueError lists the choices."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; available: {sorted(ACTIVATIONS)}") from None


def reconstruction_error(x: Tensor, recon: Tensor, kind: Literal["mse", "bce"] = "mse") -> Tensor:
    """Per-row reconstruction error: mean squared error or mean binary cross-entropy."""
    x, recon = x.float(), recon.float()
    if kind == "mse":
        return (recon - x).pow(2).flatten(1).mean(dim=1)
    if kind == "bce":
        recon = recon.clamp(1e-7, 1 - 1e-7)
        return F.binary_cross_entropy(recon, x, reduction="none").flatten(1).mean(dim=1)
    raise ValueError(f"unknown reconstruction error {kind!r}; available: ['bce', 'mse']")


class Autoencoder(nn.Module):
    """Base class: ``encode``, ``decode``, ``forward -> AEOutput`` and ``loss``.

    Subclasses build ``self.encoder`` and ``self.decoder`` (the decoder ends before the output
    head) and may override ``forward`` to add a penalty in ``aux_loss``.
    """

    model_name: ClassVar[str] = ""
    config_class: ClassVar[type[AEConfig]] = AEConfig

    def __init__(self, config: AEConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def starts_from_a_baseline(self) -> bool:
        """Whether the untrained weights are a baseline that training must beat on the
        validation rows to be kept (a dense variant's ``pca_start``)."""
        return False

    def encode(self, x: Tensor) -> Tensor:
        """Latent code of ``x``."""
        return self.encoder(x)

    def _head(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw) if self.config.output == "sigmoid" else raw

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction in data space from a latent code."""
        return self._head(self.decoder(z))

    def forward(self, x: Tensor) -> AEOutput:
        z = self.encode(x)
        raw = self.decoder(z)
        logits = raw if self.config.output == "sigmoid" else None
        return AEOutput(recon=self._head(raw), latent=z, aux_loss=x.new_zeros(()), logits=logits)

    def reconstruction_loss(self, x: Tensor, out: AEOutput) -> Tensor:
        """Mean reconstruction loss of a batch, matched to the output head."""
        return self.row_reconstruction_loss(x, out).mean()

    def loss(self, x: Tensor, out: AEOutput) -> Tensor:
        """Training objective: reconstruction loss plus the variant's penalty."""
        return self.reconstruction_loss(x, out) + out.aux_loss.float()

    def row_reconstruction_loss(self, x: Tensor, out: AEOutput) -> Tensor:
        """Reconstruction loss of each row, matched to the output head: binary cross-entropy
        from the logits for a sigmoid head, squared error for a linear one."""
        if self.config.output == "sigmoid":  # targets in [0, 1]: a min-max scaled value
            # beyond its training range (a validation row) is not clipped in the input
            logits = out.logits if out.logits is not None else torch.logit(out.recon, eps=1e-7)
            target = x.float().clamp(0, 1)
            per = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        else:
            per = (out.recon.float() - x.float()).pow(2)
        return per.flatten(1).mean(dim=1)

    def trimmed_loss(self, x: Tensor, out: AEOutput, fraction: float) -> Tensor:
        """:meth:`loss` without the ``fraction`` of rows reconstructed worst, so rows that are
        probably anomalies do not pull the model towards reconstructing them (trimmed loss)."""
        if fraction <= 0:
            return self.loss(x, out)
        rows = self.row_reconstruction_loss(x, out)
        keep = max(1, len(rows) - int(fraction * len(rows)))
        kept = torch.topk(rows, keep, largest=False, sorted=False).values
        return kept.mean() + out.aux_loss.float()
