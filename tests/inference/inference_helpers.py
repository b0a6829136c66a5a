"""Tiny models and scene constants for the tiled-inference tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

SCENE_NODATA = -9999.0
SCENE_BORDER = 3
SCENE_NAN_PIXELS = 5


class ConstantModel(nn.Module):
    """Logits ``values`` (K,) at every pixel (segmentation) or per window (classification)."""

    def __init__(self, values: tuple[float, ...], classification: bool = False) -> None:
        super().__init__()
        self.register_buffer("values", torch.tensor(values))
        self.classification = classification

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        if self.classification:
            return self.values.expand(b, -1).clone()
        return self.values.view(1, -1, 1, 1).expand(b, -1, h, w).clone()


class ColumnModel(nn.Module):
    """Two classes; logit of class 1 = 4 * (column within the tile / tile): depends on position only."""

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        ramp = 4 * torch.arange(w, dtype=torch.float32) / w
        return torch.stack([torch.zeros(b, h, w), ramp.expand(b, h, w)], dim=1)


def pixel_model(in_channels: int = 4, num_classes: int = 3) -> nn.Module:
    """A seeded 1x1 convolution: each pixel's logits depend on its own bands only."""
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    return conv.eval()
