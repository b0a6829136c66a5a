"""Exact ``--resume``: the data position and the random generators, saved in ``last.ckpt`` and put back.

Two things decide what a training step does besides the weights and the optimiser (which Lightning
restores): which windows it reads and which random numbers it draws.

* **Data position.** The train loader is a :class:`~geoexplora.data.resumable.ResumableDataLoader`
  over an epoch-seeded sampler; its position (epoch, batches served) is saved, and the resumed run
  skips the served batches of that epoch by their indices.
* **Random generators.** Multi-crop, colour jitter, MAE's masks and drop-path draw from the global torch
  generator on the model's device, which Lightning does not checkpoint. The CPU and CUDA torch
  generators, NumPy's and Python's are saved, and put back just before the first resumed batch (not at
  load time: setting up the run, e.g. a sanity validation, may draw numbers the uninterrupted run never
  drew at that point).

With both, a run killed and resumed on the CPU trains the same tensors as one that never stopped
(``tests/tasks/test_exact_resume.py``: a difference of exactly 0).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from geoexplora.data.resumable import ResumableDataLoader

__all__ = ["ExactResume"]


def _capture_generators() -> dict[str, Any]:
    """The states as tensors, numbers and tuples: what ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_generators(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume(Callback):
    """Save the train loader's position and the generators with each checkpoint; restore them on resume."""

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _train_loader(self) -> ResumableDataLoader | None:
        loader = None if self._trainer is None else self._trainer.train_dataloader
        return loader if isinstance(loader, ResumableDataLoader) else None

    def state_dict(self) -> dict[str, Any]:
        loader = self._train_loader()
        return {"generators": _capture_generators(), "data_position": None if loader is None else loader.position()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = self._train_loader()
        position = None if self._pending is None else self._pending.get("data_position")
        if loader is not None and position is not None:
            loader.resume_at(position)  # the loader's iterator has not drawn a batch yet

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            _restore_generators(self._pending["generators"])
            self._pending = None
