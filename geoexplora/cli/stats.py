"""``geoexplora stats``: per-band statistics of a user's rasters, as a table or JSON.

The same statistics are computed by ``pretrain``/``finetune`` and stored in checkpoints; this command
lets an analyst check band names, nodata handling and value ranges before training.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from geoexplora.cli.options import add_file_bands_option, add_model_bands_option, add_renamed_bands_flag
from geoexplora.errors import GeoExploraError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stats", help="per-band mean, std and 2-98 percentiles of rasters")
    parser.add_argument("--raster", nargs="+", required=True,
                        help="rasters or folders; GDAL paths (/vsicurl/, /vsizip/), URLs and STAC item JSONs too")
    add_file_bands_option(parser)
    add_model_bands_option(parser, "the bands to report, in order, e.g. those a model will read (default: all)")
    add_renamed_bands_flag(parser, "--model-bands (the bands to report)")
    parser.add_argument("--nodata", type=float, help="nodata value, overriding the files'")
    parser.add_argument("--windows", type=int, default=64, help="random windows to sample (default 64)")
    parser.add_argument("--window-size", type=int, default=64, help="window side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, help="also write the statistics to this JSON file")
    parser.set_defaults(run=run)



def _check(args: argparse.Namespace) -> None:
    """The counts and the ``--out`` file, before any raster is read."""
    from geoexplora.inference.predict import check_output

    for flag, value in (("--windows", args.windows), ("--window-size", args.window_size)):
        if value < 1:
            raise GeoExploraError(f"{flag} {value}: must be at least 1")
    if args.out is not None:
        check_output(args.out, overwrite=True, resume=False)


def run(args: argparse.Namespace) -> int:
    from geoexplora.data import GeoRasterDataset, compute_band_statistics  # heavy: only when running

    from geoexplora.outputs import OutputLock

    _check(args)
    with OutputLock([args.out] if args.out else []):  # one writer of --out at a time
        dataset = GeoRasterDataset(args.raster, bands=args.model_bands, band_names=args.file_bands,
                                   nodata=args.nodata)
        stats = compute_band_statistics(dataset, num_windows=args.windows, window_size=args.window_size,
                                        seed=args.seed)
        if args.out:
            partial = args.out.with_name(f".{args.out.name}.partial")
            partial.write_text(json.dumps(stats.to_dict(), indent=2))
            os.replace(partial, args.out)
    if args.json:
        print(json.dumps(stats.to_dict()))
        return 0
    print(f"{stats.num_windows} windows ({stats.skipped_windows} all-nodata skipped), "
          f"{stats.num_pixels:,} valid pixels per band")
    print(f"{'band':<14}{'mean':>12}{'std':>12}{'p2':>12}{'p98':>12}")
    for name, s in stats.bands.items():
        print(f"{name:<14}{s.mean:>12.4g}{s.std:>12.4g}{s.p2:>12.4g}{s.p98:>12.4g}")
    if args.out:
        print(f"statistics: {args.out}")
    return 0
