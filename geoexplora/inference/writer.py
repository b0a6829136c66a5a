"""Block writer: temporary GeoTIFFs written row block by row block, resume state, then COG and rename.

For an output ``pred.tif`` the writer keeps, next to it,

* ``pred.tif.partial.tif``: a striped, DEFLATE-compressed GeoTIFF with the final geometry, one strip
  per row block (``ROWSPERSTRIP`` = the rows a block finalises), so every block is written once,
  whole, and never rewritten: a kill can lose only the block in progress;
* ``pred.tif.partial.json``: ``{"key": <hash of the parameters>, "blocks_done": n}``, replaced
  atomically after block ``n - 1`` is on disk (its file closed).

When every block is written the temporary file is copied to a Cloud-Optimised GeoTIFF with overviews
(GDAL's COG driver, fixed creation options, no timestamps, so equal pixels give equal bytes) under
``pred.tif.partial.cog.tif`` and renamed to ``pred.tif``: the final name never holds a partial file.
Writes run in a background thread fed through a queue of at most ``queue_blocks`` blocks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geoexplora.errors import GeoExploraError

logger = logging.getLogger(__name__)

COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "BLOCKSIZE": 512,
    "OVERVIEWS": "AUTO",
    "BIGTIFF": "IF_SAFER",
}
# GDAL's block cache during the COG copy: its overview pass fills whatever it is given (about 500 MiB more at
# 40,000^2 with 256 MiB than with this, at the same speed).
COG_CACHE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class OutputSpec:
    """One output raster: where it goes and what it holds.

    Attributes:
        path: final path of the COG.
        count: bands.
        dtype: numpy dtype name of the pixels.
        nodata: nodata value, or None.
        width, height: size in pixels.
        crs: CRS (None writes pixel coordinates).
        transform: pixel-to-map affine transform.
        scales: per-band scale written as metadata (value * scale = physical value), or None.
        descriptions: per-band descriptions, or None.
        colormap: GDAL colour table of band 1, pixel value -> (r, g, b), or None.
        tags: dataset metadata (default domain), or None.
        band_tags: per-band metadata, or None.
        overview_resampling: how GDAL builds the COG's overviews: ``MODE`` for class maps (the most
            frequent class, never a blend of two), ``AVERAGE`` for probabilities and embeddings
            (nodata pixels left out), ``NEAREST`` otherwise.
    """

    path: Path
    count: int
    dtype: str
    nodata: float | None
    width: int
    height: int
    crs: CRS | None
    transform: Affine
    scales: tuple[float, ...] | None = None
    descriptions: tuple[str, ...] | None = field(default=None)
    colormap: Mapping[int, tuple[int, int, int]] | None = None
    tags: Mapping[str, str] | None = None
    band_tags: tuple[Mapping[str, str], ...] | None = None
    overview_resampling: Literal["NEAREST", "MODE", "AVERAGE"] = "NEAREST"

    @property
    def partial(self) -> Path:
        return partial_path(self.path, ".tif")


def partial_path(path: Path, suffix: str) -> Path:
    """``path`` with ``.partial{suffix}`` appended to its name, in the same folder."""
    return path.with_name(f"{path.name}.partial{suffix}")


class BlockWriter:
    """Write row blocks of one or more outputs in a background thread; finish with COG + rename.

    Args:
        outputs: the outputs; block data comes in the same order.
        rows_per_block: rows of every block but the last (the strip height).
        key: hash of everything that determines the pixels; a resume needs the same key.
        resume: continue from the state file when there is one with the same key.
        queue_blocks: blocks waiting to be written at most.

    Attributes:
        blocks_done: blocks already on disk when writing starts (0 unless resuming).
    """

    def __init__(
        self, outputs: Sequence[OutputSpec], rows_per_block: int, key: str, resume: bool, queue_blocks: int = 2
    ) -> None:
        self.outputs, self.rows_per_block, self.key = list(outputs), rows_per_block, key
        self.state_path = partial_path(self.outputs[0].path, ".json")
        self.blocks_done = self._resume_point() if resume else 0
        if self.blocks_done == 0:
            for spec in self.outputs:
                self._create(spec)
            self._save_state(0)
        self._queue: queue.Queue[tuple[int, int, list[np.ndarray]] | None] = queue.Queue(maxsize=queue_blocks)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="geoexplora-writer", daemon=True)

    def __enter__(self) -> BlockWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc is None and self._error is not None:
            raise self._error

    def put(self, block: int, row_start: int, data: Sequence[np.ndarray]) -> None:
        """Queue block ``block``: ``data[i]`` is (count, rows, width) of ``outputs[i]`` from row ``row_start``."""
        if self._error is not None:
            raise self._error
        self._queue.put((block, row_start, list(data)))

    def finish(self) -> None:
        """COG-copy every temporary file, rename them into place, and remove the temporary files.

        Every copy is made before any rename, and the resume state goes before the partial files, so a run
        killed at any point here either resumes (state and partials still there: the copies are redone) or
        is complete (no state).
        """
        cogs = [partial_path(spec.path, ".cog.tif") for spec in self.outputs]
        with rasterio.Env(GDAL_CACHEMAX=COG_CACHE_BYTES):
            for spec, cog in zip(self.outputs, cogs, strict=True):
                rasterio.shutil.copy(spec.partial, cog, driver="COG", **COG_OPTIONS,
                                     OVERVIEW_RESAMPLING=spec.overview_resampling)
        for spec, cog in zip(self.outputs, cogs, strict=True):
            os.replace(cog, spec.path)
        self.state_path.unlink()
        for spec in self.outputs:
            spec.partial.unlink()

    def temporary_files(self) -> list[Path]:
        """Every file this writer may leave beside its outputs."""
        files = [self.state_path, partial_path(self.outputs[0].path, ".json.tmp")]
        for spec in self.outputs:
            files += [spec.partial, partial_path(spec.path, ".cog.tif")]
        return files

    @contextlib.contextmanager
    def discarded_on_error(self) -> Iterator[None]:
        """Remove the temporary files when the body fails with an error (a bad input found mid-run), so no
        stale partial is left; an interrupt (Ctrl-C, a kill) keeps them for ``resume``."""
        try:
            yield
        except Exception:
            for path in self.temporary_files():
                path.unlink(missing_ok=True)
            raise

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            block, row_start, data = item
            try:
                for spec, array in zip(self.outputs, data, strict=True):
                    with rasterio.open(spec.partial, "r+") as dst:
                        dst.write(array, window=Window(0, row_start, spec.width, array.shape[-2]))
                self._save_state(block + 1)
            except BaseException as error:  # raised in the producer's thread at its next put or exit
                self._error = error

    def _create(self, spec: OutputSpec) -> None:
        profile: dict[str, Any] = {
            "driver": "GTiff", "width": spec.width, "height": spec.height, "count": spec.count,
            "dtype": spec.dtype, "nodata": spec.nodata, "crs": spec.crs, "transform": spec.transform,
            # DEFLATE level 1: the partial is decoded once by the COG copy (which compresses at the default
            # level); on a 4000^2 class map it encodes in 0.04 s instead of 0.15 s, at twice the (small) size.
            "tiled": False, "blockysize": self.rows_per_block, "compress": "deflate", "zlevel": 1, "sparse_ok": True,
            "bigtiff": "if_safer",
        }
        with rasterio.open(spec.partial, "w", **profile) as dst:
            if spec.scales is not None:
                dst.scales = spec.scales
            if spec.descriptions is not None:
                dst.descriptions = spec.descriptions
            if spec.colormap is not None:
                dst.write_colormap(1, {value: (*rgb, 255) for value, rgb in spec.colormap.items()})
            if spec.tags is not None:
                dst.update_tags(**spec.tags)
            for band, tags in enumerate(spec.band_tags or (), start=1):
                dst.update_tags(band, **tags)

    def _resume_point(self) -> int:
        if not self.state_path.exists():
            logger.warning("%s: no partial run to resume; starting from the first block", self.outputs[0].path)
            return 0
        try:
            state = json.loads(self.state_path.read_text())
            key, done = str(state["key"]), int(state["blocks_done"])
        except (OSError, ValueError, KeyError, TypeError):
            raise GeoExploraError(f"{self.state_path}: unreadable resume state; rerun with overwrite") from None
        if key != self.key:
            raise GeoExploraError(
                f"{self.state_path}: the partial run used other inputs or parameters; rerun them, or overwrite"
            )
        missing = [str(s.partial) for s in self.outputs if not s.partial.exists()]
        if missing:
            raise GeoExploraError(f"{missing[0]}: partial output missing; rerun with overwrite")
        logger.info("%s: resuming after %d written blocks", self.outputs[0].path, done)
        return done

    def _save_state(self, blocks_done: int) -> None:
        tmp = partial_path(self.outputs[0].path, ".json.tmp")
        tmp.write_text(json.dumps({"key": self.key, "blocks_done": blocks_done}))
        os.replace(tmp, self.state_path)
