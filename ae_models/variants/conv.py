"""Convolutional autoencoder for images given as flat rows of H x W x C pixels."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from torch import Tensor, nn

from ae_models.variants.base import AEConfig, Autoencoder, activation
from ae_models.variants.registry import register_model


@dataclass(frozen=True)
class ConvConfig(AEConfig):
    """Image shape (height, width, channels), conv channels per stride-2 stage, activation.

    Inputs are flat rows in height-width-channel order (as images are stored); without
    ``image_shape`` a square single-channel image is assumed (784 -> 28 x 28 x 1).
    """

    image_shape: tuple[int, int, int] | None = None
    channels: tuple[int, ...] = (32, 64)
    activation: str = "relu"

    def __post_init__(self) -> None:
        super().__post_init__()
        shape = self.image_shape
        if shape is None:
            side = math.isqrt(self.input_dim)
            if side * side != self.input_dim:
                raise ValueError(
                    f"conv needs image_shape (height, width, channels): input width "
                    f"{self.input_dim} is not a square single-channel image"
                )
            shape = (side, side, 1)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or math.prod(shape) != self.input_dim:
            raise ValueError(
                f"image_shape {list(shape)} holds {math.prod(shape)} values, but the input "
                f"width is {self.input_dim}"
            )
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive, got {list(self.channels)}")
        if self.code_size >= self.input_dim:
            raise ValueError(
                f"code_size {self.code_size} must be smaller than the input width "
                f"{self.input_dim} for an undercomplete autoencoder"
            )
        activation(self.activation)


def _down(n: int) -> int:
    return (n - 1) // 2 + 1  # conv kernel 3, stride 2, padding 1


@register_model("conv")
class ConvAutoencoder(Autoencoder):
    """Stride-2 conv stages down to a dense code, mirrored with transposed convs back up."""

    config_class = ConvConfig
    config: ConvConfig

    def __init__(self, config: ConvConfig) -> None:
        super().__init__(config)
        h, w, c = config.image_shape
        sizes = [(h, w)]
        for _ in config.channels:
            sizes.append((_down(sizes[-1][0]), _down(sizes[-1][1])))
        chans = (c, *config.channels)
        down: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            down += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), activation(config.activation)]
        fh, fw = sizes[-1]
        flat = chans[-1] * fh * fw
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(flat, config.code_size))
        up: list[nn.Module] = [
            nn.Linear(config.code_size, flat),
            activation(config.activation),
            nn.Unflatten(1, (chans[-1], fh, fw)),
        ]
        rev = chans[::-1]
        for i, (cin, cout) in enumerate(itertools.pairwise(rev)):
            src, dst = sizes[-1 - i], sizes[-2 - i]
            pad = (dst[0] - (2 * src[0] - 1), dst[1] - (2 * src[1] - 1))
            up.append(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=pad))
            if i < len(rev) - 2:
                up.append(activation(config.activation))
        self.decoder_body = nn.Sequential(*up)

    def _to_image(self, x: Tensor) -> Tensor:
        h, w, c = self.config.image_shape
        return x.reshape(len(x), h, w, c).permute(0, 3, 1, 2)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(self._to_image(x))

    def decoder(self, z: Tensor) -> Tensor:  # type: ignore[override]
        """Pre-head decoder output as flat H x W x C rows."""
        img = self.decoder_body(z)
        return img.permute(0, 2, 3, 1).reshape(len(z), -1)
