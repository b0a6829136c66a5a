"""Fixtures for tiled inference: tiny rasters (300 x 200 px at most) and tiny models."""

from __future__ import annotations

from pathlib import Path

import fake_rasters
import numpy as np
import pytest
import rasterio
import torch
from torch import Tensor, nn

SCENE_NODATA = -9999.0
SCENE_BORDER = 3
SCENE_NAN_PIXELS = 5


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4-band float32 300 x 200 GeoTIFF, EPSG:32633, 10 m, a 3-px nodata (-9999) border and 5 NaN pixels."""
    return fake_rasters.write_raster(
        tmp_path_factory.mktemp("scene") / "scene.tif", width=300, height=200, count=4,
        nodata=SCENE_NODATA, nodata_border=SCENE_BORDER, nan_pixels=SCENE_NAN_PIXELS,
    )


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4-band float32 20 x 13 GeoTIFF: smaller than one tile."""
    return fake_rasters.write_raster(tmp_path_factory.mktemp("small") / "small.tif", width=20, height=13)


@pytest.fixture(scope="session")
def empty_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4-band float32 60 x 50 GeoTIFF whose every pixel is nodata (0)."""
    path = fake_rasters.write_raster(tmp_path_factory.mktemp("empty") / "empty.tif", width=60, height=50, nodata=0.0)
    with rasterio.open(path, "r+") as dst:
        dst.write(np.zeros((4, 50, 60), dtype="float32"))
    return path


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


@pytest.fixture
def constant_model() -> ConstantModel:
    return ConstantModel((0.0, 2.0, 1.0))


@pytest.fixture
def column_model() -> ColumnModel:
    return ColumnModel()
