"""BigEarthNet (Sentinel-2 L2A) patches -> multi-band GeoTIFF tiles + a multi-label tiles CSV.

A BigEarthNet patch is a folder ``<patch>/`` with one single-band GeoTIFF per band,
``<patch>_B01.tif ... <patch>_B12.tif, <patch>_B8A.tif`` (10 m bands 120x120 px, 20 m bands 60x60,
60 m bands 20x20, all over the same 1.2 km square) and ``<patch>_labels_metadata.json`` whose
``labels`` list holds the patch's CORINE land-cover classes.

:func:`stack_bigearthnet` turns a folder of such patches into what
:class:`~geoexplora.tasks.finetune_data.LabelledRasterDataModule` reads as ``tiles``: one
``<patch>.tif`` per patch with every band resampled (bilinear) to ``size`` x ``size`` pixels over the
patch's extent (``size=120``: the 10 m grid, the 10 m bands unchanged), the patch's CRS, band
descriptions = band names; and ``labels.csv`` (``path,label``, the labels joined by ``;``).

Command line::

    python -m geoexplora.data.bigearthnet SOURCE OUT [--size 112] [--bands B02 B03 B04 B08]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import Affine

from geoexplora.errors import GeoExploraError

# Sentinel-2 L2A bands of BigEarthNet in wavelength order (B10, cirrus, is not in L2A products).
BIGEARTHNET_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
TEN_METRE_BANDS = ("B02", "B03", "B04", "B08")
LABELS_SUFFIX = "_labels_metadata.json"
CSV_NAME = "labels.csv"


def patch_folders(source: Path) -> list[Path]:
    """The patch folders under ``source`` (sorted); ``source`` itself when it is one patch."""
    source = Path(source)
    if not source.is_dir():
        raise GeoExploraError(f"{source}: no such folder of BigEarthNet patches")
    if (source / f"{source.name}{LABELS_SUFFIX}").exists() or any(source.glob(f"{source.name}_B*.tif")):
        return [source]
    patches = sorted(d for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not patches:
        raise GeoExploraError(f"{source}: no patch folders (expected {source}/<patch>/<patch>_B02.tif ...)")
    return patches


def read_patch_labels(patch: Path) -> list[str]:
    """The ``labels`` list of ``<patch>/<patch>_labels_metadata.json``."""
    path = patch / f"{patch.name}{LABELS_SUFFIX}"
    if not path.is_file():
        raise GeoExploraError(f"{path}: missing labels file of patch {patch.name}")
    try:
        labels = json.loads(path.read_text())["labels"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GeoExploraError(f"{path}: not a BigEarthNet labels file ({type(err).__name__}: {err})") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(n, str) and n.strip() for n in labels):
        raise GeoExploraError(f"{path}: 'labels' must be a non-empty list of names, got {labels!r}")
    bad = [n for n in labels if ";" in n]
    if bad:
        raise GeoExploraError(f"{path}: label {bad[0]!r} holds ';', the CSV's label separator")
    return [n.strip() for n in labels]


def _band_files(patch: Path, bands: Sequence[str]) -> list[Path]:
    files = [patch / f"{patch.name}_{band}.tif" for band in bands]
    for band, file in zip(bands, files):
        if not file.is_file():
            raise GeoExploraError(f"{file}: missing band {band} of patch {patch.name}")
    return files


def _open(path: Path) -> rasterio.DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioError as err:
        raise GeoExploraError(f"{path}: not a readable raster ({str(err).splitlines()[0]})") from None


def stack_patch(patch: Path, out: Path, bands: Sequence[str] = BIGEARTHNET_BANDS, size: int = 120) -> Path:
    """Write one patch's bands, resampled to ``size`` x ``size``, as the multi-band GeoTIFF ``out``."""
    files = _band_files(patch, bands)
    reference = next((files[i] for i, b in enumerate(bands) if b in TEN_METRE_BANDS), files[0])
    with _open(reference) as ref:
        crs, bounds, nodata = ref.crs, ref.bounds, ref.nodata
        transform = ref.transform * Affine.scale(ref.width / size, ref.height / size)
        tolerance = 0.5 * abs(ref.transform.a)
    stack = []
    for file in files:
        with _open(file) as src:
            if src.count != 1:
                raise GeoExploraError(f"{file}: expected 1 band, found {src.count}")
            if src.crs != crs:
                raise GeoExploraError(f"{file}: CRS {src.crs} differs from {reference.name}'s {crs}")
            if max(abs(a - b) for a, b in zip(src.bounds, bounds)) > tolerance:
                raise GeoExploraError(f"{file}: bounds {tuple(src.bounds)} differ from {reference.name}'s {tuple(bounds)}")
            resampling = Resampling.nearest if src.width == size and src.height == size else Resampling.bilinear
            try:
                stack.append(src.read(1, out_shape=(size, size), resampling=resampling))
            except RasterioError as err:
                raise GeoExploraError(f"{file}: unreadable pixels ({str(err).splitlines()[0]})") from None
    array = np.stack(stack)
    dtype = np.result_type(*(a.dtype for a in stack))
    partial = out.with_name(f"{out.stem}.partial{out.suffix}")
    profile = dict(driver="GTiff", width=size, height=size, count=len(bands), dtype=dtype, crs=crs,
                   transform=transform, nodata=nodata, compress="deflate", interleave="pixel")
    with rasterio.open(partial, "w", **profile) as dst:
        dst.write(array.astype(dtype, copy=False))
        dst.descriptions = tuple(bands)
    os.replace(partial, out)
    return out


