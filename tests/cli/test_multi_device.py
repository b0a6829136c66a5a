"""``predict --devices N`` (issue 12, item 5) and ``embed --devices N``: rasters spread over worker processes give
the same bytes (the same table) as one process; too many devices is one line; a worker that dies leaves the
others' outputs (parts) and names its files, and ``--resume`` completes them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

import fake_rasters
from fake_checkpoints import write_segmentation_checkpoint
from geoexplora.cli import main
from geoexplora.cli.multi_device import deal

REPO = Path(__file__).resolve().parents[2]
BANDS = ["red", "green", "blue", "nir"]


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("devices")
    rasters = [fake_rasters.write_raster(root / "in" / f"r{i}.tif", width=40 + 24 * i, height=48, count=4,
                                         descriptions=BANDS, seed=i) for i in range(4)]
    _, ckpt = write_segmentation_checkpoint(root, rasters[0], BANDS)
    return {"root": root, "rasters": rasters, "ckpt": ckpt}


def predict(four: dict[str, object], out: Path, *extra: str, rasters: list[Path] | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = ["predict", "--raster", *map(str, rasters or four["rasters"]), "--checkpoint", str(four["ckpt"]),
            "--out", str(out), "--tile", "32", "--overlap", "8", "--no-preview", "--probabilities", *extra]
    return subprocess.run([sys.executable, "-m", "geoexplora", *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})})


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tif"))}


def test_two_cpu_workers_write_the_bytes_of_one_process(four, tmp_path):
    one = predict(four, tmp_path / "one", "--threads", "1")
    assert one.returncode == 0, one.stderr[-2000:]
    two = predict(four, tmp_path / "two", "--devices", "2")
    assert two.returncode == 0, two.stderr[-2000:]
    assert len(outputs(tmp_path / "one")) == 8 and outputs(tmp_path / "two") == outputs(tmp_path / "one")
    assert not list((tmp_path / "two").glob("*.lock")) and not list((tmp_path / "two").glob("*partial*"))


def test_more_devices_than_the_machine_has_is_one_line(four, tmp_path, capsys):
    assert main(["predict", "--raster", *map(str, four["rasters"]), "--checkpoint", str(four["ckpt"]),
                 "--out", str(tmp_path / "o"), "--devices", "4096"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--devices 4096" in err[0] and "at most" in err[0], err


def test_a_dying_worker_names_its_raster_and_resume_completes_it(four, tmp_path):
    doomed = fake_rasters.write_raster(tmp_path / "die.tif", width=40, height=48, count=4, descriptions=BANDS)
    rasters = [*four["rasters"][:3], doomed]
    hook = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "cli" / "dying_worker"), str(REPO)])}
    killed = predict(four, tmp_path / "out", "--devices", "2", rasters=rasters, env=hook)
    assert killed.returncode == 1, killed.stderr[-2000:]
    failed = [line for line in killed.stderr.splitlines() if "not predicted" in line]
    assert failed and any("die.tif" in line for line in failed) and all("--resume" in line for line in failed)
    written = set(outputs(tmp_path / "out"))
    assert "die.pred.tif" not in written and len(written) >= 2  # the other worker finished its rasters
    resumed = predict(four, tmp_path / "out", "--devices", "2", "--resume", rasters=rasters)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert {"die.pred.tif", "r0.pred.tif", "r1.pred.tif", "r2.pred.tif"} <= set(outputs(tmp_path / "out"))


def test_rasters_are_dealt_largest_first_to_the_least_loaded_worker():
    # b (5) and c (3) open the two lists, d (2) joins c, a (1) the tie-broken first: loads 6 and 5
    assert deal(["a", "b", "c", "d"], [1, 5, 3, 2], 2) == [["a", "b"], ["c", "d"]]


def embed_argv(four: dict[str, object], out: Path, rasters: list[Path] | None = None) -> list[str]:
    return ["embed", "--raster", *map(str, rasters or four["rasters"]), "--checkpoint", str(four["ckpt"]),
            "--out", str(out), "--tile", "32", "--stride", "24", "--dense", str(out.with_suffix(".tif"))]


def embed(four: dict[str, object], out: Path, *extra: str, rasters: list[Path] | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoexplora", *embed_argv(four, out, rasters), *extra],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})})


def test_embed_on_two_cpu_workers_writes_the_table_of_one_process(four, tmp_path):
    assert main([*embed_argv(four, tmp_path / "one.parquet"), "--device", "cpu"]) == 0
    two = embed(four, tmp_path / "two.parquet", "--devices", "2")
    assert two.returncode == 0, two.stderr[-2000:]
    assert pq.read_table(tmp_path / "two.parquet").equals(pq.read_table(tmp_path / "one.parquet"))
    for raster in four["rasters"]:
        with rasterio.open(tmp_path / f"one_{raster.stem}.tif") as a, rasterio.open(tmp_path / f"two_{raster.stem}.tif") as b:
            assert np.allclose(a.read(), b.read(), atol=1e-6, equal_nan=True)
    assert not list(tmp_path.glob(".*"))  # no parts folder, partial file or lock left


def test_a_dying_embed_worker_names_its_raster_and_resume_completes_it(four, tmp_path):
    doomed = fake_rasters.write_raster(tmp_path / "die.tif", width=40, height=48, count=4, descriptions=BANDS)
    rasters = [*four["rasters"][:3], doomed]
    hook = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "cli" / "dying_worker"), str(REPO)])}
    killed = embed(four, tmp_path / "e.parquet", "--devices", "2", rasters=rasters, env=hook)
    assert killed.returncode == 1, killed.stderr[-2000:]
    failed = [line for line in killed.stderr.splitlines() if "not embedded" in line]
    assert len(failed) == 1 and "die.tif" in failed[0] and "--resume" in failed[0], killed.stderr[-2000:]
    assert not (tmp_path / "e.parquet").exists()
    assert len(list((tmp_path / ".e.parquet.parts").glob("*.safetensors"))) == 3  # the others finished
    assert main([*embed_argv(four, tmp_path / "e.parquet", rasters), "--device", "cpu", "--resume"]) == 0
    assert set(pq.read_table(tmp_path / "e.parquet")["source"].to_pylist()) == set(map(str, rasters))
