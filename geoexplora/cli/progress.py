"""Training progress that reads ``step 120/200 loss 0.4312 ETA 0:00:41``, and the run's closing summary.

:class:`StepProgress` replaces Lightning's progress bar (which shows ``Epoch 1/-2`` on step-limited runs):
on a terminal one line redrawn in place, otherwise a plain line every ``every_steps`` optimiser steps or
``every_seconds`` seconds (whichever comes first, and always the last step), so a log file or a CI job
shows the run moving. It counts optimiser steps (``trainer.global_step``) against ``trainer.max_steps``,
or the estimated stepping batches of an epoch-limited run.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from geoexplora.cli.terminal import format_duration


def _loss(outputs: Any) -> float | None:
    """The training step's loss from what ``training_step`` returned (a tensor or a dict with ``loss``)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else None


class StepProgress(Callback):
    """``step N/TOTAL loss L ETA H:MM:SS`` lines, redrawn on a terminal, periodic in a file or pipe.

    Args:
        every_steps: without a terminal, print every this many optimiser steps.
        every_seconds: without a terminal, also print when this many seconds passed since the last line.
        stream: where to write (default ``sys.stderr``, with the other informational lines; stdout is for
            results); a terminal when its ``isatty()`` is true.
    """

    def __init__(self, every_steps: int = 50, every_seconds: float = 30.0, stream: TextIO | None = None) -> None:
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.stream = stream
        self.total = 0
        self.first_step = 0
        self.started = 0.0
        self.last_print = 0.0
        self.last_loss: float | None = None
        self.printed_step = -1

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stderr

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.total = trainer.max_steps if trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)
        self.first_step = self.printed_step = trainer.global_step  # a resumed run starts past 0
        self.started = self.last_print = time.monotonic()

    def line(self, step: int) -> str:
        """The progress text at optimiser ``step`` (1-based count of steps done)."""
        elapsed = time.monotonic() - self.started
        done = step - self.first_step
        parts = [f"step {step}/{self.total}"]
        if self.last_loss is not None:
            parts.append(f"loss {self.last_loss:.4f}")
        if done > 0:
            rate = done / max(elapsed, 1e-9)
            parts.append(f"{rate:.2f} steps/s" if rate >= 1 else f"{1 / rate:.1f} s/step")
            parts.append(f"ETA {format_duration(max(self.total - step, 0) / rate)}")
        return "  ".join(parts)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        loss = _loss(outputs)
        if loss is not None and math.isfinite(loss):
            self.last_loss = loss
        step = trainer.global_step
        now = time.monotonic()
        if self.out.isatty():
            self.out.write(f"\r\033[K{self.line(step)}")
            self.out.flush()
        elif step != self.printed_step and (step == self.total or step % self.every_steps == 0
                                            or now - self.last_print >= self.every_seconds):
            print(self.line(step), file=self.out, flush=True)
            self.last_print, self.printed_step = now, step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.out.isatty():
            self.out.write("\n")
            self.out.flush()
