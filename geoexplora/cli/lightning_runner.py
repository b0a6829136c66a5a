"""Run a Lightning task from a YAML recipe plus dotted overrides (``geoexplora pretrain|finetune``).

The config system is Lightning's ``LightningCLI`` (jsonargparse): the task's and data module's typed
``__init__`` arguments are the recipe keys, ``--config recipe.yaml`` loads a recipe, and dotted flags
override it (``--trainer.max_steps 100 --data.batch_size 8``). A key that does not exist is an error that
names it. Besides Lightning's own keys, every run has:

* ``--out DIR`` (default ``runs/<command>``): the run folder. The geoexplora checkpoint
  (``model.safetensors`` + ``config.json``) goes to ``DIR/checkpoint``, Lightning's resumable ``.ckpt``
  files to ``DIR/lightning``, logs to the recipe's ``trainer.logger`` (TensorBoard, MLflow, ...) or, when
  it names none, CSV logs to ``DIR/logs/version_N`` (``trainer.logger: false``: no logs).
* ``--checkpoint_every_n_steps N`` (default 0: only at the end): export period.
* ``--resume``: continue from ``DIR/lightning/last.ckpt``, exactly: the data order
  and the random generators are saved with it (:class:`~geoexplora.tasks.exact_resume.ExactResume`), so
  the resumed run trains what an uninterrupted one would have.
* ``--no-progress`` (or ``TQDM_DISABLE=1``): no progress lines; ``--quiet``: no progress and no summary.

Lightning's own progress bar is replaced by :class:`~geoexplora.cli.progress.StepProgress`
(``step 120/200 loss ... ETA ...``), its informational lines (accelerator, tips) and known deprecation
warnings are silenced, and the run ends with a summary: where the checkpoint and logs are, steps, final
loss, elapsed time and peak memory.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger

from geoexplora.cli.progress import StepProgress
from geoexplora.cli.terminal import format_duration, peak_memory, progress_disabled
from geoexplora.cli.recipe_keys import check_renamed_keys
from geoexplora.errors import GeoExploraError
from geoexplora.tasks.exact_resume import ExactResume
from geoexplora.tasks.export import ExportCheckpoint

# Lightning's messages that tell a geoexplora user nothing actionable, matched by their text.
KNOWN_WARNINGS = (
    r".*LeafSpec.* is deprecated",  # torch.utils._pytree, through Lightning
    r"LightningCLI's args parameter is intended",
    r"No seed found, seed set to",
    r"The '\w+_dataloader' does not have many workers",
    r".*deprecated in v4\.\d+\.\d+ and will be removed in v5",  # jsonargparse, called by LightningCLI
    r"You're resuming from a checkpoint that ended before the epoch ended",  # ExactResume restores the position
)
# Loggers whose INFO lines are the GPU/TPU/HPU availability, tips, "`Trainer.fit` stopped" and LOCAL_RANK.
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def silence_lightning() -> None:
    """Lightning's informational lines off (warnings stay), and the known noise warnings filtered."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


RUN_FLAGS_HELP = ("Also: --resume (continue exactly from OUT/lightning/last.ckpt), --overwrite (replace the run in "
                  "OUT), --quiet (no progress, no summary), --no-progress (no progress lines; TQDM_DISABLE=1 does "
                  "the same), --threads N.")


def _pop_flag(argv: list[str], flag: str) -> bool:
    """Remove ``flag`` from ``argv``; True when it was there."""
    present = flag in argv
    while flag in argv:
        argv.remove(flag)
    return present


