"""Options shared by the commands that load a checkpoint (``predict``, ``evaluate``, ``embed``, ``export``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """``--weights-dir`` (search path for source weights and parent checkpoints) and ``--allow-download``."""
    parser.add_argument("--weights-dir", type=Path, action="append", metavar="DIR",
                        help="where to look for the checkpoint's source weights and parent checkpoint after its "
                             "own folder and the working directory (repeatable; also $GEOEXPLORA_WEIGHTS)")
    parser.add_argument("--allow-download", action="store_true",
                        help="let a checkpoint over timm's or TorchGeo's pretrained weights download them")
