"""Parallel windowed reading: the next batches are read by ``threads`` threads while the model runs.

The one interface a reader of another kind of input implements is :class:`WindowSource`: it knows its
:class:`~geoexplora.inference.windows.WindowGrid`, its channel count, and opens one *handle* per reading
thread (handles are never shared between threads: a GDAL dataset is not thread-safe, but GDAL releases
the GIL while it decodes, so threads with a handle each read in parallel). A handle reads one window into
a float32 (C, tile, tile) slot and returns its invalid mask. :class:`RasterSource` is the one for a
GeoTIFF; a time-series stack reader implements the same three members and gets batching, read-ahead and
the model pipeline for free.

:class:`WindowReader` reads batches in a pool of threads, thread ``j`` reading batches ``j, j + N, ...``
from ``start_batch``, and hands them out in order; each thread queues at most ``ceil(prefetch / N)``
batches, so memory held by reading is about ``prefetch + threads`` batches of float32 (B, C, tile, tile).
Batches are fixed chunks of ``batch_size`` consecutive windows of the whole grid (batch ``i`` holds
windows ``[i * B, (i + 1) * B)``), wherever reading starts and however many threads read, so a resumed
run and a run with another thread count feed the model exactly the same batches.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from torch import Tensor

from geoexplora.data.raster import has_mask
from geoexplora.errors import GeoExploraError
from geoexplora.inference.windows import TileWindow, WindowGrid, pad_window

logger = logging.getLogger(__name__)

# GDAL's block cache (else 5 % of the machine's RAM): two rows of 512 px blocks of a 4-band uint16 raster
# 6,500 px wide; wider rasters decode a block again for each window row it serves, in the same memory.
GDAL_CACHE_BYTES = 128 * 1024 * 1024
STRIP_WARN_BYTES = 64 * 1024 * 1024  # a block row of the input larger than this is said to cost memory


def _first_line(error: BaseException) -> str:
    """The first informative line of ``error`` or of the GDAL errors that caused it."""
    while error.__cause__ is not None and (not str(error) or "previous exception" in str(error)):
        error = error.__cause__
    return str(error).splitlines()[0] if str(error) else type(error).__name__


WindowHandle = Callable[[TileWindow, np.ndarray], np.ndarray | None]
"""Reads ``window`` into ``out`` float32 (C, tile, tile), padded by reflection, invalid pixels 0, and returns
bool (tile, tile) invalid (nodata/NaN/masked) pixels; returns None, leaving ``out`` undefined, for a window
whose every pixel is invalid."""


class WindowSource(Protocol):
    """Where windows come from: what :class:`WindowReader` needs of an input (a raster, a stack of them).

    Attributes:
        grid: the windows to read.
        channels: C, the channels of every window.
        path: named in error messages.
    """

    grid: WindowGrid
    channels: int
    path: Path

    def open(self) -> contextlib.AbstractContextManager[WindowHandle]:
        """A handle for one thread (opened in that thread, closed when the thread ends)."""
        ...


class RasterSource:
    """The windows of ``grid`` over ``bands`` (1-based, model order) of one GeoTIFF.

    Invalid pixels: the file's nodata value in any band, NaN in any band, and pixels an alpha band or a
    GDAL mask hides.
    """

    def __init__(self, path: Path, grid: WindowGrid, bands: Sequence[int]) -> None:
        self.path, self.grid, self.bands = path, grid, list(bands)
        self.channels = len(self.bands)

    @contextlib.contextmanager
    def open(self) -> Iterator[WindowHandle]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(self.path) as src:
                yield _RasterHandle(src, self.bands, self.grid.tile)


class _RasterHandle:
    """One thread's reads of one rasterio dataset (see :data:`WindowHandle`)."""

    def __init__(self, src: rasterio.DatasetReader, bands: list[int], tile: int) -> None:
        self.src, self.bands, self.tile = src, bands, tile
        self.masked = has_mask(src, bands)
        dtype = np.dtype(src.dtypes[bands[0] - 1])
        self.is_float = dtype.kind == "f"
        # Dtypes that float32 holds exactly are read straight into the slot and compared there.
        self.direct = all(np.can_cast(np.dtype(src.dtypes[b - 1]), np.float32) for b in bands)
        self.dtype = np.dtype(np.float32) if self.direct else dtype
        nodata = src.nodata
        self.nodata = None if nodata is None or np.isnan(nodata) \
            else np.asarray(nodata).astype(dtype).astype(self.dtype)

    def __call__(self, window: TileWindow, out: np.ndarray) -> np.ndarray | None:
        full = window.width == self.tile and window.height == self.tile
        raw = self.src.read(self.bands, window=window.read_window, out=out if full and self.direct else None,
                            out_dtype=self.dtype)
        invalid = np.zeros(raw.shape[1:], dtype=bool)
        if self.masked:
            invalid |= (self.src.read_masks(self.bands, window=window.read_window) == 0).any(axis=0)
        if self.nodata is not None:
            invalid |= (raw == self.nodata).any(axis=0)
        if self.is_float:
            invalid |= np.isnan(raw).any(axis=0)
        if invalid.all():
            return None
        if not full:
            raw, invalid = pad_window(raw, self.tile), pad_window(invalid, self.tile)
        if raw is not out:
            np.copyto(out, raw, casting="unsafe")
        if invalid.any():
            out[:, invalid] = 0
        if self.is_float:
            np.nan_to_num(out, copy=False, nan=0.0)
        return invalid


