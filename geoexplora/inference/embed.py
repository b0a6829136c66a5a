"""Embeddings of whole rasters, or of stacks of dated rasters: one pooled vector per window (GeoParquet),
per-patch PCA maps (GeoTIFF).

Windows come from the one tiling/reading path of tiled inference (:class:`WindowGrid`,
:class:`WindowReader`): ``tile`` px squares ``stride`` px apart, edge windows reflection-padded,
nodata/NaN masked, normalised, batched and read ahead in a thread; a window without any valid pixel is
skipped and counted. A *unit* is one raster, or one stack (:class:`~geoexplora.data.stack.RasterStack`,
read through :class:`~geoexplora.inference.stack_reader.StackSource`: every date of a window in one slot,
each date normalised on its own, for a temporal backbone run with the stack's dates set).

Pass 1 runs the backbone over every window with data of a unit and writes its pooled vectors into the
unit's own *part* (``.<out name>.parts/<raster stem>-<hash of its path>.safetensors`` beside ``out``,
written under a temporary name and renamed when complete): ``window`` int64 (n,) grid indexes,
``embedding`` float32 (n, D), ``skipped`` int64 (1,); with ``dense`` also the first and second moments of
every valid patch token (``token_sum`` (D,), ``token_outer`` (D, D) float64, ``token_count``), so the PCA
is exact over all units, deterministic and needs no sample held in memory. Its metadata records the
unit's files (path, size, modification time) and the options; ``resume`` skips the parts already written
and refuses, in one line, a part whose files or options changed. Parts are independent, so worker
processes may write them (``embed --devices N``). The table is then assembled from the parts, in input
order (the same table whether or not a run was interrupted), and renamed into place; the parts folder
is removed last.

Pass 2 (only with ``dense``) runs the windows again, projects each patch token on the first k components
and writes the patches of each window row through the :class:`BlockWriter` of ``predict`` (a COG of k
float32 bands, one pixel per patch, NaN where every pixel of the patch is nodata); a window owns the
patches from its origin up to the next window's origin, so overlapping windows write each patch once.
A resumed run redoes pass 2 (the basis is only known when every part is).

Memory: the reader's batches, one unit's pooled vectors (windows x D float32) and, at assembly, the
table's; D x D float64 moments and one window row of projected patches (k x tile/p x W/p float32).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from functools import partial
from pathlib import Path
from typing import Literal

import geopandas as gpd
from geopandas.io.arrow import _geopandas_to_arrow
import numpy as np
import pandas as pd
from matplotlib.image import imsave
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import shapely
import torch
from affine import Affine
from rasterio.enums import Resampling
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from geoexplora.data.raster import GeoRasterDataset
from geoexplora.data.sources import resolve_inputs
from geoexplora.data.stack import RasterStack
from geoexplora.inference.bands import model_band_indexes
from geoexplora.data.stats import BandStatistics, Normalizer, compute_band_statistics
from geoexplora.data.temporal import parse_file_date
from geoexplora.errors import GeoExploraError
from geoexplora.inference.model_predict import check_stack_input
from geoexplora.inference.predict import SourceInfo, check_output, check_raster, update_with_weights
from geoexplora.inference.reader import RasterSource, WindowReader, WindowSource
from geoexplora.inference.stack_reader import StackSource
from geoexplora.inference.windows import TileWindow, WindowGrid
from geoexplora.inference.writer import BlockWriter, OutputSpec
from geoexplora.models import BackboneConfig, GeoModel, create_backbone, load_model
from geoexplora.models.date_encoding import stack_dates
from geoexplora.models.lineage import SearchDirs

logger = logging.getLogger(__name__)

Pool = Literal["cls", "mean"]
PREVIEW_MAX_SIZE = 1024  # long side of the preview PNG, pixels


@dataclass(frozen=True)
class Encoder:
    """A backbone and what its input must be.

    Attributes:
        backbone: timm VisionTransformer; ``forward_features`` maps (B, C, H, W) to tokens (B, prefix + N, D)
            (a temporal one (B, T, C, H, W) to (B, prefix + T * N, D), date-major).
        config: its :class:`BackboneConfig`; ``config.bands`` are the input bands in channel order.
        statistics: band statistics to normalise with (a checkpoint's), or None to compute them from the rasters.
        normalization: ``"standardize"`` or ``"percentile"``.
        name: where it comes from (checkpoint folder or timm name), named in errors.
        file_bands: names of all the bands of the file it was trained on, when the recipe named them (read
            for files without band descriptions, as ``predict`` does).
    """

    backbone: nn.Module
    config: BackboneConfig
    statistics: BandStatistics | None = None
    normalization: str = "standardize"
    name: str = ""
    file_bands: tuple[str, ...] | None = None

    @property
    def width(self) -> int:
        """D, the embedding dimension."""
        return int(self.backbone.embed_dim)

    @property
    def patch_size(self) -> int:
        """Side of one patch token, pixels."""
        return int(self.backbone.patch_embed.patch_size[0])

    def digest(self) -> str:
        """sha256 of the config and the weights: what a resumed run must find unchanged."""
        digest = hashlib.sha256(repr(self.config).encode())
        update_with_weights(digest, self.backbone)
        return digest.hexdigest()


def load_encoder(checkpoint: str | Path, *, weights_dir: SearchDirs = None, allow_download: bool = False) -> Encoder:
    """The (adapted) backbone of a pretrain or fine-tuning checkpoint, with its band statistics.

    Args:
        checkpoint: the checkpoint folder, loaded with :func:`geoexplora.models.load_model`.
        weights_dir, allow_download: as :func:`~geoexplora.models.load_model` takes them.

    Raises:
        GeoExploraError: for a folder that is missing or holds no loadable encoder (no config, missing
            sections, missing or changed source weights or parent, mismatched ``model.safetensors``).
    """
    try:
        geomodel = load_model(checkpoint, weights_dir=weights_dir, allow_download=allow_download)
    except GeoExploraError as error:
        raise GeoExploraError(f"{checkpoint}: no encoder to embed with ({error})") from None
    return model_encoder(geomodel)


def model_encoder(geomodel: GeoModel) -> Encoder:
    """The encoder of a loaded checkpoint: its (adapted) backbone, bands, statistics and normalisation."""
    preprocessing = geomodel.preprocessing
    config = replace(geomodel.config.backbone, bands=list(preprocessing.model_bands))
    return Encoder(geomodel.backbone.eval(), config, preprocessing.statistics, preprocessing.normalization,
                   str(geomodel.directory), preprocessing.file_bands)


def embed_raster(
    raster: str | Path | Sequence[str | Path], out: str | Path, model: GeoModel | str | Path, **options: object
) -> EmbedSummary:
    """Embed ``raster`` (one or several) into the GeoParquet ``out`` with a checkpoint's encoder.

    ``model`` is a :class:`~geoexplora.models.GeoModel` or a checkpoint folder; ``tile`` defaults to the
    window size it was trained on; the other options are :func:`embed_rasters`'.
    """
    geomodel = model if isinstance(model, GeoModel) else load_model(model)
    options.setdefault("tile", geomodel.preprocessing.window_size)
    rasters = [raster] if isinstance(raster, (str, os.PathLike)) else list(raster)
    return embed_rasters(rasters, out, model_encoder(geomodel), **options)


def build_encoder(model: str, bands: Sequence[str], weights: str | None = None, sensor: str | None = None) -> Encoder:
    """A backbone by timm name over ``bands`` (random init, or ``weights``: ``"timm"`` or a local file), its RGB
    kernels mapped by ``sensor``'s band table when given."""
    config = BackboneConfig(model=model, weights=weights, bands=list(bands), sensor=sensor)
    return Encoder(create_backbone(config).eval(), config, name=model)


@dataclass(frozen=True)
class EmbedSummary:
    """What an :func:`embed_rasters` call did.

    Attributes:
        outputs: files written (the GeoParquet first, then dense GeoTIFFs, PCA basis, previews).
        rasters: inputs (every date of a stack).
        windows: windows embedded (rows of the table).
        skipped: windows skipped because every pixel is nodata/NaN.
        dim: D, the embedding dimension.
        seconds: wall time of the call.
        stacks: how many stacks the rasters form (0: single rasters).
    """

    outputs: tuple[Path, ...]
    rasters: tuple[Path, ...]
    windows: int
    skipped: int
    dim: int
    seconds: float
    stacks: int = 0

    def __str__(self) -> str:
        stacks = f" in {self.stacks} stack(s)" if self.stacks else ""
        return (
            f"Embedded {self.windows} windows of {len(self.rasters)} raster(s){stacks} into {self.dim}-dim vectors "
            f"({self.skipped} all-nodata windows skipped) in {self.seconds:.1f} s; "
            f"wrote {', '.join(str(p) for p in self.outputs)}."
        )


@dataclass(frozen=True)
class EmbedUnit:
    """One raster, or one stack of dates of a place: embedded into one part, one row per window.

    Attributes:
        info: the raster's (a stack's first date's) geometry; the windows lie on its grid.
        bands: 1-based indexes of the encoder's bands in the file(s), in model order.
        stack: the stack (None: a single raster).
        day: a single raster's date from its file name, or None.
    """

    info: SourceInfo
    bands: list[int]
    stack: RasterStack | None = None
    day: date | None = None

    @property
    def path(self) -> Path:
        """The raster (a stack's first date): the ``source`` column, named in messages."""
        return self.info.path

    @property
    def paths(self) -> tuple[Path, ...]:
        return self.stack.paths if self.stack is not None else (self.info.path,)

    @property
    def dates(self) -> tuple[date, ...]:
        """Every date of a stack; a single raster's date, if it has one."""
        return self.stack.dates if self.stack is not None else (() if self.day is None else (self.day,))

    @property
    def frames(self) -> int:
        """T, the dates a window holds (1 for a single raster)."""
        return len(self.stack) if self.stack is not None else 1

    def files(self) -> list[list[str | int]]:
        """Each file's resolved path, size (bytes) and modification time (ns)."""
        return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in self.paths]

    def windows(self, grid: WindowGrid) -> WindowSource:
        """The reader's source of ``grid``: a slot is (C, tile, tile), a stack's (T * C, tile, tile)."""
        if self.stack is None:
            return RasterSource(self.path, grid, self.bands)
        return StackSource(self.stack, grid, self.bands)


