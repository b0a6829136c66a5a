"""Several stacks in one training run: windows of every stack, each sample with the same number of dates.

Stacks of different places may hold different numbers of dates (T_k) and lie in different CRSs. Each
stack is read as its own :class:`~geoexplora.data.temporal.TemporalRasterDataset` (in its own CRS, never
reprojected onto another stack's), and every sample holds a fixed ``num_dates`` T (default: the fewest
of any stack): a window of a stack with more dates keeps a random subset of T of its dates, in
increasing order, and ``dates`` holds exactly those, so the date encoding sees the true dates.

Why a fixed T rather than padding to the longest stack with a mask: batches then stack as they are
((B, T, C, H, W), no padding tokens), and nothing downstream changes. Padding would need a key-padding
mask through every timm attention block (timm's ``Block`` takes none), the temporal mean pool before a
segmentation head (:mod:`geoexplora.models.temporal_pool`), the MAE time masking and the DINOv2 crops
would each have to skip padded dates, and a padded date would still cost its tokens. Sampling also acts
as a temporal augmentation: a stack of T_k dates shows a different subset of T in each window.

Windows: :class:`MultiStackSampler` draws the stack (by weight: :func:`random_stack_windows`, for
pre-training and band statistics, weighs each stack by its pixel area, width x height, so every pixel of
every stack is equally likely whatever its CRS units; fine-tuning's splits by their blocks), then
the window with that stack's own sampler, then the dates, all from one generator seeded ``seed + epoch``
(:class:`~geoexplora.data.resumable.EpochSeeded`), so an epoch's windows and date subsets depend only on
the seed and the epoch, and an exact resume skips batches by their indices as for any sampler. A stack
whose T_k equals ``num_dates`` draws no dates, and with one stack no stack is drawn: one stack of
``num_dates`` dates gives the windows of its own sampler, unchanged. Grids (validation, test) keep, per
window, dates drawn from a generator seeded ``seed`` alone: the same every epoch.

A window reads every date of its stack and keeps the drawn ones (:func:`select_dates`): the read of a
stack with T_k dates costs T_k / T of a T-date read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from geoexplora.data.resumable import EpochSeeded
from geoexplora.data.samplers import random_sampler
from geoexplora.data.stack import RasterStack
from geoexplora.data.temporal import TemporalRasterDataset
from geoexplora.errors import GeoExploraError

__all__ = ["MultiStackDataset", "MultiStackSampler", "StackWindow", "StackWindows", "check_num_dates",
           "draw_dates", "open_stacks", "random_stack_windows", "select_dates", "stack_entries", "stack_name"]

#: The keys of a temporal sample with a leading date dimension (T, ...).
DATED_KEYS = ("image", "valid", "dates")


@dataclass(frozen=True)
class StackWindow:
    """One query of a :class:`MultiStackDataset`: a window of stack ``stack`` and the dates to keep.

    Attributes:
        stack: index of the stack (``data.stacks`` order).
        window: the query of that stack's dataset (a GeoSlice tuple: x, y[, t] slices in its CRS).
        dates: indices of the kept dates in the stack's date order, increasing; None: every date.
    """

    stack: int
    window: tuple[slice, ...]
    dates: tuple[int, ...] | None = None


def stack_entries(entries: Sequence[Any], key: str, allowed: Sequence[str]) -> list[dict[str, Any]]:
    """``data.stacks`` as one mapping per stack holding ``key`` (its rasters: a folder, a file or a list of
    files) and some of the ``allowed`` keys; a bare folder, file or list is ``{key: it}``.

    Raises GeoExploraError naming ``data.stacks[i]`` for an empty list, a stack without ``key`` or with
    a key not in ``allowed``.
    """
    if not entries:
        raise GeoExploraError(f"data.stacks is empty; give one entry per stack ({key}: a folder or files)")
    mappings = [dict(e) if isinstance(e, Mapping) else {key: e} for e in entries]
    for i, entry in enumerate(mappings):
        unknown = sorted(set(entry) - set(allowed))
        if unknown or entry.get(key) is None:
            problem = f"unknown key {unknown[0]!r}" if unknown else f"no {key!r}"
            raise GeoExploraError(f"data.stacks[{i}]: {problem}; a stack takes {', '.join(allowed)}")
    return mappings


def stack_name(i: int, entry: Mapping[str, Any], key: str) -> str:
    """How messages name stack ``i``: ``data.stacks[i] (its first path)``."""
    paths = entry[key]
    return f"data.stacks[{i}] ({paths if isinstance(paths, str) else paths[0]})"


def check_num_dates(stacks: Sequence[RasterStack], names: Sequence[str], num_dates: int | None) -> int:
    """T, the dates of every sample: ``num_dates``, or the fewest dates of any stack when None.

    Raises GeoExploraError naming the stack (``names[k]``) with fewer dates than ``num_dates``, or a
    ``num_dates`` below 1.
    """
    if num_dates is None:
        return min(len(s) for s in stacks)
    if num_dates < 1:
        raise GeoExploraError(f"data.num_dates must be a positive integer, got {num_dates!r}")
    for stack, name in zip(stacks, names, strict=True):
        if len(stack) < num_dates:
            raise GeoExploraError(f"{name}: {len(stack)} dates, fewer than data.num_dates {num_dates}; "
                                  f"set data.num_dates to {len(stack)} or less, or drop this stack")
    return num_dates


def open_stacks(stacks: Sequence[RasterStack], names: Sequence[str], **common: Any) -> list[TemporalRasterDataset]:
    """One :class:`TemporalRasterDataset` per stack (``common``: bands, band_names, nodata), checked to
    have the first stack's bands (GeoExploraError naming the stack otherwise)."""
    datasets = [TemporalRasterDataset(stack, **common) for stack in stacks]
    for dataset, name in zip(datasets[1:], names[1:]):
        if dataset.band_names != datasets[0].band_names:
            raise GeoExploraError(f"{name}: bands {list(dataset.band_names)} differ from "
                                  f"{list(datasets[0].band_names)} of {names[0]}; every stack needs the same bands")
    return datasets


