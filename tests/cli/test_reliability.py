"""Safe concurrent and repeated runs: one writer per output, --resume only resumes; masks are nodata; a
checkpoint's config.json reaches outside the folders the user allows only for the file it recorded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp
from safetensors.torch import save_file

import fake_rasters
from fake_checkpoints import write_segmentation_checkpoint
from geoexplora.cli import main
from geoexplora.data import GeoRasterDataset, compute_band_statistics
from geoexplora.errors import GeoExploraError
from geoexplora.inference import predict_raster
from geoexplora.models import load_model
from geoexplora.models.lineage import file_sha256

REPO = Path(__file__).resolve().parents[2]
BANDS = ["red", "green", "blue", "nir"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-band 70x90 scene, a larger 400x400 one, and a tiny fine-tuned segmentation checkpoint."""
    root = tmp_path_factory.mktemp("reliability")
    scene = fake_rasters.write_raster(root / "scene.tif", width=90, height=70, count=4, descriptions=BANDS)
    large = fake_rasters.write_raster(root / "large.tif", width=1200, height=1200, count=4, descriptions=BANDS)
    _, ckpt = write_segmentation_checkpoint(root, scene, BANDS)
    return {"root": root, "scene": scene, "large": large, "ckpt": ckpt}


def _predict_argv(tiny: dict[str, Path], raster: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--raster", str(raster), "--checkpoint", str(tiny["ckpt"]), "--out", str(out),
            "--tile", "32", "--overlap", "8", "--no-preview", "--threads", "1", *extra]


