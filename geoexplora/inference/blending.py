"""Cosine (Hann) blending weights for overlapping windows.

A window's weight is 1 in its core and falls along a Hann (raised-cosine) half-window over the
``overlap`` pixels at each side: ``sin^2(pi * (i + 0.5) / (2 * overlap))`` for ``i = 0..overlap-1``.
Two neighbours' ramps over a shared overlap sum to exactly 1 (``sin^2 + cos^2``), so blended
probabilities of a model that ignores position are unchanged, and a model that does depend on the
position within the tile fades from one window to the next without a seam. Ramps never reach 0,
so pixels at the raster edge (covered by one window only) keep a positive weight.
"""

from __future__ import annotations

import numpy as np

from geoexplora.inference.windows import TileWindow, WindowGrid


def hann_ramp(tile: int, overlap: int) -> np.ndarray:
    """float32 (tile,): 1-D weights, the Hann ramp over ``overlap`` px at both ends and 1 between."""
    weights = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        ramp = np.sin(np.pi * (np.arange(overlap) + 0.5) / (2 * overlap)) ** 2
        weights[:overlap] = ramp
        weights[tile - overlap :] = ramp[::-1]
    return weights.astype(np.float32)


def hann_weights(tile: int, overlap: int) -> np.ndarray:
    """float32 (tile, tile): the outer product of :func:`hann_ramp` with itself, in (0, 1]."""
    ramp = hann_ramp(tile, overlap)
    return np.outer(ramp, ramp)


class RowBlender:
    """The rolling buffer that blends one row of segmentation windows at a time.

    Holds, for the rows ``[y, y + tile)`` of the current window row over the padded width ``Wp``:
    ``acc`` float32 (K, tile, Wp), the weighted sum of softmax probabilities; ``weight`` float32
    (tile, Wp), the sum of weights; ``invalid`` bool (tile, Wp), nodata/NaN pixels. After a window row
    is finished its first ``stride`` rows are final and the last ``overlap`` rows are carried to the
    top of the buffer for the next row. Its size, ``(4K + 5) * tile * Wp`` bytes, depends on the
    raster's width only, never on its height.
    """

    def __init__(self, grid: WindowGrid, num_classes: int) -> None:
        self.grid = grid
        self.window_weights = hann_weights(grid.tile, grid.overlap)
        self.acc = np.zeros((num_classes, grid.tile, grid.padded_width), dtype=np.float32)
        self.weight = np.zeros((grid.tile, grid.padded_width), dtype=np.float32)
        self.invalid = np.zeros((grid.tile, grid.padded_width), dtype=bool)

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer."""
        return self.acc.nbytes + self.weight.nbytes + self.invalid.nbytes

    def add(self, window: TileWindow, probs: np.ndarray | None, invalid: np.ndarray) -> None:
        """Blend one window of the current row.

        Args:
            window: a window of the row being blended.
            probs: float32 (K, tile, tile) softmax probabilities, or None for a window whose pixels are
                all invalid (the model was not run on it).
            invalid: bool (tile, tile), True at nodata/NaN pixels.
        """
        cols = slice(window.x, window.x + self.grid.tile)
        self.invalid[:, cols] |= invalid
        if probs is not None:
            self.acc[:, :, cols] += probs * self.window_weights
            self.weight[:, cols] += self.window_weights

    def finish_row(self, row: int, with_probabilities: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Final values of the raster rows window row ``row`` completes, then roll the buffer.

        Returns ``(classes, invalid, probs)`` for the n rows of :meth:`WindowGrid.output_rows` and the
        raster's W columns: classes int64 (n, W) (argmax of the blended probabilities), invalid bool
        (n, W) (nodata/NaN input or no window weight), probs float32 (K, n, W) or None.
        """
        start, stop = self.grid.output_rows(row)
        n, width = stop - start, self.grid.width
        acc, weight = self.acc[:, :n, :width], self.weight[:n, :width]
        classes = acc.argmax(axis=0)
        invalid = self.invalid[:n, :width] | (weight <= 0)
        probs = None
        if with_probabilities:
            probs = np.divide(acc, weight, out=np.zeros_like(acc), where=weight > 0)
        self._roll()
        return classes, invalid, probs

    def _roll(self) -> None:
        stride, overlap = self.grid.stride, self.grid.overlap
        for buffer in (self.acc, self.weight, self.invalid):
            buffer[..., :overlap, :] = buffer[..., stride:, :]
            buffer[..., overlap:, :] = 0
