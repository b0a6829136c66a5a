"""Task heads over ViT features, plain ``nn.Module``s.

* :class:`ClassificationHead`: a linear layer on the cls token or the mean of the patch tokens
  (multi-class logits, or multi-label logits scored with a sigmoid by the task).
* :class:`LinearSegmentationHead`: one block's patch features -> per-patch linear classifier -> bilinear
  upsampling to the input size (the cheap option).
* :class:`ProgressiveSegmentationHead`: several blocks' patch features (timm ``forward_intermediates``),
  each projected and summed, then progressive x2 upsampling stages with 3x3 convolutions, a classifier,
  and bilinear resizing to the input size (a light SETR-PUP-style decoder).
* :class:`~geoexplora.models.decoders.UPerNetHead` (``upernet``): 4 blocks' features through a simple
  feature pyramid (x4, x2, x1, x0.5), pyramid pooling and FPN fusion, classified at stride p/4.
* :class:`SupervisedModel`: backbone + head, the module a fine-tuning checkpoint holds.

Heads use GroupNorm, not BatchNorm: checkpoints keep only trained parameters, never running buffers.
Every head's options are plain JSON values (the fine-tuning checkpoint stores them and rebuilds the head).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.decoders import UPerNetHead, conv_norm_act
from geoexplora.models.temporal_pool import temporal_intermediates

POOLS = ("cls", "mean")
SEGMENTATION_HEADS = ("linear", "progressive", "upernet")


class ClassificationHead(nn.Module):
    """Tokens (B, N, D) from ``forward_features`` -> logits (B, K).

    Args:
        embed_dim: D.
        num_classes: K.
        pool: ``"cls"`` (token 0) or ``"mean"`` (mean of the patch tokens after ``num_prefix_tokens``).
        num_prefix_tokens: cls and register tokens in front of the patch tokens.
    """

    def __init__(self, embed_dim: int, num_classes: int, pool: str = "cls", num_prefix_tokens: int = 1) -> None:
        super().__init__()
        if pool not in POOLS:
            raise GeoExploraError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = nn.LayerNorm(embed_dim)
        self.linear = nn.Linear(embed_dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        pooled = tokens[:, 0] if self.pool == "cls" else tokens[:, self.num_prefix_tokens:].mean(dim=1)
        return self.linear(self.norm(pooled))


class LinearSegmentationHead(nn.Module):
    """Patch features [(B, D, h, w)] (the last entry, already normed) -> logits (B, K, H, W).

    Args:
        embed_dim: D.
        num_classes: K.
    """

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        logits = self.classifier(features[-1])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class ProgressiveSegmentationHead(nn.Module):
    """Patch features of L blocks [(B, D, h, w)] -> logits (B, K, H, W).

    Each level is projected to ``channels`` (1x1 conv, GroupNorm, ReLU) and the levels are summed, then
    ``num_upsample`` stages of (x2 bilinear, 3x3 conv, GroupNorm, ReLU), a 1x1 classifier and bilinear resizing
    to the input size.

    Args:
        embed_dim: D.
        num_classes: K.
        num_levels: L, the number of blocks whose features come in.
        channels: decoder width.
        num_upsample: x2 stages (2 takes a patch-14 grid to a 3.5-pixel grid before the final resize).
    """

    def __init__(
        self, embed_dim: int, num_classes: int, num_levels: int = 4, channels: int = 128, num_upsample: int = 2
    ) -> None:
        super().__init__()
        self.projections = nn.ModuleList(conv_norm_act(embed_dim, channels, 1) for _ in range(num_levels))
        self.stages = nn.ModuleList(conv_norm_act(channels, channels, 3) for _ in range(num_upsample))
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        if len(features) != len(self.projections):
            raise GeoExploraError(f"head expects {len(self.projections)} feature levels, got {len(features)}")
        x = sum(project(f) for project, f in zip(self.projections, features, strict=True))
        for stage in self.stages:
            x = stage(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return F.interpolate(self.classifier(x), size=size, mode="bilinear", align_corners=False)


class SupervisedModel(nn.Module):
    """A backbone (timm ViT) with a head: images (B, C, H, W) -> logits (B, K) or (B, K, H, W).

    Args:
        backbone: the adapted timm VisionTransformer.
        head: a :class:`ClassificationHead` or a segmentation head.
        feature_blocks: for segmentation heads, the block indices whose features feed the head
            (negative from the end); ignored for classification.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_blocks: Sequence[int] = (-1,)) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_blocks = list(feature_blocks)

    @property
    def is_segmentation(self) -> bool:
        return not isinstance(self.head, ClassificationHead)

    def forward(self, image: Tensor) -> Tensor:
        """image: (B, C, H, W), or (B, T, C, H, W) stacks (dates set by ``stack_dates``; pooled over time)."""
        if not self.is_segmentation:
            return self.head(self.backbone.forward_features(image))
        if image.ndim == 5:
            return self.head(temporal_intermediates(self.backbone, image, self.feature_blocks), size=image.shape[-2:])
        features = self.backbone.forward_intermediates(
            image, indices=self.feature_blocks, output_fmt="NCHW", intermediates_only=True, norm=True
        )
        return self.head(features, size=image.shape[-2:])


def segmentation_feature_blocks(depth: int, head: str, feature_blocks: Sequence[int] | None) -> list[int]:
    """The blocks feeding a segmentation head: given ones, else the last (linear) or 4 evenly spaced.

    Evenly spaced: the last block of each quarter of the depth, e.g. [2, 5, 8, 11] for 12 blocks.
    """
    if feature_blocks:
        return list(feature_blocks)
    if head == "linear":
        return [depth - 1]
    return sorted({max(0, depth * (i + 1) // 4 - 1) for i in range(4)})


def create_head(
    task: str, embed_dim: int, num_classes: int, num_prefix_tokens: int, *, pool: str = "cls",
    segmentation_head: str = "progressive", num_levels: int = 1, channels: int = 128,
) -> nn.Module:
    """The head for ``task`` (``classification``/``multilabel``: :class:`ClassificationHead`)."""
    if task in ("classification", "multilabel"):
        return ClassificationHead(embed_dim, num_classes, pool, num_prefix_tokens)
    if segmentation_head == "linear":
        return LinearSegmentationHead(embed_dim, num_classes)
    if segmentation_head == "progressive":
        return ProgressiveSegmentationHead(embed_dim, num_classes, num_levels, channels)
    if segmentation_head == "upernet":
        if num_levels != 4:
            raise GeoExploraError(f"the upernet head takes 4 feature blocks (pyramid x4, x2, x1, x0.5), "
                                  f"got {num_levels}")
        return UPerNetHead(embed_dim, num_classes, channels)
    raise GeoExploraError(f"segmentation_head must be one of {SEGMENTATION_HEADS}, got {segmentation_head!r}")
