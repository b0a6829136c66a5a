"""`geoexplora pretrain`: every recipe end to end on tiny data, export, resume and bad input."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fake_rasters
from geoexplora.cli.pretrain import main
from geoexplora.data import BandStat, BandStatistics
from geoexplora.errors import GeoExploraError
from geoexplora.models import BackboneConfig, load_model
from geoexplora.models.ssl import DINOv2Options, MAEOptions
from geoexplora.tasks.learning_monitor import LearningMonitor
from geoexplora.tasks.pretrain import PretrainTask

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY_RECIPES = sorted(RECIPES.glob("tiny-pretrain-*.yaml"))
REAL_RECIPES = sorted(RECIPES.glob("explora-*.yaml"))

TINY_BACKBONE = dict(img_size=32, embed_dim=64, depth=4, num_heads=4, patch_size=8)
TINY_DINOV2 = dict(num_prototypes=8, head_hidden_dim=64, head_bottleneck_dim=32, global_crop_size=32, local_crop_size=16,
                   num_local_crops=2)
TINY_MAE = dict(crop_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=4)
TINY_MODEL = {**{f"backbone.{k}": v for k, v in TINY_BACKBONE.items()}, **{f"dinov2.{k}": v for k, v in TINY_DINOV2.items()},
              **{f"mae.{k}": v for k, v in TINY_MAE.items()}, "strategy_options.lora_rank": 4}
# Makes any recipe tiny: random 4-block ViT, 32-pixel windows, fp32 on one CPU, 2 steps.
TINY_OVERRIDES = [
    *[arg for key, value in TINY_MODEL.items() for arg in (f"--model.{key}", str(value))],
    "--model.backbone.weights", "null", "--model.mae.preview_every_n_steps", "1",
    "--trainer.max_steps", "2", "--trainer.precision", "32-true", "--trainer.accelerator", "cpu",
    "--trainer.devices", "1", "--trainer.enable_model_summary", "false", "--trainer.enable_progress_bar", "false",
    "--data.window_size", "32", "--data.batch_size", "2", "--data.num_workers", "0",
    "--data.statistics_windows", "4", "--data.windows_per_epoch", "8", "--checkpoint_every_n_steps", "0",
]


def run(recipe: Path, out: Path, *extra: str) -> int:
    return main(["--config", str(recipe), "--out", str(out), *extra])


def trained_names(run_dir: Path) -> set[str]:
    return set(load_file(run_dir / "checkpoint" / "model.safetensors"))


def check_checkpoint(run_dir: Path, objective: str) -> None:
    """The export loads strictly; over a random base (``weights: null``) it holds every tensor, else exactly
    the backbone's trainable tensors, a minority of them."""
    loaded = load_model(run_dir / "checkpoint")
    model, config = loaded.model, loaded.config
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    stored = set(model.state_dict()) if config.backbone.weights is None else trainable
    assert config.lineage.stored == ("full" if config.backbone.weights is None else "trained")
    assert trained_names(run_dir) == stored
    assert any(".lora_" in n for n in trainable) and any(n.startswith("blocks.3.") for n in trainable)
    assert len(trainable) < len(list(model.parameters()))
    assert config.task.objective == objective and config.task.kind == "pretrain"
    assert set(config.preprocessing.statistics.bands) == set(config.backbone.bands)


