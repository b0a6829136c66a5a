"""Up-front checks: every bad input is one GeoExploraError line naming the file, before any work."""

from __future__ import annotations

import os
from pathlib import Path

import fake_rasters
import pytest
import rasterio
import torch
from inference_helpers import pixel_model

from geoexplora.errors import GeoExploraError
from geoexplora.inference import predict as predict_module
from geoexplora.inference import predict_raster

FAST = {"tile": 32, "overlap": 8, "batch_size": 4, "progress": False}


def never_called(x: torch.Tensor) -> torch.Tensor:
    raise AssertionError("the model must not run when a check fails")


def expect_error(raster: Path, out: Path, match: str, **kwargs: object) -> None:
    params = {"num_classes": 3, **FAST, **kwargs}
    with pytest.raises(GeoExploraError, match=match) as info:
        predict_raster(raster, out, never_called, **params)
    assert "\n" not in str(info.value)
    assert not any(p.name.startswith(out.name) for p in out.parent.iterdir()) if out.parent.is_dir() else True


def test_missing_raster(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.tif", tmp_path / "pred.tif", r"nope\.tif: no such raster file")


def test_not_a_raster(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tif"
    bogus.write_text("not a tiff")
    expect_error(bogus, tmp_path / "pred.tif", r"bogus\.tif: not a readable raster")


def test_truncated_raster(tmp_path: Path) -> None:
    path = fake_rasters.write_raster(tmp_path / "cut.tif", width=128, height=128)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, tmp_path / "pred.tif", r"cut\.tif: not a readable raster")


def test_no_crs_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = fake_rasters.write_raster(tmp_path / "plain.tif", width=40, height=30, georeferenced=False)
    expect_error(path, tmp_path / "pred.tif", r"plain\.tif: raster has no CRS")
    predict_raster(path, tmp_path / "pred.tif", pixel_model(), num_classes=3, allow_no_crs=True, **FAST)
    with rasterio.open(tmp_path / "pred.tif") as src:
        assert src.crs is None and (src.width, src.height) == (40, 30)


def test_missing_output_folder(scene: Path, tmp_path: Path) -> None:
    expect_error(scene, tmp_path / "missing" / "pred.tif", r"pred\.tif: output folder .*missing does not exist")


def test_read_only_output_folder(scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes everywhere: make the write probe answer as for a user
        real_probe = predict_module.folder_is_writable
        monkeypatch.setattr(predict_module, "folder_is_writable", lambda f: Path(f) != folder and real_probe(f))
    try:
        expect_error(scene, folder / "pred.tif", r"pred\.tif: output folder .*ro is not writable")
    finally:
        folder.chmod(0o755)


def test_existing_output_is_refused_unless_overwrite(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.tif"
    out.write_bytes(b"old")
    with pytest.raises(GeoExploraError, match=r"pred\.tif: already exists"):
        predict_raster(scene, out, never_called, num_classes=3, **FAST)
    assert out.read_bytes() == b"old"
    predict_raster(scene, out, pixel_model(), num_classes=3, overwrite=True, **FAST)
    with rasterio.open(out) as src:
        assert src.count == 1


def test_too_few_bands(scene: Path, tmp_path: Path) -> None:
    expect_error(scene, tmp_path / "pred.tif", r"scene\.tif: has 4 bands but bands 1, 6 were asked for", bands=[1, 6])


def test_bad_parameters(scene: Path, tmp_path: Path) -> None:
    expect_error(scene, tmp_path / "pred.tif", r"overlap 20", overlap=20)
    expect_error(scene, tmp_path / "pred.tif", r"nodata_out 1: .*not a class id", nodata_out=1)
    expect_error(scene, tmp_path / "pred.tif", r"different paths", probabilities=tmp_path / "pred.tif")


def test_failing_model_leaves_no_file_under_the_final_name(scene: Path, tmp_path: Path) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        predict_raster(scene, tmp_path / "pred.tif", broken, num_classes=3, **FAST)
    assert not (tmp_path / "pred.tif").exists()
