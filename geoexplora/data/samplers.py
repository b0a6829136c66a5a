"""Window samplers over a GeoDataset: seeded random windows and a regular grid, on TorchGeo's samplers.

Both differ from TorchGeo's ``RandomGeoSampler`` / ``GridGeoSampler`` in two small ways:

* each window's time range is the whole dataset's (the sampler's ``toi``), not the one file it was drawn
  from, so a time-series dataset yields every date of the place, and a grid visits each footprint
  once however many dates share it;
* the random sampler draws the file as well as the offset from its own generator (TorchGeo draws the
  file from the global RNG), seeded ``seed + epoch`` (:class:`~geoexplora.data.resumable.EpochSeeded`),
  so an epoch's windows depend only on the seed and the epoch: the same every time, and the same after
  a resume.

A dataset whose every file is smaller than the window is a GeoExploraError (TorchGeo would yield no
window from a grid and fail inside ``torch.multinomial`` for random windows).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torchgeo.datasets import GeoDataset
from torchgeo.datasets.utils import stack_samples
from torchgeo.samplers import GridGeoSampler, RandomGeoSampler, Units
from torchgeo.samplers.utils import get_random_bounding_box

from geoexplora.data.resumable import EpochSeeded
from geoexplora.errors import GeoExploraError

__all__ = ["FullTimeGridSampler", "SeededRandomSampler", "grid_sampler", "random_sampler", "stack_samples"]

WindowSlice = tuple[slice, slice, slice]



@contextmanager
def _torchgeo_deprecations_silenced() -> Iterator[None]:
    """TorchGeo 0.10 marks these samplers and their helpers deprecated (in favour of RandomPatchSampler /
    GriddedPatchSampler, whose random variant cannot place a window that nearly fills a file); we keep them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


with _torchgeo_deprecations_silenced():

    class SeededRandomSampler(EpochSeeded, RandomGeoSampler):
        """RandomGeoSampler drawing files and offsets from a generator seeded ``seed + epoch``; windows span
        the whole time range."""

        def __init__(self, dataset: GeoDataset, size: tuple[int, int], length: int, seed: int) -> None:
            with _torchgeo_deprecations_silenced():
                super().__init__(dataset, size, length=length, units=Units.PIXELS)
            self.seed = seed

        def draw(self, generator: torch.Generator) -> WindowSlice:
            """One window: a file by area, then an offset in it, both from ``generator``."""
            tile = int(torch.multinomial(self.areas, 1, generator=generator))
            with _torchgeo_deprecations_silenced():
                x, y = get_random_bounding_box(self.bounds[tile], self.size, self.res, generator)
            return x, y, slice(self.toi.left, self.toi.right)

        def __iter__(self) -> Iterator[WindowSlice]:
            generator = self.epoch_generator()
            for _ in range(len(self)):
                yield self.draw(generator)

    class FullTimeGridSampler(GridGeoSampler):
        """GridGeoSampler visiting each distinct footprint once, each window spanning the whole time range."""

        def __init__(self, dataset: GeoDataset, size: float | tuple[float, float], stride: float | tuple[float, float] | None) -> None:
            with _torchgeo_deprecations_silenced():
                super().__init__(dataset, size, stride, units=Units.PIXELS)
            self.index = self.index[~self.index.geometry.normalize().duplicated()]
            self.length = sum(1 for _ in self)

        def __iter__(self) -> Iterator[WindowSlice]:
            with _torchgeo_deprecations_silenced():
                windows = list(super().__iter__())
            for x, y, _ in windows:
                yield x, y, slice(self.toi.left, self.toi.right)


def _pixel_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_window_fits(dataset: GeoDataset, size: int | tuple[int, int]) -> None:
    """Raise GeoExploraError naming the files and both sizes when no file is at least ``size`` pixels (H, W)."""
    height, width = _pixel_size(size)
    xres, yres = dataset.res
    extents = [(g.bounds[2] - g.bounds[0], g.bounds[3] - g.bounds[1]) for g in dataset.index.geometry]
    if any(w >= width * xres - 1e-6 * xres and h >= height * yres - 1e-6 * yres for w, h in extents):
        return
    files = ", ".join(dict.fromkeys(str(f) for f in dataset.index.get("filepath", ["(dataset)"])))
    largest_w, largest_h = max(extents, key=lambda e: e[0] * e[1])
    raise GeoExploraError(
        f"{files}: {round(largest_h / yres)}x{round(largest_w / xres)} pixels (HxW), "
        f"smaller than the {height}x{width} window"
    )


def random_sampler(dataset: GeoDataset, size: int | tuple[int, int], length: int, seed: int = 0) -> SeededRandomSampler:
    """``length`` random windows of ``size`` pixels (H, W) per epoch, the same ones for the same ``seed`` and
    epoch (``set_epoch``; epoch 0 until set).

    Windows are snapped to the pixel grid and lie inside one file's footprint (files drawn by area).
    """
    check_window_fits(dataset, size)
    return SeededRandomSampler(dataset, _pixel_size(size), length, seed)


def grid_sampler(dataset: GeoDataset, size: int | tuple[int, int], stride: int | tuple[int, int] | None = None) -> FullTimeGridSampler:
    """Windows of ``size`` pixels (H, W) every ``stride`` pixels (default: ``size``) over each footprint.

    As in TorchGeo, the grid starts at each footprint's lower-left corner and its last row/column may
    reach past the footprint (read as nodata).
    """
    check_window_fits(dataset, size)
    return FullTimeGridSampler(dataset, _pixel_size(size), None if stride is None else _pixel_size(stride))
