"""Random windows over a user's unlabelled rasters, for domain pre-training.

:class:`UnlabelledRasterDataModule` reads the rasters with the data layer, computes per-band statistics
once in ``setup`` (or reads them from a JSON file written by ``BandStatistics.to_dict``), and serves
seeded random windows as batches of ``image`` float32 (B, C, H, W) -- (B, T, C, H, W) for temporal
stacks, with ``dates`` int64 (B, T) days since 1970-01-01 -- in the files' units plus ``valid`` bool
(B, H, W) / (B, T, H, W). A stack is checked up front (:class:`~geoexplora.data.stack.RasterStack`).

Several stacks (``stacks``: different places, numbers of dates and CRSs) train together: every sample
holds ``num_dates`` dates (default: the fewest of any stack), a seeded subset of its stack's dates for a
stack with more; windows are drawn from the stacks by pixel area (:mod:`geoexplora.data.multistack`).

Normalisation is not done here: the task reads :attr:`band_names`, :attr:`statistics` and
:attr:`normalization` from its ``trainer.datamodule`` in its own ``setup`` and normalises on the
device, where it also skips (and counts) windows without a valid pixel.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import Sampler

from geoexplora.data import BandStatistics, GeoRasterDataset, compute_band_statistics, random_sampler, stack_samples
from geoexplora.data.multistack import (
    MultiStackDataset,
    check_num_dates,
    open_stacks,
    random_stack_windows,
    stack_entries,
    stack_name,
)
from geoexplora.data.resumable import ResumableDataLoader
from geoexplora.data.stats import NormalizationMode
from geoexplora.data.stack import DEFAULT_DATE_FORMAT, DEFAULT_DATE_PATTERN, RasterStack
from geoexplora.errors import GeoExploraError

logger = logging.getLogger(__name__)


class UnlabelledRasterDataModule(L.LightningDataModule):
    """Seeded random windows over GeoTIFFs of any bands and CRS, with per-band statistics.

    Args:
        paths: rasters or folders (searched recursively), relative to the working directory; GDAL paths
            and URLs (``/vsicurl/``, ``https://``, ``s3://``, ``/vsizip/``) and STAC item or item collection
            JSONs (assets picked by ``bands``: band names, asset keys or ``eo:bands`` common names) too.
        bands: bands to read, in this order (default: all the files' bands).
        band_names: names of all the files' bands, when the files carry no band descriptions (e.g.
            ``[B01, B02, ...]``); default: the descriptions, else ``B1..Bn``.
        nodata: value marking missing pixels, overriding the files' own.
        window_size: side of the windows read from the rasters, in pixels.
        windows_per_epoch: windows drawn per epoch (the epoch length; use ``trainer.max_steps`` to stop).
        batch_size: windows per batch and device.
        num_workers: data-loading worker processes.
        statistics: JSON file with band statistics (``BandStatistics.to_dict``); default: computed.
        statistics_windows: random windows used to compute the statistics.
        normalization: ``standardize`` ((x - mean) / std) or ``percentile`` ((x - p2) / (p98 - p2)).
        seed: seed of the window positions and of the statistics windows.
        temporal: read the files as a stack, dates of one place: samples (T, C, H, W) with their dates.
        dates: ISO dates of the files, in file order, for ``temporal`` (default: from the file names).
        date_pattern: regex whose ``date`` group finds the date in a file name, for ``temporal``.
        date_format: strftime format of that date.
        stacks: several stacks instead of ``paths``, read as stacks (``temporal`` implied): per stack a
            folder, a list of files, or ``{paths: folder_or_files, dates: [ISO dates in file order]}``.
        num_dates: dates per sample, for stacks (default: the fewest dates of any stack); a stack with
            more gives each window a seeded random subset of its dates, in increasing order.
    """

    def __init__(
        self,
        paths: list[str] | None = None,
        bands: list[str] | None = None,
        band_names: list[str] | None = None,
        nodata: float | None = None,
        window_size: int = 224,
        windows_per_epoch: int = 1024,
        batch_size: int = 32,
        num_workers: int = 0,
        statistics: str | None = None,
        statistics_windows: int = 64,
        normalization: NormalizationMode = "standardize",
        seed: int = 0,
        temporal: bool = False,
        dates: list[str] | None = None,
        date_pattern: str = DEFAULT_DATE_PATTERN,
        date_format: str = DEFAULT_DATE_FORMAT,
        stacks: list[str | list[str] | dict[str, Any]] | None = None,
        num_dates: int | None = None,
    ) -> None:
        super().__init__()
        if (paths is None) == (stacks is None):
            raise GeoExploraError("give exactly one of data.paths (rasters, or one stack with data.temporal: true) "
                                  "and data.stacks (several stacks)")
        if isinstance(paths, str):
            paths = [paths]
        sizes = {"window_size": window_size, "windows_per_epoch": windows_per_epoch, "batch_size": batch_size,
                 "statistics_windows": statistics_windows}
        for name, value in sizes.items():
            if value < 1:
                raise GeoExploraError(f"data.{name} must be a positive integer, got {value!r}")
        self.paths = list(paths or [])
        self.bands = bands
        self.file_band_names = band_names
        self.nodata = nodata
        self.window_size = window_size
        self.windows_per_epoch = windows_per_epoch
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.statistics_path = statistics
        self.statistics_windows = statistics_windows
        self.normalization = normalization
        self.seed = seed
        self.temporal = temporal or stacks is not None
        if not self.temporal and num_dates is not None:
            raise GeoExploraError("data.num_dates is for stacks: set data.temporal: true or give data.stacks")
        if stacks is not None and dates is not None:
            raise GeoExploraError("data.dates is for data.paths; give each stack's dates as data.stacks[i].dates")
        # Stacks are checked here, before a run writes anything (dates, bands, grid; opens headers only).
        self.stacks, self.stack_names = self._read_stacks(stacks, dates, date_pattern, date_format) if self.temporal \
            else ([], [])
        self.dates_per_sample = check_num_dates(self.stacks, self.stack_names, num_dates) if self.temporal else None
        self.dataset: GeoRasterDataset | MultiStackDataset | None = None
        self.statistics: BandStatistics | None = None

    def _read_stacks(self, stacks: list[Any] | None, dates: list[str] | None, date_pattern: str,
                     date_format: str) -> tuple[list[RasterStack], list[str]]:
        """The checked stacks (``data.paths`` as one, or ``data.stacks``) and how messages name them."""
        entries = [{"paths": self.paths, "dates": dates}] if stacks is None else stack_entries(stacks, "paths",
                                                                                                 ("paths", "dates"))
        names = ["data.paths"] if stacks is None else [stack_name(i, e, "paths") for i, e in enumerate(entries)]
        return [RasterStack.from_paths(e["paths"], e.get("dates"), date_pattern, date_format) for e in entries], names

    @property
    def num_dates(self) -> int | None:
        """T, the dates of every sample (``data.num_dates``); None when the files are not read as stacks."""
        return self.dates_per_sample

    @property
    def band_names(self) -> tuple[str, ...]:
        """The bands of ``image``, in channel order (after ``setup``)."""
        if self.dataset is None:
            raise GeoExploraError("the data module is not set up yet (call setup('fit') first)")
        return self.dataset.band_names

    def setup(self, stage: str | None = None) -> None:
        """Index the rasters and compute (or read) the band statistics, once."""
        if self.dataset is not None:
            return
        common = dict(bands=self.bands, band_names=self.file_band_names, nodata=self.nodata)
        if self.temporal:
            self.dataset = MultiStackDataset(open_stacks(self.stacks, self.stack_names, **common))
        else:
            self.dataset = GeoRasterDataset(self.paths, **common)
        self.statistics = self._read_statistics() if self.statistics_path else compute_band_statistics(
            self.dataset, self.statistics_windows, self.window_size, self.seed,
            windows=self._windows(self.statistics_windows, self.seed),
        )
        files = len(self.dataset.files) if self.temporal else len(self.dataset.index)
        logger.info("pretrain data: %d file(s), bands %s, %d-pixel windows", files, ",".join(self.band_names),
                    self.window_size)

    def _windows(self, count: int, seed: int) -> Sampler:
        """``count`` seeded random windows per epoch: of the files, or of the stacks by pixel area, each with
        ``num_dates`` dates."""
        if not self.temporal:
            return random_sampler(self.dataset, self.window_size, count, seed)
        return random_stack_windows(self.dataset.images, self.window_size, count, seed, self.dates_per_sample)

    def _read_statistics(self) -> BandStatistics:
        path = Path(self.statistics_path)
        try:
            return BandStatistics.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise GeoExploraError(f"{path}: cannot read band statistics ({type(err).__name__}: {err})") from None

    def sample_batch(self, count: int, seed: int) -> dict[str, Any]:
        """``count`` seeded random windows read in this process and stacked (``image``, ``valid``, stacks'
        ``dates``), apart from
        the training order (e.g. to fit data-initialised heads before the first step)."""
        samples = [self.dataset[query] for query in self._windows(count, seed)]
        return stack_samples(samples)

    def train_dataloader(self) -> ResumableDataLoader:
        """``windows_per_epoch`` seeded random windows per epoch, collated with TorchGeo's ``stack_samples``;
        its position is saved in ``last.ckpt``, so a resumed run continues with the next batch."""
        return ResumableDataLoader(
            self.dataset,
            sampler=self._windows(self.windows_per_epoch, self.seed),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=stack_samples,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
