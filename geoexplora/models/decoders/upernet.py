"""UPerNet (Xiao et al. 2018) over a ViT: simple feature pyramid -> pyramid pooling + FPN fusion -> logits.

Written after mmsegmentation's ``UPerHead`` and TerraTorch's ``UperNetDecoder`` (the decoder of the
PANGAEA benchmark and of TerraTorch's ViT fine-tunes), with GroupNorm instead of BatchNorm:

1. :class:`~geoexplora.models.decoders.pyramid.SimpleFeaturePyramid` turns 4 blocks' patch maps into
   strides p/4, p/2, p, 2p pixels (p: patch size).
2. Pyramid pooling (PSPNet) on the coarsest level: average-pooled to each of ``pool_scales`` bins,
   1x1 conv, upsampled back, concatenated with the level and fused by a 3x3 conv.
3. FPN: 1x1 lateral convs, a top-down path adding each coarser level (bilinear) into the finer one,
   3x3 convs on the sums; all levels resized to the finest, concatenated, fused by a 3x3 conv.
4. Dropout 0.1, a 1x1 classifier at stride p/4, and bilinear resizing to the input size.

A pool bin count above the coarsest grid (e.g. 6 bins on the 4 x 4 map of a 112-px window at p = 14)
just repeats cells; the bins are kept fixed so the head's parameters do not depend on the window size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.decoders.layers import conv_norm_act
from geoexplora.models.decoders.pyramid import DEFAULT_SCALES, SimpleFeaturePyramid

POOL_SCALES = (1, 2, 3, 6)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """(B, Cin, h, w) -> (B, C, h, w): the map and its ``pool_scales`` poolings, fused (PSPNet's PPM).

    Args:
        in_channels: Cin.
        channels: C, the width of each pooled branch and of the output.
        pool_scales: bins per side of each average-pooling branch.
    """

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = POOL_SCALES) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_norm_act(in_channels, channels, 1)) for s in pool_scales
        )
        self.fuse = conv_norm_act(in_channels + len(pool_scales) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        pooled = [_resize(branch(x), x.shape[-2:]) for branch in self.branches]
        return self.fuse(torch.cat([x, *pooled], dim=1))


class UPerNetHead(nn.Module):
    """Patch features of L blocks [(B, D, h, w)], shallowest first -> logits (B, K, H, W).

    The shallowest block becomes the finest pyramid level, the deepest the coarsest (PPM input).

    Args:
        embed_dim: D.
        num_classes: K.
        channels: decoder width (mmseg uses 512 on ViT-B; 128-256 suits ViT-S on CPU).
        scales: the feature pyramid's scale per block (see ``SimpleFeaturePyramid``).
        pool_scales: pyramid-pooling bins on the coarsest level.
        dropout: dropout before the classifier.
    """

    def __init__(
        self, embed_dim: int, num_classes: int, channels: int = 128, scales: Sequence[float] = DEFAULT_SCALES,
        pool_scales: Sequence[int] = POOL_SCALES, dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(scales) < 2:
            raise GeoExploraError(f"UPerNet needs at least 2 pyramid levels, got scales {list(scales)}")
        self.pyramid = SimpleFeaturePyramid(embed_dim, scales)
        *fine, coarsest = self.pyramid.channels
        self.ppm = PyramidPooling(coarsest, channels, pool_scales)
        self.laterals = nn.ModuleList(conv_norm_act(c, channels, 1) for c in fine)
        self.smooth = nn.ModuleList(conv_norm_act(channels, channels, 3) for _ in fine)
        self.fuse = conv_norm_act(len(scales) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def decode(self, features: Sequence[Tensor]) -> Tensor:
        """Block features [(B, D, h, w)] -> fused decoder features (B, C, 4h, 4w) at the finest level."""
        *fine, coarsest = self.pyramid(features)
        levels = [lateral(f) for lateral, f in zip(self.laterals, fine, strict=True)] + [self.ppm(coarsest)]
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[-2:])
        outputs = [smooth(x) for smooth, x in zip(self.smooth, levels[:-1], strict=True)] + [levels[-1]]
        size = outputs[0].shape[-2:]
        return self.fuse(torch.cat([outputs[0], *(_resize(x, size) for x in outputs[1:])], dim=1))

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        return _resize(self.classifier(self.dropout(self.decode(features))), size)
