"""Deep undercomplete autoencoder: a stack of dense layers narrowing to the code, mirrored back."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ae_models.variants.base import AEConfig, Autoencoder, activation
from ae_models.variants.registry import register_model

TABLE_HIDDEN = (256, 128)  # hidden widths for inputs narrower than 256 (tables)


def default_hidden(input_dim: int, code_size: int) -> tuple[int, ...]:
    """Encoder hidden widths: for inputs at least 256 wide, powers of two from 256 halving to
    the code (784 inputs, 16-wide code: the published 256-128-64-32); for narrower inputs
    (tables), 256 and 128, wider than the input, so the code alone is the bottleneck.

    Halving from below the input width gave a 100-wide table (Adult) 64-32 and a 6-wide one
    3 hidden units: codes that lost to PCA of the same width downstream on most tables
    (``benchmarks/downstream.py``), where 256-128 beat it on all but one.
    """
    if input_dim < TABLE_HIDDEN[0]:
        return tuple(w for w in TABLE_HIDDEN if w > code_size)
    widths, width = [], 256
    while width > code_size:
        widths.append(width)
        width //= 2
    return tuple(widths)


@dataclass(frozen=True)
class DeepConfig(AEConfig):
    """Config of the deep autoencoder; ``hidden=None`` picks :func:`default_hidden`.

    ``pca_start``: a linear path beside the layers, in the encoder and in the decoder, set to
    the training rows' PCA of the code's width before training, while the layers' last
    weights start at zero (they learn a residual): the untrained model reconstructs as PCA
    does, and training keeps it only if validation says it did better (see
    :meth:`DeepAutoencoder.start_from_pca`)."""

    hidden: tuple[int, ...] | None = None
    activation: str = "relu"
    pca_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.code_size >= self.input_dim:
            raise ValueError(
                f"code_size {self.code_size} must be smaller than the input width "
                f"{self.input_dim} for an undercomplete autoencoder"
            )
        if self.hidden is not None:
            object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
            if any(h < 1 for h in self.hidden):
                raise ValueError(f"hidden widths must be >= 1, got {list(self.hidden)}")
        activation(self.activation)  # validates the name

    @property
    def widths(self) -> tuple[int, ...]:
        """Encoder layer widths from input to code, inclusive."""
        hidden = (
            self.hidden
            if self.hidden is not None
            else default_hidden(self.input_dim, self.code_size)
        )
        return (self.input_dim, *hidden, self.code_size)


def mlp(widths: tuple[int, ...], act: str, last_activation: bool) -> nn.Sequential:
    """Dense layers through ``widths`` with ``act`` between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(widths) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``linear(x) + layers(x)``: a linear path with dense layers learning what it misses."""

    def __init__(self, linear: nn.Linear, layers: nn.Sequential) -> None:
        super().__init__()
        self.linear, self.layers = linear, layers
        last = next(m for m in reversed(layers) if isinstance(m, nn.Linear))
        nn.init.zeros_(last.weight)  # the layers add nothing until training says otherwise
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) + self.layers(x)


@register_model("deep")
class DeepAutoencoder(Autoencoder):
    """Undercomplete deep autoencoder with a linear code layer and a mirrored decoder."""

    config_class = DeepConfig
    config: DeepConfig

    def __init__(self, config: DeepConfig) -> None:
        super().__init__(config)
        widths = config.widths
        self.encoder = mlp(widths, config.activation, last_activation=False)
        self.decoder = mlp(widths[::-1], config.activation, last_activation=False)
        if config.pca_start:
            d, k = config.input_dim, config.code_size
            self.encoder = Residual(nn.Linear(d, k), self.encoder)
            self.decoder = Residual(nn.Linear(k, d), self.decoder)

    @property
    def starts_from_a_baseline(self) -> bool:
        """Whether the untrained weights are a baseline (PCA) that training must beat on the
        validation rows to be kept (:func:`ae_models.training.loop.train` checks)."""
        return self.config.pca_start

    @torch.no_grad()
    def start_from_pca(self, x: np.ndarray, seed: int = 0) -> None:
        """Set the linear paths to the PCA of ``x`` (training rows) with the code's width:
        code = (x - mean) @ components.T, reconstruction = code @ components + mean. With a
        sigmoid head the decoder's output is a logit, so the PCA is of the logits of ``x``
        clipped to [0.01, 0.99] (its reconstruction through the sigmoid is then PCA's in
        logit space, not in data space)."""
        from sklearn.decomposition import PCA

        if not self.config.pca_start:
            raise ValueError("start_from_pca needs a model built with pca_start=True")
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if self.config.output == "sigmoid":
            p = np.clip(x, 0.01, 0.99)
            x = np.log(p / (1 - p))
        k = self.config.code_size
        pca = PCA(n_components=min(k, *x.shape), random_state=seed).fit(x)
        comps = np.zeros((k, x.shape[1]))
        comps[: pca.n_components_] = pca.components_  # fewer rows than the code: zeros after
        mean = pca.mean_
        as_tensor = torch.as_tensor
        enc, dec = self.encoder.linear, self.decoder.linear
        enc.weight.copy_(as_tensor(comps, dtype=enc.weight.dtype))
        enc.bias.copy_(as_tensor(-comps @ mean, dtype=enc.bias.dtype))
        dec.weight.copy_(as_tensor(comps.T, dtype=dec.weight.dtype))
        dec.bias.copy_(as_tensor(mean, dtype=dec.bias.dtype))
