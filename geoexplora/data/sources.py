"""Where analysts keep imagery: GDAL virtual paths (``/vsicurl/``, ``s3://``, ``/vsizip/``...) and STAC items.

* A GDAL path stays a string: :class:`GdalPath` (``pathlib.Path`` would collapse the ``//`` of
  ``/vsicurl/https://...``). ``http(s)://``, ``s3://``, ``gs://`` and ``az://`` URLs become GDAL's
  ``/vsicurl/``, ``/vsis3/``, ``/vsigs/`` and ``/vsiaz/`` paths.
* A STAC item or item collection (``.json`` file or URL, read with pystac) becomes one local ``.vrt`` per
  item that stacks the picked assets as bands, each band described by its name, so the rest of
  geoexplora selects bands by name as it does in a GeoTIFF. Assets are picked by asset key, band name or
  ``eo:bands`` common name (``red``, ``nir``...); bands of a coarser resolution are resampled (nearest) to
  the finest. The file name carries the item's date (``<id>_YYYYMMDD.vrt``) for date-aware readers.
* Every ``geoexplora`` command runs inside :func:`geoexplora.gdal_env.cloud_gdal_env` (GDAL's
  cloud-optimised reading options: no directory listing, merged range requests, retries).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlparse
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from geoexplora.errors import GeoExploraError

URL_TO_VSI = {"http://": "/vsicurl/", "https://": "/vsicurl/", "s3://": "/vsis3/", "gs://": "/vsigs/",
              "az://": "/vsiaz/"}
STAC_SUFFIXES = (".json", ".geojson")
RASTER_MEDIA = ("image/tiff", "image/jp2", "image/vnd.stac.geotiff", "application/x-hdf")
SKIPPED_ROLES = {"thumbnail", "overview", "metadata", "visual"}


def is_gdal_path(text: str | os.PathLike[str]) -> bool:
    """True for a GDAL virtual path (``/vsi...``) or a URL GDAL reads (``http(s)://``, ``s3://``, ...)."""
    text = str(text) if isinstance(text, GdalPath) else os.fspath(text)
    return text.startswith("/vsi") or text.startswith(tuple(URL_TO_VSI))


def to_gdal_path(text: str) -> str:
    """``https://host/a.tif`` -> ``/vsicurl/https://host/a.tif``, ``s3://b/k`` -> ``/vsis3/b/k``; others unchanged."""
    for prefix, vsi in URL_TO_VSI.items():
        if text.startswith(prefix):
            return vsi + (text if vsi == "/vsicurl/" else text[len(prefix):])
    return text


@dataclass(frozen=True)
class GdalPath(os.PathLike):
    """A raster GDAL reads by a virtual path: usable where geoexplora takes a ``Path`` for an input.

    ``name``/``stem``/``suffix`` are those of the last path part (``/vsizip/a.zip/b/c.tif`` -> ``c.tif``).
    """

    text: str

    def __fspath__(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    @property
    def _tail(self) -> PurePosixPath:
        return PurePosixPath(urlparse(self.text.split("://", 1)[-1]).path or self.text)

    @property
    def name(self) -> str:
        return self._tail.name

    @property
    def stem(self) -> str:
        return self._tail.stem

    @property
    def suffix(self) -> str:
        return self._tail.suffix

    def exists(self) -> bool:
        """True when GDAL can open it (one request for a remote file)."""
        return self.is_file()

    def is_file(self) -> bool:
        try:
            with rasterio.open(self.text):
                return True
        except RasterioError:
            return False

    def is_dir(self) -> bool:
        return False

    def resolve(self) -> GdalPath:
        """Already absolute: itself."""
        return self

    def stat(self) -> os.stat_result:
        """Zero size and time: GDAL's ``VSIStatL`` is not exposed by rasterio, so a remote file's identity
        (e.g. for ``predict --resume``) is its path alone."""
        return os.stat_result((0,) * 10)


InputPath = Path | GdalPath


def as_input_path(path: str | os.PathLike[str]) -> InputPath:
    """A user's raster path as geoexplora keeps it: :class:`GdalPath` for GDAL paths and URLs, else ``Path``."""
    if isinstance(path, GdalPath):
        return path
    text = os.fspath(path)
    return GdalPath(to_gdal_path(text)) if is_gdal_path(text) else Path(text)


# --- STAC -------------------------------------------------------------------------------------------------


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
        if roles & SKIPPED_ROLES and "data" not in roles or media not in RASTER_MEDIA:
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


def _vrt_xml(picked: Sequence[tuple[str, StacBand]], datetime_text: str | None) -> str:
    """A VRT stacking the picked bands on the finest grid of their assets (one CRS), described by name."""
    infos = {}
    for _, band in picked:
        if band.href not in infos:
            try:
                with rasterio.open(band.href) as src:
                    infos[band.href] = (src.crs, src.transform, src.width, src.height, src.dtypes, src.nodatavals)
            except RasterioError as err:
                raise GeoExploraError(f"{band.href}: not a readable raster ({str(err).splitlines()[0]})") from None
    crs = {str(i[0]) for i in infos.values()}
    if len(crs) > 1:
        raise GeoExploraError(f"STAC assets {', '.join(infos)} are in different CRSs ({', '.join(sorted(crs))})")
    res = min(abs(i[1].a) for i in infos.values())
    left = min(i[1].c for i in infos.values())
    top = max(i[1].f for i in infos.values())
    right = max(i[1].c + i[1].a * i[2] for i in infos.values())
    bottom = min(i[1].f + i[1].e * i[3] for i in infos.values())
    width, height = round((right - left) / res), round((top - bottom) / res)
    dtype = np.result_type(*[i[4][b.index - 1] for _, b in picked for i in [infos[b.href]]]).name
    gdal_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
                 "float32": "Float32", "float64": "Float64", "int8": "Int8"}[dtype]
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"  <SRS>{escape(next(iter(infos.values()))[0].to_wkt())}</SRS>",
             f"  <GeoTransform>{left!r}, {res!r}, 0.0, {top!r}, 0.0, {-res!r}</GeoTransform>"]
    if datetime_text:
        lines.append(f'  <Metadata><MDI key="datetime">{escape(datetime_text)}</MDI></Metadata>')
    for n, (name, band) in enumerate(picked, start=1):
        crs_, transform, w, h, _, nodatas = infos[band.href]
        nodata = nodatas[band.index - 1]
        x0, y0 = (transform.c - left) / res, (top - transform.f) / res
        lines += [f'  <VRTRasterBand dataType="{gdal_type}" band="{n}">',
                  f"    <Description>{escape(name)}</Description>"]
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        lines += ['    <ComplexSource resampling="nearest">',
                  f'      <SourceFilename relativeToVRT="0">{escape(band.href)}</SourceFilename>',
                  f"      <SourceBand>{band.index}</SourceBand>",
                  f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                  f'      <DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{w * transform.a / res!r}" '
                  f'ySize="{h * -transform.e / res!r}"/>']
        if nodata is not None:
            lines.append(f"      <NODATA>{nodata!r}</NODATA>")
        lines += ["    </ComplexSource>", "  </VRTRasterBand>"]
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def stac_cache_dir() -> Path:
    """Where STAC VRTs are written: ``$GEOEXPLORA_CACHE/stac`` (default ``~/.cache/geoexplora/stac``)."""
    root = os.environ.get("GEOEXPLORA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(root) / ("stac" if os.environ.get("GEOEXPLORA_CACHE") else "geoexplora/stac")


def _vrt_name(item: dict) -> str:
    """``<id>.vrt``, with ``_YYYYMMDD`` of the item's datetime appended when the id holds no such date."""
    stem = re.sub(r"[^\w.-]+", "_", str(item.get("id", "item")))
    when = (item.get("properties") or {}).get("datetime") or (item.get("properties") or {}).get("start_datetime")
    day = when[:10].replace("-", "") if when else None
    return f"{stem}.vrt" if day is None or day in stem else f"{stem}_{day}.vrt"


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
    base = os.fspath(source)
    document = _read_json(base)
    items = document.get("features") if document.get("type") == "FeatureCollection" else [document]
    if not items or any(i.get("type") != "Feature" or "assets" not in i for i in items):
        raise GeoExploraError(f"{base}: not a STAC item or item collection (no Feature with assets)")
    key = hashlib.sha256(json.dumps([base, list(bands or [])]).encode()).hexdigest()[:16]
    folder = (cache_dir or stac_cache_dir()) / key
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in items:
        picked = pick_bands(item_bands(item, base), bands, str(item.get("id")))
        if not picked:
            raise GeoExploraError(f"{base}: STAC item {item.get('id')} has no raster data asset")
        path = folder / _vrt_name(item)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(_vrt_xml(picked, (item.get("properties") or {}).get("datetime")))
        os.replace(partial, path)
        paths.append(path)
    return paths


def resolve_inputs(paths: Sequence[str | os.PathLike[str]], bands: Sequence[str] | None = None) -> list[InputPath]:
    """Each path as :func:`as_input_path` keeps it, a STAC JSON replaced by its items' VRTs (:func:`stac_rasters`).

    Nothing is checked here: a missing file is reported by whoever opens it.
    """
    return [p for raw in paths
            for p in (stac_rasters(raw, bands) if is_stac_source(raw) else [as_input_path(raw)])]
