"""Windows read straight from the file when TorchGeo's merge would return the same pixels.

TorchGeo's ``RasterDataset.__getitem__`` answers every window with a GeoDataFrame query (``index.cx``), a
``rasterio.merge.merge`` of the files found (with a masked read, through a WarpedVRT when it reprojects or
overrides nodata) and three recomputations of the dataset's bounds: about 7x a plain windowed read of a
224-px window of the Landsat 7 scene (``bench/data_bench.md``). :class:`DirectWindowReads` reads the window
with one ``src.read(window=...)`` when that gives merge's result exactly:

* the window meets one file only, not a time series, not one file per band;
* the file's CRS and resolution are the dataset's (no reprojection, no resampling), its transform north-up,
  and the window on its pixel grid (the samplers snap windows to it);
* the file has no GDAL mask or alpha band, and merge's fill is nodata as TorchGeo's handle for the file
  has it (the file's own, or a ``nodata`` override through a WarpedVRT, whose dtype merge then takes: a
  NaN fill makes an integer file float64), representable in that dtype: then merge's masked copy keeps every
  pixel, nodata ones included, and fills pixels outside the file with that value (0 without one), as here.

Everything else goes to TorchGeo. Open files are cached per process (:class:`ProcessHandles`): a handle
opened before a DataLoader forks its workers would share its file offset with the parent's.
"""

from __future__ import annotations

import atexit
import math
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import torch
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, bounds as window_bounds, from_bounds
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import GeoSlice, Sample, array_to_tensor

MAX_OPEN_FILES = 128  # as TorchGeo's handle cache
GRID_TOLERANCE = 1e-6  # pixels: a window offset this close to an integer is on the grid


class ProcessHandles:
    """Open datasets by key, for the process that opened them; the least recently used beyond ``maxsize``
    are dropped (closed when collected). Pickles empty, so a spawned worker opens its own. Every cache is
    closed at interpreter exit, while rasterio can still close its datasets (left to the final garbage
    collection, each would print ``Error in sys.excepthook``)."""

    def __init__(self, maxsize: int = MAX_OPEN_FILES) -> None:
        self.maxsize = maxsize
        self._pid = os.getpid()
        self._handles: OrderedDict[Hashable, Any] = OrderedDict()
        _OPEN_CACHES.add(self)

    def close(self) -> None:
        """Close this process's open datasets."""
        handles, self._handles = self._handles, OrderedDict()
        if self._pid == os.getpid():
            for handle in handles.values():
                dataset = handle.src if isinstance(handle, DirectFile) else handle
                for opened in (dataset, getattr(dataset, "src_dataset", None)):  # a WarpedVRT and its file
                    if opened is not None:
                        opened.close()

    def get(self, key: Hashable, open_handle: Callable[[], Any]) -> Any:
        if self._pid != os.getpid():  # a forked worker: never read through the parent's file offsets
            self._pid, self._handles = os.getpid(), OrderedDict()
        if key in self._handles:
            self._handles.move_to_end(key)
            return self._handles[key]
        handle = self._handles[key] = open_handle()  # may be None: remembered too
        if len(self._handles) > self.maxsize:
            self._handles.popitem(last=False)
        return handle

    def __getstate__(self) -> dict[str, int]:
        return {"maxsize": self.maxsize}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["maxsize"])


_OPEN_CACHES: weakref.WeakSet[ProcessHandles] = weakref.WeakSet()


@atexit.register
def _close_open_caches() -> None:
    for cache in list(_OPEN_CACHES):
        cache.close()


def has_mask(src: DatasetReader, bands: Sequence[int] | None = None) -> bool:
    """Whether GDAL masks some pixels of ``bands`` (1-based; default all) beyond the nodata value: an alpha
    band, a per-dataset mask (``.msk`` or internal) or a per-band mask. Such pixels count as nodata."""
    flags = src.mask_flag_enums
    wanted = range(1, src.count + 1) if bands is None else bands
    plain = ({MaskFlags.all_valid}, {MaskFlags.nodata})
    return any(set(flags[b - 1]) not in plain for b in wanted)


@dataclass(frozen=True)
class DirectFile:
    """A file read directly: its handle, the dtype and fill merge would give its windows when it comes first,
    and its nodata as TorchGeo's handle has it (the pixels merge's masked read hides)."""

    src: DatasetReader
    dtype: str
    fill: float
    nodata: float | None


Part = tuple[Window, Window]  # a file's source window and where it lands in the output
OUTSIDE: Part = (Window(0, 0, 0, 0), Window(0, 0, 0, 0))  # the file's box meets the window's on an edge only


def whole_pixels(part: Part) -> bool:
    """Whether the source window is whole pixels, as many as the output window's."""
    source, placed = part
    return (all(float(v).is_integer() for v in source.flatten())
            and (source.width, source.height) == (placed.width, placed.height))


