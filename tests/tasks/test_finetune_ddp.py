"""`geoexplora finetune` under DDP on two gloo CPU processes: it trains, only rank 0 writes, `--resume` continues.

The first run is the issue's command (``trainer.devices=2, accelerator=cpu, strategy=ddp``: Lightning starts
the second process itself). The resume runs under ``torchrun --standalone --nproc-per-node 2``, the launch
the README gives for several nodes (both processes start at once: half the import time on two cores).

Run as a script, this file is ``geoexplora`` with its two writers -- the geoexplora export and Lightning's
``.ckpt`` writer -- recording ``rank kind path`` lines to ``$GEOEXPLORA_TEST_WRITES``; Lightning and torchrun
start every process with the same script, so every rank records.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WRITES_ENV = "GEOEXPLORA_TEST_WRITES"
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-finetune-segmentation.yaml"
BANDS = ("red", "green", "blue", "nir")


def record_writes(log: Path) -> None:
    """Wrap the two checkpoint writers so each call appends ``rank kind path`` to ``log``, then writes."""
    import torch.distributed as dist
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    import geoexplora.tasks.export as export

    def note(kind: str, path: object) -> None:
        rank = dist.get_rank() if dist.is_initialized() else -1
        with log.open("a") as f:
            f.write(f"{rank} {kind} {path}\n")

    save_checkpoint, save_ckpt = export.save_checkpoint, TorchCheckpointIO.save_checkpoint

    def exporting(directory: Path, *args: object, **kwargs: object) -> object:
        note("export", directory)
        return save_checkpoint(directory, *args, **kwargs)

    def saving(self: TorchCheckpointIO, checkpoint: dict, path: object, *args: object, **kwargs: object) -> None:
        note("ckpt", path)
        save_ckpt(self, checkpoint, path, *args, **kwargs)

    export.save_checkpoint = exporting
    TorchCheckpointIO.save_checkpoint = saving


if __name__ == "__main__":
    record_writes(Path(os.environ[WRITES_ENV]))
    from geoexplora.cli import main

    sys.exit(main())


import pytest  # noqa: E402
import torch  # noqa: E402

from geoexplora.models import load_model  # noqa: E402


def finetune_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """A 2-process CPU fine-tune of the tiny recipe: 16 windows per epoch, 4 per step and process."""
    return [__file__, "finetune", "--config", str(RECIPE), "--data.image", str(data / "image.tif"), "--data.mask",
            str(data / "mask.tif"), "--out", str(out), "--data.windows_per_epoch", "16", "--trainer.max_epochs", "-1",
            "--trainer.max_steps", str(steps), "--trainer.devices", "2", "--trainer.accelerator", "cpu",
            "--trainer.strategy", "ddp", *extra]


def launch(command: list[str], writes: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, WRITES_ENV: str(writes), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def written(writes: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split(" ", 2)) for line in writes.read_text().splitlines()]


def optimiser_steps(last: Path) -> set[float]:
    state = torch.load(last, weights_only=True)
    return {float(s["step"]) for s in state["optimizer_states"][0]["state"].values()}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """Data folder, run folder and the finished 2-step, 2-process run (Lightning's own DDP launcher)."""
    import fake_rasters

    data = tmp_path_factory.mktemp("ddp-data")
    fake_rasters.write_raster(data / "image.tif", width=96, height=96, count=4, descriptions=BANDS)
    fake_rasters.write_label_raster(data / "mask.tif", width=96, height=96, num_classes=3)
    out = data / "run"
    done = launch([sys.executable, *finetune_args(data, out, 2)], data / "writes-1.txt")
    return data, out, done


def test_two_processes_train_and_only_rank_0_writes(ddp_run):
    data, out, done = ddp_run
    assert torch.load(out / "lightning" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert optimiser_steps(out / "lightning" / "last.ckpt") == {2.0}
    assert load_model(out / "checkpoint").config.task.kind == "segmentation"
    writes = written(data / "writes-1.txt")
    assert {kind for _, kind, _ in writes} == {"export", "ckpt"}
    assert {rank for rank, _, _ in writes} == {"0"}, writes  # rank 1 never writes a checkpoint or an export
    assert "last-v1.ckpt" not in {p.name for p in (out / "lightning").iterdir()}
    assert done.stderr.count("geoexplora finetune: 2 steps") == 1  # one summary, from rank 0


def test_resume_under_torchrun_continues_the_two_process_run(ddp_run):
    data, out, _ = ddp_run
    torchrun = Path(sys.executable).with_name("torchrun")
    launch([str(torchrun), "--standalone", "--nproc-per-node", "2", *finetune_args(data, out, 4, "--resume")],
           data / "writes-2.txt")
    last = out / "lightning" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    assert optimiser_steps(last) == {4.0}  # Adam's state carried over from step 2, not restarted
    assert "last-v1.ckpt" not in {p.name for p in (out / "lightning").iterdir()}  # the run's own last.ckpt
    writes = written(data / "writes-2.txt")
    assert writes and {rank for rank, _, _ in writes} == {"0"}
