"""The tiled-inference engine: a whole raster through a model, streamed, into a georeferenced COG.

Reading runs in ``reader_threads`` threads (:class:`~geoexplora.inference.reader.WindowReader`), the model,
normalisation, blending, argmax and quantisation on the model's device
(:mod:`~geoexplora.inference.rows`), and DEFLATE encoding and writing in the writer's thread
(:class:`~geoexplora.inference.writer.BlockWriter`). Memory is bounded by a chunk of window columns, not by
the raster: at most ``prefetch + reader_threads`` input batches (B, C, tile, tile) float32, the blend buffer
of one chunk (:class:`~geoexplora.inference.blending.ChunkBlender`, about
:data:`~geoexplora.inference.memory.BLEND_CHUNK_BYTES`) plus the halo it carries down (``(4K + 5) * overlap``
bytes per raster column), and up to ``queue_blocks + 2`` finished uint8 row blocks (``stride`` rows by the
width, one byte per pixel and output band), plus the model and GDAL's block cache (capped at
:data:`~geoexplora.inference.reader.GDAL_CACHE_BYTES`, and at :data:`~geoexplora.inference.writer.COG_CACHE_BYTES`
for the final COG copy). Freed buffers go back to the system (:mod:`~geoexplora.inference.heap`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from torch import Tensor, nn
from tqdm.auto import tqdm

from geoexplora.data.raster import inspect_raster
from geoexplora.data.sources import as_input_path
from geoexplora.errors import GeoExploraError
from geoexplora.inference.heap import hold_mmap_threshold
from geoexplora.inference.memory import chunk_columns
from geoexplora.inference.reader import (
    GDAL_CACHE_BYTES, Batch, RasterSource, WindowReader, WindowSource, normalize_images, warn_if_striped,
)
from geoexplora.inference.rows import PROBABILITY_NODATA, PROBABILITY_SCALE, ClassificationRows, SegmentationRows
from geoexplora.inference.windows import WindowGrid
from geoexplora.inference.writer import BlockWriter, OutputSpec, partial_path
from geoexplora.outputs import OutputLock, folder_is_writable

if TYPE_CHECKING:
    from geoexplora.models.checkpoint import ClassInfo

logger = logging.getLogger(__name__)

Mode = Literal["segmentation", "classification"]


@dataclass(frozen=True)
class SourceInfo:
    """The input raster's geometry, read once before any work."""

    path: Path
    width: int
    height: int
    count: int
    crs: rasterio.crs.CRS | None
    transform: Affine


@dataclass(frozen=True)
class PredictSummary:
    """What a :func:`predict_raster` call did.

    Attributes:
        raster: the input.
        outputs: the files written (class map first, then probabilities when asked).
        width, height: input size in pixels.
        windows: windows run through the pipeline by this call (a resume skips finished ones).
        total_windows: windows in the grid.
        resumed_blocks: row blocks already written by an interrupted run (0 for a fresh run).
        seconds: wall time of the call.
        peak_rss_mb: the process's peak resident memory (``ru_maxrss``), MiB.
        buffer_bytes: bytes of the rolling blend buffer (0 in classification mode).
    """

    raster: Path
    outputs: tuple[Path, ...]
    width: int
    height: int
    windows: int
    total_windows: int
    resumed_blocks: int
    seconds: float
    peak_rss_mb: float
    buffer_bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def __str__(self) -> str:
        resumed = f", resuming after {self.resumed_blocks} written row blocks" if self.resumed_blocks else ""
        rate = self.pixels / self.seconds / 1e6 if self.seconds > 0 else float("nan")
        return (
            f"Predicted {self.raster} ({self.width} x {self.height} px, {self.pixels / 1e6:.1f} Mpx) with "
            f"{self.windows} of {self.total_windows} windows{resumed} in {self.seconds:.1f} s "
            f"({rate:.2f} Mpx/s); peak memory {self.peak_rss_mb:.0f} MiB, blend buffer "
            f"{self.buffer_bytes / 2**20:.1f} MiB; wrote {', '.join(str(p) for p in self.outputs)}."
        )