def draw_dates(count: int, num_dates: int, generator: torch.Generator) -> tuple[int, ...] | None:
    """``num_dates`` of ``count`` date indices drawn without replacement, increasing; None (and no draw)
    when ``count == num_dates``: every date."""
    if count == num_dates:
        return None
    return tuple(sorted(torch.randperm(count, generator=generator)[:num_dates].tolist()))


def select_dates(sample: dict[str, Any], dates: tuple[int, ...] | None) -> dict[str, Any]:
    """``sample`` with only the dates ``dates`` in ``image`` (T, C, H, W), ``valid`` (T, H, W) and
    ``dates`` (T,); other keys (``mask``, ``bounds``, ...) as they are. None: ``sample`` unchanged."""
    if dates is None:
        return sample
    keep = torch.tensor(dates)
    return {**sample, **{key: sample[key][keep] for key in DATED_KEYS if key in sample}}


class MultiStackDataset(Dataset):
    """Windows of several stacks: ``ds[StackWindow]`` is ``datasets[stack][window]`` with the drawn dates.

    Args:
        images: the stacks' image datasets (:func:`open_stacks`).
        datasets: what to read per stack, samples with ``image`` (T_k, C, H, W), ``valid``, ``dates`` (e.g.
            each image intersected with its labels); default ``images``.

    Attributes:
        band_names: the bands of ``image``, in channel order (the same for every stack).
        files: every stack's files, stack after stack (for messages).
    """

    def __init__(self, images: Sequence[TemporalRasterDataset], datasets: Sequence[Any] | None = None) -> None:
        self.images, self.datasets = list(images), list(datasets if datasets is not None else images)
        self.band_names = self.images[0].band_names
        self.files = [str(f) for image in self.images for f in image.index.filepath]

    def __getitem__(self, query: StackWindow) -> dict[str, Tensor]:
        return select_dates(self.datasets[query.stack][query.window], query.dates)


@dataclass(frozen=True)
class StackWindows:
    """One stack's part of a :class:`MultiStackSampler`.

    Attributes:
        stack: index of the stack in the :class:`MultiStackDataset`.
        sampler: its windows: ``draw(generator)`` gives one random window; iterating it, a grid.
        num_dates: T_k, the stack's dates.
        weight: its share of the random windows (relative; any positive unit).
    """

    stack: int
    sampler: Any
    num_dates: int
    weight: float


def random_stack_windows(images: Sequence[TemporalRasterDataset], size: int, count: int, seed: int,
                         num_dates: int) -> MultiStackSampler:
    """``count`` random windows of ``size`` pixels per epoch over the stacks ``images``, drawn from the stacks by
    pixel area (width x height), each window inside one file (:func:`~geoexplora.data.samplers.random_sampler`)
    and with ``num_dates`` of its stack's dates."""
    parts = [StackWindows(k, random_sampler(image, size, count, seed), len(image.stack),
                          image.stack.width * image.stack.height) for k, image in enumerate(images)]
    return MultiStackSampler(parts, num_dates, count, seed)


class MultiStackSampler(EpochSeeded, Sampler[StackWindow]):
    """:class:`StackWindow` queries over several stacks, each with ``num_dates`` of its dates.

    ``length`` random windows per epoch (stack by weight, window, dates; from a generator seeded
    ``seed + epoch``), or with ``length=None`` every stack's grid in order, with dates from a generator
    seeded ``seed`` (the same every epoch).
    """

    def __init__(self, stacks: Sequence[StackWindows], num_dates: int, length: int | None, seed: int) -> None:
        self.stacks, self.num_dates, self.length, self.seed = list(stacks), num_dates, length, seed
        self.weights = torch.tensor([s.weight for s in self.stacks], dtype=torch.float64)

    def draw(self, generator: torch.Generator) -> StackWindow:
        """One random window: the stack (drawn only when there are several), its window, its dates."""
        pick = int(torch.multinomial(self.weights, 1, generator=generator)) if len(self.stacks) > 1 else 0
        part = self.stacks[pick]
        window = tuple(part.sampler.draw(generator))
        return StackWindow(part.stack, window, draw_dates(part.num_dates, self.num_dates, generator))

    def __iter__(self) -> Iterator[StackWindow]:
        if self.length is not None:
            generator = self.epoch_generator()
            yield from (self.draw(generator) for _ in range(self.length))
            return
        generator = torch.Generator().manual_seed(self.seed)
        for part in self.stacks:
            for window in part.sampler:
                yield StackWindow(part.stack, tuple(window), draw_dates(part.num_dates, self.num_dates, generator))

    def __len__(self) -> int:
        return self.length if self.length is not None else sum(len(s.sampler) for s in self.stacks)

    def grid(self) -> MultiStackSampler:
        """The same stacks on their grids (each stack sampler's ``grid()``)."""
        return MultiStackSampler([replace(s, sampler=s.sampler.grid()) for s in self.stacks], self.num_dates, None,
                                 self.seed)
