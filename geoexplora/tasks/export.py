"""Write geoexplora checkpoints (``model.safetensors`` + ``config.json``) from a Lightning run.

Lightning's own ``.ckpt`` files hold optimiser state for ``--resume`` and are only ever read back by the
run that wrote them. What users keep, share and load into ``finetune``/``predict``/``info`` is the
typed geoexplora checkpoint written here (format 2, see :mod:`geoexplora.models.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import lightning as L
from torch import nn

from geoexplora.models import CheckpointConfig, save_checkpoint


class ExportableTask(Protocol):
    """What a task module offers :class:`ExportCheckpoint`."""

    def export_model(self) -> nn.Module:
        """The module whose trainable parameters make up the checkpoint (backbone, or backbone + head)."""

    def export_config(self) -> CheckpointConfig:
        """The checkpoint's typed sections, as :func:`save_checkpoint` takes them."""


class ExportCheckpoint(L.Callback):
    """Export the task's trained tensors to ``dirpath`` every ``every_n_steps`` steps and when fit ends.

    Each export replaces the previous one atomically (temporary names, then rename), so ``dirpath`` always
    holds a complete checkpoint. Only the global-rank-0 process writes.

    Args:
        dirpath: output directory of the geoexplora checkpoint.
        every_n_steps: export period in optimiser steps; 0 exports only at the end.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps

    def export(self, trainer: L.Trainer, task: ExportableTask) -> None:
        if trainer.is_global_zero:
            save_checkpoint(self.dirpath, task.export_model(), task.export_config())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.export(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module)