def predict_raster(
    raster: Path,
    out: Path,
    model: Callable[[Tensor], Tensor],
    *,
    num_classes: int,
    tile: int = 224,
    overlap: int = 32,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    normalize: Callable[[Tensor], Tensor] | None = None,
    bands: Sequence[int] | None = None,
    mode: Mode = "segmentation",
    probabilities: Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    nodata_out: int | None = None,
    allow_no_crs: bool = False,
    prefetch: int = 2,
    classes: Sequence[ClassInfo] | None = None,
    tags: Mapping[str, str] | None = None,
    reader_threads: int = 1,
    chunk_windows: int | None = None,
    window_source: Callable[[WindowGrid, Sequence[int]], WindowSource] | None = None,
) -> PredictSummary:
    """Run ``model`` over every window of ``raster`` and write the class map to ``out`` as a COG.

    Windows of ``tile`` px overlapping by ``overlap`` px are read by ``reader_threads`` background threads,
    padded by reflection at the right/bottom edges, batched, normalised on ``device`` and run under
    ``torch.inference_mode()``. Segmentation: softmax probabilities are blended on ``device`` with a Hann
    taper over the overlaps, one window row at a time in chunks of ``chunk_windows`` window columns, and each
    finished row block is written by a background thread; the class map is
    uint8 (uint16 when K > 254) with nodata 255 (65535) wherever any read band is the file's nodata
    or NaN. Classification: one class per window, written as a raster of ``rows x cols`` windows whose
    transform is the input's scaled by the stride (pixel (i, j) is the window with origin
    ``(j * stride, i * stride)``). Outputs keep the input's CRS and transform (and, for segmentation,
    its size). Memory: see the module docstring; it does not grow with the raster's height.

    Args:
        raster: input GeoTIFF.
        out: output class map (``.tif``); written as ``out.name + ".partial.tif"`` then renamed.
        model: float32 (B, C, tile, tile) on ``device`` -> logits (B, K, tile, tile) for segmentation
            or (B, K) for classification. An ``nn.Module`` is put in eval mode; it must already be on
            ``device``.
        num_classes: K.
        tile, overlap: window size and overlap in pixels, ``0 <= overlap <= tile // 2``.
        batch_size: windows per forward pass.
        device: where batches are sent.
        normalize: float32 (n, C, tile, tile) with NaN at nodata pixels -> normalised (e.g. a
            :class:`~geoexplora.data.stats.Normalizer`, on ``device``); it runs on ``device`` after the
            transfer; NaNs left are set to 0. It gets a read buffer that is reused for later batches: it may
            work in it (a ``normalize_`` method is called instead, to work in place), but must not keep it.
        bands: 1-based band indexes in model order (default: all bands).
        mode: ``"segmentation"`` or ``"classification"``.
        probabilities: optional K-band per-class probability COG with the class map's geometry, uint8
            ``round(p * 254)`` (band scale 1/254 in the metadata), 255 = nodata.
        overwrite: replace existing outputs.
        resume: continue an interrupted run with the same inputs and parameters from its last written
            row block; the result is byte-identical to an uninterrupted run.
        progress: show a tqdm bar (windows, windows/s) when stderr is a terminal.
        nodata_out: class-map nodata (default 255, or 65535 for uint16); must not be a class id.
        allow_no_crs: accept a raster without CRS/transform and write pixel coordinates.
        prefetch: batches read ahead.
        classes: what class index i means (K of them): the class map stores ``classes[i].value`` (default
            i) and carries a GDAL colour table and ``class_<value>=<name>`` band metadata; probability
            bands are described by class name.
        tags: extra provenance metadata for every output (e.g. the checkpoint's sha256); the geoexplora
            version, mode, tile and overlap are always written.
        reader_threads: threads reading windows, each with its own dataset handle (GDAL decodes in parallel).
        chunk_windows: window columns blended per chunk (default: as many as fit
            :data:`~geoexplora.inference.memory.BLEND_CHUNK_BYTES`). Outputs do not depend on it, nor on
            ``reader_threads``.
        window_source: builds the windows' source from ``raster``'s grid and ``bands`` instead of
            reading ``raster`` itself (e.g. :class:`~geoexplora.inference.stack_reader.StackSource` over
            dated rasters whose first date is ``raster``); its ``identity`` joins what ``resume`` checks.

    Raises:
        GeoExploraError: before any work, for a missing/unreadable/truncated raster, a raster without
            CRS (unless ``allow_no_crs``), too few bands, a missing or read-only output folder, an
            existing output (unless ``overwrite`` or ``resume``), bad tile/overlap/classes/reader threads; during the
            run, for model outputs of the wrong shape.
    """
    started = time.perf_counter()
    raster, out = as_input_path(raster), Path(out)
    source = check_raster(raster, allow_no_crs)
    band_indexes = check_bands(raster, source.count, bands)
    grid = WindowGrid(source.width, source.height, tile, overlap)
    if mode not in ("segmentation", "classification"):
        raise GeoExploraError(f"mode {mode!r}: use 'segmentation' or 'classification'")
    if batch_size < 1:
        raise GeoExploraError(f"batch size {batch_size}: must be at least 1")
    if reader_threads < 1:
        raise GeoExploraError(f"reader threads {reader_threads}: must be at least 1")
    if classes is not None and len(classes) != num_classes:
        raise GeoExploraError(f"{len(classes)} classes described for a model with {num_classes} classes")
    values = [c.value for c in classes] if classes is not None else list(range(num_classes))
    dtype, nodata = class_dtype(max(values) + 1, nodata_out)
    paths = [out] if probabilities is None else [out, Path(probabilities)]
    if len(set(paths)) != len(paths):
        raise GeoExploraError(f"{out}: the class map and the probabilities need different paths")
    for path in paths:
        check_output(path, overwrite, resume)
    with OutputLock(paths):
        if resume and is_finished(paths):
            logger.warning("%s: already complete; --resume leaves it alone (use overwrite to redo it)", out)
            for path in paths:  # what a run killed after its last rename may have left
                partial_path(path, ".tif").unlink(missing_ok=True)
            return PredictSummary(raster, tuple(paths), source.width, source.height, 0, len(grid), 0,
                                  time.perf_counter() - started, 0.0, 0)
        specs = describe_outputs(output_specs(source, grid, mode, paths, num_classes, dtype, nodata), classes,
                                 {**(tags or {}), "mode": mode, "tile": str(tile), "overlap": str(overlap)})
        windows = RasterSource(raster, grid, band_indexes) if window_source is None \
            else window_source(grid, band_indexes)
        key = params_key(source, model, normalize, band_indexes, tile, overlap, batch_size, mode, num_classes,
                         nodata, paths, allow_no_crs, values, getattr(windows, "identity", None))
        if isinstance(model, nn.Module):
            model.eval()
        warn_if_striped(raster, tile, reader_threads)
        hold_mmap_threshold()

        rows_per_block = grid.stride if mode == "segmentation" else 1
        writer = BlockWriter(specs, rows_per_block, key, resume)
        done = writer.blocks_done
        # Segmentation re-blends the last written window row: it holds the overlap carried into the next.
        first_row = max(done - 1, 0) if mode == "segmentation" else done
        device = torch.device(device)
        with_probs = probabilities is not None
        chunk = chunk_windows if chunk_windows is not None else chunk_columns(grid, num_classes)
        sink = SegmentationRows(grid, values, dtype, nodata, with_probs, chunk, device, first_row=done) \
            if mode == "segmentation" else ClassificationRows(grid, values, dtype, nodata, with_probs)
        # On the CPU the reading threads are the spare cores: they normalise; elsewhere the device does.
        in_reader, on_device = (normalize, None) if device.type == "cpu" else (None, normalize)
        reader = WindowReader(windows, batch_size=batch_size, normalize=in_reader,
                              start_batch=first_row * grid.cols // batch_size, prefetch=prefetch,
                              pin_memory=device.type == "cuda", threads=reader_threads, recycle=True)
        todo = len(grid) - first_row * grid.cols
        windows_with_data = 0
        # One cap on GDAL's block cache for reading and writing (GDAL's default is 5% of RAM, which a large
        # raster would fill); the COG copy has its own, smaller one.
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), writer.discarded_on_error():
            with writer, reader, torch.inference_mode(), tqdm(total=todo, unit="win", disable=None if progress else True) as bar:
                for batch in reader:
                    invalid = torch.from_numpy(batch.invalid).to(device, non_blocking=True)
                    probs = _forward(model, on_device, batch, invalid, device, mode, num_classes, grid.tile)
                    windows_with_data += len(batch.has_data)
                    for row, row_start, block in sink.add_batch(batch, probs, invalid, first_row):
                        writer.put(row, row_start, block)
                    bar.update(sum(w.row >= first_row for w in batch.windows))
            writer.finish()
        if windows_with_data == 0 and done == 0:
            logger.warning("%s: every pixel is nodata or NaN; %s is all nodata", raster, out)
        return PredictSummary(
            raster, tuple(paths), source.width, source.height, todo, len(grid), done, time.perf_counter() - started,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, sink.buffer_bytes,
        )


