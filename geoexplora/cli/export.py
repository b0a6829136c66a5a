"""``geoexplora export --checkpoint DIR --out DIR2 [--onnx model.onnx]``: a self-contained model folder.

``DIR2`` holds the merged full weights (see :mod:`geoexplora.models.export`) and loads with no other file.
With ``--onnx``, the whole model with its normalisation is also written as ONNX and checked against
PyTorch with onnxruntime on a window drawn from the checkpoint's band statistics; the max abs difference
is printed. Every check runs before anything is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoexplora.cli.options import add_checkpoint_options
from geoexplora.errors import GeoExploraError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="write a self-contained checkpoint (merged weights), optionally ONNX",
                                   description="Fold adapters, parent and source weights into one checkpoint folder.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="a geoexplora checkpoint folder")
    parser.add_argument("--out", required=True, type=Path, help="the new, self-contained checkpoint folder")
    parser.add_argument("--onnx", type=Path, help="also write the model with its normalisation as ONNX (.onnx)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_checkpoint_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from geoexplora.models import export_checkpoint, export_onnx, read_checkpoint
    from geoexplora.models.export import check_export_target, onnx_parity

    check_export_target(args.out, args.overwrite)
    if args.onnx is not None:
        if args.onnx.suffix != ".onnx":
            raise GeoExploraError(f"--onnx {args.onnx}: give a .onnx file name")
        check_export_target(args.onnx, args.overwrite)
        if read_checkpoint(args.checkpoint).preprocessing.statistics is None:
            raise GeoExploraError(f"{args.checkpoint}: records no band statistics, which the ONNX graph needs")
    merged = export_checkpoint(args.checkpoint, args.out, weights_dir=args.weights_dir,
                               allow_download=args.allow_download, overwrite=args.overwrite)
    print(f"exported {args.checkpoint} -> {args.out} ({merged.config.lineage.stored} weights, "
          f"strategy {merged.config.strategy.name}, depth {len(merged.backbone.blocks)})")
    if args.onnx is not None:
        export_onnx(merged, args.onnx, overwrite=args.overwrite)
        pre = merged.preprocessing
        stats = [pre.statistics.bands[b] for b in pre.model_bands]
        rng = np.random.default_rng(0)
        size = pre.window_size
        window = np.stack([s.mean + s.std * rng.standard_normal((size, size)) for s in stats])[None]
        print(f"onnx: {args.onnx}; max abs difference to PyTorch on a {size} px window: "
              f"{onnx_parity(merged, args.onnx, window.astype(np.float32)):.2e}")
    return 0