@dataclass
class Batch:
    """One chunk of consecutive windows.

    Attributes:
        windows: the chunk's windows, in row-major order.
        invalid: bool (n, tile, tile), True at nodata/NaN pixels (padding mirrors the raster).
        has_data: indexes into ``windows`` of those with at least one valid pixel.
        images: float32 (len(has_data), C, tile, tile), invalid pixels 0, NaN 0, normalised when the reader
            was given a normaliser (else the raster's values); the model input. Pinned when asked.
        any_invalid: whether a window of ``has_data`` has an invalid pixel.
    """

    windows: list[TileWindow]
    invalid: np.ndarray
    has_data: list[int]
    images: Tensor
    any_invalid: bool = True
    buffer: Tensor | None = field(default=None, repr=False)  # the read buffer ``images`` lives in, to recycle


class WindowReader:
    """Iterate over the batches of a grid from batch ``start_batch``, read ahead by ``threads`` threads.

    Args:
        source: a :class:`WindowSource`, or the path of a GeoTIFF (then ``grid`` and ``bands`` say which
            windows of which bands, as :class:`RasterSource`).
        grid: the window grid over a path source (ignored for a :class:`WindowSource`).
        bands: 1-based band indexes of a path source, in model order.
        batch_size: windows per batch.
        normalize: applied in the reading threads to float32 (n, C, tile, tile) where invalid pixels are NaN;
            its NaNs become 0.
        start_batch: first batch to read.
        prefetch: batches read ahead (at least one per thread).
        pin_memory: page-lock batches (faster, asynchronous copies to a GPU).
        threads: reading threads, each with its own handle of the source.
        recycle: reuse a batch's read buffer once the next batch is asked for, instead of allocating one
            per batch (each a fresh mapping of the heap, see :mod:`~geoexplora.inference.heap`): a batch's
            ``images`` are then valid only until the next batch is requested. Ignored with ``pin_memory``
            (torch's pinned-memory allocator caches those, and knows when a copy to the GPU is done).
    """

    def __init__(
        self,
        source: WindowSource | Path,
        grid: WindowGrid | None = None,
        bands: Sequence[int] = (),
        batch_size: int = 8,
        normalize: Callable[[Tensor], Tensor] | None = None,
        start_batch: int = 0,
        prefetch: int = 2,
        pin_memory: bool = False,
        threads: int = 1,
        recycle: bool = False,
    ) -> None:
        if threads < 1:
            raise GeoExploraError(f"reader threads {threads}: must be at least 1")
        if isinstance(source, (str, Path)):
            assert grid is not None, "a raster path needs its grid"
            source = RasterSource(Path(source), grid, bands)
        self.source, self.grid = source, source.grid
        self.batch_size, self.normalize, self.pin_memory = batch_size, normalize, pin_memory
        self.start_batch, self.threads = start_batch, threads
        self.recycle = recycle and not pin_memory
        self._spare: queue.SimpleQueue[Tensor] = queue.SimpleQueue()  # read buffers handed back
        depth = max(1, math.ceil(prefetch / threads))
        self._queues: list[queue.Queue[Batch | BaseException | None]] = [
            queue.Queue(maxsize=depth) for _ in range(threads)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(j,), name=f"geoexplora-reader-{j}", daemon=True)
                         for j in range(threads)]

    @property
    def num_batches(self) -> int:
        return -(-len(self.grid) // self.batch_size)

    def __enter__(self) -> WindowReader:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        for thread, q in zip(self._threads, self._queues, strict=True):
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    q.get(timeout=0.05)
            thread.join()

    def __iter__(self) -> Iterator[Batch]:
        for index in range(self.start_batch, self.num_batches):
            item = self._queues[(index - self.start_batch) % self.threads].get()
            if isinstance(item, BaseException):
                raise item
            assert item is not None
            yield item
            if self.recycle and item.buffer is not None:  # the consumer asked for the next batch
                self._spare.put(item.buffer)

    def _put(self, j: int, item: Batch | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queues[j].put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, j: int) -> None:
        try:
            with self.source.open() as handle:
                for index in range(self.start_batch + j, self.num_batches, self.threads):
                    if not self._put(j, self._read_batch(handle, index)):
                        return
        except RasterioError as error:  # a file damaged past its header: one line for the user
            self._put(j, GeoExploraError(f"{self.source.path}: not a readable raster ({_first_line(error)})"))
        except BaseException as error:  # handed to the consumer, raised there
            self._put(j, error)

    def _read_batch(self, handle: WindowHandle, index: int) -> Batch:
        first = index * self.batch_size
        windows = [self.grid.window(i) for i in range(first, min(first + self.batch_size, len(self.grid)))]
        buffer = self._buffer()
        slots = buffer[: len(windows)].numpy()
        tile = self.grid.tile
        invalid = np.ones((len(windows), tile, tile), dtype=bool)
        has_data: list[int] = []
        for i, window in enumerate(windows):
            mask = handle(window, slots[len(has_data)])
            if mask is not None:
                invalid[i] = mask
                has_data.append(i)
        images = buffer[: len(has_data)]
        any_invalid = bool(invalid[has_data].any()) if has_data else False
        if self.normalize is not None and has_data:
            with torch.inference_mode():
                images = normalize_images(images, torch.from_numpy(invalid[has_data]), any_invalid, self.normalize)
            if self.pin_memory:
                images = images.pin_memory()
        in_buffer = images.numel() > 0 and images.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
        if self.recycle and not in_buffer:
            self._spare.put(buffer)
        return Batch(windows, invalid, has_data, images, any_invalid, buffer if in_buffer else None)

    def _buffer(self) -> Tensor:
        """A float32 (batch_size, C, tile, tile) read buffer: a recycled one, else a new one."""
        if self.recycle:
            with contextlib.suppress(queue.Empty):
                return self._spare.get_nowait()
        tile = self.grid.tile
        return torch.empty((self.batch_size, self.source.channels, tile, tile), dtype=torch.float32,
                           pin_memory=self.pin_memory)


def normalize_images(images: Tensor, invalid: Tensor, any_invalid: bool,
                     normalize: Callable[[Tensor], Tensor]) -> Tensor:
    """``normalize`` of float32 (n, C, tile, tile) ``images`` with NaN at ``invalid`` (bool (n, tile, tile)) pixels,
    then NaN -> 0 (and infinities -> the float32 extremes); ``any_invalid`` False skips the masking pass.

    ``images`` is overwritten; a normaliser with an in-place ``normalize_`` method (a
    :class:`~geoexplora.data.stats.Normalizer`) works in it, allocating nothing.
    """
    if any_invalid:
        images.masked_fill_(invalid[:, None], float("nan"))
    in_place = getattr(normalize, "normalize_", None)
    return (in_place(images) if in_place is not None else normalize(images)).nan_to_num_(nan=0.0)


def read_working_set(path: Path, tile: int) -> tuple[int, str, int]:
    """Bytes of the input blocks GDAL decodes to read one ``tile`` px window, the file's block layout, and the
    bytes of the window itself.

    A tiled GeoTIFF with blocks of a few hundred px decodes at most 2 x 2 blocks; a striped (untiled) one
    decodes every strip the window crosses, each the raster's full width, and one with huge blocks decodes
    those whole: that is what a read costs in memory (GDAL allocates each block it decodes).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            block_h, block_w = src.block_shapes[0]
            pixel_interleaved = src.count > 1 and src.interleaving is not None and src.interleaving.name == "PIXEL"
            bands = src.count if pixel_interleaved else 1
            itemsize = np.dtype(src.dtypes[0]).itemsize
            block_bytes = block_h * block_w * itemsize * bands
            window_bytes = tile * tile * itemsize * src.count
            width, height = src.width, src.height
    across = min(-(-tile // block_w) + 1, -(-width // block_w))
    down = min(-(-tile // block_h) + 1, -(-height // block_h))
    striped = block_w >= width and block_h < height
    layout = f"striped ({block_h}-row strips)" if striped else f"{block_w} x {block_h} px blocks"
    return across * down * block_bytes, layout, window_bytes


def warn_if_striped(path: Path, tile: int, threads: int) -> None:
    """One warning when the blocks decoded per window read (:func:`read_working_set`, times the reading threads)
    exceed :data:`STRIP_WARN_BYTES` and four times the window's own bytes: the run still streams (GDAL's
    cache is capped at :data:`GDAL_CACHE_BYTES`)
    but every read holds them, and blocks shared by several windows may be decoded again."""
    working_set, layout, window_bytes = read_working_set(path, tile)
    if working_set * threads > STRIP_WARN_BYTES and working_set > 4 * window_bytes:
        logger.warning("%s: %s; GDAL decodes about %d MiB of blocks per window read (x %d reader threads); "
                       "retile it (gdal_translate -co TILED=YES) to read with less memory and time",
                       path, layout, -(-working_set // 2**20), threads)
