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

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
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
from rasterio.windows import Window
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import GeoSlice, Sample, array_to_tensor

MAX_OPEN_FILES = 128  # as TorchGeo's handle cache
GRID_TOLERANCE = 1e-6  # pixels: a window offset this close to an integer is on the grid


class ProcessHandles:
    """Open datasets by key, for the process that opened them; the least recently used beyond ``maxsize``
    are dropped (closed when collected). Pickles empty, so a spawned worker opens its own."""

    def __init__(self, maxsize: int = MAX_OPEN_FILES) -> None:
        self.maxsize = maxsize
        self._pid = os.getpid()
        self._handles: OrderedDict[Hashable, Any] = OrderedDict()

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


def has_mask(src: DatasetReader, bands: Sequence[int] | None = None) -> bool:
    """Whether GDAL masks some pixels of ``bands`` (1-based; default all) beyond the nodata value: an alpha
    band, a per-dataset mask (``.msk`` or internal) or a per-band mask. Such pixels count as nodata."""
    flags = src.mask_flag_enums
    wanted = range(1, src.count + 1) if bands is None else bands
    plain = ({MaskFlags.all_valid}, {MaskFlags.nodata})
    return any(set(flags[b - 1]) not in plain for b in wanted)


@dataclass(frozen=True)
class DirectFile:
    """A file read directly: its handle, and the dtype and fill value merge would give its windows."""

    src: DatasetReader
    dtype: str
    fill: float


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

    def _one_file(self, x: slice, y: slice, t: slice) -> str | None:
        """The file when TorchGeo's query (time overlap, then ``index.cx``: bounding boxes that meet, edges
        included) finds exactly one for a rectangular window, else None; from arrays built once per index."""
        key = (id(self.index), self._crs_changes)
        if self._footprints is None or self._footprints[0] != key:
            self._footprints = (key, self.index.geometry.bounds.to_numpy(), list(self.index.filepath))
        _, boxes, paths = self._footprints
        hit = np.flatnonzero((boxes[:, 0] <= x.stop) & (boxes[:, 2] >= x.start)
                             & (boxes[:, 1] <= y.stop) & (boxes[:, 3] >= y.start))
        if len(hit) != 1 or not self._overlaps_in_time(t)[hit[0]]:
            return None  # several files (merged by TorchGeo), or none (TorchGeo raises its IndexError)
        return paths[hit[0]]

    def _overlaps_in_time(self, t: slice) -> np.ndarray:
        """Bool (N,): the files whose time range TorchGeo's query keeps for ``t``, cached by ``t`` (samplers
        give every window the same time range)."""
        key = (id(self.index), t.start, t.stop)
        if self._time_cache is None or self._time_cache[0] != key:
            self._time_cache = (key, np.asarray(self.index.index.overlaps(pd.Interval(t.start, t.stop))))
        return self._time_cache[1]

    def _grid_window(self, src: DatasetReader, x: slice, y: slice) -> Window | None:
        """The window of ``src`` pixels that (x, y) is, or None when a plain read would not equal merge's."""
        t = src.transform
        xres, yres = float(x.step), float(y.step)
        if t.b or t.d or not math.isclose(t.a, xres, rel_tol=1e-9) or not math.isclose(-t.e, yres, rel_tol=1e-9):
            return None
        col, row = (x.start - t.c) / t.a, (t.f - y.stop) / -t.e
        if abs(col - round(col)) > GRID_TOLERANCE or abs(row - round(row)) > GRID_TOLERANCE:
            return None
        return Window(round(col), round(row), int(round((x.stop - x.start) / xres)), int(round((y.stop - y.start) / yres)))

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
        return DirectFile(src, dtype, 0 if fill is None else fill)

    def _direct_sample(self, index: GeoSlice) -> Sample | None:
        """The window read straight from its file, or None when TorchGeo must read it."""
        if self.separate_files or self.time_series or not self.cache:
            return None
        x, y, t = self._disambiguate_slice(index)
        if t.step != 1:
            return None
        path = self._one_file(x, y, t)
        if path is None:
            return None
        direct = self.handles.get(("direct", path, self._crs_changes), lambda: self._open_direct(path))
        window = self._grid_window(direct.src, x, y) if direct is not None else None
        if window is None:
            return None
        data = self._read(direct, window)
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

    def _read(self, direct: DirectFile, window: Window) -> np.ndarray:
        """(C, h, w) in merge's dtype: the window's pixels, merge's fill outside the file."""
        src = direct.src
        col, row, width, height = window.col_off, window.row_off, window.width, window.height
        if col >= 0 and row >= 0 and col + width <= src.width and row + height <= src.height:
            return src.read(self.band_indexes, window=window).astype(direct.dtype, copy=False)
        count = len(self.band_indexes) if self.band_indexes else src.count
        data = np.full((count, height, width), direct.fill, direct.dtype)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + width, src.width), min(row + height, src.height)
        if c1 > c0 and r1 > r0:
            data[:, r0 - row:r1 - row, c0 - col:c1 - col] = src.read(self.band_indexes, window=Window(c0, r0, c1 - c0, r1 - r0))
        return data

    def __getitem__(self, index: GeoSlice) -> Sample:
        sample = self._direct_sample(index)
        return sample if sample is not None else super().__getitem__(index)
