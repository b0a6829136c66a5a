"""Fixtures for tiled inference: tiny rasters (300 x 200 px at most) and tiny models."""

from __future__ import annotations

from pathlib import Path

import fake_rasters
import numpy as np
import pytest
import rasterio
from inference_helpers import SCENE_BORDER, SCENE_NAN_PIXELS, SCENE_NODATA, ColumnModel, ConstantModel



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


@pytest.fixture
def constant_model() -> ConstantModel:
    return ConstantModel((0.0, 2.0, 1.0))


@pytest.fixture
def column_model() -> ColumnModel:
    return ColumnModel()
