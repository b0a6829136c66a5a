"""A raster stack: co-registered dated rasters of one place, checked before anything reads them.

:class:`RasterStack` is the typed contract every temporal reader takes: files sorted by date, one date
each, all with the same bands, and either the first file's pixel grid (CRS, transform, size) or another
CRS whose footprint covers the first's (those are reprojected onto the first's grid when read). Built
from a folder (dates in the file names), an explicit list of files, optionally with their dates, or a
STAC item collection of one place (one VRT per item, dated by the item's ``datetime``).
Every problem is one :class:`~geoexplora.errors.GeoExploraError` line naming the file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import rasterio
from rasterio.errors import RasterioIOError
from rasterio.warp import transform_bounds

from geoexplora.data.raster import PathLike, find_raster_files
from geoexplora.data.stac import is_stac_source, stac_dated_rasters
from geoexplora.errors import GeoExploraError

logger = logging.getLogger(__name__)

DEFAULT_DATE_PATTERN = r"(?P<date>\d{8})"
DEFAULT_DATE_FORMAT = "%Y%m%d"
EPOCH = date(1970, 1, 1)


def parse_file_date(path: Path, pattern: str = DEFAULT_DATE_PATTERN, date_format: str = DEFAULT_DATE_FORMAT) -> date:
    """The date in a file name: the regex ``pattern``'s ``date`` group (or whole match) read with ``date_format``.

    ``pattern`` is searched anywhere in the file name (e.g. ``S2_20200105.tif`` with the defaults).
    Raises GeoExploraError naming the file when there is no match or the text is not a valid date.
    """
    match = re.search(pattern, path.name)
    if match is None:
        raise GeoExploraError(f"{path}: no date in the file name (pattern {pattern!r})")
    text = match.group("date") if "date" in match.re.groupindex else match.group(0)
    try:
        return datetime.strptime(text, date_format).date()
    except ValueError:
        raise GeoExploraError(f"{path}: {text!r} in the file name is not a date of format {date_format!r}") from None


def as_date(value: date | str, path: Path) -> date:
    """A date given for ``path``: a ``datetime.date`` or an ISO ``YYYY-MM-DD`` string."""
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise GeoExploraError(f"{path}: date {value!r} is not an ISO date (YYYY-MM-DD)") from None


def days_since_epoch(day: date) -> int:
    """Days from 1970-01-01 to ``day`` (negative before)."""
    return (day - EPOCH).days


#: Grid tolerance, as a share of a pixel: transforms closer than this are the same grid.
GRID_TOLERANCE = 1e-3


@dataclass(frozen=True)
class StackFile:
    """One date of a stack: its file and acquisition day."""

    path: Path
    date: date


@dataclass(frozen=True)
class RasterStack:
    """Dated rasters of one place, in increasing date order, checked to stack (see the module docstring).

    Attributes:
        files: one :class:`StackFile` per date, sorted by date (dates unique).
        crs: the first (earliest) file's CRS: the stack's CRS.
        res: its pixel size (x, y) in CRS units.
        width, height: its size in pixels.
        band_count: bands per file.
        reprojected: files in another CRS, reprojected onto the first's grid when read.
    """

    files: tuple[StackFile, ...]
    crs: rasterio.crs.CRS
    res: tuple[float, float]
    width: int
    height: int
    band_count: int
    reprojected: tuple[Path, ...] = ()

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files)

    @property
    def dates(self) -> tuple[date, ...]:
        return tuple(f.date for f in self.files)

    @property
    def days(self) -> tuple[int, ...]:
        """Each date as days since 1970-01-01 (the model's date input)."""
        return tuple(days_since_epoch(d) for d in self.dates)

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def from_paths(
        cls,
        paths: PathLike | Sequence[PathLike],
        dates: Sequence[date | str] | None = None,
        date_pattern: str = DEFAULT_DATE_PATTERN,
        date_format: str = DEFAULT_DATE_FORMAT,
    ) -> RasterStack:
        """A stack from a folder (searched recursively), files or a STAC item collection, with ``dates``
        aligned to the files as given (explicit list) or, when None, each STAC item's ``datetime`` and
        the other files' names read with ``date_pattern``/``date_format``.

        Raises:
            GeoExploraError: a date that cannot be parsed, two files of one date, a file that cannot be
                opened, has other bands, or lies on another grid of the same CRS / does not cover the
                first file.
        """
        listed = _listed_files(paths)
        if not listed:
            raise GeoExploraError(f"{paths}: no rasters for the stack")
        if dates is not None:
            if len(dates) != len(listed):
                raise GeoExploraError(f"{len(dates)} dates given for {len(listed)} files ({listed[0][0]}, ...); "
                                      "give one date per file")
            dated = [StackFile(p, as_date(d, p)) for (p, _), d in zip(listed, dates, strict=True)]
        else:
            dated = [StackFile(p, day or parse_file_date(p, date_pattern, date_format)) for p, day in listed]
        dated.sort(key=lambda f: f.date)
        for earlier, later in zip(dated, dated[1:]):
            if earlier.date == later.date:
                raise GeoExploraError(f"{later.path}: date {later.date} is also the date of {earlier.path}; "
                                      "a stack holds one file per date")
        return cls._checked(tuple(dated))

    @classmethod
    def _checked(cls, files: tuple[StackFile, ...]) -> RasterStack:
        first = _open_profile(files[0].path)
        reprojected = []
        for f in files[1:]:
            other = _open_profile(f.path)
            if other["count"] != first["count"]:
                raise GeoExploraError(f"{f.path}: {other['count']} bands, but {files[0].path} has {first['count']}; "
                                      "every date of a stack needs the same bands")
            if other["descriptions"] != first["descriptions"] and all(other["descriptions"]) and all(first["descriptions"]):
                raise GeoExploraError(f"{f.path}: bands {list(other['descriptions'])} differ from "
                                      f"{list(first['descriptions'])} of {files[0].path}")
            if other["crs"] == first["crs"]:
                if not _same_grid(first, other):
                    raise GeoExploraError(f"{f.path}: misaligned with {files[0].path} (grid {other['width']}x"
                                          f"{other['height']} at {tuple(other['transform'])[:6]} vs {first['width']}x"
                                          f"{first['height']} at {tuple(first['transform'])[:6]}); co-register the dates")
            elif _covers(other, first):
                reprojected.append(f.path)
            else:
                raise GeoExploraError(f"{f.path}: in {other['crs']} it does not cover {files[0].path} "
                                      f"({first['crs']}); every date must cover the same place")
        if reprojected:
            logger.info("stack: %d file(s) in another CRS are reprojected onto %s: %s", len(reprojected),
                        files[0].path, ", ".join(map(str, reprojected)))
        t = first["transform"]
        return cls(files, first["crs"], (abs(t.a), abs(t.e)), first["width"], first["height"], first["count"],
                   tuple(reprojected))


def _listed_files(paths: PathLike | Sequence[PathLike]) -> list[tuple[Path, date | None]]:
    """The files of ``paths`` in the order given, each with its STAC item's day (None for other files)."""
    raws = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    return [entry for raw in raws
            for entry in (stac_dated_rasters(raw) if is_stac_source(raw) else
                          [(p, None) for p in find_raster_files(raw)])]


def _open_profile(path: Path) -> dict:
    try:
        with rasterio.open(path) as src:
            return {"crs": src.crs, "transform": src.transform, "width": src.width, "height": src.height,
                    "count": src.count, "descriptions": src.descriptions, "bounds": src.bounds}
    except RasterioIOError as err:
        raise GeoExploraError(f"{path}: not a readable raster ({err})") from None


def _same_grid(a: dict, b: dict) -> bool:
    """Same size and transform to within :data:`GRID_TOLERANCE` of a pixel."""
    if (a["width"], a["height"]) != (b["width"], b["height"]):
        return False
    ta, tb = a["transform"], b["transform"]
    pixel = min(abs(ta.a), abs(ta.e))
    return all(abs(x - y) <= GRID_TOLERANCE * pixel for x, y in zip(tuple(ta)[:6], tuple(tb)[:6], strict=True))


def _covers(other: dict, first: dict) -> bool:
    """True when ``other``'s footprint, in ``first``'s CRS, covers ``first``'s to within one of its pixels."""
    left, bottom, right, top = transform_bounds(other["crs"], first["crs"], *other["bounds"])
    f, pixel = first["bounds"], max(abs(first["transform"].a), abs(first["transform"].e))
    return left <= f.left + pixel and bottom <= f.bottom + pixel and right >= f.right - pixel and top >= f.top - pixel
