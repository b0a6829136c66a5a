"""Background windowed reading of a stack: the same window of every date, read ahead in a thread.

:class:`StackWindowReader` is :class:`~geoexplora.inference.reader.WindowReader` over a checked
:class:`~geoexplora.data.stack.RasterStack`: one rasterio handle per date, all owned by the reader's
thread; dates in another CRS are read through a ``WarpedVRT`` onto the first date's grid (bilinear), so
every window lies on the grid the output is written on. A batch's ``images`` are float32
(n, T, C, tile, tile) and ``invalid`` marks a pixel only where **every** date is nodata (a date covered
by cloud or nodata still leaves the others to predict from; such a date's pixels are 0 after
normalisation, as in training). :attr:`StackWindowReader.days` holds the dates the model needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from torch import Tensor

from geoexplora.data.raster import has_mask
from geoexplora.data.stack import RasterStack
from geoexplora.errors import GeoExploraError
from geoexplora.inference.reader import GDAL_CACHE_BYTES, Batch, WindowReader, _first_line
from geoexplora.inference.windows import TileWindow, WindowGrid, pad_window


class StackWindowReader(WindowReader):
    """Iterate over the batches of ``grid`` (on the stack's grid) from ``start_batch``, every date at once.

    Args:
        stack: the checked stack; its first (earliest) file defines the grid.
        grid, bands, batch_size, normalize, start_batch, prefetch, pin_memory: as
            :class:`~geoexplora.inference.reader.WindowReader`; ``normalize`` gets (n, T, C, tile, tile).
    """

    def __init__(
        self,
        stack: RasterStack,
        grid: WindowGrid,
        bands: Sequence[int],
        batch_size: int,
        normalize: Callable[[Tensor], Tensor] | None = None,
        start_batch: int = 0,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(stack.paths[0], grid, bands, batch_size, normalize, start_batch, prefetch, pin_memory)
        self.stack = stack

    @property
    def days(self) -> Tensor:
        """(T,) int64 days since 1970-01-01 of the dates, in the order of ``images``' second axis."""
        return torch.tensor(self.stack.days, dtype=torch.int64)

    def _run(self) -> None:
        path = self.path
        try:
            with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), ExitStack() as handles:
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                sources = []
                for path in self.stack.paths:
                    src = handles.enter_context(rasterio.open(path))
                    if path in self.stack.reprojected:
                        src = handles.enter_context(WarpedVRT(
                            src, crs=self.stack.crs, transform=sources[0][0].transform, width=self.stack.width,
                            height=self.stack.height, resampling=Resampling.bilinear))
                    sources.append((src, has_mask(src, self.bands)))
                for index in range(self.start_batch, self.num_batches):
                    if not self._put(self._read_batch(sources, index)):
                        return
        except RasterioError as error:  # a file damaged past its header: one line naming it
            self._put(GeoExploraError(f"{path}: not a readable raster ({_first_line(error)})"))
            return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)
            return
        self._put(None)

    def _read_batch(self, sources: list, index: int) -> Batch:
        first = index * self.batch_size
        windows = [self.grid.window(i) for i in range(first, min(first + self.batch_size, len(self.grid)))]
        images, invalids = zip(*(self._read_stack_window(sources, w) for w in windows), strict=True)
        invalid = np.stack(invalids)
        has_data = [i for i, mask in enumerate(invalid) if not mask.all()]
        tile, shape = self.grid.tile, (len(sources), len(self.bands))
        x = torch.from_numpy(np.stack([images[i] for i in has_data])) if has_data else torch.empty(0, *shape, tile, tile)
        if self.normalize is not None and has_data:
            x = self.normalize(x)
        x = torch.nan_to_num(x, nan=0.0)
        if self.pin_memory:
            x = x.pin_memory()
        return Batch(windows, invalid, has_data, x)

    def _read_stack_window(self, sources: list, window: TileWindow) -> tuple[np.ndarray, np.ndarray]:
        """float32 (T, C, tile, tile) with NaN where a date is invalid, and bool (tile, tile): invalid at every date."""
        dates, invalid_all = [], None
        for src, masked in sources:
            raw = src.read(self.bands, window=window.read_window)
            invalid = np.zeros(raw.shape[1:], dtype=bool)
            if masked:
                invalid |= (src.read_masks(self.bands, window=window.read_window) == 0).any(axis=0)
            if src.nodata is not None and not np.isnan(src.nodata):
                invalid |= (raw == np.asarray(src.nodata).astype(raw.dtype)).any(axis=0)
            image = raw.astype(np.float32)
            invalid |= np.isnan(image).any(axis=0)
            image[:, invalid] = np.nan
            dates.append(pad_window(image, self.grid.tile))
            invalid = pad_window(invalid, self.grid.tile)
            invalid_all = invalid if invalid_all is None else invalid_all & invalid
        return np.stack(dates), invalid_all
