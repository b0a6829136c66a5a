"""The window grid over a raster, and reflection padding of edge windows.

Windows are ``tile`` pixels square with ``overlap`` pixels shared between neighbours, so their origins
are ``stride = tile - overlap`` apart, starting at pixel (0, 0). The last column and row of windows
may reach past the raster's right and bottom edges; those windows are read clipped and padded by
reflection to ``tile`` pixels (see :func:`pad_window`), and what lies outside the raster is never
written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from geoexplora.errors import GeoExploraError


@dataclass(frozen=True)
class TileWindow:
    """One window of the grid: its grid position and the part of it inside the raster, in pixels."""

    index: int  # position in row-major order over the grid
    row: int  # window row (0-based)
    col: int  # window column (0-based)
    x: int  # column offset of the window's left edge in the raster
    y: int  # row offset of the window's top edge in the raster
    width: int  # columns inside the raster (<= tile)
    height: int  # rows inside the raster (<= tile)

    @property
    def read_window(self) -> Window:
        """The rasterio window of the part inside the raster."""
        return Window(self.x, self.y, self.width, self.height)


@dataclass(frozen=True)
class WindowGrid:
    """Windows of ``tile`` px with ``overlap`` px overlap over a ``width`` x ``height`` raster.

    Raises:
        GeoExploraError: when ``tile`` < 1 or ``overlap`` is not in ``[0, tile // 2]`` (with more overlap
            a pixel would lie in three window rows, which the one-band rolling blend does not hold).
    """

    width: int
    height: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise GeoExploraError(f"tile {self.tile}: must be a positive number of pixels")
        if not 0 <= self.overlap <= self.tile // 2:
            raise GeoExploraError(f"overlap {self.overlap}: must be between 0 and tile/2 ({self.tile // 2}) pixels")

    @property
    def stride(self) -> int:
        """Pixels between the origins of neighbouring windows."""
        return self.tile - self.overlap

    @property
    def cols(self) -> int:
        """Windows per row: enough for the last one to reach the right edge (at least 1)."""
        return _count(self.width, self.tile, self.stride)

    @property
    def rows(self) -> int:
        """Rows of windows: enough for the last one to reach the bottom edge (at least 1)."""
        return _count(self.height, self.tile, self.stride)

    @property
    def padded_width(self) -> int:
        """Columns spanned by one row of windows, ``>= width``."""
        return (self.cols - 1) * self.stride + self.tile

    def __len__(self) -> int:
        return self.rows * self.cols

    def window(self, index: int) -> TileWindow:
        """The window at row-major position ``index``."""
        row, col = divmod(index, self.cols)
        x, y = col * self.stride, row * self.stride
        return TileWindow(index, row, col, x, y, min(self.tile, self.width - x), min(self.tile, self.height - y))

    def windows(self, start: int = 0) -> Iterator[TileWindow]:
        """Windows in row-major order from position ``start``."""
        for index in range(start, len(self)):
            yield self.window(index)

    def output_rows(self, row: int) -> tuple[int, int]:
        """Raster rows ``[start, stop)`` that become final once window row ``row`` is blended.

        Every row but the last finalises ``stride`` rows (the next window row starts there); the last
        finalises what is left down to the raster's bottom edge.
        """
        start = row * self.stride
        stop = self.height if row == self.rows - 1 else start + self.stride
        return start, min(stop, self.height)


def _count(size: int, tile: int, stride: int) -> int:
    return 1 if size <= tile else math.ceil((size - tile) / stride) + 1


def pad_window(data: np.ndarray, tile: int) -> np.ndarray:
    """Pad (..., h, w) at the bottom and right to (..., tile, tile) by reflection about the last pixel.

    Reflection needs two pixels; a one-pixel-wide side is repeated instead. Pads wider than the data
    reflect repeatedly (numpy's behaviour), so a raster smaller than one tile still fills it.
    """
    h, w = data.shape[-2:]
    if h == tile and w == tile:
        return data
    lead = [(0, 0)] * (data.ndim - 2)
    if h > 1:
        data = np.pad(data, [*lead, (0, tile - h), (0, 0)], mode="reflect")
    else:
        data = np.pad(data, [*lead, (0, tile - h), (0, 0)], mode="edge")
    if w > 1:
        return np.pad(data, [*lead, (0, 0), (0, tile - w)], mode="reflect")
    return np.pad(data, [*lead, (0, 0), (0, tile - w)], mode="edge")
