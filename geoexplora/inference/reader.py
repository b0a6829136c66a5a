"""Background windowed reading: the next batches are read while the model runs on the current one.

A :class:`WindowReader` owns one thread and one rasterio handle (handles are not shared between
threads). The thread reads the windows of the grid in row-major order, pads edge windows by
reflection, marks nodata/NaN pixels and those an alpha band or a GDAL mask hides, normalises, and puts whole batches on a queue of at most
``prefetch`` batches, so memory held by reading is ``prefetch + 1`` batches of float32
(B, C, tile, tile). Batches are fixed chunks of ``batch_size`` consecutive windows of the whole grid
(batch ``i`` holds windows ``[i * B, (i + 1) * B)``), wherever reading starts, so a resumed run feeds
the model exactly the batches an uninterrupted run does.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from torch import Tensor

from geoexplora.data.raster import has_mask
from geoexplora.errors import GeoExploraError
from geoexplora.inference.windows import TileWindow, WindowGrid, pad_window

GDAL_CACHE_BYTES = 256 * 1024 * 1024  # GDAL's block cache, else 5 % of the machine's RAM


def _first_line(error: BaseException) -> str:
    """The first informative line of ``error`` or of the GDAL errors that caused it."""
    while error.__cause__ is not None and (not str(error) or "previous exception" in str(error)):
        error = error.__cause__
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@dataclass
class Batch:
    """One chunk of consecutive windows.

    Attributes:
        windows: the chunk's windows, in row-major order.
        invalid: bool (n, tile, tile), True at nodata/NaN pixels (padding mirrors the raster).
        has_data: indexes into ``windows`` of those with at least one valid pixel.
        images: float32 (len(has_data), C, tile, tile), normalised, invalid pixels 0; the model input.
    """

    windows: list[TileWindow]
    invalid: np.ndarray
    has_data: list[int]
    images: Tensor


class WindowReader:
    """Iterate over the batches of ``grid`` from batch ``start_batch``, read ahead in a thread.

    Args:
        path: the raster.
        grid: the window grid over it.
        bands: 1-based band indexes, in model order.
        batch_size: windows per batch.
        normalize: applied to float32 (n, C, tile, tile) where invalid pixels are NaN; its NaNs become 0.
        start_batch: first batch to read.
        prefetch: batches read ahead.
        pin_memory: page-lock batches (faster copies to a GPU).
    """

    def __init__(
        self,
        path: Path,
        grid: WindowGrid,
        bands: Sequence[int],
        batch_size: int,
        normalize: Callable[[Tensor], Tensor] | None = None,
        start_batch: int = 0,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> None:
        self.path, self.grid, self.bands = path, grid, list(bands)
        self.batch_size, self.normalize, self.pin_memory = batch_size, normalize, pin_memory
        self.start_batch = start_batch
        self._queue: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="geoexplora-reader", daemon=True)
        self._masked = False

    @property
    def num_batches(self) -> int:
        return -(-len(self.grid) // self.batch_size)

    def __enter__(self) -> WindowReader:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: Batch | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(self.path) as src:
                    self._masked = has_mask(src, self.bands)
                    for index in range(self.start_batch, self.num_batches):
                        if not self._put(self._read_batch(src, index)):
                            return
        except RasterioError as error:  # a file damaged past its header: one line for the user
            self._put(GeoExploraError(f"{self.path}: not a readable raster ({_first_line(error)})"))
            return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)
            return
        self._put(None)

    def _read_batch(self, src: rasterio.DatasetReader, index: int) -> Batch:
        first = index * self.batch_size
        windows = [self.grid.window(i) for i in range(first, min(first + self.batch_size, len(self.grid)))]
        images, invalids = zip(*(self._read_window(src, w) for w in windows), strict=True)
        invalid = np.stack(invalids)
        has_data = [i for i, mask in enumerate(invalid) if not mask.all()]
        tile, channels = self.grid.tile, len(self.bands)
        x = torch.from_numpy(np.stack([images[i] for i in has_data])) if has_data else torch.empty(0, channels, tile, tile)
        if self.normalize is not None and has_data:
            x = self.normalize(x)
        x = torch.nan_to_num(x, nan=0.0)
        if self.pin_memory:
            x = x.pin_memory()
        return Batch(windows, invalid, has_data, x)

    def _read_window(self, src: rasterio.DatasetReader, window: TileWindow) -> tuple[np.ndarray, np.ndarray]:
        """float32 (C, tile, tile) with NaN at invalid pixels, and bool (tile, tile) invalid."""
        raw = src.read(self.bands, window=window.read_window)
        invalid = np.zeros(raw.shape[1:], dtype=bool)
        if self._masked:
            invalid |= (src.read_masks(self.bands, window=window.read_window) == 0).any(axis=0)
        if src.nodata is not None and not np.isnan(src.nodata):
            invalid |= (raw == np.asarray(src.nodata).astype(raw.dtype)).any(axis=0)
        image = raw.astype(np.float32)
        invalid |= np.isnan(image).any(axis=0)
        image[:, invalid] = np.nan
        return pad_window(image, self.grid.tile), pad_window(invalid, self.grid.tile)
