"""``geoexplora finetune --config recipes/<name>.yaml [dotted overrides]``: supervised fine-tuning.

Recipe keys are :class:`~geoexplora.tasks.finetune.FinetuneTask`'s (``model.*``) and
:class:`~geoexplora.tasks.finetune_data.LabelledRasterDataModule`'s (``data.*``) arguments, plus
Lightning's ``trainer.*``; ``--out DIR`` gets the geoexplora checkpoint in ``DIR/checkpoint``.
"""

from __future__ import annotations

from collections.abc import Sequence

from geoexplora.cli.lightning_runner import run_lightning


def main(argv: Sequence[str]) -> int:
    from geoexplora.tasks.finetune import FinetuneTask
    from geoexplora.tasks.finetune_data import LabelledRasterDataModule

    return run_lightning("finetune", FinetuneTask, LabelledRasterDataModule, argv)
