"""Window grid, reflection padding, Hann weights and the rolling blend buffer."""

from __future__ import annotations

import numpy as np
import pytest

from geoexplora.errors import GeoExploraError
import torch

from geoexplora.inference.blending import ChunkBlender, hann_ramp, hann_weights
from geoexplora.inference.windows import WindowGrid, pad_window


def test_grid_covers_raster_with_stride() -> None:
    grid = WindowGrid(width=300, height=200, tile=32, overlap=8)
    assert grid.stride == 24
    assert (grid.cols, grid.rows) == (13, 8)
    last = grid.window(len(grid) - 1)
    assert last.x + 32 >= 300 and last.y + 32 >= 200
    assert (last.width, last.height) == (300 - last.x, 200 - last.y)
    assert grid.output_rows(0) == (0, 24)
    assert grid.output_rows(grid.rows - 1) == ((grid.rows - 1) * 24, 200)


def test_grid_smaller_than_tile_is_one_window() -> None:
    grid = WindowGrid(width=20, height=13, tile=32, overlap=8)
    assert len(grid) == 1
    assert (grid.window(0).width, grid.window(0).height) == (20, 13)


@pytest.mark.parametrize("overlap", [-1, 17])
def test_grid_rejects_bad_overlap(overlap: int) -> None:
    with pytest.raises(GeoExploraError, match=f"overlap {overlap}"):
        WindowGrid(100, 100, tile=32, overlap=overlap)


def test_pad_window_reflects_and_handles_tiny_inputs() -> None:
    data = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    padded = pad_window(data, 5)
    assert padded.shape == (1, 5, 5)
    np.testing.assert_array_equal(padded[0, 0], [0, 1, 2, 1, 0])
    np.testing.assert_array_equal(padded[0, :, 0], [0, 3, 0, 3, 0])
    assert pad_window(np.ones((1, 1), dtype=bool), 4).shape == (4, 4)


def test_hann_ramps_of_neighbours_sum_to_one() -> None:
    ramp = hann_ramp(32, 8)
    np.testing.assert_allclose(ramp[24:] + ramp[:8], 1.0, rtol=1e-6)
    assert ramp.min() > 0 and ramp[8:24].min() == 1.0
    assert hann_weights(32, 0).min() == 1.0


def test_chunk_buffer_does_not_depend_on_raster_height_and_only_its_halo_on_the_width() -> None:
    shapes = []
    for width, height in ((500, 100), (500, 100_000), (50_000, 100)):
        blender = ChunkBlender(WindowGrid(width=width, height=height, tile=64, overlap=16), 5, 4, torch.device("cpu"))
        shapes.append((blender.acc.shape, blender.weight.shape, blender.invalid.shape, blender.top_acc.shape))
    assert shapes[0] == shapes[1]
    assert shapes[0][0] == shapes[2][0] == (5, 64, 3 * 48 + 64)
    assert shapes[2][3] == (5, 16, WindowGrid(50_000, 1, 64, 16).padded_width)
