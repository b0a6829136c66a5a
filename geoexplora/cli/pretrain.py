"""``geoexplora pretrain --config RECIPE.yaml [--key.sub value ...] [--out DIR] [--resume | --overwrite]``.

ExPLoRA domain pre-training: :class:`~geoexplora.tasks.pretrain.PretrainTask` (``model.*`` keys) on
:class:`~geoexplora.tasks.pretrain_data.UnlabelledRasterDataModule` (``data.*`` keys), driven by
:func:`~geoexplora.cli.lightning_runner.run_lightning` (``trainer.*`` keys, ``--out``, ``--resume``), after
:func:`~geoexplora.cli.run_folder.prepared_run`'s checks of the recipe and the run folder.
"""

from __future__ import annotations

from collections.abc import Sequence

from geoexplora.cli.run_folder import one_line_parse_errors, prepared_run


def main(argv: Sequence[str]) -> int:
    """Check the command line, parse the recipe and overrides, pre-train, export; returns the exit status."""
    with prepared_run("pretrain", argv) as request:
        from geoexplora.cli.lightning_runner import run_lightning
        from geoexplora.tasks.pretrain import PretrainTask
        from geoexplora.tasks.pretrain_data import UnlabelledRasterDataModule

        with one_line_parse_errors("pretrain"):
            return run_lightning("pretrain", PretrainTask, UnlabelledRasterDataModule, request.argv)
