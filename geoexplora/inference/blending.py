"""Cosine (Hann) blending weights for overlapping windows.

A window's weight is 1 in its core and falls along a Hann (raised-cosine) half-window over the
``overlap`` pixels at each side: ``sin^2(pi * (i + 0.5) / (2 * overlap))`` for ``i = 0..overlap-1``.
Two neighbours' ramps over a shared overlap sum to exactly 1 (``sin^2 + cos^2``), so blended
probabilities of a model that ignores position are unchanged, and a model that does depend on the
position within the tile fades from one window to the next without a seam. Ramps never reach 0,
so pixels at the raster edge (covered by one window only) keep a positive weight.

:class:`ChunkBlender` accumulates the weighted probabilities in torch on the model's device, one window
row at a time in chunks of window columns, so its buffers are bounded by a chunk, not by the raster: see
its docstring for the halo carried between chunks and rows, and why the sums are bitwise those of a
whole-row buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

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


@dataclass(frozen=True)
class BlendedChunk:
    """The final blend of one chunk's output pixels: n raster rows x m columns from raster column ``x``.

    Attributes:
        x: first raster column.
        acc: float32 (K, n, m), the weighted sums of softmax probabilities (views of the blender's buffer,
            valid until its next chunk starts).
        weight: float32 (n, m), the sums of window weights (0 where no window with data covers a pixel).
        invalid: bool (n, m), nodata/NaN input pixels.
    """

    x: int
    acc: Tensor
    weight: Tensor
    invalid: Tensor


class ChunkBlender:
    """Blends segmentation windows one window row at a time, in chunks of ``chunk_cols`` window columns.

    A chunk of window columns ``[c0, c1)`` of window row ``r`` holds, on ``device``, ``acc`` float32 (K, tile,
    span), ``weight`` float32 (tile, span) and ``invalid`` bool (tile, span) over raster columns
    ``[c0 * stride, c0 * stride + span)``, ``span = (chunk_cols - 1) * stride + tile``. It starts from two halos
    of one overlap: its left ``overlap`` columns are the previous chunk's right ones (what window ``c0 - 1``
    left there), and its top ``overlap`` rows come from ``top_*``, the bottom ``overlap`` rows that window row
    ``r - 1`` left across the padded width Wp. Every pixel thus receives the contributions of the windows
    covering it in row-major order, exactly as a buffer over the whole row would, so the float32 sums are
    bitwise the same whatever the chunk size. Finishing a chunk makes its first ``stride`` columns (up to the
    raster's edge for the row's last chunk) of its first ``stride`` rows (to the bottom edge for the last
    row) final, and saves its bottom ``overlap`` rows into ``top_*`` for the next row.

    Memory: ``(4K + 5) * tile * span`` bytes for the chunk plus ``(4K + 5) * overlap * Wp`` for the halo
    carried down; it does not grow with the raster's height, and with the width only by the halo.
    """

    def __init__(self, grid: WindowGrid, num_classes: int, chunk_cols: int, device: torch.device) -> None:
        self.grid, self.device = grid, device
        self.chunk_cols = max(1, min(chunk_cols, grid.cols))
        span = (self.chunk_cols - 1) * grid.stride + grid.tile
        tile, overlap, padded = grid.tile, grid.overlap, grid.padded_width
        self.window_weights = torch.from_numpy(hann_weights(tile, overlap)).to(device)
        self.acc = torch.zeros((num_classes, tile, span), dtype=torch.float32, device=device)
        self.weight = torch.zeros((tile, span), dtype=torch.float32, device=device)
        self.invalid = torch.zeros((tile, span), dtype=torch.bool, device=device)
        self.top_acc = torch.zeros((num_classes, overlap, padded), dtype=torch.float32, device=device)
        self.top_weight = torch.zeros((overlap, padded), dtype=torch.float32, device=device)
        self.top_invalid = torch.zeros((overlap, padded), dtype=torch.bool, device=device)
        self.x0 = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the chunk buffer and the halo carried down."""
        buffers = (self.acc, self.weight, self.invalid, self.top_acc, self.top_weight, self.top_invalid)
        return sum(b.numel() * b.element_size() for b in buffers)

    def start_chunk(self, col: int) -> None:
        """Begin the chunk whose first window column is ``col`` (a multiple of ``chunk_cols``)."""
        stride, overlap = self.grid.stride, self.grid.overlap
        self.x0 = col * stride
        buffers = (self.acc, self.weight, self.invalid)
        tops = (self.top_acc, self.top_weight, self.top_invalid)
        keep = 0
        if col > 0:  # the left halo: what the previous (full) chunk's last window left past its final columns
            keep, shift = overlap, self.chunk_cols * stride
            for buffer in buffers:
                buffer[..., :overlap].copy_(buffer[..., shift : shift + overlap])
        for buffer in buffers:
            buffer[..., keep:].zero_()
        span = min(self.acc.shape[-1], self.grid.padded_width - self.x0)
        for buffer, top in zip(buffers, tops, strict=True):
            buffer[..., :overlap, keep:span].copy_(top[..., self.x0 + keep : self.x0 + span])

    def add(self, window: TileWindow, weighted: Tensor | None, invalid: Tensor) -> None:
        """Blend one window of the current chunk.

        Args:
            window: a window of the chunk.
            weighted: float32 (K, tile, tile) softmax probabilities times :func:`hann_weights`, on the device,
                or None for a window whose pixels are all invalid (the model was not run on it).
            invalid: bool (tile, tile) on the device, True at nodata/NaN pixels.
        """
        cols = slice(window.x - self.x0, window.x - self.x0 + self.grid.tile)
        self.invalid[:, cols] |= invalid
        if weighted is not None:
            self.acc[:, :, cols] += weighted
            self.weight[:, cols] += self.window_weights

    def finish_chunk(self, row: int, last_col: int) -> BlendedChunk:
        """The final pixels of the chunk ending at window column ``last_col`` of window row ``row``; saves its
        bottom halo for the next row."""
        grid = self.grid
        start, stop = grid.output_rows(row)
        last = last_col == grid.cols - 1
        width = (grid.width if last else (last_col + 1) * grid.stride) - self.x0
        keep = grid.padded_width - self.x0 if last else self.chunk_cols * grid.stride
        for buffer, top in ((self.acc, self.top_acc), (self.weight, self.top_weight), (self.invalid, self.top_invalid)):
            top[..., self.x0 : self.x0 + keep].copy_(buffer[..., grid.stride :, :keep])
        n = stop - start
        return BlendedChunk(self.x0, self.acc[:, :n, :width], self.weight[:n, :width], self.invalid[:n, :width])