@dataclass(frozen=True)
class EmbedJob:
    """A checked run of :func:`embed_rasters` (nothing written yet); picklable, so worker processes can
    each write some of its parts (:func:`embed_part`) and the parent assemble them (:func:`finish_embedding`).

    Attributes:
        units: the rasters or stacks, in input order (the table's row order).
        out: the GeoParquet.
        dense: the dense GeoTIFF of each unit (empty without dense output).
        basis: where the dense output's PCA basis goes (None without dense output).
        pca: k, components of the dense output.
        tile, stride: window side and distance between origins, pixels.
        pool: ``"cls"`` or ``"mean"``.
        batch_size: windows per forward pass.
        normalize: the per-band normaliser of the encoder's bands.
        options: what determines a part besides its unit's files (recorded in every part).
        prefetch: batches read ahead.
        complete: ``resume`` found ``out`` complete: there is nothing to do.
    """

    units: tuple[EmbedUnit, ...]
    out: Path
    dense: tuple[Path, ...]
    basis: Path | None
    pca: int
    tile: int
    stride: int
    pool: Pool
    batch_size: int
    normalize: Normalizer
    options: dict[str, str]
    prefetch: int = 2
    complete: bool = False

    @property
    def parts(self) -> Path:
        return parts_folder(self.out)

    @property
    def outputs(self) -> list[Path]:
        """The GeoParquet, the dense GeoTIFFs, their PCA basis and previews."""
        if not self.dense:
            return [self.out]
        return [self.out, *self.dense, self.basis, *(_preview_path(p) for p in self.dense)]

    def part(self, unit: EmbedUnit) -> Path:
        return part_path(self.out, unit.path)

    def finished(self, unit: EmbedUnit) -> bool:
        return self.part(unit).is_file()

    def unit_options(self, unit: EmbedUnit) -> dict[str, str]:
        """The options of ``unit``'s part: the job's, its bands and its dates."""
        return {**self.options, "bands": ",".join(map(str, unit.bands)),
                "dates": ",".join(d.isoformat() for d in unit.dates)}

    def grid(self, unit: EmbedUnit) -> WindowGrid:
        return WindowGrid(unit.info.width, unit.info.height, self.tile, self.tile - self.stride)


