"""``geoexplora pretrain --config RECIPE.yaml [--key.sub value ...] [--out DIR] [--resume]``.

ExPLoRA domain pre-training: :class:`~geoexplora.tasks.pretrain.PretrainTask` (``model.*`` keys) on
:class:`~geoexplora.tasks.pretrain_data.UnlabelledRasterDataModule` (``data.*`` keys), driven by
:func:`~geoexplora.cli.lightning_runner.run_lightning` (``trainer.*`` keys, ``--out``, ``--resume``).
"""

from __future__ import annotations

from collections.abc import Sequence

from geoexplora.cli.lightning_runner import run_lightning
from geoexplora.tasks.pretrain import PretrainTask
from geoexplora.tasks.pretrain_data import UnlabelledRasterDataModule


def main(argv: Sequence[str]) -> int:
    """Parse the recipe and overrides, pre-train, export the checkpoint; returns the exit status."""
    return run_lightning("pretrain", PretrainTask, UnlabelledRasterDataModule, argv)
