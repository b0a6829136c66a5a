"""The parallel, chunked pipeline: outputs do not depend on chunk size, reader threads or the input's layout."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import fake_rasters
import numpy as np
import pytest
import rasterio
import torch
from inference_helpers import ColumnModel, pixel_model
from torch import nn

from geoexplora.errors import GeoExploraError
from geoexplora.inference import predict_raster
from geoexplora.inference import reader as reader_module
from geoexplora.inference.reader import RasterSource, WindowHandle, WindowReader
from geoexplora.inference.windows import TileWindow, WindowGrid
from geoexplora.models.checkpoint import ClassInfo

TILE, OVERLAP = 32, 8


class NeighbourhoodModel(nn.Module):
    """A seeded 5 x 5 convolution: logits depend on the pixel's neighbourhood, so windows differ at overlaps."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(4, num_classes, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 200.0) / 100.0


def run(raster: Path, out: Path, **kwargs: object) -> tuple[bytes, bytes]:
    """Class map and probabilities bytes of one predict_raster call."""
    params = {"num_classes": 5, "tile": TILE, "overlap": OVERLAP, "batch_size": 7, "normalize": normalize,
              "progress": False, "model": NeighbourhoodModel(), **kwargs}
    model = params.pop("model")
    probs = out.with_name(out.stem + ".probs.tif")
    predict_raster(raster, out, model, probabilities=probs, **params)
    return out.read_bytes(), probs.read_bytes()


def test_chunked_output_is_identical_to_one_chunk_per_row(scene: Path, tmp_path: Path) -> None:
    grid = WindowGrid(300, 200, TILE, OVERLAP)
    assert grid.cols == 13 and grid.rows == 8  # chunks of 1, 5 windows: 13, 3 chunks per row, over 8 rows
    reference = run(scene, tmp_path / "whole.tif", chunk_windows=grid.cols)
    for chunk in (1, 5):
        assert run(scene, tmp_path / f"chunk{chunk}.tif", chunk_windows=chunk) == reference
    with rasterio.open(tmp_path / "whole.tif") as src:
        classes = src.read(1)
    assert len(np.unique(classes[classes != 255])) > 1  # the comparison is not between constant maps