@pytest.fixture(scope="module")
def tiny_dinov2_run(multiband_geotiff: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-dinov2")
    recipe = RECIPES / "tiny-pretrain-dinov2.yaml"
    assert run(recipe, out, "--data.paths", f"[{multiband_geotiff}]", "--trainer.max_steps", "2") == 0
    return out


def test_tiny_dinov2_recipe_exports_only_trained_tensors(tiny_dinov2_run: Path):
    check_checkpoint(tiny_dinov2_run, "dinov2")
    metrics = (tiny_dinov2_run / "logs" / "version_0" / "metrics.csv").read_text()
    assert all(k in metrics for k in ("loss", "lr", "teacher_temp", "momentum"))


def test_resume_continues_from_last_step(tiny_dinov2_run: Path, multiband_geotiff: Path):
    last = tiny_dinov2_run / "lightning" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 2
    recipe = RECIPES / "tiny-pretrain-dinov2.yaml"
    assert run(recipe, tiny_dinov2_run, "--data.paths", f"[{multiband_geotiff}]", "--trainer.max_steps", "3",
               "--resume") == 0
    second = torch.load(last, weights_only=True)
    assert second["global_step"] == 3
    adam_steps = [s["step"] for s in second["optimizer_states"][0]["state"].values()]
    assert all(float(s) == 3 for s in adam_steps)  # the optimiser state carried over, not restarted
    assert any(k.startswith("objective.teacher.") for k in second["state_dict"])
    assert "objective.dino_loss.center" in second["state_dict"]


def test_tiny_mae_recipe_writes_previews(multiband_geotiff: Path, tmp_path: Path):
    recipe = RECIPES / "tiny-pretrain-mae.yaml"
    assert run(recipe, tmp_path, "--data.paths", f"[{multiband_geotiff}]", "--trainer.max_steps", "2") == 0
    check_checkpoint(tmp_path, "mae")
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["step-000000.png", "step-000001.png"]


@pytest.mark.parametrize("recipe", REAL_RECIPES, ids=lambda p: p.stem)
def test_real_recipe_runs_when_made_tiny(recipe: Path, tmp_path: Path, shared_data: Path, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)  # recipe paths are relative to the repository
    assert run(recipe, tmp_path, *TINY_OVERRIDES) == 0
    check_checkpoint(tmp_path, "mae" if "mae" in recipe.stem else "dinov2")


def test_every_pretrain_recipe_is_tested():
    # demo-*.yaml are templates the demo fills in; tests/cli/test_stats_and_demo.py runs them.
    names = {p.name for p in RECIPES.glob("*.yaml")
             if ("pretrain" in p.name or p.name.startswith("explora-")) and not p.name.startswith("demo-")}
    assert names == {p.name for p in TINY_RECIPES + REAL_RECIPES} and len(TINY_RECIPES) == 2


def test_unknown_recipe_key_is_named(tmp_path: Path, capsys):
    status = run(RECIPES / "tiny-pretrain-dinov2.yaml", tmp_path, "--model.no_such_option", "3")
    assert status != 0
    assert "no_such_option" in capsys.readouterr().err


def test_raster_smaller_than_window_is_one_line_error(tmp_path: Path):
    small = fake_rasters.write_raster(tmp_path / "small.tif", width=16, height=16)
    with pytest.raises(GeoExploraError) as err:
        run(RECIPES / "tiny-pretrain-dinov2.yaml", tmp_path / "run", "--data.paths", f"[{small}]")
    message = str(err.value)
    assert "small.tif" in message and "16x16" in message and "32x32" in message and "\n" not in message


def tiny_task(model: str = "vit_small_patch14_dinov2", **kwargs) -> PretrainTask:
    task = PretrainTask(BackboneConfig(model, **TINY_BACKBONE), strategy_options={"lora_rank": 4},
                        dinov2=DINOv2Options(**TINY_DINOV2), mae=MAEOptions(**TINY_MAE), **kwargs)
    stats = BandStatistics({b: BandStat(100.0, 10.0, 80.0, 120.0) for b in ("b1", "b2", "b3")})
    task.build(("b1", "b2", "b3"), stats)
    return task


def test_nodata_windows_are_skipped_and_nan_never_reaches_the_loss():
    task = tiny_task()
    image = 100 + 10 * torch.randn(3, 3, 32, 32)
    valid = torch.ones(3, 32, 32, dtype=torch.bool)
    image[0, :, :5, :5] = float("nan")  # NaN pixels in a usable window
    valid[0, :5, :5] = False
    valid[1] = False  # a window without any valid pixel
    normalised, kept_valid, _ = task._inputs({"image": image, "valid": valid})
    assert task.skipped_windows == 1 and normalised.shape[0] == kept_valid.shape[0] == 2
    assert torch.isfinite(normalised).all()
    global_crops, local_crops = task.augment(normalised)
    assert torch.isfinite(task.objective(global_crops, local_crops, 0, 10)["loss"])


def test_mismatched_source_objective_warns_but_builds(caplog):
    with caplog.at_level(logging.WARNING, logger="geoexplora.tasks.pretrain"):
        task = tiny_task(objective="mae")
    assert "trained with dinov2" in caplog.text
    assert task.export_model() is task.objective.backbone


def test_learning_monitors_are_plotted_and_logged(tiny_dinov2_run: Path):
    assert (tiny_dinov2_run / "monitors.png").stat().st_size > 10_000
    header = (tiny_dinov2_run / "monitors.csv").read_text().splitlines()[0].split(",")
    for key in ("loss", "dino_loss", "teacher_entropy_share", "student_teacher_kl", "logit_spread", "rankme",
                "koleo_loss", "prototypes_used"):
        assert key in header, key
    metrics = (tiny_dinov2_run / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "teacher_entropy_share" in metrics and "rankme" in metrics


def test_collapse_warning_fires_when_the_teacher_is_forced_uniform(multiband_geotiff: Path, tmp_path: Path, caplog):
    # A teacher temperature of 10 makes every target uniform (entropy = ln K) from the first step.
    with caplog.at_level(logging.WARNING, logger="geoexplora.tasks.learning_monitor"):
        assert run(RECIPES / "tiny-pretrain-dinov2.yaml", tmp_path, "--data.paths", f"[{multiband_geotiff}]",
                   "--trainer.max_steps", "4", "--model.dinov2.teacher_temp", "[10.0, 10.0]",
                   "--model.collapse_patience", "3") == 0
    assert "teacher collapsed to uniform" in caplog.text


def test_collapse_warning_needs_patience_steps_in_a_row(caplog):
    monitor = LearningMonitor(patience=3)
    with caplog.at_level(logging.WARNING, logger="geoexplora.tasks.learning_monitor"):
        for step, share in enumerate([0.99, 0.99, 0.5, 0.99, 0.5]):  # never 3 uniform steps in a row
            monitor._check_collapse(step, share)
        assert "collapsed" not in caplog.text
        for step in range(5, 10):
            monitor._check_collapse(step, 0.995)
    assert caplog.text.count("teacher collapsed to uniform") == 1  # once, at the third uniform step
    assert "at step 7" in caplog.text


def test_teacher_is_exported_not_the_student(tiny_dinov2_run: Path):
    last = torch.load(tiny_dinov2_run / "lightning" / "last.ckpt", weights_only=True)["state_dict"]
    exported = load_file(tiny_dinov2_run / "checkpoint" / "model.safetensors")
    name = next(n for n in exported if ".lora_B." in n)
    teacher = last["objective.teacher." + f"backbone.{name}".replace(".", "__")]
    student = last[f"objective.student.backbone.{name}"]
    assert not torch.equal(teacher, student)  # after a few steps the EMA lags the student
    assert torch.equal(exported[name], teacher)


@pytest.mark.parametrize("old, new", [("--model.num_prototypes", "--model.dinov2.num_prototypes"),
                                      ("--model.weights", "--model.backbone.weights"),
                                      ("--data.samples_per_epoch", "--data.windows_per_epoch")])
def test_old_recipe_keys_name_the_new_key(old: str, new: str, tmp_path: Path):
    with pytest.raises(GeoExploraError, match=f"{old} is now {new}"):
        run(RECIPES / "tiny-pretrain-dinov2.yaml", tmp_path, old, "8")
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model:\n  lora_rank: 8\n")
    with pytest.raises(GeoExploraError, match="model.lora_rank is now model.strategy_options.lora_rank"):
        main(["--config", str(recipe)])


def test_unknown_strategy_option_is_an_error(tmp_path: Path):
    with pytest.raises(GeoExploraError, match="no options"):
        run(RECIPES / "tiny-pretrain-dinov2.yaml", tmp_path, "--model.strategy", "full",
            "--model.strategy_options", "{lora_rank: 4}")


def test_prototypes_stay_frozen_for_the_first_steps(multiband_geotiff: Path, tmp_path: Path):
    assert run(RECIPES / "tiny-pretrain-dinov2.yaml", tmp_path, "--data.paths", f"[{multiband_geotiff}]",
               "--trainer.max_steps", "2", "--model.dinov2.freeze_prototypes_steps", "2") == 0
    state = torch.load(tmp_path / "lightning" / "last.ckpt", weights_only=True)["state_dict"]
    prototypes = state["objective.student.dino_head.prototypes"]
    ema = state["objective.teacher.dino_head__prototypes"]
    mlp = state["objective.student.dino_head.mlp.0.weight"], state["objective.teacher.dino_head__mlp__0__weight"]
    # never stepped: the EMA of an unchanged tensor is that tensor (up to float rounding)
    assert torch.allclose(prototypes, ema, atol=1e-6)
    assert not torch.allclose(*mlp, atol=1e-6)  # the rest of the head trained


def test_knn_probe_is_logged_and_plotted(multiband_geotiff: Path, tmp_path: Path):
    labels = fake_rasters.write_label_raster(tmp_path / "labels.tif", num_classes=2)  # same grid as the image
    assert run(RECIPES / "tiny-pretrain-dinov2.yaml", tmp_path / "run", "--data.paths", f"[{multiband_geotiff}]",
               "--trainer.max_steps", "3", "--model.probe.image", str(multiband_geotiff),
               "--model.probe.labels", str(labels), "--model.probe.window_size", "8",
               "--model.probe.every_n_steps", "2", "--model.probe.min_valid", "0.5") == 0
    rows = (tmp_path / "run" / "monitors.csv").read_text().splitlines()
    column = rows[0].split(",").index("probe_knn_accuracy")
    values = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)  # after steps 1, 2 and the last (3)


def test_knn_probe_needs_two_classes_in_both_halves(multiband_geotiff: Path, tmp_path: Path):
    labels = fake_rasters.write_label_raster(tmp_path / "one.tif", num_classes=1)
    with pytest.raises(GeoExploraError, match="at least 2 classes"):
        run(RECIPES / "tiny-pretrain-dinov2.yaml", tmp_path / "run", "--data.paths", f"[{multiband_geotiff}]",
            "--model.probe.image", str(multiband_geotiff), "--model.probe.labels", str(labels),
            "--model.probe.window_size", "8", "--model.probe.min_valid", "0.5")


def test_ddp_on_two_cpu_processes_writes_one_checkpoint(multiband_geotiff: Path, tmp_path: Path):
    # Two gloo processes: the data-initialised heads are broadcast from rank 0, the centre is all-reduced,
    # and only rank 0 exports.
    out = tmp_path / "run"
    command = [sys.executable, "-m", "geoexplora", "pretrain", "--config", str(RECIPES / "tiny-pretrain-dinov2.yaml"),
               "--out", str(out), "--data.paths", f"[{multiband_geotiff}]", "--trainer.devices", "2",
               "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.max_steps", "2",
               "--trainer.enable_progress_bar", "false"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("heads fitted to") == 2  # once per process
    check_checkpoint(out, "dinov2")
    assert torch.load(out / "lightning" / "last.ckpt", weights_only=True)["global_step"] == 2
