"""A simple feature pyramid from single-scale ViT features (ViTDet, Li et al. 2022; TerraTorch's ViT necks).

A plain ViT keeps one resolution (the patch grid h x w = H/p x W/p) in every block. UPerNet-class
decoders want a pyramid, so each of L blocks' maps is resampled to its own scale: the early blocks
(fine detail) go up, the late ones (semantics) stay or go down. With the default scales (4, 2, 1, 0.5):

* x4: ConvTranspose 2x2/2 (D -> D/2), GroupNorm, GELU, ConvTranspose 2x2/2 (D/2 -> D/4);
* x2: ConvTranspose 2x2/2 (D -> D/2);
* x1: identity;
* x0.5: 2x2 max-pool (``ceil_mode``, so an odd grid keeps its border row and column).

Each upsampling step halves the channels as in ViTDet, which keeps the fine levels cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.decoders.layers import group_norm

DEFAULT_SCALES = (4.0, 2.0, 1.0, 0.5)


def _rescale(embed_dim: int, scale: float) -> tuple[nn.Module, int]:
    """The module taking (B, D, h, w) to (B, C, h * scale, w * scale), and C."""
    if scale == 1:
        return nn.Identity(), embed_dim
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True), embed_dim
    steps = math.log2(scale) if scale > 1 else None
    if steps is None or not steps.is_integer() or embed_dim % 2 ** int(steps):
        raise GeoExploraError(f"pyramid scales must be 0.5, 1 or a power of 2 dividing the embed dim "
                              f"{embed_dim}, got {scale}")
    layers: list[nn.Module] = []
    channels = embed_dim
    for step in range(int(steps)):
        if step:
            layers += [group_norm(channels), nn.GELU()]
        layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
        channels //= 2
    return nn.Sequential(*layers), channels


class SimpleFeaturePyramid(nn.Module):
    """L maps of one scale [(B, D, h, w)] -> L maps [(B, C_i, h * s_i, w * s_i)] (ceil for s_i = 0.5).

    Args:
        embed_dim: D, the ViT width.
        scales: s_i, one per incoming block, finest first (powers of 2, or 0.5).

    Attributes:
        channels: C_i of each output level (D / s_i for s_i > 1, else D).
    """

    def __init__(self, embed_dim: int, scales: Sequence[float] = DEFAULT_SCALES) -> None:
        super().__init__()
        built = [_rescale(embed_dim, float(s)) for s in scales]
        self.scales = [float(s) for s in scales]
        self.levels = nn.ModuleList(module for module, _ in built)
        self.channels = [c for _, c in built]

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.levels):
            raise GeoExploraError(f"the feature pyramid expects {len(self.levels)} feature levels "
                                  f"(one per scale {self.scales}), got {len(features)}")
        return [level(f) for level, f in zip(self.levels, features, strict=True)]
