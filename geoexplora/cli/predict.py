"""``geoexplora predict``: a fine-tuned checkpoint over whole rasters, written as georeferenced COGs.

The raster side (windows, blending, streaming writer, resume) is :func:`geoexplora.inference.predict_raster`,
driven by the checkpoint through :func:`geoexplora.inference.predict_with_model`; this module checks every
input before the model loads and adds the optional vector and preview outputs; ``--devices N`` spreads
several rasters over N worker processes (:mod:`geoexplora.cli.multi_device`). Heavy imports happen in
:func:`run`, so ``geoexplora predict --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from geoexplora.cli.options import (
    add_checkpoint_options,
    add_device_option,
    add_devices_option,
    add_file_bands_option,
    add_renamed_bands_flag,
    add_stack_options,
    stack_from_args,
)
from geoexplora.cli.run_folder import check_writable_folder
from geoexplora.errors import GeoExploraError

if TYPE_CHECKING:
    from geoexplora.data.stack import RasterStack


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="predict a class map (GeoTIFF/COG) over whole rasters",
                                   description="Run a fine-tuned checkpoint over every window of each raster.")
    parser.add_argument("--raster", nargs="+", required=True, help="GeoTIFF files or folders of them")
    parser.add_argument("--checkpoint", required=True, help="a fine-tuned geoexplora checkpoint folder")
    parser.add_argument("--out", required=True, type=Path,
                        help="output .tif for one raster, or a folder (one <name>.pred.tif per input)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write per-class probabilities (<out>.probabilities.tif, uint8 p*254)")
    parser.add_argument("--vector", type=Path, help="also polygonise the class map (.gpkg or .parquet)")
    parser.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this (map units²)")
    parser.add_argument("--simplify", type=float, default=0.0, help="polygon simplification tolerance (map units)")
    add_file_bands_option(parser)
    add_renamed_bands_flag(parser, "--file-bands (the file's band names)")
    parser.add_argument("--tile", type=int, help="window side in pixels (default: the checkpoint's window size)")
    parser.add_argument("--overlap", type=int, help="window overlap in pixels (default 32, at most a quarter tile)")
    parser.add_argument("--batch-size", type=int, default=8)
    add_device_option(parser)
    add_stack_options(parser, "one map on the first date's grid")
    add_devices_option(parser)
    parser.add_argument("--reader-threads", type=int, default=1,
                        help="threads reading windows in parallel, one file handle each (default 1)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--allow-no-crs", action="store_true", help="accept rasters without CRS (pixel coordinates)")
    parser.add_argument("--no-preview", action="store_true", help="skip the <out>.preview.png")
    add_checkpoint_options(parser)
    parser.set_defaults(run=run)


def _rgb_preview_bands(indexes: list[int], model_bands: list[str], sensor: str | None) -> tuple[int, int, int]:
    """File band indexes of red, green, blue when the checkpoint has them, else its first three bands."""
    from geoexplora.bands import RGB_ROLES, rgb_role

    roles = {rgb_role(b, sensor): i for b, i in zip(model_bands, indexes)}
    if all(role in roles for role in RGB_ROLES):
        return tuple(roles[role] for role in RGB_ROLES)
    return tuple((indexes * 3)[:3])


def _outputs(rasters: list[Path], out: Path) -> list[Path]:
    if len(rasters) == 1 and out.suffix.lower() in (".tif", ".tiff"):
        return [out]
    if out.suffix.lower() in (".tif", ".tiff"):
        raise GeoExploraError(f"{out}: several rasters need an output folder, not a file")
    check_writable_folder(out, f"--out {out}")
    out.mkdir(parents=True, exist_ok=True)
    return [out / f"{r.stem}.pred.tif" for r in rasters]


def _vector_path(vector: Path, out: Path, several: bool) -> Path:
    return vector.with_name(f"{out.stem}{vector.suffix}") if several else vector


def _check_window(args: argparse.Namespace, patch_size: int) -> None:
    """``--tile`` (a positive multiple of the patch size), ``--overlap`` and ``--batch-size`` before any work."""
    if args.tile is not None and args.tile < 1:
        raise GeoExploraError(f"--tile {args.tile}: give a positive window side in pixels (or leave it out for "
                              "the checkpoint's window size)")
    if args.tile is not None and args.tile % patch_size:
        raise GeoExploraError(f"--tile {args.tile}: must be a multiple of the model's patch size {patch_size} "
                              f"(e.g. {max(patch_size, args.tile // patch_size * patch_size)})")
    if args.overlap is not None and args.overlap < 0:
        raise GeoExploraError(f"--overlap {args.overlap}: must be 0 or more pixels")
    if args.batch_size < 1:
        raise GeoExploraError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.devices < 1:
        raise GeoExploraError(f"--devices {args.devices}: must be at least 1")
    if args.reader_threads < 1:
        raise GeoExploraError(f"--reader-threads {args.reader_threads}: must be at least 1")


def run(args: argparse.Namespace) -> int:
    from geoexplora.data import find_raster_files
    from geoexplora.inference.memory import check_tile_memory, prediction_bytes
    from geoexplora.inference.model_predict import band_indexes, check_predictable, check_stack_input, resolve_device
    from geoexplora.inference.predict import check_output, check_raster, is_finished
    from geoexplora.inference.vectorize import check_vector_output
    from geoexplora.inference.windows import WindowGrid
    from geoexplora.models import read_checkpoint

    config = read_checkpoint(args.checkpoint)
    check_predictable(config, Path(args.checkpoint))
    backbone = config.backbone
    _check_window(args, backbone.patch_pixels)
    args.tile = args.tile or config.preprocessing.window_size
    args.overlap = args.overlap if args.overlap is not None else min(32, args.tile // 4)
    check_stack_input(config.backbone, Path(args.checkpoint), args.stack)
    stack = stack_from_args(args)
    if stack is not None:
        check_stack_input(config.backbone, Path(args.checkpoint), True, len(stack))
    rasters = [stack.paths[0]] if stack is not None else find_raster_files(args.raster, config.preprocessing.model_bands)
    outputs = _outputs(rasters, args.out)
    if args.devices > 1:
        from geoexplora.cli.multi_device import worker_devices

        devices, threads = worker_devices(args.devices, args.device)
    else:
        device = str(resolve_device(args.device))
    # Every check that needs no model runs first: a bad input fails in a second, not after loading.
    plans, sizes = [], []
    for raster, out in zip(rasters, outputs, strict=True):
        source = check_raster(raster, args.allow_no_crs)
        indexes = band_indexes(config.preprocessing, raster, args.file_bands)
        probabilities = out.with_name(f"{out.stem}.probabilities.tif") if args.probabilities else None
        paths = [p for p in (out, probabilities) if p is not None]
        for path in paths:
            check_output(path, args.overwrite, args.resume)
        finished = args.resume and is_finished(paths)
        vector = _vector_path(args.vector, out, len(rasters) > 1) if args.vector else None
        if vector is not None and not finished:
            check_vector_output(vector, args.overwrite or args.resume)
        grid = WindowGrid(source.width, source.height, args.tile, args.overlap)
        check_tile_memory(grid, prediction_bytes(grid, len(indexes), max(len(config.classes), 1), args.batch_size,
                                                 backbone.patch_pixels, backbone.embed_dim or 768))
        plans.append(RasterPlan(raster, out, indexes, probabilities, vector, finished, stack))
        sizes.append(source.width * source.height)
    if args.devices == 1 or len(plans) == 1:
        predict_plans(args, plans, device if args.devices == 1 else devices[0])
        return 0
    from geoexplora.cli.multi_device import WorkerPlan, deal, report_unfinished, run_workers, unfinished

    dealt = deal(plans, sizes, len(devices))
    codes = run_workers(predict_plans, args, [WorkerPlan(d, threads, items) for d, items in zip(devices, dealt)])
    failed = unfinished([(p.raster, [q for q in (p.out, p.probabilities) if q is not None]) for p in plans],
                        is_finished)
    return report_unfinished(failed, codes, "predicted")


class RasterPlan(NamedTuple):
    """One raster's prediction, checked: its output paths, file band indexes (1-based) and whether a
    ``--resume`` finds it complete."""

    raster: Path
    out: Path
    indexes: list[int]
    probabilities: Path | None
    vector: Path | None
    finished: bool
    stack: RasterStack | None = None


def predict_plans(args: argparse.Namespace, plans: list[RasterPlan], device: str) -> None:
    """Lock the plans' outputs, load the model onto ``device`` once and predict each raster (with its
    preview and vectors); a process of ``--devices N`` runs this over its share."""
    from geoexplora.inference import vectorize_classes, write_preview, write_vectors
    from geoexplora.inference.model_predict import predict_with_model
    from geoexplora.models import load_model
    from geoexplora.outputs import OutputLock

    locked = [p for plan in plans for p in (plan.out, plan.probabilities, plan.vector) if p is not None]
    with OutputLock(locked):
        model = load_model(args.checkpoint, weights_dir=args.weights_dir, allow_download=args.allow_download)
        backbone = model.config.backbone
        names = {c.value: c.name for c in model.classes}
        for plan in plans:
            if plan.finished:
                print(f"{plan.out}: already complete; --resume leaves it alone (pass --overwrite to redo it)")
                continue
            summary = predict_with_model(
                model, plan.raster, plan.out, probabilities=plan.probabilities or False, bands=args.file_bands,
                tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=device,
                overwrite=args.overwrite, resume=args.resume, allow_no_crs=args.allow_no_crs,
                reader_threads=args.reader_threads, stack=plan.stack,
            )
            print(summary)
            if not args.no_preview:
                rgb = _rgb_preview_bands(plan.indexes, list(backbone.bands), backbone.sensor)
                preview = write_preview(plan.out, plan.raster, rgb_bands=rgb, class_names=names,
                                        colors={c.value: c.color for c in model.classes})
                print(f"preview: {preview}")
            if plan.vector is not None:
                frame = vectorize_classes(plan.out, class_names=names, min_area=args.min_area,
                                          simplify=args.simplify)
                print(f"vectors: {write_vectors(frame, plan.vector, overwrite=args.overwrite or args.resume)} "
                      f"({len(frame)} polygons)")
