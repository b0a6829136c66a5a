"""Tiny seeded GeoTIFFs with a real CRS and a north-up transform, for tests.

Use the functions from fixtures, or run ``python tests/fake_rasters.py OUTDIR`` to write a sample set
(a multi-band raster with a nodata border and NaN pixels, an RGB raster, a 3-date temporal folder).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

DEFAULT_CRS = "EPSG:32633"
DEFAULT_ORIGIN = (500_000.0, 5_100_000.0)  # (west, north) in metres, UTM 33N
DEFAULT_RES = 10.0


# The fixture rasters of tests/conftest.py (tests assert against these values).
MULTIBAND_NAMES = ("coastal", "blue", "green", "red", "nir", "swir")
MULTIBAND_NODATA = -9999.0
MULTIBAND_BORDER = 4
MULTIBAND_NAN_PIXELS = 6
TEMPORAL_DATES = ("20200105", "20200310", "20200620")

def write_raster(
    path: str | Path,
    *,
    width: int = 64,
    height: int = 64,
    count: int = 4,
    dtype: str = "float32",
    crs: str | None = DEFAULT_CRS,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    res: float = DEFAULT_RES,
    nodata: float | None = None,
    nodata_border: int = 0,
    nan_pixels: int = 0,
    descriptions: Sequence[str] | None = None,
    seed: int = 0,
    georeferenced: bool = True,
) -> Path:
    """Write a GeoTIFF of seeded random values and return its path.

    Band ``b`` (0-based) holds ``100 * (b + 1) + uniform(0, 50)`` (integers for integer dtypes), so
    bands have distinct, known ranges. ``nodata_border`` pixels along every edge are set to ``nodata``
    (which must then be given); ``nan_pixels`` random pixels of every band are NaN (float dtypes only).
    ``georeferenced=False`` writes neither CRS nor transform.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = raster_values(width=width, height=height, count=count, dtype=dtype, seed=seed)
    if nodata_border:
        if nodata is None:
            raise ValueError("nodata_border needs a nodata value")
        border = np.ones((height, width), dtype=bool)
        border[nodata_border:-nodata_border, nodata_border:-nodata_border] = False
        data[:, border] = nodata
    if nan_pixels:
        rng = np.random.default_rng(seed + 1)
        flat = rng.choice(height * width, size=nan_pixels, replace=False)
        rows, cols = np.unravel_index(flat, (height, width))
        data[:, rows, cols] = np.nan
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype, "nodata": nodata,
    }
    if georeferenced:
        profile.update(crs=crs, transform=from_origin(origin[0], origin[1], res, res))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions is not None:
            for band, text in enumerate(descriptions, start=1):
                dst.set_band_description(band, text)
    return path


def raster_values(*, width: int, height: int, count: int, dtype: str, seed: int) -> np.ndarray:
    """The (count, height, width) array :func:`write_raster` writes before nodata/NaN are applied."""
    rng = np.random.default_rng(seed)
    offsets = 100.0 * np.arange(1, count + 1)[:, None, None]
    values = offsets + rng.uniform(0, 50, size=(count, height, width))
    if np.issubdtype(np.dtype(dtype), np.integer):
        values = np.round(values)
    return values.astype(dtype)


def write_label_raster(
    path: str | Path,
    *,
    width: int = 64,
    height: int = 64,
    num_classes: int = 3,
    crs: str = DEFAULT_CRS,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    res: float = DEFAULT_RES,
    nodata: int | None = None,
    nodata_border: int = 0,
) -> Path:
    """Write a uint8 class raster: vertical stripes of classes ``0..num_classes-1`` across the width."""
    classes = (np.arange(width) * num_classes // width).astype("uint8")
    data = np.broadcast_to(classes, (height, width)).copy()
    if nodata_border:
        data[:nodata_border, :] = nodata
    path = Path(path)
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8", nodata=nodata,
        crs=crs, transform=from_origin(origin[0], origin[1], res, res),
    ) as dst:
        dst.write(data, 1)
    return path


def write_temporal_folder(
    folder: str | Path, dates: Sequence[str] = ("20200105", "20200310", "20200620"), *, prefix: str = "S2_", **kwargs
) -> list[Path]:
    """Write one raster per date (``{prefix}{date}.tif``), same place, a different seed each; return the paths."""
    folder = Path(folder)
    return [
        write_raster(folder / f"{prefix}{date}.tif", seed=i, **kwargs) for i, date in enumerate(dates)
    ]


def write_sample_set(outdir: str | Path) -> list[Path]:
    """The sample set the command line writes: multi-band, RGB and a temporal folder."""
    outdir = Path(outdir)
    return [
        write_raster(outdir / "multiband.tif", count=6, nodata=-9999.0, nodata_border=4, nan_pixels=5,
                     descriptions=[f"band_{i}" for i in range(1, 7)]),
        write_raster(outdir / "rgb.tif", count=3, dtype="uint8", descriptions=["red", "green", "blue"]),
        *write_temporal_folder(outdir / "temporal"),
    ]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/fake_rasters.py OUTDIR")
    for written in write_sample_set(sys.argv[1]):
        print(written)
