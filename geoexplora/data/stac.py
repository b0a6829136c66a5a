"""STAC items and item collections as rasters: one VRT per item, its assets stacked as named bands.

A STAC item or item collection (``.json`` file or URL, read with pystac) becomes one local ``.vrt`` per
item that stacks the picked assets as bands, each band described by its name, so the rest of geoexplora
selects bands by name as it does in a GeoTIFF. Assets are picked by asset key, band name or ``eo:bands``
common name (``red``, ``nir``...); bands of a coarser resolution are resampled (nearest) to the finest.
The file name carries the item's date (``<id>_YYYYMMDD.vrt``) for date-aware readers (``embed``'s
``timestamp``, temporal datasets).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urljoin, urlparse
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.errors import RasterioError

from geoexplora.errors import GeoExploraError
from geoexplora.gdal_env import to_gdal_path

STAC_SUFFIXES = (".json", ".geojson")
RASTER_MEDIA = ("image/tiff", "image/jp2", "image/vnd.stac.geotiff", "application/x-hdf")
SKIPPED_ROLES = {"thumbnail", "overview", "metadata", "visual"}
GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def is_stac_source(path: str | os.PathLike[str]) -> bool:
    """True for a STAC JSON: a ``.json``/``.geojson`` file or URL, or a STAC API ``.../items/<id>`` URL."""
    text = str(path)
    tail = urlparse(text).path if "://" in text else text
    return tail.lower().endswith(STAC_SUFFIXES) or ("://" in text and "/items/" in tail)


@dataclass(frozen=True)
class StacBand:
    """One band an item offers: ``index`` (1-based) of asset ``asset`` at ``href`` (a GDAL path)."""

    asset: str
    href: str
    index: int
    name: str
    common_name: str | None


def _read_json(source: str) -> dict:
    import pystac

    try:
        return json.loads(pystac.StacIO.default().read_text(source))
    except (OSError, ValueError) as err:
        raise GeoExploraError(f"{source}: not a readable STAC JSON ({str(err).splitlines()[0]})") from None


def _absolute(href: str, base: str) -> str:
    if "://" in href or href.startswith("/"):
        return href
    return urljoin(base, href) if "://" in base else str(Path(base).resolve().parent / href)


def _asset_bands(key: str, asset: dict, base: str) -> list[StacBand]:
    """The bands of one asset, from ``eo:bands`` (STAC 1.0), ``bands`` (1.1) or ``raster:bands``; without any
    of them, from the file itself (its band descriptions, else ``<key>`` or ``<key>_<i>``)."""
    href = to_gdal_path(_absolute(asset["href"], base))
    entries = asset.get("eo:bands") or asset.get("bands") or asset.get("raster:bands")
    if not entries:
        try:
            with rasterio.open(href) as src:
                entries = [{"name": d} if d else {} for d in src.descriptions]
        except RasterioError as err:
            raise GeoExploraError(f"{href}: not a readable raster ({str(err).splitlines()[0]})") from None
    return [
        StacBand(key, href, i + 1, e.get("name") or (key if len(entries) == 1 else f"{key}_{i + 1}"),
                 e.get("common_name") or e.get("eo:common_name"))
        for i, e in enumerate(entries)
    ]


def item_bands(item: dict, base: str) -> list[StacBand]:
    """Every band of the item's raster data assets (thumbnails, overviews, metadata and visual skipped)."""
    bands: list[StacBand] = []
    for key, asset in item.get("assets", {}).items():
        roles = set(asset.get("roles") or [])
        media = str(asset.get("type", "image/tiff")).split(";")[0]
        if (roles & SKIPPED_ROLES and "data" not in roles) or media not in RASTER_MEDIA:
            continue
        bands.extend(_asset_bands(key, asset, base))
    return bands


def pick_bands(bands: Sequence[StacBand], wanted: Sequence[str] | None, item_id: str) -> list[tuple[str, StacBand]]:
    """``(description, band)`` per wanted name, matched by band name, asset key, then common name; all if None."""
    if wanted is None:
        return [(b.name, b) for b in bands]
    picked = []
    for name in wanted:
        match = (next((b for b in bands if b.name == name), None)
                 or next((b for b in bands if b.asset == name), None)
                 or next((b for b in bands if (b.common_name or "").lower() == name.lower()), None))
        if match is None:
            offered = ", ".join(b.name + (f" ({b.common_name})" if b.common_name else "") for b in bands)
            raise GeoExploraError(f"STAC item {item_id}: no asset or band named {name}; it offers {offered}")
        picked.append((name, match))
    return picked


