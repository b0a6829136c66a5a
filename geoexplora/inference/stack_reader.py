"""Windows of a stack of dated rasters: every date of a window in one slot, for ``predict --stack``.

:class:`StackSource` is the :class:`~geoexplora.inference.reader.WindowSource` of a checked
:class:`~geoexplora.data.stack.RasterStack`: its windows lie on the first (earliest) date's grid, which
the outputs take; a date in another CRS is read through a ``WarpedVRT`` onto that grid (bilinear). A
window's slot is float32 (T * C, tile, tile), the dates one after another (date-major), so the reader's
batching, threads and read-ahead work unchanged; :class:`StackModel` unfolds it to (T, C) for the
temporal backbone. A pixel is *invalid* (nodata in the class map) only where **every** date is; a date
that is nodata, NaN or masked at a pixel where others are not is left NaN in the slot, and
:class:`StackModel` normalises it to 0, as training does.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.vrt import WarpedVRT
from torch import Tensor, nn

from geoexplora.data.raster import has_mask
from geoexplora.data.stack import RasterStack
from geoexplora.inference.reader import GDAL_CACHE_BYTES, WindowHandle
from geoexplora.inference.windows import TileWindow, WindowGrid, pad_window
from geoexplora.models.date_encoding import stack_dates


class StackSource:
    """The windows of ``grid`` over ``bands`` (1-based, model order) of every date of ``stack``.

    Attributes:
        identity: each file with its size and modification time (what a resumed run must find unchanged).
    """

    def __init__(self, stack: RasterStack, grid: WindowGrid, bands: Sequence[int]) -> None:
        self.stack, self.grid, self.bands = stack, grid, list(bands)
        self.path = stack.paths[0]
        self.channels = len(stack) * len(self.bands)
        self.identity = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in stack.paths]

    @contextlib.contextmanager
    def open(self) -> Iterator[WindowHandle]:
        with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), contextlib.ExitStack() as files:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            first = files.enter_context(rasterio.open(self.path))
            sources = []
            for path in self.stack.paths:
                src = first if path == self.path else files.enter_context(rasterio.open(path))
                if path in self.stack.reprojected:
                    src = files.enter_context(WarpedVRT(src, crs=first.crs, transform=first.transform,
                                                        width=first.width, height=first.height,
                                                        resampling=Resampling.bilinear))
                sources.append((src, has_mask(src, self.bands)))
            yield _StackHandle(sources, self.bands, self.grid.tile)


class _StackHandle:
    """One thread's reads of every date (see :data:`~geoexplora.inference.reader.WindowHandle`; a date's own
    invalid pixels stay NaN, pixels invalid at every date are 0)."""

    def __init__(self, sources: list[tuple[rasterio.io.DatasetReaderBase, bool]], bands: list[int], tile: int) -> None:
        self.sources, self.bands, self.tile = sources, bands, tile

    def __call__(self, window: TileWindow, out: np.ndarray) -> np.ndarray | None:
        c = len(self.bands)
        everywhere = np.ones((self.tile, self.tile), dtype=bool)
        for t, (src, masked) in enumerate(self.sources):
            raw = src.read(self.bands, window=window.read_window).astype(np.float32)
            invalid = np.isnan(raw).any(axis=0)
            if masked:
                invalid |= (src.read_masks(self.bands, window=window.read_window) == 0).any(axis=0)
            if src.nodata is not None and not np.isnan(src.nodata):
                invalid |= (raw == np.float32(src.nodata)).any(axis=0)
            raw[:, invalid] = np.nan
            out[t * c:(t + 1) * c] = pad_window(raw, self.tile)
            everywhere &= pad_window(invalid, self.tile)
        if everywhere.all():
            return None
        out[:, everywhere] = 0
        return everywhere


class StackModel(nn.Module):
    """A temporal model over folded stack windows: float32 (B, T * C, H, W) with NaN at a date's invalid
    pixels -> the model's output, after normalising each date (NaN -> 0) and setting the dates.

    Args:
        model: takes (B, T, C, H, W); its ``backbone`` has the temporal patch embedding.
        backbone: that backbone (for :func:`~geoexplora.models.date_encoding.stack_dates`).
        normalize: per-band (..., C, H, W) normaliser (NaN -> 0), or None.
        days: (T,) int64 days since 1970-01-01 of the dates, in slot order.
    """

    def __init__(self, model: nn.Module, backbone: nn.Module, normalize: Callable[[Tensor], Tensor] | None,
                 days: Sequence[int]) -> None:
        super().__init__()
        self.model, self.backbone, self.normalize = model, backbone, normalize
        self.register_buffer("days", torch.tensor(list(days), dtype=torch.int64), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, tc, h, w = x.shape
        t = len(self.days)
        x = x.view(b, t, tc // t, h, w)
        x = self.normalize(x) if self.normalize is not None else x.nan_to_num(nan=0.0)
        with stack_dates(self.backbone, self.days.expand(b, t)):
            return self.model(x)