class GeoExploraCLI(LightningCLI):
    """LightningCLI with the run folder, export period, logging and progress every geoexplora command shares."""

    def __init__(self, *args, command: str, show_progress: bool = True, **kwargs) -> None:
        self.command = command
        self.show_progress = show_progress
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--out", type=str, default=f"runs/{self.command}", help="run folder (checkpoint, logs)")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=0,
                            help="export the geoexplora checkpoint every N optimiser steps (0: at the end)")
        parser.link_arguments("out", "trainer.default_root_dir")

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        check = getattr(self.model, "check_data", None)  # model and data agree, checked before anything is written
        if check is not None and self.datamodule is not None:
            check(self.datamodule)
        out = Path(self._get(self.config, "out"))
        every = self._get(self.config, "checkpoint_every_n_steps")
        callbacks = [
            ExportCheckpoint(out / "checkpoint", every_n_steps=every),
            ModelCheckpoint(dirpath=out / "lightning", save_last=True, every_n_train_steps=every or None),
            ExactResume(),
        ]
        # Passed in, not appended afterwards, so Lightning sees our ModelCheckpoint and adds no default one.
        trainer = self._get(self.config_init, "trainer", default={})
        user = trainer.get("callbacks") or []
        # Lightning's bar reads "Epoch 1/-2" on step-limited runs: ours counts steps; the recipe's
        # enable_progress_bar: false still turns progress off.
        if self.show_progress and trainer.get("enable_progress_bar", True) is not False:
            callbacks.append(StepProgress())
        kwargs["enable_progress_bar"] = False
        kwargs["callbacks"] = [*(user if isinstance(user, list) else [user]), *callbacks]
        kwargs["logger"] = run_logger(trainer.get("logger"), out)
        return super().instantiate_trainer(**kwargs)


def run_logger(recipe_logger: Logger | list[Logger] | bool | None, out: Path) -> Logger | list[Logger] | bool:
    """The recipe's ``trainer.logger`` when it names one (or ``false``), else CSV logs in ``out/logs/version_N``.

    One numbered log folder per run: a resumed run keeps the first run's metrics.csv.
    """
    if recipe_logger is None or recipe_logger is True:
        return CSVLogger(out, name="logs")
    return recipe_logger


def summary_lines(command: str, trainer: L.Trainer, out: Path, seconds: float, progress: StepProgress | None
                  ) -> list[str]:
    """What the run wrote where and its key figures, for the terminal."""
    lines = [f"geoexplora {command}: {trainer.global_step} steps in {format_duration(seconds)}, "
             f"peak memory {peak_memory()}"]
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    # The last step's loss: seen by the progress callback, else as logged (pretrain "loss", finetune "train/loss").
    loss = progress.last_loss if progress is not None else None
    loss = loss if loss is not None else metrics.get("loss", metrics.get("train/loss"))
    figures = [f"final loss {loss:.4f}"] if loss is not None else []
    figures += [f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("val/")]
    if figures:
        lines.append("  " + ", ".join(figures))
    lines.append(f"  checkpoint  {out / 'checkpoint'}")
    lines.append(f"  resumable   {out / 'lightning' / 'last.ckpt'}")
    for logger in trainer.loggers:
        lines.append(f"  logs        {logger.log_dir or logger.save_dir} ({type(logger).__name__})")
    return lines


def run_lightning(
    command: str,
    task_class: type[L.LightningModule],
    datamodule_class: type[L.LightningDataModule],
    argv: Sequence[str],
) -> int:
    """Parse ``argv`` (recipe + overrides, plus ``--resume``), fit, and return the exit status."""
    started = time.monotonic()
    argv = list(argv)
    check_renamed_keys(command, argv)
    resume = _pop_flag(argv, "--resume")
    quiet = _pop_flag(argv, "--quiet")
    no_progress = _pop_flag(argv, "--no-progress") or quiet or progress_disabled()
    # We pass ``args`` because `geoexplora` parsed the command word itself, not to mix two command lines.
    silence_lightning()
    try:
        cli = GeoExploraCLI(
            task_class,
            datamodule_class,
            args=argv,
            run=False,
            command=command,
            show_progress=not no_progress,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": f"geoexplora {command}", "epilog": RUN_FLAGS_HELP},
        )
    except SystemExit as exit_:
        return int(exit_.code or 0)
    ckpt_path = None
    if resume:
        last = Path(cli.config["out"]) / "lightning" / "last.ckpt"
        if not last.is_file():
            raise GeoExploraError(f"{last}: nothing to resume (no last checkpoint in this run folder)")
        ckpt_path = str(last)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    if not quiet and cli.trainer.is_global_zero:  # one summary under DDP, from the process that wrote
        progress = next((c for c in cli.trainer.callbacks if isinstance(c, StepProgress)), None)
        out = Path(cli.config["out"])
        lines = summary_lines(command, cli.trainer, out, time.monotonic() - started, progress)
        print("\n".join(lines), file=sys.stderr)
    return 0
