"""StackSource: the same window of every date in one slot (date-major), on the first date's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.warp import transform

import fake_rasters
from geoexplora.data import RasterStack
from geoexplora.inference.reader import WindowReader
from geoexplora.inference.stack_reader import StackSource
from geoexplora.inference.windows import WindowGrid


def test_batches_hold_every_date_of_each_window(tmp_path: Path) -> None:
    paths = fake_rasters.write_temporal_folder(tmp_path, width=40, height=30, count=3, nodata=-9999.0,
                                               nodata_border=2)
    stack = RasterStack.from_paths(tmp_path)
    grid = WindowGrid(width=40, height=30, tile=16, overlap=0)
    with WindowReader(StackSource(stack, grid, [1, 2, 3]), batch_size=4, prefetch=1, threads=2) as reader:
        batches = list(reader)
    assert sum(len(b.windows) for b in batches) == len(grid)
    first = batches[0]
    assert first.images.shape[1:] == (3 * 3, 16, 16)
    window = first.windows[first.has_data[0]]
    for t, path in enumerate(stack.paths):
        with rasterio.open(path) as src:
            raw = src.read([1, 2, 3], window=window.read_window)
        inside = raw[:, 2:, 2:]  # off the nodata border
        np.testing.assert_allclose(first.images[0, 3 * t:3 * t + 3, 2:window.height, 2:window.width].numpy(), inside)
    assert first.invalid[0, 0, 0] and not first.invalid[0, 5, 5]
    assert [p.name for p in stack.paths] == sorted(p.name for p in paths)


def test_a_date_in_another_crs_is_warped_onto_the_first(tmp_path: Path) -> None:
    first = fake_rasters.write_raster(tmp_path / "S2_20200105.tif", width=32, height=32, count=2)
    with rasterio.open(first) as src:
        crs, bounds = src.crs, src.bounds
    xs, ys = transform(crs, "EPSG:4326", [bounds.left - 200, bounds.right + 200], [bounds.top + 200, bounds.bottom - 200])
    fake_rasters.write_raster(tmp_path / "S2_20200310.tif", width=64, height=64, count=2, crs="EPSG:4326",
                              origin=(xs[0], ys[0]), res=max(xs[1] - xs[0], ys[0] - ys[1]) / 64)
    stack = RasterStack.from_paths(tmp_path)
    with WindowReader(StackSource(stack, WindowGrid(32, 32, 32, 0), [1, 2]), batch_size=1) as reader:
        (batch,) = list(reader)
    assert batch.images.shape == (1, 2 * 2, 32, 32)
    assert torch.isfinite(batch.images).all() and not batch.invalid.any()
    assert batch.images[0, 2:].std() > 0  # the warped date holds data, not fill