@dataclass(frozen=True)
class _Grid:
    """An asset file's pixel grid and per-band dtype and nodata."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]

    @classmethod
    def read(cls, href: str) -> _Grid:
        try:
            with rasterio.open(href) as src:
                if src.transform.b or src.transform.d:
                    raise GeoExploraError(f"{href}: a rotated geotransform cannot be stacked with other assets")
                return cls(CRS(src.crs), src.transform, src.width, src.height, src.dtypes, src.nodatavals)
        except RasterioError as err:
            raise GeoExploraError(f"{href}: not a readable raster ({str(err).splitlines()[0]})") from None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """left, bottom, right, top in CRS units."""
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f


def _source_xml(band: StacBand, grid: _Grid, left: float, top: float, res: float) -> list[str]:
    """The VRT ``ComplexSource`` placing ``band`` of its file on the VRT grid (origin left/top, pixel ``res``)."""
    t, nodata = grid.transform, grid.nodata[band.index - 1]
    lines = ['    <ComplexSource resampling="nearest">',
             f'      <SourceFilename relativeToVRT="0">{escape(band.href)}</SourceFilename>',
             f"      <SourceBand>{band.index}</SourceBand>",
             f'      <SrcRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{grid.height}"/>',
             f'      <DstRect xOff="{(t.c - left) / res!r}" yOff="{(top - t.f) / res!r}" '
             f'xSize="{grid.width * t.a / res!r}" ySize="{grid.height * -t.e / res!r}"/>']
    if nodata is not None:
        lines.append(f"      <NODATA>{nodata!r}</NODATA>")
    return [*lines, "    </ComplexSource>"]


def _vrt_xml(picked: Sequence[tuple[str, StacBand]], datetime_text: str | None) -> str:
    """A VRT stacking the picked bands on the finest grid of their assets (one CRS), described by name.

    The VRT covers the union of the assets' extents at the smallest pixel size; one dtype for all bands
    (numpy's common type of theirs), each band keeps its asset's nodata.
    """
    grids = {band.href: _Grid.read(band.href) for _, band in picked}
    crs = {g.crs.to_string() for g in grids.values()}
    if len(crs) > 1:
        raise GeoExploraError(f"STAC assets {', '.join(grids)} are in different CRSs ({', '.join(sorted(crs))})")
    res = min(abs(g.transform.a) for g in grids.values())
    lefts, bottoms, rights, tops = zip(*(g.bounds for g in grids.values()), strict=True)
    left, bottom, right, top = min(lefts), min(bottoms), max(rights), max(tops)
    dtype = np.result_type(*[grids[b.href].dtypes[b.index - 1] for _, b in picked]).name
    lines = [f'<VRTDataset rasterXSize="{round((right - left) / res)}" rasterYSize="{round((top - bottom) / res)}">',
             f"  <SRS>{escape(next(iter(grids.values())).crs.to_wkt())}</SRS>",
             f"  <GeoTransform>{left!r}, {res!r}, 0.0, {top!r}, 0.0, {-res!r}</GeoTransform>"]
    if datetime_text:
        lines.append(f'  <Metadata><MDI key="datetime">{escape(datetime_text)}</MDI></Metadata>')
    for n, (name, band) in enumerate(picked, start=1):
        grid = grids[band.href]
        nodata = grid.nodata[band.index - 1]
        lines += [f'  <VRTRasterBand dataType="{GDAL_TYPES[dtype]}" band="{n}">',
                  f"    <Description>{escape(name)}</Description>",
                  *([f"    <NoDataValue>{nodata!r}</NoDataValue>"] if nodata is not None else []),
                  *_source_xml(band, grid, left, top, res),
                  "  </VRTRasterBand>"]
    return "\n".join([*lines, "</VRTDataset>"]) + "\n"


def stac_cache_dir() -> Path:
    """Where STAC VRTs are written: ``$GEOEXPLORA_CACHE/stac`` (default ``~/.cache/geoexplora/stac``)."""
    if os.environ.get("GEOEXPLORA_CACHE"):
        return Path(os.environ["GEOEXPLORA_CACHE"]) / "stac"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "geoexplora" / "stac"


def _vrt_name(item: dict) -> str:
    """``<id>.vrt``, with ``_YYYYMMDD`` of the item's datetime appended when the id holds no such date."""
    stem = re.sub(r"[^\w.-]+", "_", str(item.get("id", "item")))
    day = item_day(item)
    text = day.strftime("%Y%m%d") if day is not None else None
    return f"{stem}.vrt" if text is None or text in stem else f"{stem}_{text}.vrt"


def item_day(item: dict) -> date | None:
    """The acquisition day of a STAC item: its ``datetime`` (or ``start_datetime``), None without one."""
    props = item.get("properties") or {}
    when = props.get("datetime") or props.get("start_datetime")
    try:
        return date.fromisoformat(when[:10]) if when else None
    except ValueError:
        return None


def stac_rasters(source: str | os.PathLike[str], bands: Sequence[str] | None = None,
                 cache_dir: Path | None = None) -> list[Path]:
    """One ``.vrt`` per item of the STAC item or item collection at ``source`` (file or URL), in its order.

    Args:
        source: a STAC Item or ItemCollection (FeatureCollection) JSON.
        bands: names to pick (band name, asset key or ``eo:bands`` common name), in this order; the VRT
            bands are described by these names. Default: every band of every raster data asset.
        cache_dir: where the VRTs go (default :func:`stac_cache_dir`), under a folder named by a hash of
            the source and the bands.
    Raises:
        GeoExploraError: for an unreadable JSON, one that is neither an item nor an item collection, a
            missing band, or assets in different CRSs.
    """
    return [path for path, _ in stac_dated_rasters(source, bands, cache_dir)]


def stac_dated_rasters(source: str | os.PathLike[str], bands: Sequence[str] | None = None,
                       cache_dir: Path | None = None) -> list[tuple[Path, date | None]]:
    """:func:`stac_rasters` with each item's acquisition day (:func:`item_day`), for raster stacks."""
    base = os.fspath(source)
    document = _read_json(base)
    items = document.get("features") if document.get("type") == "FeatureCollection" else [document]
    if not items or any(i.get("type") != "Feature" or "assets" not in i for i in items):
        raise GeoExploraError(f"{base}: not a STAC item or item collection (no Feature with assets)")
    key = hashlib.sha256(json.dumps([base, list(bands or [])]).encode()).hexdigest()[:16]
    folder = (cache_dir or stac_cache_dir()) / key
    folder.mkdir(parents=True, exist_ok=True)
    rasters = []
    for item in items:
        picked = pick_bands(item_bands(item, base), bands, str(item.get("id")))
        if not picked:
            raise GeoExploraError(f"{base}: STAC item {item.get('id')} has no raster data asset")
        path = folder / _vrt_name(item)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(_vrt_xml(picked, (item.get("properties") or {}).get("datetime")))
        os.replace(partial, path)
        rasters.append((path, item_day(item)))
    return rasters


