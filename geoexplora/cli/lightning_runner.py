"""Run a Lightning task from a YAML recipe plus dotted overrides (``geoexplora pretrain|finetune``).

The config system is Lightning's ``LightningCLI`` (jsonargparse): the task's and data module's typed
``__init__`` arguments are the recipe keys, ``--config recipe.yaml`` loads a recipe, and dotted flags
override it (``--trainer.max_steps 100 --data.batch_size 8``). A key that does not exist is an error that
names it. Besides Lightning's own keys, every run has:

* ``--out DIR`` (default ``runs/<command>``): the run folder. The geoexplora checkpoint
  (``model.safetensors`` + ``config.json``) goes to ``DIR/checkpoint``, Lightning's resumable ``.ckpt``
  files to ``DIR/lightning``, CSV logs to ``DIR/logs/version_N``.
* ``--checkpoint_every_n_steps N`` (default 0: only at the end): export period.
* ``--resume``: continue from ``DIR/lightning/last.ckpt``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from geoexplora.cli.recipe_keys import check_renamed_keys
from geoexplora.errors import GeoExploraError
from geoexplora.tasks.export import ExportCheckpoint


class GeoExploraCLI(LightningCLI):
    """LightningCLI with the run folder, export period and CSV logging every geoexplora command shares."""

    def __init__(self, *args, command: str, **kwargs) -> None:
        self.command = command
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--out", type=str, default=f"runs/{self.command}", help="run folder (checkpoint, logs)")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=0,
                            help="export the geoexplora checkpoint every N optimiser steps (0: at the end)")
        parser.link_arguments("out", "trainer.default_root_dir")

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        out = Path(self._get(self.config, "out"))
        every = self._get(self.config, "checkpoint_every_n_steps")
        callbacks = [
            ExportCheckpoint(out / "checkpoint", every_n_steps=every),
            ModelCheckpoint(dirpath=out / "lightning", save_last=True, every_n_train_steps=every or None),
        ]
        # Passed in, not appended afterwards, so Lightning sees our ModelCheckpoint and adds no default one.
        user = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        kwargs["callbacks"] = [*(user if isinstance(user, list) else [user]), *callbacks]
        # One numbered log folder per run (logs/version_N): a resumed run keeps the first run's metrics.csv.
        kwargs.setdefault("logger", CSVLogger(out, name="logs"))
        return super().instantiate_trainer(**kwargs)


def run_lightning(
    command: str,
    task_class: type[L.LightningModule],
    datamodule_class: type[L.LightningDataModule],
    argv: Sequence[str],
) -> int:
    """Parse ``argv`` (recipe + overrides, plus ``--resume``), fit, and return the exit status."""
    argv = list(argv)
    check_renamed_keys(command, argv)
    resume = "--resume" in argv
    if resume:
        argv.remove("--resume")
    # We pass ``args`` because `geoexplora` parsed the command word itself, not to mix two command lines.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        cli = GeoExploraCLI(
            task_class,
            datamodule_class,
            args=argv,
            run=False,
            command=command,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": f"geoexplora {command}"},
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
    return 0
