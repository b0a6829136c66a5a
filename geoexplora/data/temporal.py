"""Temporal stacks: several dates of the same place as one (T, C, H, W) sample.

Built on TorchGeo's ``time_series=True`` (one file per date, stacked instead of mosaicked). Dates come
from the file names (a regex with a ``date`` group and a strftime format) or from an explicit list
aligned with the files; each file's time interval is its whole day.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, time
from pathlib import Path

import pandas as pd
import torch
from pyproj import CRS
from torchgeo.datasets.utils import GeoSlice, Sample

from geoexplora.data.raster import GeoRasterDataset, PathLike, find_raster_files
from geoexplora.errors import GeoExploraError

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


class TemporalRasterDataset(GeoRasterDataset):
    """One GeoTIFF per date of the same place, read as a time series (TorchGeo ``time_series=True``).

    Samples (``ds[geoslice]``) are dicts with

    * ``image``: float32 (T, C, H, W), dates in increasing order, NaN replaced by 0;
    * ``valid``: bool (T, H, W), False where any band of that date is nodata or NaN;
    * ``dates``: int64 (T,), days since 1970-01-01 of each slice of ``image``;
    * ``bounds``, ``transform``: as TorchGeo provides them.

    A GeoSlice without a time range (``ds[x, y]``) or a sampler from
    :mod:`geoexplora.data.samplers` yields every date; a time range ``tmin:tmax`` keeps the dates in it.

    Args:
        paths: the files (or a folder of them), one per date.
        dates: the files' dates (``datetime.date`` or ISO ``YYYY-MM-DD`` strings) aligned with
            ``paths`` when it is a list of files; when given, file names are not parsed.
        date_pattern: regex searched in each file name; its ``date`` group (or the whole match) is the date.
        date_format: strftime format of that text.
        Other arguments: as :class:`~geoexplora.data.raster.GeoRasterDataset`.
    """

    def __init__(
        self,
        paths: PathLike | Iterable[PathLike],
        dates: Sequence[date | str] | None = None,
        date_pattern: str = DEFAULT_DATE_PATTERN,
        date_format: str = DEFAULT_DATE_FORMAT,
        bands: Sequence[str] | None = None,
        band_names: Sequence[str] | None = None,
        crs: CRS | None = None,
        res: float | tuple[float, float] | None = None,
        nodata: float | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        cache: bool = True,
    ) -> None:
        files = find_raster_files(paths)
        if dates is None:
            file_dates = [parse_file_date(f, date_pattern, date_format) for f in files]
        else:
            if len(dates) != len(files):
                raise GeoExploraError(f"{len(dates)} dates given for {len(files)} files ({files[0]}, ...)")
            file_dates = [as_date(d, f) for d, f in zip(dates, files, strict=True)]
        self.file_dates = {str(f): d for f, d in zip(files, file_dates, strict=True)}
        super().__init__(files, bands, band_names, crs, res, nodata, transforms, cache, time_series=True)
        self.index = self.index.sort_index(kind="stable")

    def _filepath_to_timestamp(self, filepath: PathLike) -> tuple[datetime, datetime]:
        """The file's day as TorchGeo's (mint, maxt) interval."""
        day = self.file_dates[str(filepath)]
        return pd.Timestamp(datetime.combine(day, time.min)), pd.Timestamp(datetime.combine(day, time.max))

    @property
    def dates(self) -> tuple[date, ...]:
        """Every file's date, in increasing order."""
        return tuple(sorted(self.file_dates.values()))

    def __getitem__(self, index: GeoSlice) -> Sample:
        """The window at ``index`` for each date in it: ``image`` (T, C, H, W), ``valid`` (T, H, W), ``dates`` (T,)."""
        sample = super().__getitem__(index)
        sample["dates"] = torch.tensor(
            [days_since_epoch(self.file_dates[f]) for f in self._filepaths_at(index)], dtype=torch.int64
        )
        return sample

    def _filepaths_at(self, index: GeoSlice) -> list[str]:
        """The files TorchGeo stacks for ``index``, in stacking order (same selection as RasterDataset)."""
        x, y, t = self._disambiguate_slice(index)
        rows = self.index.iloc[self.index.index.overlaps(pd.Interval(t.start, t.stop))]
        rows = rows.iloc[:: t.step].cx[x.start : x.stop, y.start : y.stop]
        return list(rows.filepath)
