"""``geoexplora finetune --config recipes/<name>.yaml [dotted overrides] [--out DIR] [--resume | --overwrite]``.

Recipe keys are :class:`~geoexplora.tasks.finetune.FinetuneTask`'s (``model.*``) and
:class:`~geoexplora.tasks.finetune_data.LabelledRasterDataModule`'s (``data.*``) arguments, plus
Lightning's ``trainer.*``; ``--out DIR`` gets the geoexplora checkpoint in ``DIR/checkpoint``. The recipe and
the run folder are checked first (:func:`~geoexplora.cli.run_folder.prepared_run`).
"""

from __future__ import annotations

from collections.abc import Sequence

from geoexplora.cli.run_folder import one_line_parse_errors, prepared_run


def main(argv: Sequence[str]) -> int:
    with prepared_run("finetune", argv) as request:
        from geoexplora.cli.lightning_runner import run_lightning
        from geoexplora.tasks.finetune import FinetuneTask
        from geoexplora.tasks.finetune_data import LabelledRasterDataModule

        with one_line_parse_errors("finetune"):
            return run_lightning("finetune", FinetuneTask, LabelledRasterDataModule, request.argv)
