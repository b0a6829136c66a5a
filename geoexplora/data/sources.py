"""Where analysts keep imagery: the inputs a user names, as geoexplora keeps them.

* A GDAL path stays a string: :class:`GdalPath` (``pathlib.Path`` would collapse the ``//`` of
  ``/vsicurl/https://...``). ``http(s)://``, ``s3://``, ``gs://`` and ``az://`` URLs become GDAL's
  ``/vsicurl/``, ``/vsis3/``, ``/vsigs/`` and ``/vsiaz/`` paths (:func:`geoexplora.gdal_env.to_gdal_path`).
* A STAC item or item collection becomes one VRT per item (:mod:`geoexplora.data.stac`).
* Every ``geoexplora`` command runs inside :func:`geoexplora.gdal_env.cloud_gdal_env` (GDAL's
  cloud-optimised reading options: no directory listing, merged range requests, retries).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import rasterio
from rasterio.errors import RasterioError

from geoexplora.data.stac import is_stac_source, stac_rasters
from geoexplora.gdal_env import is_gdal_path, to_gdal_path

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
        """True when GDAL can open it as a raster (one request for a remote file) or list it as a folder."""
        return self.is_dir() or self.is_file()

    def is_file(self) -> bool:
        try:
            with rasterio.open(self.text):
                return True
        except RasterioError:
            return False

    def is_dir(self) -> bool:
        """True for a folder GDAL can list: a path ending in ``/`` (``/vsis3/bucket/scenes/``, ``/vsizip/a.zip/``)."""
        return self.text.endswith("/") and bool(self.files())

    def files(self) -> list[GdalPath]:
        """Every file under this folder, recursively (GDAL's listing, through pyogrio); [] if it cannot be listed."""
        from pyogrio import vsi_listtree

        try:
            entries = vsi_listtree(self.text)
        except (OSError, ValueError):
            return []
        return [GdalPath(e) for e in entries if not e.endswith("/")]

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


def resolve_inputs(paths: Sequence[str | os.PathLike[str]], bands: Sequence[str] | None = None) -> list[InputPath]:
    """Each path as :func:`as_input_path` keeps it, a STAC JSON replaced by its items' VRTs (:func:`stac_rasters`).

    Nothing is checked here: a missing file is reported by whoever opens it.
    """
    return [p for raw in paths
            for p in (stac_rasters(raw, bands) if is_stac_source(raw) else [as_input_path(raw)])]
