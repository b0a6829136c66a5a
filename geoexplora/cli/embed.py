"""``geoexplora embed``: window embeddings of rasters (or of a stack of dates) as GeoParquet, optionally a
dense PCA GeoTIFF.

The encoder is a checkpoint's backbone (``--checkpoint DIR``, with its band statistics) or a timm model
by name (``--backbone NAME [--weights PATH] --model-bands ... [--sensor ...]``, statistics computed from the rasters).
A temporal checkpoint embeds ``--stack`` (the rasters are the dates of one place). Each raster (or the
stack) is embedded into its own part beside ``--out`` (:func:`~geoexplora.inference.embed.embed_part`), so
``--resume`` continues an interrupted run and ``--devices N`` spreads the rasters over N worker processes
(:mod:`geoexplora.cli.multi_device`); the parent then assembles the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from geoexplora.cli.options import (
    add_checkpoint_options,
    add_device_option,
    add_devices_option,
    add_file_bands_option,
    add_model_bands_option,
    add_sensor_option,
    add_renamed_bands_flag,
    add_stack_options,
    stack_from_args,
)
from geoexplora.errors import GeoExploraError

if TYPE_CHECKING:
    from geoexplora.inference.embed import EmbedJob, EmbedUnit, Encoder

DEFAULT_PCA = 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("embed", help="embed raster windows into GeoParquet (and a dense PCA GeoTIFF)")
    parser.add_argument("--raster", nargs="+", required=True, help="rasters with the same bands (GDAL paths, URLs "
                        "and STAC item JSONs too)")
    parser.add_argument("--checkpoint", type=Path, help="pretrain or fine-tuning checkpoint folder")
    parser.add_argument("--backbone", help="timm ViT name, instead of --checkpoint")
    parser.add_argument("--weights", help="with --backbone: 'timm' or a local .safetensors/.pth file "
                        "(default: random init)")
    add_model_bands_option(parser, "with --backbone: the bands the model reads, in order")
    add_sensor_option(parser)
    add_renamed_bands_flag(parser, "--model-bands (the model's bands; --file-bands names the file's)")
    add_file_bands_option(parser)
    parser.add_argument("--out", required=True, type=Path, help="output GeoParquet (.parquet)")
    parser.add_argument("--tile", type=int, default=224, help="window side, pixels (default 224)")
    parser.add_argument("--stride", type=int, help="pixels between window origins (default: the tile)")
    parser.add_argument("--pool", choices=("cls", "mean"), default="cls", help="cls token or mean of patch tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    add_device_option(parser)
    parser.add_argument("--dense", type=Path, help="also write per-patch embeddings reduced by PCA to this GeoTIFF")
    parser.add_argument("--pca", type=int, help=f"with --dense: PCA components, bands of the GeoTIFF "
                        f"(default {DEFAULT_PCA})")
    add_stack_options(parser, "one row per window of the first date's grid")
    add_devices_option(parser)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run (its finished rasters "
                        "are kept)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_checkpoint_options(parser)
    parser.set_defaults(run=run)


def encoder_from_args(args: argparse.Namespace) -> Encoder:
    """The checkpoint's encoder, or the named timm backbone over ``--model-bands``."""
    from geoexplora.inference.embed import build_encoder, load_encoder

    if (args.checkpoint is None) == (args.backbone is None):
        raise GeoExploraError("give either --checkpoint DIR or --backbone NAME --model-bands B1,B2,...")
    if args.checkpoint is not None:
        if args.weights or args.model_bands or args.sensor:
            raise GeoExploraError(f"{args.checkpoint}: --weights, --model-bands and --sensor go with --backbone; "
                                  "a checkpoint names its own")
        return load_encoder(args.checkpoint, weights_dir=args.weights_dir, allow_download=args.allow_download)
    if not args.model_bands:
        raise GeoExploraError(f"--backbone {args.backbone}: needs --model-bands, the band names it reads")
    return build_encoder(args.backbone, args.model_bands, args.weights, sensor=args.sensor)


def run(args: argparse.Namespace) -> int:
    from geoexplora.inference.embed import finish_embedding, open_parts, plan_embedding
    from geoexplora.inference.model_predict import check_stack_input, resolve_device
    from geoexplora.inference.predict import check_output
    from geoexplora.outputs import OutputLock

    if args.pca is not None and args.dense is None:
        raise GeoExploraError("--pca goes with --dense OUT.tif")
    if args.devices != 1:
        from geoexplora.cli.multi_device import worker_devices

        devices, threads = worker_devices(args.devices, args.device)
    else:
        devices, threads = [str(resolve_device(args.device))], None
    outputs = [args.out, *([args.dense] if args.dense else [])]
    for path in outputs:
        check_output(path, args.overwrite, args.resume)
    encoder = encoder_from_args(args)
    check_stack_input(encoder.config, encoder.name, args.stack)  # before the stack's files are read
    stack = stack_from_args(args)
    with OutputLock(outputs):
        job = plan_embedding(
            [stack] if stack is not None else args.raster, args.out, encoder, band_names=args.file_bands,
            tile=args.tile, stride=args.stride, pool=args.pool, batch_size=args.batch_size, dense=args.dense,
            pca=DEFAULT_PCA if args.pca is None else args.pca, overwrite=args.overwrite, resume=args.resume,
        )
        if job.complete:
            print(f"{args.out}: already complete; --resume leaves it alone (pass --overwrite to redo it)")
            return 0
        open_parts(job, args.resume)
        todo = [u for u in job.units if not job.finished(u)]
        if len(devices) == 1 or len(todo) <= 1:
            embed_parts((job, encoder), todo, devices[0])
        else:
            status = _embed_on_workers(job, encoder, todo, devices, threads)
            if status:
                return status
        print(finish_embedding(job, encoder, devices[0]))
    return 0


def _embed_on_workers(job: EmbedJob, encoder: Encoder, todo: list[EmbedUnit], devices: list[str],
                      threads: int | None) -> int:
    """Embed ``todo``'s parts on one worker process per device; 0, or 1 after naming each raster not embedded."""
    from geoexplora.cli.multi_device import WorkerPlan, deal, report_unfinished, run_workers, unfinished

    dealt = deal(todo, [u.info.width * u.info.height for u in todo], len(devices))
    codes = run_workers(embed_parts, (job, encoder), [WorkerPlan(d, threads, units) for d, units in zip(devices, dealt)])
    failed = unfinished([(u.path, [job.part(u)]) for u in todo], lambda parts: all(p.is_file() for p in parts))
    return report_unfinished(failed, codes, "embedded")


def embed_parts(shared: tuple[EmbedJob, Encoder], units: list[EmbedUnit], device: str) -> None:
    """Embed each of ``units`` into its part on ``device``; a process of ``--devices N`` runs this over its share."""
    from geoexplora.inference import embed

    job, encoder = shared
    for unit in units:
        embed.embed_part(job, encoder, unit, device)
