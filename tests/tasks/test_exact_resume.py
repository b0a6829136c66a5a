"""Exact training resume: a run killed (SIGKILL) mid-epoch and resumed ends with the tensors of a run that
never stopped, for pre-training and fine-tuning (issue 10, item 6).

Each run is a subprocess: the kill is a real ``kill -9`` of the training process, sent by the callback in
``tests/kill_at_step.py`` at the start of a chosen step, after the previous step's ``last.ckpt`` was
written (``--checkpoint_every_n_steps 1``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fake_rasters
from geoexplora.data.resumable import ResumableDataLoader, SeededShuffleSampler

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]
KILL = json.dumps([{"class_path": "kill_at_step.KillAtStep", "init_args": {"step": 3}}])  # before step 4


def geoexplora(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    return subprocess.run([sys.executable, "-m", "geoexplora", *args, "--checkpoint_every_n_steps", "1", "--quiet"],
                          capture_output=True, text=True, timeout=600, env=env)


def max_difference(a: Path, b: Path) -> float:
    """Largest absolute difference over every tensor of two runs' ``last.ckpt`` (model, teacher, centre)."""
    sa = torch.load(a / "lightning" / "last.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(b / "lightning" / "last.ckpt", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


def killed_and_resumed(args: list[str], out: Path, position: dict[str, int]) -> None:
    """Run ``args`` killed before step 3, check the saved data ``position``, and resume it to the end."""
    killed = geoexplora(*args, "--out", str(out), "--trainer.callbacks", KILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = torch.load(out / "lightning" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and saved["callbacks"]["ExactResume"]["data_position"] == position
    resumed = geoexplora(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_pretraining_killed_mid_epoch_resumes_exactly(multiband_geotiff: Path, tmp_path: Path):
    # 4 batches per epoch, killed before step 4 of 6: the resumed run finishes epoch 0 and runs epoch 1.
    args = ["pretrain", "--config", str(REPO / "recipes" / "tiny-pretrain-dinov2.yaml"),
            "--data.paths", f"[{multiband_geotiff}]", "--data.windows_per_epoch", "16", "--trainer.max_steps", "6"]
    whole = geoexplora(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed_and_resumed(args, tmp_path / "resumed", {"epoch": 0, "batches": 3})
    assert max_difference(tmp_path / "whole", tmp_path / "resumed") == 0.0


def test_finetuning_killed_mid_epoch_resumes_exactly(tmp_path: Path):
    # 2 batches per epoch and a validation pass after each, killed before step 4 of 6 (mid epoch 1).
    image = fake_rasters.write_raster(tmp_path / "image.tif", width=96, height=96, count=4,
                                      descriptions=("red", "green", "blue", "nir"))
    mask = fake_rasters.write_label_raster(tmp_path / "mask.tif", width=96, height=96, num_classes=3)
    args = ["finetune", "--config", str(REPO / "recipes" / "tiny-finetune-segmentation.yaml"), "--seed_everything", "0",
            "--data.image", str(image), "--data.mask", str(mask), "--trainer.max_epochs", "3"]
    whole = geoexplora(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed_and_resumed(args, tmp_path / "resumed", {"epoch": 1, "batches": 1})
    assert max_difference(tmp_path / "whole", tmp_path / "resumed") == 0.0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_skips_served_batches_by_index_and_only_in_their_epoch(num_workers: int):
    dataset = list(range(10))
    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(dataset, batch_size=3, sampler=SeededShuffleSampler(10, seed=7),
                                   num_workers=num_workers)

    uninterrupted = loader()
    uninterrupted.sampler.set_epoch(2)
    batches = [b.tolist() for b in uninterrupted]
    partial = loader()
    partial.sampler.set_epoch(2)
    served = iter(partial)
    next(served), next(served)
    state = partial.position()
    assert state == {"epoch": 2, "batches": 2}

    resumed = loader()
    resumed.resume_at(state)
    resumed.sampler.set_epoch(2)
    assert [b.tolist() for b in resumed] == batches[2:]
    assert resumed.position() == {"epoch": 2, "batches": len(batches)}
    assert [b.tolist() for b in resumed] == batches  # the next pass of the epoch is whole again

    finished = loader()
    finished.resume_at({"epoch": 1, "batches": 4})  # epoch 1 was complete; Lightning moves on to 2
    finished.sampler.set_epoch(2)
    assert [b.tolist() for b in finished] == batches


def test_epochs_draw_different_orders_from_one_seed():
    sampler = SeededShuffleSampler(50, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