class CentredColumnModel(ColumnModel):
    """Two classes: class 1 in the right half of every window, class 0 in the left (position only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        logits[:, 1] -= 2.0
        return logits


def test_chunking_keeps_a_position_dependent_blend_and_class_values(scene: Path, tmp_path: Path) -> None:
    classes = [ClassInfo(10, "low", (0, 0, 0)), ClassInfo(20, "high", (255, 255, 255))]
    kwargs = {"model": CentredColumnModel(), "num_classes": 2, "normalize": None, "classes": classes, "overlap": 16}
    reference = run(scene, tmp_path / "whole.tif", chunk_windows=100, **kwargs)
    assert run(scene, tmp_path / "chunk2.tif", chunk_windows=2, **kwargs) == reference
    with rasterio.open(tmp_path / "chunk2.tif") as src:
        assert set(np.unique(src.read(1))) == {10, 20, 255}


@pytest.mark.parametrize("threads", [2, 3])
def test_reader_threads_give_identical_outputs(scene: Path, tmp_path: Path, threads: int) -> None:
    reference = run(scene, tmp_path / "one.tif", reader_threads=1)
    assert run(scene, tmp_path / "many.tif", reader_threads=threads, chunk_windows=3) == reference


def test_resume_with_other_threads_and_chunks_is_identical(scene: Path, tmp_path: Path) -> None:
    reference = run(scene, tmp_path / "reference.tif")
    calls = 0

    def interrupted(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 9:
            raise KeyboardInterrupt  # an interrupt keeps the partial files for resume
        return conv(x)

    conv = NeighbourhoodModel()
    with pytest.raises(KeyboardInterrupt):
        run(scene, tmp_path / "pred.tif", model=interrupted)
    assert (tmp_path / "pred.tif.partial.json").exists()
    resumed = run(scene, tmp_path / "pred.tif", model=conv.forward, resume=True, reader_threads=2, chunk_windows=2)
    assert resumed == reference


def test_bad_reader_threads_is_one_line(scene: Path, tmp_path: Path) -> None:
    with pytest.raises(GeoExploraError, match="reader threads 0: must be at least 1"):
        run(scene, tmp_path / "p.tif", reader_threads=0)


def test_striped_raster_streams_to_the_same_output_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    striped = fake_rasters.write_raster(tmp_path / "striped.tif", width=1500, height=60, dtype="uint16")
    tiled = tmp_path / "tiled.tif"
    with rasterio.open(striped) as src:
        assert src.block_shapes[0][1] == src.width  # GDAL's default layout: strips of full rows
        profile = {**src.profile, "tiled": True, "blockxsize": 16, "blockysize": 16}
        with rasterio.open(tiled, "w", **profile) as dst:
            dst.write(src.read())
    # A window crosses 33 strips of 1500 px (12 times its own bytes), but that is only 99 kB: lower the bar.
    monkeypatch.setattr(reader_module, "STRIP_WARN_BYTES", 4096)
    with caplog.at_level(logging.WARNING, logger="geoexplora.inference.reader"):
        from_tiled = run(tiled, tmp_path / "t.tif")
        assert not caplog.records
        from_striped = run(striped, tmp_path / "s.tif", reader_threads=2)
    assert from_striped == from_tiled
    (record,) = caplog.records
    message = record.getMessage()
    assert "striped.tif: striped" in message and "per window read (x 2 reader threads)" in message
    assert "gdal_translate -co TILED=YES" in message and "\n" not in message


class ArraySource:
    """A WindowSource over an in-memory (C, H, W) array, as a stack reader would implement it."""

    def __init__(self, data: np.ndarray, grid: WindowGrid) -> None:
        self.data, self.grid, self.channels, self.path = data, grid, data.shape[0], Path("memory")

    @contextlib.contextmanager
    def open(self) -> Iterator[WindowHandle]:
        def read(window: TileWindow, out: np.ndarray) -> np.ndarray | None:
            patch = self.data[:, window.y : window.y + window.height, window.x : window.x + window.width]
            padded = np.pad(patch, [(0, 0), (0, self.grid.tile - window.height), (0, self.grid.tile - window.width)],
                            mode="reflect")
            out[:] = padded
            return np.zeros(out.shape[1:], dtype=bool)

        yield read


def test_window_source_interface_feeds_the_reader_like_a_raster(tmp_path: Path) -> None:
    raster = fake_rasters.write_raster(tmp_path / "r.tif", width=100, height=70)
    grid = WindowGrid(100, 70, TILE, OVERLAP)
    with rasterio.open(raster) as src:
        data = src.read()
    sources = (RasterSource(raster, grid, [1, 2, 3, 4]), ArraySource(data, grid))
    batches = []
    for source, threads in zip(sources, (1, 2), strict=True):
        with WindowReader(source, batch_size=4, threads=threads) as reader:
            batches.append(list(reader))
    assert len(batches[0]) == len(batches[1]) == -(-len(grid) // 4)
    for a, b in zip(*batches, strict=True):
        assert [w.index for w in a.windows] == [w.index for w in b.windows]
        assert torch.equal(a.images, b.images)
        np.testing.assert_array_equal(a.invalid, b.invalid)


def test_pixel_model_output_does_not_depend_on_threads_or_chunks_at_nodata(scene: Path, tmp_path: Path) -> None:
    kwargs = {"model": pixel_model(), "num_classes": 3}
    reference = run(scene, tmp_path / "a.tif", **kwargs)
    assert run(scene, tmp_path / "b.tif", reader_threads=2, chunk_windows=1, **kwargs) == reference
    with rasterio.open(tmp_path / "b.tif") as src:
        assert (src.read(1)[:3] == 255).all()  # the scene's nodata border stays nodata