def _cli(argv: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "geoexplora", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _cli_when(flag: Path, argv: list[str]) -> subprocess.Popen[str]:
    """``geoexplora ARGV`` in a process that imports the stack, then waits for ``flag`` to exist."""
    code = ("import sys, time, pathlib, geoexplora.models, geoexplora.inference\n"
            "from geoexplora.cli import main\n"
            f"while not pathlib.Path({str(flag)!r}).exists(): time.sleep(0.02)\n"
            f"sys.exit(main({argv!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_second_writer_of_an_output_gets_one_line_and_the_first_finishes(tiny, tmp_path):
    out = tmp_path / "o.tif"
    lock = tmp_path / "o.tif.lock"
    go = tmp_path / "go"
    # The second writer imports the stack first and starts the moment the first holds the lock.
    second = _cli_when(go, _predict_argv(tiny, tiny["large"], out, "--overwrite"))
    first = _cli(_predict_argv(tiny, tiny["large"], out))
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()
    assert lock.read_text().strip() == str(first.pid)
    go.touch()
    err = second.communicate(timeout=120)[1]
    assert second.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"process {first.pid} is writing it" in err and "Traceback" not in err
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert not lock.exists() and not list(tmp_path.glob("*partial*"))
    with rasterio.open(out) as pred:
        assert (pred.read(1) != 255).all()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tiny, tmp_path, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "o.tif"
    (tmp_path / "o.tif.lock").write_text(f"{dead.pid}\n")
    assert main(_predict_argv(tiny, tiny["scene"], out)) == 0
    assert f"stale lock of process {dead.pid}" in capsys.readouterr().err
    assert out.is_file() and not (tmp_path / "o.tif.lock").exists()


def test_resume_leaves_a_finished_output_alone(tiny, tmp_path, capsys):
    out = tmp_path / "o.tif"
    assert main(_predict_argv(tiny, tiny["scene"], out, "--probabilities")) == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main(_predict_argv(tiny, tiny["scene"], out, "--probabilities", "--resume", "--overlap", "4")) == 0
    assert "already complete; --resume leaves it alone (pass --overwrite to redo it)" in capsys.readouterr().out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()} == before


def _rgba(path: Path) -> tuple[Path, np.ndarray]:
    """A uint8 RGBA raster (band 4 alpha) whose left third is transparent, like rasterio's RGBA.byte.tif."""
    data = fake_rasters.raster_values(width=60, height=40, count=4, dtype="uint8", seed=5)
    alpha = np.full((40, 60), 255, dtype="uint8")
    alpha[:, :20] = 0
    data[3] = alpha
    with rasterio.open(path, "w", driver="GTiff", width=60, height=40, count=4, dtype="uint8", photometric="RGB",
                       alpha="YES", crs=fake_rasters.DEFAULT_CRS, transform=rasterio.transform.from_origin(500000, 5100000, 10, 10),
                       ) as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    return path, alpha == 0


def test_alpha_band_counts_as_nodata_in_predict_stats_and_training_samples(tmp_path):
    raster, hidden = _rgba(tmp_path / "rgba.tif")
    conv = torch.nn.Conv2d(3, 2, 1)
    summary = predict_raster(raster, tmp_path / "o.tif", conv, num_classes=2, tile=16, overlap=4, bands=[1, 2, 3],
                             progress=False)
    with rasterio.open(summary.outputs[0]) as pred:
        classes = pred.read(1)
    assert (classes[hidden] == 255).all() and (classes[~hidden] != 255).all()
    dataset = GeoRasterDataset(raster, bands=["B1", "B2", "B3"])
    assert dataset.masked_files == [raster]
    x, y, _ = dataset.bounds
    sample = dataset[x.start:x.stop:10.0, y.start:y.stop:10.0]
    assert torch.equal(sample["valid"], torch.from_numpy(~hidden))
    stats = compute_band_statistics(dataset, num_windows=8, window_size=16)
    assert stats.num_pixels <= 8 * 16 * 16 and stats.num_pixels > 0
    with rasterio.open(raster) as src:
        shown = src.read(1)[~hidden]
    assert stats.bands["B1"].p2 >= shown.min() and stats.bands["B1"].p98 <= shown.max()


def test_config_json_reaches_outside_the_allowed_folders_only_for_its_recorded_file(tiny, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(tiny["ckpt"], project / "ckpt")
    monkeypatch.chdir(project)
    config_path = project / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    recorded = config["lineage"]["source_weights"]
    source = str(tiny["root"] / "vit.safetensors")

    def point(path: str, sha256: str | None) -> None:
        config_path.write_text(json.dumps({**config, "lineage": {**config["lineage"], "source_weights": {
            **recorded, "path": path, "sha256": sha256}}}))

    point(source, recorded["sha256"])  # outside every allowed folder, but the very file it was trained from
    assert load_model(project / "ckpt").config.backbone.bands == BANDS
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, other)
    point(str(other), recorded["sha256"])
    with pytest.raises(GeoExploraError, match="other.safetensors: sha256 differs from") as error:
        load_model(project / "ckpt")
    assert file_sha256(other)[:12] not in str(error.value)  # nothing about a file it may not read
    for path in ("../../other.safetensors", source):
        point(path, None)
        with pytest.raises(GeoExploraError, match="lies outside the checkpoint folder.*no sha256") as error:
            load_model(project / "ckpt")
        assert "\n" not in str(error.value)
    point("vit.safetensors", None)
    assert load_model(project / "ckpt", weights_dir=tiny["root"]).config.backbone.bands == BANDS


def test_allow_no_crs_reaches_the_engine(tiny, tmp_path):
    raster = fake_rasters.write_raster(tmp_path / "nocrs.tif", width=40, height=40, count=4, descriptions=BANDS,
                                       georeferenced=False)
    assert main(_predict_argv(tiny, raster, tmp_path / "o.tif")) == 2
    assert main(_predict_argv(tiny, raster, tmp_path / "o.tif", "--allow-no-crs")) == 0
    with rasterio.open(tmp_path / "o.tif") as pred:
        assert pred.crs is None and pred.shape == (40, 40)


def test_finetune_resumes_its_own_last_checkpoint_and_overwrite_starts_afresh(tiny, tmp_path):
    import yaml

    mask = fake_rasters.write_label_raster(tmp_path / "mask.tif", width=90, height=70, num_classes=3)
    config = yaml.safe_load((REPO / "recipes" / "tiny-finetune-segmentation.yaml").read_text())
    config["model"]["backbone"].update(weights=str(tiny["root"] / "vit.safetensors"), depth=2)
    config["model"]["segmentation_head"] = "linear"  # the recipe's upernet needs 4 blocks; this ViT has 2
    config["data"].update(image=str(tiny["scene"]), mask=str(mask))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    argv = ["finetune", "--config", str(recipe), "--out", str(run), "--threads", "1", "--trainer.max_epochs", "5"]
    assert main([*argv, "--trainer.max_steps", "1"]) == 0
    assert main([*argv, "--trainer.max_steps", "2"]) == 2  # neither --resume nor --overwrite
    assert main([*argv, "--trainer.max_steps", "2", "--resume"]) == 0
    names = sorted(p.name for p in (run / "lightning").iterdir())
    assert "last.ckpt" in names and not [n for n in names if "-v1" in n], names
    assert torch.load(run / "lightning" / "last.ckpt", weights_only=True)["global_step"] == 2, names
    assert main([*argv, "--trainer.max_steps", "1", "--overwrite"]) == 0
    assert torch.load(run / "lightning" / "last.ckpt", weights_only=True)["global_step"] == 1


@pytest.mark.parametrize("command", ["pretrain", "stats"])
def test_run_folder_and_statistics_file_have_one_writer(tiny, tmp_path, capsys, command):
    # A running process holds the lock: the second writer gets one line naming it and leaves the lock alone.
    holder = subprocess.Popen(["sleep", "60"])
    try:
        out = tmp_path / ("run" if command == "pretrain" else "stats.json")
        (tmp_path / f"{out.name}.lock").write_text(f"{holder.pid}\n")
        argv = {"pretrain": ["pretrain", "--config", str(REPO / "recipes" / "tiny-pretrain-dinov2.yaml"),
                             "--data.paths", f"[{tiny['scene']}]", "--out", str(out)],
                "stats": ["stats", "--raster", str(tiny["scene"]), "--out", str(out)]}[command]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"process {holder.pid} is writing it" in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and (tmp_path / f"{out.name}.lock").read_text().strip() == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    assert main(argv[:-2] + ["--out", str(out), *(["--trainer.max_steps", "1"] if command == "pretrain" else [])]) == 0
    assert out.exists() and not (tmp_path / f"{out.name}.lock").exists()  # the stale lock was taken over, then freed
