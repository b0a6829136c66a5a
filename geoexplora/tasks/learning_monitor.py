"""Learning monitors of a pre-training run: a per-step history, a collapse warning, curves as PNG and CSV.

:class:`LearningMonitor` reads the scalars the pre-training task puts in ``pl_module.step_monitors`` after
each training step (loss terms and, for DINOv2, the signals of
:func:`geoexplora.models.ssl.monitors.distillation_monitors`), keeps every ``every_n_steps``-th step, and at
the end of the run writes ``monitors.csv`` and ``monitors.png`` into the run folder. It warns once when
the teacher's targets stay uniform (entropy within ``collapse_margin`` of ln K) for ``patience`` steps in a
row: the state in which a DINO loss looks busy and learns nothing.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: Panels of the PNG: title and the history keys drawn in it (absent keys are skipped).
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss terms (nats)", ("loss", "dino_loss", "ibot_loss", "koleo_loss", "mae_loss")),
    ("teacher entropy / ln K", ("teacher_entropy_share",)),
    ("student-teacher KL (nats)", ("student_teacher_kl",)),
    ("head logit spread across crops", ("logit_spread",)),
    ("effective rank of cls embeddings (RankMe)", ("rankme",)),
    ("share of prototypes used", ("prototypes_used",)),
    ("k-NN probe accuracy", ("probe_knn_accuracy",)),
)


class LearningMonitor(L.Callback):
    """Record the task's per-step monitors, warn on a uniform teacher, plot the curves at the end.

    Args:
        every_n_steps: keep one step in N in the history (the collapse check looks at every step).
        collapse_margin: the teacher counts as uniform while its entropy is above (1 - margin) * ln K.
        patience: steps in a row of a uniform teacher before the warning.
        out: folder for ``monitors.csv`` / ``monitors.png`` (default: the trainer's ``default_root_dir``).
    """

    def __init__(self, every_n_steps: int = 1, collapse_margin: float = 0.02, patience: int = 50,
                 out: str | Path | None = None) -> None:
        if every_n_steps < 1 or patience < 1 or not 0 < collapse_margin < 1:
            raise ValueError(f"every_n_steps {every_n_steps} and patience {patience} must be >= 1, "
                             f"collapse_margin {collapse_margin} in (0, 1)")
        self.every_n_steps = every_n_steps
        self.collapse_margin = collapse_margin
        self.patience = patience
        self.out = Path(out) if out is not None else None
        self.history: list[dict[str, float]] = []
        self.uniform_steps = 0
        self.warned = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        values: dict[str, float] = dict(getattr(pl_module, "step_monitors", None) or {})
        if not values:
            return
        step = int(values.get("step", trainer.global_step))
        self._check_collapse(step, values.get("teacher_entropy_share"))
        if step % self.every_n_steps == 0 or "probe_knn_accuracy" in values:
            self.history.append(values)

    def _check_collapse(self, step: int, share: float | None) -> None:
        if share is None:
            return
        self.uniform_steps = self.uniform_steps + 1 if share > 1 - self.collapse_margin else 0
        if self.uniform_steps >= self.patience and not self.warned:
            self.warned = True
            logger.warning(
                "teacher collapsed to uniform: its entropy has stayed above %.0f%% of ln K for %d steps (now "
                "%.3f at step %d), so the DINO/iBOT targets carry no information. Use fewer prototypes "
                "(model.dinov2.num_prototypes) or a larger batch, keep model.dinov2.head_init: data, or check "
                "that the windows differ (nodata, one uniform scene)",
                100 * (1 - self.collapse_margin), self.uniform_steps, share, step,
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history or not trainer.is_global_zero:
            return
        out = self.out or Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_history_csv(self.history, out / "monitors.csv")
        plot_history(self.history, out / "monitors.png")
        logger.info("learning monitors: %s, %s", out / "monitors.csv", out / "monitors.png")


def write_history_csv(history: list[dict[str, float]], path: Path) -> Path:
    """One row per recorded step, one column per key seen in any step (blank where absent)."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)
    return path


def plot_history(history: list[dict[str, float]], path: Path) -> Path:
    """A grid of the :data:`PANELS` present in ``history``, against the optimisation step, as PNG."""
    panels = [(title, [k for k in keys if any(k in row for row in history)]) for title, keys in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(11, 3 * rows), dpi=100, layout="constrained")
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for key in keys:
            points = [(row.get("step", n), row[key]) for n, row in enumerate(history) if key in row]
            ax.plot(*zip(*points), label=key, marker="o" if len(points) < 20 else None, markersize=3)
        if keys == ["teacher_entropy_share"]:
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8, label="uniform (ln K)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if len(keys) > 1 or keys == ["teacher_entropy_share"]:
            ax.legend(fontsize=8)
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path
