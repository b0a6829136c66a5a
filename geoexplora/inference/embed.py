"""Embeddings of whole rasters: one pooled vector per window (GeoParquet), per-patch PCA maps (GeoTIFF).

Windows come from the one tiling/reading path of tiled inference (:class:`WindowGrid`,
:class:`WindowReader`): ``tile`` px squares ``stride`` px apart, edge windows reflection-padded,
nodata/NaN masked, normalised, batched and read ahead in a thread; a window without any valid pixel is
skipped and counted.

Pass 1 runs the backbone over every window with data and keeps its pooled vector. With ``dense`` it also
accumulates the first and second moments of every valid patch token (D and D x D float64), so the PCA
is exact over all of them, deterministic and needs no sample held in memory. Pass 2 (only with ``dense``)
runs the windows again, projects each patch token on the first k components and writes the patches of
each window row through the :class:`BlockWriter` of ``predict`` (a COG of k float32 bands, one pixel per
patch, NaN where every pixel of the patch is nodata); a window owns the patches from its origin up to
the next window's origin, so overlapping windows write each patch once.

Memory: the reader's batches, the table of pooled vectors (windows x D float32, written at the end),
D x D float64 moments and one window row of projected patches (k x tile/p x W/p float32).
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
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
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from geoexplora.data.raster import GeoRasterDataset
from geoexplora.data.sources import resolve_inputs
from geoexplora.inference.bands import model_band_indexes
from geoexplora.data.stats import BandStatistics, Normalizer, compute_band_statistics
from geoexplora.data.temporal import parse_file_date
from geoexplora.errors import GeoExploraError
from geoexplora.inference.predict import SourceInfo, check_output, check_raster
from geoexplora.inference.reader import WindowReader
from geoexplora.inference.windows import TileWindow, WindowGrid
from geoexplora.inference.writer import BlockWriter, OutputSpec
from geoexplora.models import BackboneConfig, GeoModel, create_backbone, load_model
from geoexplora.models.lineage import SearchDirs

logger = logging.getLogger(__name__)

Pool = Literal["cls", "mean"]
PREVIEW_MAX_SIZE = 1024  # long side of the preview PNG, pixels


@dataclass(frozen=True)
class Encoder:
    """A backbone and what its input must be.

    Attributes:
        backbone: timm VisionTransformer; ``forward_features`` maps (B, C, H, W) to tokens (B, prefix + N, D).
        config: its :class:`BackboneConfig`; ``config.bands`` are the input bands in channel order.
        statistics: band statistics to normalise with (a checkpoint's), or None to compute them from the rasters.
        normalization: ``"standardize"`` or ``"percentile"``.
    """

    backbone: nn.Module
    config: BackboneConfig
    statistics: BandStatistics | None = None
    normalization: str = "standardize"

    @property
    def width(self) -> int:
        """D, the embedding dimension."""
        return int(self.backbone.embed_dim)

    @property
    def patch_size(self) -> int:
        """Side of one patch token, pixels."""
        return int(self.backbone.patch_embed.patch_size[0])


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
    return Encoder(geomodel.backbone.eval(), config, preprocessing.statistics, preprocessing.normalization)


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
    return Encoder(create_backbone(config).eval(), config)


@dataclass(frozen=True)
class EmbedSummary:
    """What an :func:`embed_rasters` call did.

    Attributes:
        outputs: files written (the GeoParquet first, then dense GeoTIFFs, PCA basis, previews).
        rasters: inputs.
        windows: windows embedded (rows of the table).
        skipped: windows skipped because every pixel is nodata/NaN.
        dim: D, the embedding dimension.
        seconds: wall time of the call.
    """

    outputs: tuple[Path, ...]
    rasters: tuple[Path, ...]
    windows: int
    skipped: int
    dim: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"Embedded {self.windows} windows of {len(self.rasters)} raster(s) into {self.dim}-dim vectors "
            f"({self.skipped} all-nodata windows skipped) in {self.seconds:.1f} s; "
            f"wrote {', '.join(str(p) for p in self.outputs)}."
        )


@dataclass(frozen=True)
class _Source:
    info: SourceInfo
    bands: list[int]  # 1-based indexes of the encoder's bands in the file
    day: date | None


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
    rasters: Sequence[str | Path],
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
    progress: bool = True,
    prefetch: int = 2,
) -> EmbedSummary:
    """Embed every window with data of ``rasters`` into a GeoParquet; optionally dense PCA GeoTIFFs.

    ``out`` gets one row per window with at least one valid pixel: ``geometry`` (the window's part inside
    its raster, in the raster CRS), ``source`` (file path), ``row``/``col`` (window origin, pixels),
    ``date`` (when any file name holds a ``YYYYMMDD`` date), ``centre_lat``/``centre_lon``/``timestamp`` (TorchGeo's
    embedding columns) and ``embedding`` (fixed-size list of D float32:
    the cls token, or the mean of the patch tokens, of the backbone's final normed tokens).

    ``dense`` (``emb.tif``; with several rasters ``emb_<raster stem>.tif`` each) gets per-patch tokens
    projected on ``pca`` principal components fitted on every valid patch token of every raster: float32,
    ``ceil(H / p) x ceil(W / p)`` pixels, transform = the raster's scaled by the patch size p, the raster's
    CRS, NaN nodata. Next to it: ``emb.pca.safetensors`` (mean, components, variance) and
    ``emb.preview.png`` (first 3 components as RGB, each mapped from +-2 std to 0..255).

    Args:
        rasters: GeoTIFFs with the same band names (and CRS).
        out: the ``.parquet``; written under a temporary name, then renamed.
        encoder: :func:`load_encoder` or :func:`build_encoder`.
        band_names: names of all the files' bands (default: band descriptions, else B1..Bn).
        tile, stride: window side and distance between origins, pixels; ``tile / 2 <= stride <= tile``,
            ``tile`` a multiple of the patch size (and ``stride`` too with ``dense``).
        pool: ``"cls"`` or ``"mean"``.
        batch_size: windows per forward pass.
        device: where the backbone runs (it is moved there).
        pca: k, bands of the dense output.
        overwrite: replace existing outputs.
        progress: show tqdm bars.
        prefetch: batches read ahead.

    Raises:
        GeoExploraError: before any work for a missing/unreadable raster, one without CRS, a missing band,
            rasters with different bands or CRSs, bad parameters, an existing output (without
            ``overwrite``) or a missing output folder; after pass 1 when every window is nodata.
    """
    started = time.perf_counter()
    paths = resolve_inputs(rasters, encoder.config.bands)
    if not paths:
        raise GeoExploraError("no raster given to embed")
    out = Path(out)
    sources = _check_sources(paths, encoder.config.bands, band_names)
    stride = tile if stride is None else stride
    _check_params(encoder, tile, stride, pool, batch_size, dense is not None, pca)
    dense_paths = _dense_paths(Path(dense), paths) if dense is not None else []
    extras = [] if dense is None else [_pca_path(Path(dense)), *(_preview_path(p) for p in dense_paths)]
    outputs = [out, *dense_paths, *extras]
    if len(set(outputs)) != len(outputs) or set(outputs) & set(paths):
        raise GeoExploraError(f"{out}: outputs must have distinct names, other than the inputs'")
    for path in outputs:
        check_output(path, overwrite, resume=False)
    normalize = _normalizer(encoder, sources, band_names)
    device = torch.device(device)
    encoder.backbone.to(device).eval()

    table, moments, skipped = _pass_one(encoder, sources, tile, stride, pool, batch_size, device, normalize,
                                        dense is not None, progress, prefetch)
    if not table:
        raise GeoExploraError(f"{', '.join(map(str, paths))}: every window is nodata/NaN; nothing to embed")
    if dense is not None:
        basis = pca_from_moments(*moments, pca)
        for source, path in zip(sources, dense_paths, strict=True):
            _pass_two(encoder, source, path, basis, tile, stride, batch_size, device, normalize, progress, prefetch)
            _write_preview(path, _preview_path(path))
        partial = extras[0].with_name(f".{extras[0].name}.partial")
        basis.save(partial)
        os.replace(partial, extras[0])
    _write_table(table, sources, out, encoder.width)
    return EmbedSummary(tuple(outputs), tuple(paths), sum(len(t[2]) for t in table), skipped, encoder.width,
                        time.perf_counter() - started)


def _check_sources(
    paths: Sequence[Path], model_bands: Sequence[str], band_names: Sequence[str] | None
) -> list[_Source]:
    """Every raster readable and georeferenced, with the encoder's bands, the first's bands and CRS."""
    sources: list[_Source] = []
    first_bands: tuple[str, ...] = ()
    for path in paths:
        info = check_raster(path)
        names, indexes = model_band_indexes(path, model_bands, band_names)
        if sources and names != first_bands:
            raise GeoExploraError(f"{path}: bands {', '.join(names)} differ from {sources[0].info.path}'s "
                                  f"{', '.join(first_bands)}; embed rasters with different bands separately")
        if sources and info.crs != sources[0].info.crs:
            raise GeoExploraError(f"{path}: CRS {info.crs} differs from {sources[0].info.path}'s "
                                  f"{sources[0].info.crs}; embed rasters in different CRSs separately")
        first_bands = first_bands or names
        sources.append(_Source(info, indexes, _file_date(path)))
    return sources


def _file_date(path: Path) -> date | None:
    try:
        return parse_file_date(path)
    except GeoExploraError:
        return None


def _check_params(encoder: Encoder, tile: int, stride: int, pool: str, batch_size: int, dense: bool, k: int) -> None:
    p = encoder.patch_size
    if encoder.config.embed == "temporal":
        raise GeoExploraError("temporal backbones are not supported by embed: embed one date per raster")
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
        if encoder.config.embed != "spectral":
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


def _normalizer(encoder: Encoder, sources: Sequence[_Source], band_names: Sequence[str] | None) -> Normalizer:
    """The encoder's statistics, else statistics of 64 random windows (at most 64 px) of the rasters."""
    stats = encoder.statistics
    bands = encoder.config.bands
    if stats is None:
        paths = [s.info.path for s in sources]
        names = list(band_names) if band_names is not None else None
        size = min(64, *(min(s.info.width, s.info.height) for s in sources))
        stats = compute_band_statistics(GeoRasterDataset(paths, bands=bands, band_names=names), window_size=size)
        logger.info("no band statistics in the checkpoint: computed them from %s", ", ".join(map(str, paths)))
    return Normalizer(stats, bands, encoder.normalization)


def _tokens(backbone: nn.Module, images: Tensor, device: torch.device) -> Tensor:
    """float32 (n, prefix + N, D) on the CPU."""
    return backbone.forward_features(images.to(device, non_blocking=True)).float().cpu()


def _patch_invalid(invalid: np.ndarray, p: int) -> np.ndarray:
    """bool (n, tile, tile) -> (n, tile/p, tile/p): True where every pixel of the patch is invalid."""
    n, t, _ = invalid.shape
    return invalid.reshape(n, t // p, p, t // p, p).all(axis=(2, 4))


def _pass_one(
    encoder: Encoder, sources: Sequence[_Source], tile: int, stride: int, pool: Pool, batch_size: int,
    device: torch.device, normalize: Normalizer, moments: bool, progress: bool, prefetch: int,
) -> tuple[list[tuple[int, list[TileWindow], np.ndarray]], tuple[Tensor, Tensor, int], int]:
    """([(source index, windows, embeddings (n, D) float32)], (token sum, outer sum, count), skipped)."""
    d, prefix = encoder.width, encoder.backbone.num_prefix_tokens
    total, outer, count = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0
    table: list[tuple[int, list[TileWindow], np.ndarray]] = []
    skipped = 0
    grids = [WindowGrid(s.info.width, s.info.height, tile, tile - stride) for s in sources]
    bar = tqdm(total=sum(map(len, grids)), unit="win", desc="embed", disable=not progress)
    with torch.inference_mode(), bar:
        for i, (source, grid) in enumerate(zip(sources, grids, strict=True)):
            reader = WindowReader(source.info.path, grid, source.bands, batch_size, normalize, prefetch=prefetch,
                                  pin_memory=device.type == "cuda")
            with reader:
                for batch in reader:
                    bar.update(len(batch.windows))
                    skipped += len(batch.windows) - len(batch.has_data)
                    if not batch.has_data:
                        continue
                    tokens = _tokens(encoder.backbone, batch.images, device)
                    patches = tokens[:, prefix:]
                    pooled = tokens[:, 0] if pool == "cls" else patches.mean(1)
                    table.append((i, [batch.windows[j] for j in batch.has_data], pooled.numpy()))
                    if moments:
                        valid = ~_patch_invalid(batch.invalid[batch.has_data], encoder.patch_size)
                        x = patches[torch.from_numpy(valid.reshape(len(valid), -1))].double()
                        total += x.sum(0)
                        outer += x.T @ x
                        count += len(x)
    return table, (total, outer, count), skipped


def _pass_two(
    encoder: Encoder, source: _Source, path: Path, basis: PCA, tile: int, stride: int, batch_size: int,
    device: torch.device, normalize: Normalizer, progress: bool, prefetch: int,
) -> None:
    """Project patch tokens of ``source`` on ``basis`` and write them, one window row at a time, to ``path``."""
    p, k, prefix = encoder.patch_size, len(basis.components), encoder.backbone.num_prefix_tokens
    info, g, step = source.info, tile // p, stride // p
    width, height = math.ceil(info.width / p), math.ceil(info.height / p)
    spec = OutputSpec(path, k, "float32", float("nan"), width, height, info.crs, info.transform @ Affine.scale(p),
                      descriptions=tuple(f"pc{j + 1}" for j in range(k)), overview_resampling="AVERAGE")
    grid = WindowGrid(info.width, info.height, tile, tile - stride)
    row_buffer = np.full((k, g, width), np.nan, dtype=np.float32)
    reader = WindowReader(info.path, grid, source.bands, batch_size, normalize, prefetch=prefetch,
                          pin_memory=device.type == "cuda")
    writer = BlockWriter([spec], step, key="embed", resume=False)
    with writer, reader, torch.inference_mode(), tqdm(total=len(grid), unit="win", desc=f"dense {path.name}",
                                                      disable=not progress) as bar:
        for batch in reader:
            projected = np.empty((0, k, g, g), dtype=np.float32)
            if batch.has_data:
                tokens = _tokens(encoder.backbone, batch.images, device)[:, prefix:]
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


def _write_table(table: list[tuple[int, list[TileWindow], np.ndarray]], sources: Sequence[_Source], out: Path,
                 dim: int) -> None:
    """The GeoParquet: geometry, source, row, col, [date], centre_lat, centre_lon, timestamp, embedding.

    ``embedding`` is a fixed-size list of ``dim`` float32; ``centre_lat``/``centre_lon`` (float64, degrees,
    WGS 84) the centre of the window's part inside the raster; ``timestamp`` (UTC) the source's date, null
    when unknown. Those four are the columns of TorchGeo's embedding datasets
    (:class:`torchgeo.datasets.EarthEmbeddings`), so its readers load the file as theirs.
    Held in memory until written: windows x ``dim`` float32 (100k windows of 768 dims: 300 MB).
    """
    windows = [(i, w) for i, ws, _ in table for w in ws]
    polygons = [_window_polygon(sources[i].info.transform, w) for i, w in windows]
    frame = pd.DataFrame({
        "source": [str(sources[i].info.path) for i, _ in windows],
        "row": np.array([w.y for _, w in windows], dtype=np.int64),
        "col": np.array([w.x for _, w in windows], dtype=np.int64),
    })
    days = pd.to_datetime([sources[i].day for i, _ in windows])
    if any(s.day is not None for s in sources):
        frame["date"] = days
    centres = gpd.GeoSeries(shapely.centroid(polygons), crs=sources[0].info.crs).to_crs("EPSG:4326")
    frame["centre_lat"], frame["centre_lon"] = centres.y.to_numpy(), centres.x.to_numpy()
    frame["timestamp"] = days.tz_localize("UTC")
    vectors = np.concatenate([e for _, _, e in table]).astype(np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    frame["embedding"] = pd.arrays.ArrowExtensionArray(pa.FixedSizeListArray.from_arrays(flat, dim))
    gdf = gpd.GeoDataFrame(frame, geometry=polygons, crs=sources[0].info.crs)
    # GeoDataFrame.to_parquet's own conversion (GeoParquet "geo" metadata: CRS as PROJJSON, bbox, WKB),
    # minus the pandas metadata, whose dtype string for a fixed-size list pandas cannot parse back.
    arrow = _geopandas_to_arrow(gdf, index=False)
    metadata = {k: v for k, v in arrow.schema.metadata.items() if k != b"pandas"}
    partial = out.with_name(f".{out.name}.partial")
    pq.write_table(arrow.replace_schema_metadata(metadata), partial, compression="snappy")
    os.replace(partial, out)


def _window_polygon(transform: Affine, window: TileWindow) -> shapely.Polygon:
    """The window's part inside the raster, as a polygon in map coordinates."""
    x, y, w, h = window.x, window.y, window.width, window.height
    return shapely.Polygon([transform @ corner for corner in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))])
