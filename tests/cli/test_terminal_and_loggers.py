"""What a run prints and where it logs: the recipe's logger, step progress, silenced Lightning, summaries."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from geoexplora.cli import build_parser, main
from geoexplora.cli.progress import StepProgress
from geoexplora.cli.terminal import progress_off

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
NOISE = ("GPU available", "TPU available", "Tip:", "LeafSpec", "Epoch ", "LOCAL_RANK", "litmodels")


def test_pretrain_logs_to_tensorboard_where_the_recipe_says_and_ends_with_a_summary(
    multiband_geotiff: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEOEXPLORA_CACHE", str(tmp_path / "cache"))
    # The training rasters as a STAC item (one asset, bands named by the file's descriptions).
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "tiny", "geometry": None, "links": [],
            "properties": {"datetime": "2024-05-01T00:00:00Z"},
            "assets": {"image": {"href": str(multiband_geotiff), "type": "image/tiff", "roles": ["data"]}}}
    (tmp_path / "item.json").write_text(json.dumps(item))
    logger = {"trainer": {"logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                     "init_args": {"save_dir": str(tmp_path / "tb"), "name": "explora"}}}}
    (tmp_path / "logger.yaml").write_text(yaml.safe_dump(logger))
    out = tmp_path / "run"
    argv = ["pretrain", "--config", str(RECIPES / "tiny-pretrain-dinov2.yaml"), "--config", str(tmp_path / "logger.yaml"),
            "--data.paths", f"[{tmp_path / 'item.json'}]", "--trainer.max_steps", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capfd.readouterr()
    events = list((tmp_path / "tb" / "explora" / "version_0").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file where the recipe says"
    scalars = EventAccumulator(str(events[0].parent)).Reload()
    assert [e.step for e in scalars.Scalars("loss")] == [0, 1]
    assert not (out / "logs").exists()  # the recipe's logger replaces the CSV default
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert "step 2/2  loss " in printed.err  # not a terminal: plain lines, on stderr with the other information
    assert "geoexplora pretrain: 2 steps in " in printed.err and "peak memory" in printed.err
    assert f"checkpoint  {out / 'checkpoint'}" in printed.err
    assert f"logs        {events[0].parent} (TensorBoardLogger)" in printed.err
    assert printed.out == ""  # stdout is for results; a run has none
    assert not [n for n in NOISE if n in printed.out + printed.err], printed.out + printed.err


def _trainer(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=12, is_global_zero=True, estimated_stepping_batches=12)


def test_step_progress_prints_every_n_steps_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    progress = StepProgress(every_steps=5, every_seconds=1e9, stream=stream)
    progress.on_train_start(_trainer(0), None)
    for step in range(1, 13):
        progress.on_train_batch_end(_trainer(step), None, {"loss": torch.tensor(1.0 / step)}, None, step)
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["step 5/12", "step 10/12", "step 12/12"]
    assert lines[-1].startswith("step 12/12  loss 0.0833  ") and "ETA 0:00:00" in lines[-1]


def test_quiet_and_no_progress_on_every_command(multiband_geotiff: Path, capfd: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["stats", "--raster", str(multiband_geotiff), "--windows", "4"]) == 0
    loud = capfd.readouterr()
    assert "geoexplora stats: done in " in loud.err and "peak memory" in loud.err
    assert "done in" not in loud.out  # stdout holds only the results
    assert main(["stats", "--raster", str(multiband_geotiff), "--windows", "4", "--quiet"]) == 0
    assert "done in" not in capfd.readouterr().err
    subcommands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse keeps them there)
    for name, sub in subcommands.items():
        if name in ("pretrain", "finetune"):
            continue
        options = {o for action in sub._actions for o in action.option_strings}  # noqa: SLF001
        assert {"--quiet", "--no-progress"} <= options, name


@pytest.mark.parametrize(("flag", "env"), [(True, None), (False, "1")])
def test_no_progress_and_tqdm_disable_turn_every_bar_off(flag: bool, env: str | None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm.auto import tqdm

    if env is not None:
        monkeypatch.setenv("TQDM_DISABLE", env)
    with progress_off(flag):
        assert tqdm(total=3, disable=False).disable  # as predict and embed create their bars
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with progress_off(False):
        assert not tqdm(total=3, disable=False, file=io.StringIO()).disable


def test_pretrain_quiet_prints_nothing_but_warnings(multiband_geotiff: Path, tmp_path: Path,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    argv = ["pretrain", "--config", str(RECIPES / "tiny-pretrain-dinov2.yaml"), "--data.paths", f"[{multiband_geotiff}]",
            "--trainer.max_steps", "1", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 0
    printed = capfd.readouterr()
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
    assert printed.out == ""
    for text in ("step 1/1", "geoexplora pretrain:", "pretrain data:", "checkpoint  ", *NOISE):
        assert text not in printed.err, text
