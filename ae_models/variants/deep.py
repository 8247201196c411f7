"""Deep undercomplete autoencoder: a stack of dense layers narrowing to the code, mirrored back."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from torch import nn

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
    """Config of the deep autoencoder; ``hidden=None`` picks :func:`default_hidden`."""

    hidden: tuple[int, ...] | None = None
    activation: str = "relu"

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
