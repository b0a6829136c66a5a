"""What a tiled prediction would hold in memory, checked against what the machine has before any work.

The engine's buffers (see :mod:`geoexplora.inference.predict`) grow with the tile: ``prefetch + 1`` input
batches (B, C, tile, tile) float32 plus their masks, the blend buffer of one chunk of window columns
(:func:`chunk_columns`, about :data:`BLEND_CHUNK_BYTES`) plus the halo it carries down,
``(4K + 5) * overlap * Wp`` bytes (Wp the padded raster width), finished uint8 row blocks (``stride`` x
width, one byte per pixel and band: K + 1 with probabilities), and the ViT's activations, about
``B * 8 * N * D`` float32 for N = (tile / patch)² tokens of width D (attention and MLP intermediates of one
block). A tile that would need more than the available memory is refused
with one line instead of failing inside numpy or torch after the model loaded.
"""

from __future__ import annotations

import os

from geoexplora.errors import GeoExploraError
from geoexplora.inference.windows import WindowGrid


def available_memory_bytes() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux), else free physical pages times the page size."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


BLEND_CHUNK_BYTES = 32 * 2**20  # the blend buffer of one chunk of window columns, at most (unless one window is more)


def chunk_columns(grid: WindowGrid, num_classes: int, budget: int = BLEND_CHUNK_BYTES) -> int:
    """Window columns per blend chunk: as many as keep its ``(4K + 5) * tile * span`` bytes within ``budget``
    (``span = (cols - 1) * stride + tile``), at least 1, at most the grid's columns."""
    per_column = (4 * num_classes + 5) * grid.tile
    fit = (budget // per_column - grid.tile) // grid.stride + 1
    return max(1, min(fit, grid.cols))


def blend_bytes(grid: WindowGrid, num_classes: int, chunk_cols: int) -> int:
    """Bytes of a :class:`~geoexplora.inference.blending.ChunkBlender`: the chunk and the halo carried down."""
    span = (min(chunk_cols, grid.cols) - 1) * grid.stride + grid.tile
    return (4 * num_classes + 5) * (grid.tile * span + grid.overlap * grid.padded_width)


def prediction_bytes(grid: WindowGrid, channels: int, num_classes: int, batch_size: int, patch_size: int,
                     embed_dim: int, prefetch: int = 2) -> int:
    """Bytes the engine and the model hold at once for ``grid`` (see the module docstring)."""
    pixels = grid.tile * grid.tile
    batches = (prefetch + 1) * batch_size * pixels * (4 * channels + 1)
    blend = blend_bytes(grid, num_classes, chunk_columns(grid, num_classes))
    rows = 4 * grid.stride * grid.width * (num_classes + 1)  # blocks queued, being written, being filled
    tokens = pixels // max(patch_size, 1) ** 2
    activations = batch_size * 8 * tokens * embed_dim * 4
    return batches + blend + rows + activations


def check_tile_memory(grid: WindowGrid, needed: int, flag: str = "--tile") -> None:
    """Refuse a tile whose buffers (``needed`` bytes) exceed the available memory."""
    available = available_memory_bytes()
    if needed > available:
        raise GeoExploraError(
            f"{flag} {grid.tile}: predicting would need about {needed / 2**30:.1f} GiB of memory but "
            f"{available / 2**30:.1f} GiB is available; use a smaller {flag} or --batch-size"
        )
