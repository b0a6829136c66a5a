"""Temporal stacks: several dates of the same place as one (T, C, H, W) sample.

Built on TorchGeo's ``time_series=True`` (one file per date, stacked instead of mosaicked) over a
checked :class:`~geoexplora.data.stack.RasterStack`: dates from the file names (a regex with a ``date``
group and a strftime format) or from an explicit list aligned with the files, each file's time interval
its whole day, files in another CRS read onto the first (earliest) file's grid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, time

import pandas as pd
import torch
from pyproj import CRS
from torchgeo.datasets.utils import GeoSlice, Sample

from geoexplora.data.raster import GeoRasterDataset, PathLike
from geoexplora.data.stack import (  # noqa: F401 (parse_file_date: imported from here by embed)
    DEFAULT_DATE_FORMAT,
    DEFAULT_DATE_PATTERN,
    RasterStack,
    days_since_epoch,
    parse_file_date,
)


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
        paths: the files (or a folder of them), one per date, or a checked :class:`RasterStack`.
        dates: the files' dates (``datetime.date`` or ISO ``YYYY-MM-DD`` strings) aligned with
            ``paths`` when it is a list of files; when given, file names are not parsed.
        date_pattern: regex searched in each file name; its ``date`` group (or the whole match) is the date.
        date_format: strftime format of that text.
        Other arguments: as :class:`~geoexplora.data.raster.GeoRasterDataset`.
    """

    def __init__(
        self,
        paths: PathLike | Iterable[PathLike] | RasterStack,
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
        self.stack = paths if isinstance(paths, RasterStack) else RasterStack.from_paths(
            paths, dates, date_pattern, date_format)
        self.file_dates = {str(f.path): f.date for f in self.stack.files}
        if crs is None and res is None:
            crs, res = CRS.from_user_input(self.stack.crs.to_wkt()), self.stack.res
        super().__init__(list(self.stack.paths), bands, band_names, crs, res, nodata, transforms, cache,
                         time_series=True)
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