def parts_folder(out: Path) -> Path:
    """Where the parts of ``out`` are written: ``.<out name>.parts`` beside it."""
    return out.with_name(f".{out.name}.parts")


def part_path(out: Path, raster: Path) -> Path:
    """The part of ``raster`` (a stack's first date) in ``out``'s parts folder: the raster's stem and a hash of
    its resolved path (so the input order does not matter)."""
    key = hashlib.sha256(str(raster.resolve()).encode()).hexdigest()[:12]
    return parts_folder(out) / f"{raster.stem}-{key}.safetensors"


@dataclass
class PCA:
    """Principal axes of embeddings: ``project(x) = (x - mean) @ components.T``.

    Attributes:
        mean: float32 (D,).
        components: float32 (k, D), unit rows by decreasing variance; each row's largest-magnitude entry
            is positive, so the result does not depend on the eigen-solver's signs.
        variance: float32 (k,), variance along each component.
    """

    mean: Tensor
    components: Tensor
    variance: Tensor

    def project(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., k)."""
        return (x.float() - self.mean) @ self.components.T

    def save(self, path: Path) -> None:
        save_file({"mean": self.mean, "components": self.components, "variance": self.variance}, path,
                  metadata={"projection": "(x - mean) @ components.T"})


def pca_from_moments(total: Tensor, outer: Tensor, count: int, k: int) -> PCA:
    """PCA of ``count`` vectors from their sum (D,) and sum of outer products (D, D), float64."""
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    variance, vectors = torch.linalg.eigh(cov)
    order = torch.argsort(variance, descending=True)[:k]
    components = vectors[:, order].T
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    return PCA(mean.float(), (components * signs).float().contiguous(), variance[order].clamp_min(0).float())


def pca_fit(x: Tensor, k: int) -> PCA:
    """PCA of the rows of ``x`` (n, D)."""
    x = x.double()
    return pca_from_moments(x.sum(0), x.T @ x, len(x), k)


def embed_rasters(
    rasters: Sequence[str | Path] | Sequence[RasterStack],
    out: str | Path,
    encoder: Encoder,
    *,
    band_names: Sequence[str] | None = None,
    tile: int = 224,
    stride: int | None = None,
    pool: Pool = "cls",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dense: str | Path | None = None,
    pca: int = 3,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    prefetch: int = 2,
) -> EmbedSummary:
    """Embed every window with data of ``rasters`` (or of stacks) into a GeoParquet; optionally dense PCA GeoTIFFs.

    ``out`` gets one row per window with at least one valid pixel: ``geometry`` (the window's part inside
    its raster, in the raster CRS), ``source`` (file path; a stack's first date), ``row``/``col`` (window
    origin, pixels), ``date`` (when any file name holds a ``YYYYMMDD`` date; a stack's first date),
    ``centre_lat``/``centre_lon``/``timestamp`` (TorchGeo's embedding columns; a stack's first date) and
    ``embedding`` (fixed-size list of D float32: the cls token, or the mean of the patch tokens, of the
    backbone's final normed tokens). A stack's rows also get ``date_start``, ``date_end`` and ``dates``
    (its ISO dates, in order).

    A temporal backbone's tokens are date-major, prefix + T x N (as fine-tuning reads them,
    :mod:`geoexplora.models.temporal_pool`): ``cls`` is its cls token, which attends over every date;
    ``mean`` the mean over dates and patches alike; the dense tokens are each patch's tokens averaged over
    the dates (so a window's mean dense token is its ``mean`` vector, as for one date).

    ``dense`` (``emb.tif``; with several units ``emb_<raster stem>.tif`` each) gets per-patch tokens
    projected on ``pca`` principal components fitted on every valid patch token of every unit: float32,
    ``ceil(H / p) x ceil(W / p)`` pixels, transform = the raster's scaled by the patch size p, the raster's
    CRS, NaN nodata. Next to it: ``emb.pca.safetensors`` (mean, components, variance) and
    ``emb.preview.png`` (first 3 components as RGB, each mapped from +-2 std to 0..255).

    Args:
        rasters: GeoTIFFs with the same band names (and CRS), or checked stacks of them for a temporal
            encoder (each one unit: one row per window of its first date's grid).
        out: the ``.parquet``; assembled from the parts under a temporary name, then renamed.
        encoder: :func:`load_encoder` or :func:`build_encoder`.
        band_names: names of all the files' bands (default: band descriptions, else B1..Bn).
        tile, stride: window side and distance between origins, pixels; ``tile / 2 <= stride <= tile``,
            ``tile`` a multiple of the patch size (and ``stride`` too with ``dense``).
        pool: ``"cls"`` or ``"mean"``.
        batch_size: windows per forward pass.
        device: where the backbone runs (it is moved there).
        pca: k, bands of the dense output.
        overwrite: replace existing outputs (and an interrupted run's parts).
        resume: continue an interrupted run: keep its parts (same files and options), embed the others.
        progress: show tqdm bars.
        prefetch: batches read ahead.

    Raises:
        GeoExploraError: before any work for a missing/unreadable raster, one without CRS, a missing band,
            rasters with different bands or CRSs, a stack given to a single-date encoder or rasters to a
            temporal one, bad parameters, an existing output (without ``overwrite``/``resume``), an
            interrupted run's parts (without ``resume``/``overwrite``), a part whose files or options
            changed (with ``resume``) or a missing output folder; after pass 1 when every window is nodata.
    """
    started = time.perf_counter()
    job = plan_embedding(rasters, out, encoder, band_names=band_names, tile=tile, stride=stride, pool=pool,
                         batch_size=batch_size, dense=dense, pca=pca, overwrite=overwrite, resume=resume,
                         prefetch=prefetch)
    if job.complete:
        logger.warning("%s: already complete; resume leaves it alone (use overwrite to redo it)", job.out)
        return _summary(job, pq.read_metadata(job.out).num_rows, 0, encoder.width, started)
    open_parts(job, resume)
    for unit in job.units:
        if not job.finished(unit):
            embed_part(job, encoder, unit, device, progress)
    return finish_embedding(job, encoder, device, progress, started)


def plan_embedding(
    rasters: Sequence[str | Path] | Sequence[RasterStack],
    out: str | Path,
    encoder: Encoder,
    *,
    band_names: Sequence[str] | None = None,
    tile: int = 224,
    stride: int | None = None,
    pool: Pool = "cls",
    batch_size: int = 8,
    dense: str | Path | None = None,
    pca: int = 3,
    overwrite: bool = False,
    resume: bool = False,
    prefetch: int = 2,
) -> EmbedJob:
    """Check everything :func:`embed_rasters` takes (same arguments, same errors) before any work; write nothing."""
    stacks = [r for r in rasters if isinstance(r, RasterStack)]
    if stacks and len(stacks) != len(rasters):
        raise GeoExploraError("give either rasters or stacks of rasters to embed, not both")
    check_stack_input(encoder.config, encoder.name or encoder.config.model, bool(stacks),
                      max(map(len, stacks), default=None))
    paths = [] if stacks else resolve_inputs(rasters, encoder.config.bands)
    if not stacks and not paths:
        raise GeoExploraError("no raster given to embed")
    out = Path(out)
    units = _check_units(paths, stacks, encoder, band_names)
    stride = tile if stride is None else stride
    _check_params(encoder, tile, stride, pool, batch_size, dense is not None, pca)
    inputs = {p for u in units for p in u.paths}
    dense_paths = _dense_paths(Path(dense), [u.path for u in units]) if dense is not None else []
    normalize = _normalizer(encoder, units, band_names)
    options = {"tile": str(tile), "stride": str(stride), "pool": pool, "batch_size": str(batch_size),
               "dense": str(dense is not None), "encoder": encoder.digest(), "normalization": _digest(normalize)}
    basis = None if dense is None else _pca_path(Path(dense))
    job = EmbedJob(tuple(units), out, tuple(dense_paths), basis, pca, tile, stride, pool, batch_size, normalize, options,
                   prefetch)
    outputs = job.outputs
    if len(set(outputs)) != len(outputs) or set(outputs) & inputs:
        raise GeoExploraError(f"{out}: outputs must have distinct names, other than the inputs'")
    for path in outputs:
        check_output(path, overwrite, resume)
    if not job.parts.exists():
        return replace(job, complete=resume and out.is_file())
    if not (resume or overwrite):
        raise GeoExploraError(f"{job.parts}: an interrupted embed run left its parts; pass --resume to continue "
                              "it, or --overwrite to start over")
    if resume:
        for unit in units:
            _check_part(job, unit)
    return job


def _digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    update_with_weights(digest, module)
    return digest.hexdigest()


def _check_part(job: EmbedJob, unit: EmbedUnit) -> None:
    """Refuse (one line) a finished part of ``unit`` written for other files or options."""
    part = job.part(unit)
    if not part.is_file():
        return
    try:
        with safe_open(part, "pt") as f:
            metadata = f.metadata() or {}
        files, options = json.loads(metadata["files"]), json.loads(metadata["options"])
    except (SafetensorError, OSError, KeyError, ValueError):
        raise GeoExploraError(f"{part}: not a part of an embed run; pass --overwrite to start over") from None
    for before, now in zip(files, unit.files()):
        if before != now:
            raise GeoExploraError(f"{now[0]}: changed since the interrupted run (size or modification time); "
                                  "pass --overwrite instead of --resume to embed everything again")
    changed = sorted(k for k in {*options, *job.unit_options(unit)}
                     if options.get(k) != job.unit_options(unit).get(k))
    if len(files) != len(unit.files()):
        changed.append("files")
    if changed:
        raise GeoExploraError(f"{unit.path}: the interrupted run embedded it with other {', '.join(changed)}; "
                              "rerun with the same options, or pass --overwrite instead of --resume to start over")


def open_parts(job: EmbedJob, resume: bool) -> None:
    """Create the parts folder; without ``resume``, discard an earlier run's parts first."""
    if not resume:
        shutil.rmtree(job.parts, ignore_errors=True)
    job.parts.mkdir(exist_ok=True)


def _check_units(
    paths: Sequence[Path], stacks: Sequence[RasterStack], encoder: Encoder, band_names: Sequence[str] | None
) -> list[EmbedUnit]:
    """Every raster (every date) readable and georeferenced, with the encoder's bands, the first's bands and CRS."""
    units: list[EmbedUnit] = []
    first_bands: tuple[str, ...] = ()
    for item in [*paths, *stacks]:
        stack = item if isinstance(item, RasterStack) else None
        path = stack.paths[0] if stack is not None else item
        info = check_raster(path)
        for other in stack.paths[1:] if stack is not None else ():
            check_raster(other)
        names, indexes = model_band_indexes(path, encoder.config.bands, band_names, encoder.file_bands)
        if units and names != first_bands:
            raise GeoExploraError(f"{path}: bands {', '.join(names)} differ from {units[0].path}'s "
                                  f"{', '.join(first_bands)}; embed rasters with different bands separately")
        if units and info.crs != units[0].info.crs:
            raise GeoExploraError(f"{path}: CRS {info.crs} differs from {units[0].path}'s "
                                  f"{units[0].info.crs}; embed rasters in different CRSs separately")
        first_bands = first_bands or names
        units.append(EmbedUnit(info, indexes, stack, None if stack is not None else _file_date(path)))
    return units


def _file_date(path: Path) -> date | None:
    try:
        return parse_file_date(path)
    except GeoExploraError:
        return None


def _check_params(encoder: Encoder, tile: int, stride: int, pool: str, batch_size: int, dense: bool, k: int) -> None:
    p = encoder.patch_size
    if pool not in ("cls", "mean"):
        raise GeoExploraError(f"pool {pool!r}: use 'cls' or 'mean'")
    if pool == "cls" and getattr(encoder.backbone, "cls_token", None) is None:
        raise GeoExploraError(f"{encoder.config.model}: has no cls token; use pool 'mean'")
    if tile < p or tile % p:
        raise GeoExploraError(f"tile {tile}: must be a multiple of the patch size {p}")
    if not tile - tile // 2 <= stride <= tile:
        raise GeoExploraError(f"stride {stride}: must be between {tile - tile // 2} and the tile ({tile}) pixels")
    if batch_size < 1:
        raise GeoExploraError(f"batch size {batch_size}: must be at least 1")
    if dense:
        if encoder.config.embed not in ("spectral", "temporal"):
            raise GeoExploraError(
                f"dense output needs one token per patch; {encoder.config.embed!r} embeddings have more")
        if stride % p:
            raise GeoExploraError(f"stride {stride}: must be a multiple of the patch size {p} for dense output")
        if not 1 <= k <= encoder.width:
            raise GeoExploraError(f"pca {k}: must be between 1 and the embedding width {encoder.width}")


def _dense_paths(dense: Path, rasters: Sequence[Path]) -> list[Path]:
    if len(rasters) == 1:
        return [dense]
    return [dense.with_name(f"{dense.stem}_{r.stem}{dense.suffix}") for r in rasters]


def _pca_path(dense: Path) -> Path:
    return dense.with_name(f"{dense.stem}.pca.safetensors")


def _preview_path(dense: Path) -> Path:
    return dense.with_name(f"{dense.stem}.preview.png")


def _normalizer(encoder: Encoder, units: Sequence[EmbedUnit], band_names: Sequence[str] | None) -> Normalizer:
    """The encoder's statistics, else statistics of 64 random windows (at most 64 px) of the rasters (every date)."""
    stats = encoder.statistics
    bands = encoder.config.bands
    if stats is None:
        paths = [p for u in units for p in u.paths]
        names = list(band_names) if band_names is not None else None
        size = min(64, *(min(u.info.width, u.info.height) for u in units))
        stats = compute_band_statistics(GeoRasterDataset(paths, bands=bands, band_names=names), window_size=size)
        logger.info("no band statistics in the checkpoint: computed them from %s", ", ".join(map(str, paths)))
    return Normalizer(stats, bands, encoder.normalization)


def _per_date(normalize: Normalizer, dates: int, images: Tensor) -> Tensor:
    """Normalise folded stack windows (n, T * C, H, W) date by date."""
    return normalize(images.unflatten(1, (dates, -1))).flatten(1, 2)


def _reader(job: EmbedJob, unit: EmbedUnit, grid: WindowGrid, device: torch.device) -> WindowReader:
    normalize: Callable[[Tensor], Tensor] = job.normalize
    if unit.stack is not None:
        normalize = partial(_per_date, job.normalize, unit.frames)
    return WindowReader(unit.windows(grid), batch_size=job.batch_size, normalize=normalize, prefetch=job.prefetch,
                        pin_memory=device.type == "cuda")


def _tokens(backbone: nn.Module, unit: EmbedUnit, images: Tensor, device: torch.device) -> Tensor:
    """float32 (n, prefix + N, D) on the CPU; of a stack's (n, T * C, H, W) windows, run with its dates,
    (n, prefix + T * N, D), date-major."""
    images = images.to(device, non_blocking=True)
    if unit.stack is None:
        return backbone.forward_features(images).float().cpu()
    t = unit.frames
    days = torch.tensor(unit.stack.days, dtype=torch.int64, device=device).expand(len(images), t)
    with stack_dates(backbone, days):
        return backbone.forward_features(images.unflatten(1, (t, -1))).float().cpu()


def _patch_tokens(tokens: Tensor, prefix: int, dates: int) -> Tensor:
    """(n, prefix + T * N, D) date-major -> (n, N, D): each patch's tokens averaged over the T dates."""
    return tokens[:, prefix:].unflatten(1, (dates, -1)).mean(1)


def _patch_invalid(invalid: np.ndarray, p: int) -> np.ndarray:
    """bool (n, tile, tile) -> (n, tile/p, tile/p): True where every pixel of the patch is invalid."""
    n, t, _ = invalid.shape
    return invalid.reshape(n, t // p, p, t // p, p).all(axis=(2, 4))


def embed_part(job: EmbedJob, encoder: Encoder, unit: EmbedUnit, device: str | torch.device = "cpu",
               progress: bool = True) -> Path:
    """Pass 1 over ``unit``: its part (see the module docstring), written under a temporary name and renamed."""
    device = torch.device(device)
    encoder.backbone.to(device).eval()
    d, prefix = encoder.width, encoder.backbone.num_prefix_tokens
    total, outer, count = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0
    indexes: list[int] = []
    vectors: list[Tensor] = [torch.empty(0, d)]
    skipped = 0
    grid = job.grid(unit)
    bar = tqdm(total=len(grid), unit="win", desc=f"embed {unit.path.name}", disable=not progress)
    with torch.inference_mode(), bar, _reader(job, unit, grid, device) as reader:
        for batch in reader:
            bar.update(len(batch.windows))
            skipped += len(batch.windows) - len(batch.has_data)
            if not batch.has_data:
                continue
            tokens = _tokens(encoder.backbone, unit, batch.images, device)
            patches = _patch_tokens(tokens, prefix, unit.frames)
            vectors.append(tokens[:, 0] if job.pool == "cls" else patches.mean(1))
            indexes += [batch.windows[j].index for j in batch.has_data]
            if job.dense:
                valid = ~_patch_invalid(batch.invalid[batch.has_data], encoder.patch_size)
                x = patches[torch.from_numpy(valid.reshape(len(valid), -1))].double()
                total += x.sum(0)
                outer += x.T @ x
                count += len(x)
    tensors = {"window": torch.tensor(indexes, dtype=torch.int64), "embedding": torch.cat(vectors).contiguous(),
               "skipped": torch.tensor([skipped])}
    if job.dense:
        tensors |= {"token_sum": total, "token_outer": outer, "token_count": torch.tensor([count])}
    part = job.part(unit)
    partial_part = part.with_name(f".{part.name}.partial")
    save_file(tensors, partial_part, metadata={"files": json.dumps(unit.files()),
                                               "options": json.dumps(job.unit_options(unit))})
    os.replace(partial_part, part)
    return part


def finish_embedding(job: EmbedJob, encoder: Encoder, device: str | torch.device = "cpu", progress: bool = True,
                     started: float | None = None) -> EmbedSummary:
    """Once every unit's part is written: fit the PCA on their moments and write the dense GeoTIFFs (pass 2),
    assemble the GeoParquet from the parts, then remove them.

    Raises:
        GeoExploraError: a missing part (a unit not embedded), or every window of every unit nodata (then
            the parts are removed: there is nothing to resume).
    """
    started = time.perf_counter() if started is None else started
    missing = [u.path for u in job.units if not job.finished(u)]
    if missing:
        raise GeoExploraError(f"{missing[0]}: not embedded yet; rerun the same command with --resume")
    parts = [load_file(job.part(u)) for u in job.units]
    windows = sum(len(p["window"]) for p in parts)
    skipped = sum(int(p["skipped"]) for p in parts)
    if not windows:
        shutil.rmtree(job.parts)
        raise GeoExploraError(f"{', '.join(str(u.path) for u in job.units)}: every window is nodata/NaN; "
                              "nothing to embed")
    if job.dense:
        device = torch.device(device)
        encoder.backbone.to(device).eval()
        moments = [sum(p[key] for p in parts) for key in ("token_sum", "token_outer", "token_count")]
        basis = pca_from_moments(moments[0], moments[1], int(moments[2]), job.pca)
        for unit, path in zip(job.units, job.dense, strict=True):
            _pass_two(job, encoder, unit, path, basis, device, progress)
            _write_preview(path, _preview_path(path))
        partial_basis = job.basis.with_name(f".{job.basis.name}.partial")
        basis.save(partial_basis)
        os.replace(partial_basis, job.basis)
    _write_table(job, parts, encoder.width)
    shutil.rmtree(job.parts)
    return _summary(job, windows, skipped, encoder.width, started)


def _summary(job: EmbedJob, windows: int, skipped: int, dim: int, started: float) -> EmbedSummary:
    return EmbedSummary(tuple(job.outputs), tuple(p for u in job.units for p in u.paths), windows, skipped, dim,
                        time.perf_counter() - started, sum(u.stack is not None for u in job.units))


def _pass_two(job: EmbedJob, encoder: Encoder, unit: EmbedUnit, path: Path, basis: PCA, device: torch.device,
              progress: bool) -> None:
    """Project patch tokens of ``unit`` on ``basis`` and write them, one window row at a time, to ``path``."""
    p, k, prefix = encoder.patch_size, len(basis.components), encoder.backbone.num_prefix_tokens
    info, g, step = unit.info, job.tile // p, job.stride // p
    width, height = math.ceil(info.width / p), math.ceil(info.height / p)
    spec = OutputSpec(path, k, "float32", float("nan"), width, height, info.crs, info.transform @ Affine.scale(p),
                      descriptions=tuple(f"pc{j + 1}" for j in range(k)), overview_resampling="AVERAGE")
    grid = job.grid(unit)
    row_buffer = np.full((k, g, width), np.nan, dtype=np.float32)
    writer = BlockWriter([spec], step, key="embed", resume=False)
    with writer, _reader(job, unit, grid, device) as reader, torch.inference_mode(), \
            tqdm(total=len(grid), unit="win", desc=f"dense {path.name}", disable=not progress) as bar:
        for batch in reader:
            projected = np.empty((0, k, g, g), dtype=np.float32)
            if batch.has_data:
                tokens = _patch_tokens(_tokens(encoder.backbone, unit, batch.images, device), prefix, unit.frames)
                projected = basis.project(tokens).numpy().reshape(-1, g, g, k).transpose(0, 3, 1, 2)
                invalid = _patch_invalid(batch.invalid[batch.has_data], p)[:, None]
                projected = np.where(invalid, np.float32(np.nan), projected)
            by_window = dict(zip(batch.has_data, projected, strict=True))
            for j, window in enumerate(batch.windows):
                x0 = window.x // p
                x1 = width if window.col == grid.cols - 1 else x0 + step
                if j in by_window:
                    row_buffer[:, :, x0:x1] = by_window[j][:, :, : x1 - x0]
                bar.update(1)
                if window.col == grid.cols - 1:
                    y0 = window.y // p
                    rows = height - y0 if window.row == grid.rows - 1 else step
                    writer.put(window.row, y0, [row_buffer[:, :rows].copy()])
                    row_buffer[:] = np.nan
    writer.finish()


def _write_preview(dense: Path, png: Path) -> None:
    """First three bands of ``dense`` as RGB (each band's +-2 std -> 0..1), NaN transparent, decimated."""
    with rasterio.open(dense) as src:
        scale = max(src.width, src.height) / PREVIEW_MAX_SIZE
        shape = (max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
        bands = [min(b, src.count) for b in (1, 2, 3)]
        data = src.read(bands, out_shape=(3, *shape), resampling=Resampling.nearest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bands
        std = np.nanstd(data, axis=(1, 2), keepdims=True)
    rgb = np.clip(0.5 + data / (4 * np.where(std > 0, std, 1)), 0, 1)
    alpha = ~np.isnan(data).any(axis=0)
    image = np.concatenate([np.nan_to_num(rgb).transpose(1, 2, 0), alpha[..., None]], axis=-1)
    partial = png.with_name(f".{png.name}.partial.png")
    imsave(partial, image)
    os.replace(partial, png)


def _write_table(job: EmbedJob, parts: Sequence[dict[str, Tensor]], dim: int) -> None:
    """The GeoParquet from the units' ``parts``: geometry, source, row, col, [date], centre_lat, centre_lon,
    timestamp, [date_start, date_end, dates], embedding.

    ``embedding`` is a fixed-size list of ``dim`` float32; ``centre_lat``/``centre_lon`` (float64, degrees,
    WGS 84) the centre of the window's part inside the raster; ``timestamp`` (UTC) the source's date (a
    stack's first), null when unknown. Those four are the columns of TorchGeo's embedding datasets
    (:class:`torchgeo.datasets.EarthEmbeddings`), so its readers load the file as theirs. A stack's
    ``date_start``/``date_end`` are its first and last dates, ``dates`` the list of its ISO dates.
    Held in memory until written: windows x ``dim`` float32 (100k windows of 768 dims: 300 MB).
    """
    units = [u for u, part in zip(job.units, parts, strict=True) for _ in range(len(part["window"]))]
    windows = [job.grid(u).window(int(i)) for u, part in zip(job.units, parts, strict=True) for i in part["window"]]
    polygons = [_window_polygon(u.info.transform, w) for u, w in zip(units, windows, strict=True)]
    frame = pd.DataFrame({
        "source": [str(u.path) for u in units],
        "row": np.array([w.y for w in windows], dtype=np.int64),
        "col": np.array([w.x for w in windows], dtype=np.int64),
    })
    days = pd.to_datetime([u.dates[0] if u.dates else None for u in units])
    if any(u.dates for u in job.units):
        frame["date"] = days
    centres = gpd.GeoSeries(shapely.centroid(polygons), crs=job.units[0].info.crs).to_crs("EPSG:4326")
    frame["centre_lat"], frame["centre_lon"] = centres.y.to_numpy(), centres.x.to_numpy()
    frame["timestamp"] = days.tz_localize("UTC")
    if any(u.stack is not None for u in job.units):
        frame["date_start"] = days
        frame["date_end"] = pd.to_datetime([u.dates[-1] for u in units])
        frame["dates"] = [[d.isoformat() for d in u.dates] for u in units]
    vectors = torch.cat([p["embedding"] for p in parts]).numpy().astype(np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    frame["embedding"] = pd.arrays.ArrowExtensionArray(pa.FixedSizeListArray.from_arrays(flat, dim))
    gdf = gpd.GeoDataFrame(frame, geometry=polygons, crs=job.units[0].info.crs)
    # GeoDataFrame.to_parquet's own conversion (GeoParquet "geo" metadata: CRS as PROJJSON, bbox, WKB),
    # minus the pandas metadata, whose dtype string for a fixed-size list pandas cannot parse back.
    arrow = _geopandas_to_arrow(gdf, index=False)
    metadata = {k: v for k, v in arrow.schema.metadata.items() if k != b"pandas"}
    partial_out = job.out.with_name(f".{job.out.name}.partial")
    pq.write_table(arrow.replace_schema_metadata(metadata), partial_out, compression="snappy")
    os.replace(partial_out, job.out)


def _window_polygon(transform: Affine, window: TileWindow) -> shapely.Polygon:
    """The window's part inside the raster, as a polygon in map coordinates."""
    x, y, w, h = window.x, window.y, window.width, window.height
    return shapely.Polygon([transform @ corner for corner in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))])