def check_raster(raster: Path, allow_no_crs: bool = False) -> SourceInfo:
    """The raster's geometry after :func:`~geoexplora.data.raster.inspect_raster`'s checks.

    With ``allow_no_crs`` a raster without CRS is accepted (its pixel grid is the coordinate system),
    but it must still be readable to its last row.
    """
    if not raster.is_file():
        raise GeoExploraError(f"{raster}: no such raster file")
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):  # the last row of a wide raster is many blocks
        return _check_raster(raster, allow_no_crs)


def _check_raster(raster: Path, allow_no_crs: bool) -> SourceInfo:
    try:
        inspect_raster(raster)  # reads the last row of every band
        last_row_read = True
    except GeoExploraError:
        if not (allow_no_crs and _lacks_crs(raster)):
            raise
        last_row_read = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(raster) as src:
                if not last_row_read:
                    src.read(1, window=Window(0, src.height - 1, src.width, 1))
                return SourceInfo(raster, src.width, src.height, src.count, src.crs, src.transform)
        except RasterioError as err:
            raise GeoExploraError(f"{raster}: not a readable raster ({str(err).splitlines()[0]})") from None


def _lacks_crs(raster: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(raster) as src:
                return src.crs is None
        except RasterioError:
            return False


def check_bands(raster: Path, count: int, bands: Sequence[int] | None) -> list[int]:
    """1-based band indexes to read: ``bands``, checked against the file's ``count``, or all bands."""
    if bands is None:
        return list(range(1, count + 1))
    wanted = [int(b) for b in bands]
    if not wanted:
        raise GeoExploraError(f"{raster}: no bands asked for")
    bad = [b for b in wanted if not 1 <= b <= count]
    if bad:
        raise GeoExploraError(
            f"{raster}: has {count} bands but bands {', '.join(map(str, wanted))} were asked for "
            f"(band {bad[0]} does not exist; bands are numbered from 1)"
        )
    return wanted


def is_finished(paths: Sequence[Path]) -> bool:
    """Whether every output exists and no interrupted run of them is waiting (no resume state)."""
    return all(p.is_file() for p in paths) and not partial_path(paths[0], ".json").exists()


def check_output(path: Path, overwrite: bool, resume: bool) -> None:
    """Refuse an output whose folder is missing or read-only, or that exists (unless overwrite/resume)."""
    folder = path.parent
    if not folder.is_dir():
        raise GeoExploraError(f"{path}: output folder {folder} does not exist")
    if not folder_is_writable(folder):
        raise GeoExploraError(f"{path}: output folder {folder} is not writable")
    if path.is_dir():
        raise GeoExploraError(f"{path}: is a folder; give an output file name")
    if path.exists() and not (overwrite or resume):
        raise GeoExploraError(f"{path}: already exists; pass --overwrite to replace it")


def class_dtype(num_classes: int, nodata_out: int | None) -> tuple[str, int]:
    """Class-map dtype and nodata: uint8/255 for K <= 254 classes, else uint16/65535."""
    if not 1 <= num_classes <= 65535:
        raise GeoExploraError(f"num_classes {num_classes}: must be between 1 and 65535")
    dtype, default = ("uint8", 255) if num_classes <= 254 else ("uint16", 65535)
    nodata = default if nodata_out is None else int(nodata_out)
    if not num_classes <= nodata <= np.iinfo(dtype).max:
        raise GeoExploraError(
            f"nodata_out {nodata}: must be a {dtype} value that is not a class id (>= {num_classes})"
        )
    return dtype, nodata


def output_specs(
    source: SourceInfo, grid: WindowGrid, mode: Mode, paths: Sequence[Path], num_classes: int, dtype: str, nodata: int
) -> list[OutputSpec]:
    """The class map (and probabilities) specs: the input's grid, or the window grid for classification."""
    if mode == "segmentation":
        width, height, transform = source.width, source.height, source.transform
    else:
        width, height, transform = grid.cols, grid.rows, source.transform @ Affine.scale(grid.stride)
    specs = [OutputSpec(paths[0], 1, dtype, nodata, width, height, source.crs, transform, descriptions=("class",),
                        overview_resampling="MODE")]
    if len(paths) > 1:
        specs.append(OutputSpec(
            paths[1], num_classes, "uint8", PROBABILITY_NODATA, width, height, source.crs, transform,
            scales=(1 / PROBABILITY_SCALE,) * num_classes,
            descriptions=tuple(f"probability class {k}" for k in range(num_classes)), overview_resampling="AVERAGE",
        ))
    return specs


def describe_outputs(specs: list[OutputSpec], classes: Sequence[ClassInfo] | None,
                     tags: Mapping[str, str]) -> list[OutputSpec]:
    """The specs with provenance ``tags`` and, given ``classes``, the class map's colour table and class
    names (band metadata ``class_<value>=<name>``) and the probabilities' bands named by class."""
    from geoexplora import __version__

    tags = {"geoexplora_version": __version__, **tags}
    if classes is None:
        return [replace(spec, tags=tags) for spec in specs]
    class_map = replace(specs[0], tags=tags, colormap={c.value: c.color for c in classes},
                        band_tags=({f"class_{c.value}": c.name for c in classes},))
    probabilities = [replace(spec, tags=tags, descriptions=tuple(c.name for c in classes),
                             band_tags=tuple({"class_value": str(c.value), "class_name": c.name} for c in classes))
                     for spec in specs[1:]]
    return [class_map, *probabilities]


def params_key(source: SourceInfo, model: object, normalize: object, *params: object) -> str:
    """sha256 of the input file's identity, the parameters, and the weights of ``nn.Module`` model/normaliser."""
    stat = source.path.stat()
    digest = hashlib.sha256(json.dumps(
        [str(source.path.resolve()), stat.st_size, stat.st_mtime_ns, [str(p) for p in params]]
    ).encode())
    for module in (model, normalize):
        if isinstance(module, nn.Module):
            update_with_weights(digest, module)
    return digest.hexdigest()


def update_with_weights(digest: hashlib._Hash, module: nn.Module) -> None:
    """Feed every tensor of ``module``'s state dict (name, then raw bytes) to ``digest``."""
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _forward(model: Callable[[Tensor], Tensor], normalize: Callable[[Tensor], Tensor] | None, batch: Batch,
             invalid: Tensor, device: torch.device, mode: Mode, num_classes: int, tile: int) -> Tensor:
    """float32 softmax probabilities on ``device`` of the batch's windows with data: (n, K, tile, tile) or (n, K).

    The batch is normalised (``normalize`` not None) on ``device``, after the transfer, with NaN at its invalid
    pixels (``invalid`` bool (len(batch.windows), tile, tile) on ``device``).
    """
    n = len(batch.has_data)
    expected = (n, num_classes, tile, tile) if mode == "segmentation" else (n, num_classes)
    if n == 0:
        return torch.empty(expected, dtype=torch.float32, device=device)
    images = batch.images.to(device, non_blocking=True)
    if normalize is not None:
        rows = invalid if n == len(batch.windows) else invalid[torch.tensor(batch.has_data, device=device)]
        images = normalize_images(images, rows, batch.any_invalid, normalize)
    logits = model(images)
    if tuple(logits.shape) != expected:
        raise GeoExploraError(
            f"model output has shape {tuple(logits.shape)}; {mode} with {num_classes} classes needs {expected}"
        )
    return torch.softmax(logits.float(), dim=1)
