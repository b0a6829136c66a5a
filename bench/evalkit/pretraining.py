"""ExPLoRA pre-training runs with the project's PretrainTask, their logged monitors, and the curves as PNG.

Each run is :class:`PretrainTask` + :class:`UnlabelledRasterDataModule` under a Lightning ``Trainer`` with
a CSV logger that records every value the task logs, every step (loss terms, and whatever monitors the
task adds), and the project's :class:`ExportCheckpoint` writing the adapter-only checkpoint the probe and
fine-tune rows start from.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from evalkit.datasets import ImageSpec  # noqa: E402
from geoexplora.cli.recipe_keys import RENAMED_KEYS  # noqa: E402
from geoexplora.models import BackboneConfig, parameter_report  # noqa: E402
from geoexplora.models.ssl import DINOv2Options, MAEOptions  # noqa: E402
from geoexplora.tasks.export import ExportCheckpoint  # noqa: E402
from geoexplora.tasks.pretrain import PretrainTask  # noqa: E402
from geoexplora.tasks.pretrain_data import UnlabelledRasterDataModule  # noqa: E402

NOT_CURVES = {"epoch", "step"}


@dataclass
class PretrainResult:
    """What a pre-training run left: its checkpoint, trainable parameters, per-step log and duration."""

    objective: str
    checkpoint: Path
    trainable: int
    metrics_csv: Path
    seconds: float
    steps: int
    images_per_step: int


def task_arguments(flat: dict[str, Any]) -> dict[str, Any]:
    """``PretrainTask`` keyword arguments from the bench's flat option dicts: each option goes where the
    recipe schema keeps it (``backbone``, ``strategy_options``, ``dinov2``, ``mae``; see
    :data:`geoexplora.cli.recipe_keys.RENAMED_KEYS`), the rest stays top-level."""
    places = {old.removeprefix("model."): new.removeprefix("model.").split(".")
              for old, new in RENAMED_KEYS["pretrain"].items() if old.startswith("model.")}
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key in places:
            section, name = places[key]
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    return {**nested, "backbone": BackboneConfig(**nested.get("backbone", {})),
            "dinov2": DINOv2Options(**nested.get("dinov2", {})), "mae": MAEOptions(**nested.get("mae", {}))}


def pretrain(domain: ImageSpec, paths: list[Path], task_options: dict[str, Any], trainer_options: dict[str, Any],
             steps: int, out: Path) -> PretrainResult:
    """Pre-train on ``paths`` for ``steps`` steps with ``PretrainTask(**task_options)``; outputs under ``out``."""
    L.seed_everything(0, verbose=False)
    temporal = domain.dates is not None
    data = UnlabelledRasterDataModule(
        paths=[str(p) for p in paths], band_names=list(domain.band_names), window_size=domain.window,
        windows_per_epoch=steps * domain.batch_size, batch_size=domain.batch_size, seed=0, temporal=temporal,
        dates=list(domain.dates) if temporal else None,
    )
    task = PretrainTask(**task_arguments(task_options))
    logger = CSVLogger(out, name="logs")
    trainer = L.Trainer(
        max_steps=steps, devices=1, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
        callbacks=[ExportCheckpoint(out / "checkpoint")], **trainer_options,
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    seconds = time.perf_counter() - start
    dates = len(domain.dates) if temporal else 1
    return PretrainResult(task_options["objective"], out / "checkpoint", parameter_report(task.export_model()).trainable_params,
                          Path(logger.log_dir) / "metrics.csv", seconds, int(trainer.global_step),
                          domain.batch_size * dates)


def read_curves(metrics_csv: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every logged value of a run as (steps, values), keyed by its name (``epoch``/``step`` left out)."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            step = int(float(row["step"]))
            for name, value in row.items():
                if name in NOT_CURVES or value in ("", None):
                    continue
                steps, values = curves.setdefault(name, ([], []))
                steps.append(step)
                values.append(float(value))
    return curves


def first_last(curves: dict[str, tuple[list[int], list[float]]], name: str, n: int = 10) -> tuple[float, float]:
    """Means of the first and the last ``n`` logged values of ``name`` (nan when it was not logged)."""
    values = curves.get(name, ([], []))[1]
    if not values:
        return float("nan"), float("nan")
    return sum(values[:n]) / len(values[:n]), sum(values[-n:]) / len(values[-n:])


def plot_curves(runs: dict[str, PretrainResult], title: str, png: Path) -> Path:
    """One panel per logged value and objective, one line per run: the learning monitors of a domain's runs."""
    per_run = {name: {f"{k} ({r.objective})": v for k, v in read_curves(r.metrics_csv).items()}
               for name, r in runs.items()}
    names = sorted({k for curves in per_run.values() for k in curves})
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    colours = {run: f"C{i}" for i, run in enumerate(per_run)}
    for ax, name in zip(axes.flat, names):
        for run, curves in per_run.items():
            if name in curves:
                ax.plot(*curves[name], color=colours[run], linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=c, label=run) for run, c in colours.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncols=len(handles))
    fig.suptitle(title, fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
