"""From model outputs to finished output row blocks: blending and encoding on the model's device.

:class:`SegmentationRows` blends softmax probabilities with a :class:`~geoexplora.inference.blending.ChunkBlender`,
and encodes each finished chunk on the device (argmax, class values, nodata, probabilities as uint8
``round(p * 254)``); only the uint8 (uint16 for more than 254 classes) pixels are copied to the host, into the
row block the writer gets. :class:`ClassificationRows` keeps one class (and K probabilities) per window.
Both take whole batches and return the row blocks they finish, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from geoexplora.inference.blending import BlendedChunk, ChunkBlender
from geoexplora.inference.reader import Batch
from geoexplora.inference.windows import WindowGrid

PROBABILITY_SCALE = 254  # probabilities are written as uint8 round(p * 254); 255 is nodata
PROBABILITY_NODATA = 255

Block = tuple[int, int, list[np.ndarray]]
"""(window row, first raster row, [class map (1, n, W), probabilities (K, n, W) uint8 when asked])."""


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU, where torch runs synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_argmax(scores: Tensor) -> Tensor:
    """float32 (...): the index along dim 0 of the first maximum of ``scores`` (K, ...), as ``argmax`` returns it.

    Elementwise over the K slices (a running maximum; a later class wins only when strictly greater), which on a
    CPU is several times faster than ``Tensor.argmax(dim=0)`` on the strided views of the blend buffer.
    """
    best = scores[0].clone()
    index = torch.zeros_like(best)
    for k in range(1, scores.shape[0]):
        greater = torch.gt(scores[k], best).to(best.dtype)
        torch.maximum(best, scores[k], out=best)
        index += (k - index) * greater
    return index


class SegmentationRows:
    """Blend windows chunk by chunk and encode finished row blocks (see the module docstring).

    Args:
        grid: the window grid.
        values: class index i -> the value the class map stores (``len(values)`` = K).
        dtype: class-map dtype name (uint8 or uint16).
        nodata: class-map nodata.
        probabilities: also encode the K probability bands.
        chunk_cols: window columns per chunk.
        device: the model's device; blending and encoding run there.
        first_row: window rows before it are blended but not encoded (a resume re-blends one written row).
    """

    def __init__(self, grid: WindowGrid, values: Sequence[int], dtype: str, nodata: int, probabilities: bool,
                 chunk_cols: int, device: torch.device, first_row: int = 0) -> None:
        self.grid, self.dtype, self.nodata, self.probabilities, self.device = grid, dtype, nodata, probabilities, device
        self.first_row = first_row
        self.blender = ChunkBlender(grid, len(values), chunk_cols, device)
        self.device_dtype = torch.uint8 if dtype == "uint8" else torch.int32
        self.lut: Tensor | None = None  # class index -> value, nodata -> nodata; None when values are the indexes
        if list(values) != list(range(len(values))):
            table = np.arange(nodata + 1, dtype=np.int64)
            table[: len(values)] = values
            self.lut = torch.from_numpy(table).to(device=device, dtype=self.device_dtype)
        self._block: list[Tensor] = []

    @property
    def buffer_bytes(self) -> int:
        return self.blender.nbytes

    def add_batch(self, batch: Batch, probs: Tensor, invalid: Tensor, skip_before: int) -> list[Block]:
        """Blend a batch; return the row blocks it finishes.

        Args:
            batch: the windows (their order).
            probs: float32 (len(batch.has_data), K, tile, tile) softmax probabilities on the device (overwritten).
            invalid: bool (len(batch.windows), tile, tile) on the device.
            skip_before: windows of rows before this one are not blended (a resume's batch starts mid-row).
        """
        weighted = probs.mul_(self.blender.window_weights)  # in place: the probabilities are ours
        slot = {i: j for j, i in enumerate(batch.has_data)}
        blocks = []
        chunk = self.blender.chunk_cols
        for i, window in enumerate(batch.windows):
            if window.row < skip_before:
                continue
            if window.col % chunk == 0:
                self.blender.start_chunk(window.col)
            self.blender.add(window, weighted[slot[i]] if i in slot else None, invalid[i])
            if window.col % chunk == chunk - 1 or window.col == self.grid.cols - 1:
                finished = self.blender.finish_chunk(window.row, window.col)
                if window.row >= self.first_row:
                    self._encode(window.row, finished)
                    if window.col == self.grid.cols - 1:
                        blocks.append(self._take_block(window.row))
        return blocks

    def _encode(self, row: int, chunk: BlendedChunk) -> None:
        """Encode a finished chunk on the device and copy it into the row block on the host."""
        if not self._block:
            start, stop = self.grid.output_rows(row)
            pin = self.device.type == "cuda"
            shape = (stop - start, self.grid.width)
            self._block = [torch.empty((1, *shape), dtype=self.device_dtype, pin_memory=pin)]
            if self.probabilities:
                self._block.append(torch.empty((chunk.acc.shape[0], *shape), dtype=torch.uint8, pin_memory=pin))
        cols = slice(chunk.x, chunk.x + chunk.acc.shape[-1])
        bad = chunk.invalid | (chunk.weight <= 0)
        codes = torch.where(bad, float(self.nodata), first_argmax(chunk.acc)).to(self.device_dtype)
        if self.lut is not None:
            codes = self.lut[codes.long()]
        self._block[0][0, :, cols].copy_(codes, non_blocking=True)
        if self.probabilities:
            probs = torch.where(chunk.weight > 0, chunk.acc / chunk.weight, 0.0)
            encoded = torch.round(probs * PROBABILITY_SCALE).to(torch.uint8)
            self._block[1][:, :, cols].copy_(torch.where(bad, PROBABILITY_NODATA, encoded), non_blocking=True)

    def _take_block(self, row: int) -> Block:
        synchronize(self.device)
        arrays = [self._block[0].numpy().astype(self.dtype, copy=False), *(b.numpy() for b in self._block[1:])]
        self._block = []
        return row, self.grid.output_rows(row)[0], arrays


class ClassificationRows:
    """One class (and K probabilities) per window of a row; windows without data are nodata."""

    buffer_bytes = 0

    def __init__(self, grid: WindowGrid, values: Sequence[int], dtype: str, nodata: int, probabilities: bool) -> None:
        self.grid, self.nodata = grid, nodata
        self.values = np.asarray(values)
        self.classes = np.full((1, 1, grid.cols), nodata, dtype=dtype)
        self.probs = np.full((len(values), 1, grid.cols), PROBABILITY_NODATA, np.uint8) if probabilities else None

    def add_batch(self, batch: Batch, probs: Tensor, invalid: Tensor, skip_before: int) -> list[Block]:
        """Record a batch's windows (probs float32 (len(batch.has_data), K)); return the rows it finishes."""
        by_window = dict(zip(batch.has_data, probs.cpu().numpy(), strict=True))
        blocks = []
        for i, window in enumerate(batch.windows):
            if window.row < skip_before:
                continue
            if i in by_window:
                self.classes[0, 0, window.col] = self.values[by_window[i].argmax()]
                if self.probs is not None:
                    self.probs[:, 0, window.col] = np.rint(by_window[i] * PROBABILITY_SCALE)
            if window.col == self.grid.cols - 1:
                blocks.append((window.row, window.row, self._take_row()))
        return blocks

    def _take_row(self) -> list[np.ndarray]:
        block = [self.classes.copy()] + ([self.probs.copy()] if self.probs is not None else [])
        self.classes[:] = self.nodata
        if self.probs is not None:
            self.probs[:] = PROBABILITY_NODATA
        return block
