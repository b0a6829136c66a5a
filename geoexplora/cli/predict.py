"""``geoexplora predict``: a fine-tuned checkpoint over whole rasters, written as georeferenced COGs.

The raster side (windows, blending, streaming writer, resume) is :func:`geoexplora.inference.predict_raster`,
driven by the checkpoint through :func:`geoexplora.inference.predict_with_model`; this module checks every
input before the model loads and adds the optional vector and preview outputs. Heavy imports happen in
:func:`run`, so ``geoexplora predict --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoexplora.cli.options import add_checkpoint_options
from geoexplora.errors import GeoExploraError


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
    parser.add_argument("--bands", help="comma-separated names of the file's bands when its descriptions "
                        "differ from the checkpoint's band names")
    parser.add_argument("--tile", type=int, help="window side in pixels (default: the checkpoint's window size)")
    parser.add_argument("--overlap", type=int, help="window overlap in pixels (default 32, at most a quarter tile)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--allow-no-crs", action="store_true", help="accept rasters without CRS (pixel coordinates)")
    parser.add_argument("--no-preview", action="store_true", help="skip the <out>.preview.png")
    add_checkpoint_options(parser)
    parser.set_defaults(run=run)


def _names(text: str | None) -> list[str] | None:
    return [b.strip() for b in text.split(",") if b.strip()] if text else None


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
    out.mkdir(parents=True, exist_ok=True)
    return [out / f"{r.stem}.pred.tif" for r in rasters]


def run(args: argparse.Namespace) -> int:
    from geoexplora.data import find_raster_files
    from geoexplora.inference import vectorize_classes, write_preview, write_vectors
    from geoexplora.inference.model_predict import band_indexes, check_predictable, predict_with_model, resolve_device
    from geoexplora.inference.predict import check_output, check_raster
    from geoexplora.models import load_model, read_checkpoint

    config = read_checkpoint(args.checkpoint)
    check_predictable(config, Path(args.checkpoint))
    rasters = find_raster_files(args.raster, config.preprocessing.model_bands)
    outputs = _outputs(rasters, args.out)
    # Every check that needs no model runs first: a bad input fails in a second, not after loading.
    plans = []
    for raster, out in zip(rasters, outputs, strict=True):
        check_raster(raster, args.allow_no_crs)
        indexes = band_indexes(config.preprocessing, raster, _names(args.bands))
        probabilities = out.with_name(f"{out.stem}.probabilities.tif") if args.probabilities else None
        for path in (out, probabilities):
            if path is not None:
                check_output(path, args.overwrite, args.resume)
        plans.append((raster, out, indexes, probabilities))
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, weights_dir=args.weights_dir, allow_download=args.allow_download)
    names = {c.value: c.name for c in model.classes}
    for raster, out, indexes, probabilities in plans:
        summary = predict_with_model(
            model, raster, out, probabilities=probabilities or False, bands=_names(args.bands), tile=args.tile,
            overlap=args.overlap, batch_size=args.batch_size, device=device, overwrite=args.overwrite,
            resume=args.resume, allow_no_crs=args.allow_no_crs,
        )
        print(summary)
        if not args.no_preview:
            backbone = model.config.backbone
            rgb = _rgb_preview_bands(indexes, list(backbone.bands), backbone.sensor)
            preview = write_preview(out, raster, rgb_bands=rgb, class_names=names,
                                    colors={c.value: c.color for c in model.classes})
            print(f"preview: {preview}")
        if args.vector:
            vector = args.vector if len(rasters) == 1 else args.vector.with_name(f"{out.stem}{args.vector.suffix}")
            frame = vectorize_classes(out, class_names=names, min_area=args.min_area, simplify=args.simplify)
            print(f"vectors: {write_vectors(frame, vector, overwrite=args.overwrite or args.resume)} "
                  f"({len(frame)} polygons)")
    return 0
