"""Shared fixtures: tiny generated GeoTIFFs (see tests/fake_rasters.py) and the real sample-data folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fake_rasters  # noqa: E402
from fake_rasters import (  # noqa: E402
    MULTIBAND_BORDER,
    MULTIBAND_NAMES,
    MULTIBAND_NAN_PIXELS,
    MULTIBAND_NODATA,
    TEMPORAL_DATES,
)

from shared_paths import DINOV2_WEIGHTS, SHARED_DATA  # noqa: E402



@pytest.fixture(scope="session")
def multiband_geotiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6-band float32 64x64 GeoTIFF, EPSG:32633, 10 m, described bands ``MULTIBAND_NAMES``,
    a 4-pixel nodata (-9999) border and 6 NaN pixels."""
    return fake_rasters.write_raster(
        tmp_path_factory.mktemp("multiband") / "multiband.tif", count=6, nodata=MULTIBAND_NODATA,
        nodata_border=MULTIBAND_BORDER, nan_pixels=MULTIBAND_NAN_PIXELS, descriptions=MULTIBAND_NAMES,
    )


@pytest.fixture(scope="session")
def rgb_geotiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3-band uint8 64x64 GeoTIFF (red, green, blue), EPSG:32633, 10 m, no nodata."""
    return fake_rasters.write_raster(
        tmp_path_factory.mktemp("rgb") / "rgb.tif", count=3, dtype="uint8", descriptions=("red", "green", "blue")
    )


@pytest.fixture(scope="session")
def temporal_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of 3 dates of one place (``S2_YYYYMMDD.tif``, ``TEMPORAL_DATES``), 4-band float32 64x64."""
    folder = tmp_path_factory.mktemp("temporal")
    fake_rasters.write_temporal_folder(folder, TEMPORAL_DATES)
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample imagery folder (``<repo>/../shared/data``); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def dinov2_weights() -> Path:
    """The real DINOv2 ViT-S/14 in timm names (``<repo>/../shared/weights``); skips when absent."""
    if not DINOV2_WEIGHTS.is_file():
        pytest.skip(f"real DINOv2 ViT-S/14 weights not found at {DINOV2_WEIGHTS}")
    return DINOV2_WEIGHTS