def holds_fill(region: np.ndarray, fill: float) -> np.ndarray:
    """Where merge counts ``region`` as not yet written (its ``region_mask``)."""
    if math.isnan(fill):
        return np.isnan(region)
    if np.issubdtype(region.dtype, np.integer):
        return region == fill
    return np.isclose(region, fill)


def is_nodata(data: np.ndarray, nodata: float | None) -> np.ndarray | np.bool_:
    """The pixels of ``data`` a masked read with this nodata hides (no GDAL mask: checked before)."""
    if nodata is None:
        return np.False_
    return np.isnan(data) if math.isnan(nodata) else data == nodata


def merge_fills(nodata: float | None, dtype: str) -> bool:
    """Whether ``rasterio.merge.merge`` fills and copies with ``nodata`` in ``dtype`` (its ``inrange``); when
    it does not, merge returns zeros where a plain read would not."""
    if nodata is None or math.isnan(nodata):
        return True
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return bool(info.min <= nodata <= info.max)
    info = np.finfo(dtype)
    return bool(info.min <= nodata <= info.max and np.can_cast(np.min_scalar_type(nodata), dtype))


def same_nodata(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


class DirectWindowReads(RasterDataset):
    """A TorchGeo RasterDataset whose windows in one file on the dataset's grid are plain windowed reads
    (see the module docstring); samples are identical to TorchGeo's."""

    _handles: ProcessHandles
    _crs_changes = 0  # the index is reprojected in place when the CRS changes: part of every cache key
    _footprints: tuple[Hashable, np.ndarray, list[str]] | None = None  # (key, (N, 4) xmin ymin xmax ymax, paths)
    _bounds_cache: tuple[Hashable, tuple[slice, slice, slice]] | None = None
    _time_cache: tuple[Hashable, np.ndarray] | None = None

    @property
    def crs(self) -> Any:
        return RasterDataset.crs.fget(self)

    @crs.setter
    def crs(self, new_crs: Any) -> None:
        RasterDataset.crs.fset(self, new_crs)
        self._crs_changes += 1

    @property
    def handles(self) -> ProcessHandles:
        if "_handles" not in self.__dict__:
            self._handles = ProcessHandles()
        return self._handles

    @property
    def bounds(self) -> tuple[slice, slice, slice]:
        """TorchGeo's bounds (a GeoDataFrame reduction), computed once per index, CRS and resolution."""
        key = (id(self.index), self._crs_changes, self.res)
        if self._bounds_cache is None or self._bounds_cache[0] != key:
            self._bounds_cache = (key, super().bounds)
        return self._bounds_cache[1]

    def _cached_load_warp_file(self, filepath: str, crs: Any) -> DatasetReader | WarpedVRT:
        """TorchGeo's handle for ``filepath`` in ``crs`` (maybe a WarpedVRT), cached per process."""
        return self.handles.get(("torchgeo", filepath, str(crs)), lambda: self._load_warp_file(filepath, crs))

    def _files_at(self, x: slice, y: slice, t: slice) -> list[str]:
        """The files TorchGeo's query (time overlap, then ``index.cx``: bounding boxes that meet, edges
        included) finds for a rectangular window, in index order; from arrays built once per index."""
        key = (id(self.index), self._crs_changes)
        if self._footprints is None or self._footprints[0] != key:
            self._footprints = (key, self.index.geometry.bounds.to_numpy(), list(self.index.filepath))
        _, boxes, paths = self._footprints
        hit = ((boxes[:, 0] <= x.stop) & (boxes[:, 2] >= x.start) & (boxes[:, 1] <= y.stop) & (boxes[:, 3] >= y.start)
               & self._overlaps_in_time(t))
        return [paths[i] for i in np.flatnonzero(hit)]

    def _overlaps_in_time(self, t: slice) -> np.ndarray:
        """Bool (N,): the files whose time range TorchGeo's query keeps for ``t``, cached by ``t`` (samplers
        give every window the same time range)."""
        key = (id(self.index), t.start, t.stop)
        if self._time_cache is None or self._time_cache[0] != key:
            self._time_cache = (key, np.asarray(self.index.index.overlaps(pd.Interval(t.start, t.stop))))
        return self._time_cache[1]

    @staticmethod
    def _file_part(src: DatasetReader, out_transform: Affine, out_bounds: tuple[float, ...]) -> Part | None:
        """Where merge reads ``src`` for an output of ``out_transform`` and ``out_bounds``: its source window
        (fractional pixels when float rounding says so) and output window, computed as merge does;
        ``OUTSIDE`` when merge skips the file; None for a rotated or flipped file."""
        t = src.transform
        if t.b or t.d or t.a <= 0 or t.e >= 0:
            return None
        left, bottom, right, top = src.bounds
        west, east = max(left, out_bounds[0]), min(right, out_bounds[2])
        south, north = max(bottom, out_bounds[1]), min(top, out_bounds[3])
        if west >= east or south >= north:
            return OUTSIDE
        source = from_bounds(west, south, east, north, t)
        out = from_bounds(west, south, east, north, out_transform)
        out = Window(math.floor(out.col_off + 0.1), math.floor(out.row_off + 0.1),  # merge's win_align
                     math.floor(out.width + 0.5), math.floor(out.height + 0.5))
        return source, out

    def _open_direct(self, path: str) -> DirectFile | None:
        """``path`` opened for direct reads, with merge's dtype and fill taken from TorchGeo's handle (a
        WarpedVRT when nodata is overridden, e.g. promoted to float64 for a NaN fill of an integer file), or
        None when a plain read would not give merge's pixels: another CRS or grid, a GDAL mask, a nodata
        override that differs from the handle's fill, a fill merge cannot use."""
        src = rasterio.open(path)
        handle = self._cached_load_warp_file(path, self.crs)
        fill, dtype = handle.nodata, handle.dtypes[0]
        same_grid = (handle.transform, handle.width, handle.height) == (src.transform, src.width, src.height)
        overridden = isinstance(handle, WarpedVRT)  # same CRS: a VRT only for TorchGeo's nodata override
        if (src.crs is None or src.crs != rasterio.crs.CRS.from_user_input(self.crs) or not same_grid
                or has_mask(src) or not merge_fills(fill, dtype) or (overridden and not same_nodata(fill, self.nodata))):
            src.close()
            return None
        return DirectFile(src, dtype, 0 if fill is None else fill, fill)

    def _direct_sample(self, index: GeoSlice) -> Sample | None:
        """The window read straight from its files, or None when TorchGeo must read it."""
        if self.separate_files or not self.cache:
            return None
        x, y, t = self._disambiguate_slice(index)
        files = self._files_at(x, y, t) if t.step == 1 else []
        if not files:  # none: TorchGeo raises its IndexError
            return None
        directs = [self.handles.get(("direct", path, self._crs_changes), lambda: self._open_direct(path))
                   for path in files]
        if any(d is None for d in directs):
            return None
        width, height = int(round((x.stop - x.start) / x.step)), int(round((y.stop - y.start) / y.step))
        out_transform = Affine.translation(x.start, y.stop) @ Affine.scale(x.step, -y.step)  # as merge builds it
        out_bounds = window_bounds(Window(0, 0, width, height), out_transform)
        parts = [self._file_part(d.src, out_transform, out_bounds) for d in directs]
        if any(p is None for p in parts):
            return None
        if self.time_series:  # one date per file, each merged alone (TorchGeo's np.stack of merges)
            data = np.stack([self._merge([d], [p], (height, width)) for d, p in zip(directs, parts)])
        else:
            data = self._merge(directs, parts, (height, width))
        tensor = array_to_tensor(data).to(self.dtype)
        sample: Sample = {"bounds": self._slice_to_tensor(index),
                          "transform": torch.tensor(Affine(x.step, 0.0, x.start, 0.0, -y.step, y.stop))}  # from_origin
        if self.is_image:
            sample["image"] = tensor
        else:
            sample["mask"] = tensor.squeeze(-3)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _merge(self, directs: list[DirectFile], parts: list[Part], shape: tuple[int, int]) -> np.ndarray:
        """(C, H, W) as ``rasterio.merge.merge(method="first")`` builds it: the first file's dtype and fill,
        then each file's pixels copied where the output still holds the fill (merge's test: NaN, ``isclose``
        for floats, equality for integers) and the file's own nodata is not."""
        first, height, width = directs[0], *shape
        count = len(self.band_indexes) if self.band_indexes else first.src.count
        if len(directs) == 1 and parts[0][1] == Window(0, 0, width, height) and whole_pixels(parts[0]):
            # the whole window in one file: every pixel is copied or already the fill (its nodata)
            return self._read_part(first.src, parts[0], count).astype(first.dtype, copy=False)
        out = np.full((count, height, width), first.fill, first.dtype)
        for direct, part in zip(directs, parts):
            source, placed = part
            if placed.width == 0:  # OUTSIDE
                continue
            data = self._read_part(direct.src, part, count)
            hidden = np.ma.getmaskarray(data) if np.ma.isMaskedArray(data) else is_nodata(data, direct.nodata)
            region = out[:, placed.row_off:placed.row_off + placed.height, placed.col_off:placed.col_off + placed.width]
            np.copyto(region, np.ma.getdata(data), where=holds_fill(region, first.fill) & ~hidden, casting="unsafe")
        return out

    def _read_part(self, src: DatasetReader, part: Part, count: int) -> np.ndarray:
        """merge's read of one file: whole pixels read plainly (its masked read hides exactly the nodata
        pixels then), a fractional window as merge asks GDAL, masked and resampled to the output's size."""
        source, placed = part
        if whole_pixels(part):
            return src.read(self.band_indexes, window=Window(*(int(v) for v in source.flatten())))
        return src.read(self.band_indexes, window=source, out_shape=(count, placed.height, placed.width),
                        resampling=self.resampling, masked=True)

    def __getitem__(self, index: GeoSlice) -> Sample:
        sample = self._direct_sample(index)
        return sample if sample is not None else super().__getitem__(index)
