"""Polygons from a class map: one feature per connected region of one class.

The class map is read in one piece (1 or 2 bytes per pixel, the size of the output raster) and
polygonised with :func:`rasterio.features.shapes` (4-connected), nodata excluded. Areas are in the
raster CRS's units squared (square degrees for a geographic CRS: reproject first for areas in m^2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
from shapely.geometry import shape

from geoexplora.errors import GeoExploraError
from geoexplora.outputs import folder_is_writable

VECTOR_SUFFIXES = {".gpkg": "GPKG", ".parquet": "parquet", ".geoparquet": "parquet"}


def vectorize_classes(
    class_map: Path,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
) -> gpd.GeoDataFrame:
    """Polygons of the regions of ``class_map``, in its CRS.

    Args:
        class_map: single-band integer raster (e.g. the output of :func:`predict_raster`).
        class_names: raster value -> class name (a sequence names values 0..n-1); adds a ``class_name``
            column. Class maps from a checkpoint store its classes' label values, so ``class_id`` is the
            raster value and ``class_name`` its name.
        min_area: drop polygons smaller than this, in map units squared.
        simplify: Douglas-Peucker tolerance in map units (topology preserved per polygon); 0 keeps
            the pixel outlines.

    Returns:
        Columns ``class_id`` (int), ``class_name`` (str, when names are given), ``area`` (float, map
        units squared, after simplification), ``geometry`` (Polygon).
    """
    class_map = Path(class_map)
    if not class_map.is_file():
        raise GeoExploraError(f"{class_map}: no such class map")
    with rasterio.open(class_map) as src:
        data = src.read(1)
        nodata, transform, crs = src.nodata, src.transform, src.crs
    if not np.issubdtype(data.dtype, np.integer):
        raise GeoExploraError(f"{class_map}: class map must hold integers, not {data.dtype}")
    mask = None if nodata is None else data != nodata
    shapes = rasterio.features.shapes(data, mask=mask, transform=transform, connectivity=4)
    records = [(int(value), shape(geometry)) for geometry, value in shapes]
    frame = gpd.GeoDataFrame(
        {"class_id": np.array([r[0] for r in records], dtype=np.int64)},
        geometry=gpd.GeoSeries([r[1] for r in records], crs=crs), crs=crs,
    )
    if simplify > 0:
        frame["geometry"] = frame.geometry.simplify(simplify, preserve_topology=True)
    frame["area"] = frame.geometry.area
    if min_area > 0:
        frame = frame[frame["area"] >= min_area].reset_index(drop=True)
    if class_names is not None:
        names = dict(class_names) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
        unnamed = sorted(set(frame["class_id"]) - set(names))
        if unnamed:
            raise GeoExploraError(f"{class_map}: class id {unnamed[0]} has no name ({len(names)} names given)")
        frame.insert(1, "class_name", [names[i] for i in frame["class_id"]])
    return frame


def check_vector_output(path: Path, overwrite: bool = False) -> str:
    """The OGR driver for ``path``; GeoExploraError for an unknown suffix, a missing or read-only folder, or
    an existing file (unless ``overwrite``)."""
    driver = VECTOR_SUFFIXES.get(path.suffix.lower())
    if driver is None:
        raise GeoExploraError(f"{path}: unknown vector format; use {', '.join(VECTOR_SUFFIXES)}")
    if not path.parent.is_dir():
        raise GeoExploraError(f"{path}: output folder {path.parent} does not exist")
    if not folder_is_writable(path.parent):
        raise GeoExploraError(f"{path}: output folder {path.parent} is not writable")
    if path.exists() and not overwrite:
        raise GeoExploraError(f"{path}: already exists; pass --overwrite to replace it")
    return driver


def write_vectors(frame: gpd.GeoDataFrame, path: Path, *, overwrite: bool = False) -> Path:
    """Write ``frame`` as GeoPackage (``.gpkg``) or GeoParquet (``.parquet``/``.geoparquet``).

    Written under ``<stem>.partial<suffix>`` next to ``path`` and renamed, so ``path`` never holds a
    partial file.
    """
    path = Path(path)
    driver = check_vector_output(path, overwrite)
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    partial.unlink(missing_ok=True)
    if driver == "GPKG":
        frame.to_file(partial, driver="GPKG", layer=path.stem)
    else:
        frame.to_parquet(partial)
    os.replace(partial, path)
    return path
