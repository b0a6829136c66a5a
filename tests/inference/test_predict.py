"""The engine end to end on tiny rasters: geometry, nodata, blending, edge cases, classification."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from inference_helpers import SCENE_BORDER, SCENE_NAN_PIXELS, ColumnModel, ConstantModel, pixel_model

from geoexplora.inference import predict_raster
from geoexplora.inference.blending import hann_ramp
from geoexplora.inference.memory import blend_bytes, chunk_columns
from geoexplora.inference.windows import WindowGrid

FAST = {"tile": 32, "overlap": 8, "batch_size": 4, "progress": False}


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), src.profile


def test_output_geometry_and_nodata_footprint(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.tif"
    summary = predict_raster(scene, out, pixel_model(), num_classes=3, **FAST)
    classes, profile = read(out)
    with rasterio.open(scene) as src:
        assert (profile["crs"], profile["transform"]) == (src.crs, src.transform)
        assert (profile["width"], profile["height"]) == (src.width, src.height)
        bands = src.read()
    assert profile["dtype"] == "uint8" and profile["nodata"] == 255
    invalid = (bands == src.nodata).any(axis=0) | np.isnan(bands).any(axis=0)
    assert invalid.sum() > SCENE_NAN_PIXELS  # border and NaN pixels
    np.testing.assert_array_equal(classes[0] == 255, invalid)
    assert set(np.unique(classes[0][~invalid])) <= {0, 1, 2}
    assert summary.outputs == (out,) and summary.windows == summary.total_windows == 13 * 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.tif"]  # no temporary files left
    assert "pred.tif" in str(summary)


def test_pixel_model_output_matches_per_pixel_argmax(scene: Path, tmp_path: Path) -> None:
    """A 1x1 conv's blended prediction is its own per-pixel prediction: tiling changes nothing."""
    model = pixel_model()
    predict_raster(scene, tmp_path / "pred.tif", model, num_classes=3, **FAST)
    classes, _ = read(tmp_path / "pred.tif")
    with rasterio.open(scene) as src:
        bands = torch.from_numpy(np.nan_to_num(src.read()))
    with torch.no_grad():
        expected = model(bands[None]).argmax(1)[0].numpy()
    valid = classes[0] != 255
    assert (classes[0][valid] == expected[valid]).mean() > 0.999


def test_constant_model_gives_constant_output_without_seams(scene: Path, tmp_path: Path) -> None:
    probs_path = tmp_path / "probs.tif"
    predict_raster(scene, tmp_path / "pred.tif", ConstantModel((0.0, 2.0, 1.0)), num_classes=3,
                   probabilities=probs_path, **FAST)
    classes, _ = read(tmp_path / "pred.tif")
    probs, profile = read(probs_path)
    inner = np.s_[SCENE_BORDER:-SCENE_BORDER, SCENE_BORDER:-SCENE_BORDER]
    valid = classes[0] != 255
    assert np.unique(classes[0][valid]).tolist() == [1]
    expected = np.rint(torch.softmax(torch.tensor([0.0, 2.0, 1.0]), 0).numpy() * 254)
    for k in range(3):
        assert np.unique(probs[k][inner][valid[inner]]).tolist() == [expected[k]]
    assert profile["count"] == 3 and profile["nodata"] == 255


def test_position_dependent_model_is_blended_across_overlaps(scene: Path, tmp_path: Path) -> None:
    probs_path = tmp_path / "probs.tif"
    predict_raster(scene, tmp_path / "pred.tif", ColumnModel(), num_classes=2, probabilities=probs_path,
                   nodata_out=9, **FAST)
    probs, _ = read(probs_path)
    tile, stride = 32, 24
    ramp = hann_ramp(tile, 8)
    p1 = torch.sigmoid(4 * torch.arange(tile) / tile).numpy()  # softmax of (0, logit) for class 1
    row = 10  # in window row 0 only
    # columns 24..31 lie in windows 0 (local col c) and 1 (local col c - 24): a Hann-weighted mix.
    for col in range(stride, tile):
        w0, w1 = ramp[col], ramp[col - stride]
        expected = (w0 * p1[col] + w1 * p1[col - stride]) / (w0 + w1)
        assert abs(probs[1, row, col] / 254 - expected) <= 1 / 254
    # the blend has no jump: neighbouring columns across the seam differ by less than the raw step.
    raw_step = p1[tile - 1] - p1[0]
    assert np.abs(np.diff(probs[1, row, 10:100].astype(float) / 254)).max() < raw_step / 3