def stack_bigearthnet(
    source: Path,
    out: Path,
    bands: Sequence[str] = BIGEARTHNET_BANDS,
    size: int = 120,
) -> Path:
    """Stack every BigEarthNet patch under ``source`` into ``out/<patch>.tif`` and write ``out/labels.csv``.

    Args:
        source: a folder of patch folders (``<patch>/<patch>_B02.tif``, ``<patch>_labels_metadata.json``),
            or one patch folder.
        out: output folder (created).
        bands: band names in output order (default the 12 L2A bands B01..B08, B8A, B09, B11, B12).
        size: output side in pixels over the patch's 1.2 km: 120 keeps the 10 m grid; 112 gives tiles
            a patch-14 ViT takes whole (10.7 m pixels).

    Returns:
        The CSV path (``path,label``; paths relative to it, labels joined by ``;``).

    Raises:
        GeoExploraError: naming the file, for a missing band file or labels file, an unreadable one, or a
            band on another CRS / extent.
    """
    source, out = Path(source), Path(out)
    bands = list(bands)
    if not bands or len(set(bands)) != len(bands):
        raise GeoExploraError(f"bands must be non-empty and unique, got {bands!r}")
    if size < 1:
        raise GeoExploraError(f"size must be a positive integer, got {size!r}")
    patches = patch_folders(source)
    # Check every patch before writing anything, so a bad patch leaves no half-made folder.
    labels = {patch.name: read_patch_labels(patch) for patch in patches}
    for patch in patches:
        _band_files(patch, bands)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for patch in patches:
        tile = stack_patch(patch, out / f"{patch.name}.tif", bands, size)
        rows.append((tile.name, ";".join(labels[patch.name])))
    csv_path = out / CSV_NAME
    partial = out / f"{CSV_NAME}.partial"
    with partial.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("path", "label"))
        writer.writerows(rows)
    os.replace(partial, csv_path)
    return csv_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geoexplora.data.bigearthnet",
        description="Stack BigEarthNet patches into multi-band GeoTIFF tiles and a multi-label tiles CSV.",
    )
    parser.add_argument("source", type=Path, help="folder of BigEarthNet patch folders (or one patch folder)")
    parser.add_argument("out", type=Path, help="output folder: <patch>.tif and labels.csv")
    parser.add_argument("--size", type=int, default=120,
                        help="output side in pixels (120: the 10 m grid; 112 for a patch-14 ViT at img_size 112)")
    parser.add_argument("--bands", nargs="+", default=list(BIGEARTHNET_BANDS), help="bands, in output order")
    args = parser.parse_args(argv)
    try:
        path = stack_bigearthnet(args.source, args.out, args.bands, args.size)
    except GeoExploraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