def test_raster_smaller_than_tile(small_scene: Path, tmp_path: Path) -> None:
    predict_raster(small_scene, tmp_path / "pred.tif", pixel_model(), num_classes=3, **FAST)
    classes, profile = read(tmp_path / "pred.tif")
    assert classes.shape == (1, 13, 20)
    assert (classes != 255).all()


def test_all_nodata_raster_gives_nodata_and_a_warning(
    empty_scene: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return torch.zeros(x.shape[0], 3, *x.shape[2:])

    with caplog.at_level(logging.WARNING):
        predict_raster(empty_scene, tmp_path / "pred.tif", model, num_classes=3, **FAST)
    classes, _ = read(tmp_path / "pred.tif")
    assert (classes == 255).all()
    assert calls == []
    assert "every pixel is nodata" in caplog.text


def test_uint16_class_map_for_many_classes(small_scene: Path, tmp_path: Path) -> None:
    predict_raster(small_scene, tmp_path / "pred.tif", ConstantModel(tuple(np.arange(300.0))), num_classes=300, **FAST)
    classes, profile = read(tmp_path / "pred.tif")
    assert (profile["dtype"], profile["nodata"]) == ("uint16", 65535)
    assert (classes == 299).all()


def test_band_selection_reorders_input(scene: Path, tmp_path: Path) -> None:
    seen = []

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append(x[:, :, 10, 10].clone())
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    predict_raster(scene, tmp_path / "pred.tif", model, num_classes=2, bands=[4, 2], **FAST)
    first = seen[0][0]
    assert first.shape == (2,)
    assert 400 <= first[0] < 450 and 200 <= first[1] < 250  # band b holds 100 * b + [0, 50)


def test_normalize_sees_nan_at_nodata_and_model_sees_zero(scene: Path, tmp_path: Path) -> None:
    seen, normalized = [], []

    def normalize(x: torch.Tensor) -> torch.Tensor:
        normalized.append(x.clone())  # x is a read buffer, reused for later batches
        return x / 100

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    predict_raster(scene, tmp_path / "pred.tif", model, num_classes=2, normalize=normalize, batch_size=4,
                   tile=32, overlap=8, progress=False)
    assert torch.isnan(normalized[0][:, :, 0, 0]).all()  # the first row of windows starts in the nodata border
    assert not torch.isnan(seen[0]).any() and seen[0][0, 0, 0, 0] == 0
    assert 1 <= seen[0][0, 0, 10, 10] < 1.5


def test_classification_writes_window_grid_raster(scene: Path, tmp_path: Path) -> None:
    out, probs_path = tmp_path / "cls.tif", tmp_path / "cls_probs.tif"
    summary = predict_raster(scene, out, ConstantModel((0.0, 1.0, 3.0), classification=True), num_classes=3,
                             mode="classification", probabilities=probs_path, **FAST)
    classes, profile = read(out)
    with rasterio.open(scene) as src:
        assert profile["transform"] == src.transform @ Affine.scale(24)
        assert profile["crs"] == src.crs
    assert classes.shape == (1, 8, 13) and (classes == 2).all()
    assert summary.buffer_bytes == 0
    probs, _ = read(probs_path)
    assert probs.shape == (3, 8, 13)
    # window (row 2, col 5) sits over raster pixel (row 48, col 120) at its origin
    assert rasterio.transform.xy(profile["transform"], 2, 5, offset="ul") == rasterio.transform.xy(
        src.transform, 48, 120, offset="ul"
    )


def test_wrong_model_output_shape_is_reported(scene: Path, tmp_path: Path) -> None:
    from geoexplora.errors import GeoExploraError

    with pytest.raises(GeoExploraError, match=r"model output has shape \(4, 3\)"):
        predict_raster(scene, tmp_path / "pred.tif", ConstantModel((0.0, 1.0, 2.0), classification=True),
                       num_classes=3, **FAST)
    assert not (tmp_path / "pred.tif").exists()


def test_outputs_are_deterministic(scene: Path, tmp_path: Path) -> None:
    for name in ("a.tif", "b.tif"):
        predict_raster(scene, tmp_path / name, pixel_model(), num_classes=3, **FAST)
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()


def test_summary_buffer_does_not_grow_with_height(tmp_path: Path) -> None:
    import fake_rasters

    sizes = []
    for height in (40, 160):
        raster = fake_rasters.write_raster(tmp_path / f"h{height}.tif", width=90, height=height)
        summary = predict_raster(raster, tmp_path / f"p{height}.tif", pixel_model(), num_classes=3, **FAST)
        sizes.append(summary.buffer_bytes)
    assert sizes[0] == sizes[1] == blend_bytes(WindowGrid(90, 40, 32, 8), 3, chunk_columns(WindowGrid(90, 40, 32, 8), 3))
