"""Labelled data for fine-tuning: raster image + raster mask / vector labels, or a folder / CSV of tiles.

Rasters are split by **space**: the image extent is cut into square blocks of ``block_size`` pixels
(the remainder at the right and bottom edges is unused), the blocks are shuffled with ``seed`` and dealt to
train / val / test by ``split_fractions``, and every window lies inside one block, so neighbouring windows
never straddle two splits. Training draws ``windows_per_epoch`` random windows from the train blocks; val
and test visit each of their blocks on a grid. Tiles (no shared grid) are split by a seeded permutation.

Label rasters hold class *values* (``class_values``, default: every value present), mapped to indices
0..K-1; a value outside the declared ones is an error naming it. A label raster on another grid or CRS
is reprojected onto the image's by TorchGeo with nearest-neighbour resampling. Pixels where the image is
nodata, or the label is nodata, become ``ignore_index``.

``label_mode="majority"`` turns a mask into one label per window (its most frequent labelled class;
``ignore_index`` when it has none), for classification on a land-cover map.

``temporal=True`` reads ``image`` as a stack (dated rasters of one place, checked up front as a
:class:`~geoexplora.data.stack.RasterStack`) with **one** label map for the whole stack: samples hold
``image`` (T, C, H, W), ``dates`` (T,) int64 days since 1970-01-01 and the stack's ``mask`` / ``label``;
a pixel is labelled where at least one date has data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import rasterio
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from geoexplora.data import (
    BandStatistics,
    GeoRasterDataset,
    Normalizer,
    TemporalRasterDataset,
    RasterMaskDataset,
    SceneClassificationDataset,
    VectorMaskDataset,
    compute_band_statistics,
)
from geoexplora.data.resumable import EpochSeeded, ResumableDataLoader, SeededShuffleSampler
from geoexplora.data.stack import DEFAULT_DATE_FORMAT, DEFAULT_DATE_PATTERN, RasterStack
from geoexplora.data.stats import band_statistics_from_pixels
from geoexplora.errors import GeoExploraError

SPLITS = ("train", "val", "test")
Block = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in CRS units


def raster_class_values(path: str | Path) -> list[int]:
    """The distinct valid values of a single-band label raster, read block by block."""
    values: set[float] = set()
    with rasterio.open(path) as src:
        for _, window in src.block_windows(1):
            data = src.read(1, window=window)
            data = data[~np.isnan(data)] if data.dtype.kind == "f" else data.ravel()
            if src.nodata is not None:
                data = data[data != src.nodata]
            values.update(np.unique(data).tolist())
    bad = sorted(v for v in values if v != int(v) or v < 0)
    if bad:
        raise GeoExploraError(f"{path}: label values must be non-negative integers, found {bad[:5]}")
    return sorted(int(v) for v in values)


def spatial_blocks(bounds: Block, res: tuple[float, float], block_size: int) -> list[Block]:
    """Square blocks of ``block_size`` pixels tiling ``bounds`` from its top-left corner."""
    xmin, ymin, xmax, ymax = bounds
    bw, bh = block_size * res[0], block_size * res[1]
    cols, rows = int((xmax - xmin) / bw + 1e-9), int((ymax - ymin) / bh + 1e-9)
    return [(xmin + c * bw, ymax - (r + 1) * bh, xmin + (c + 1) * bw, ymax - r * bh)
            for r in range(rows) for c in range(cols)]


def deal_splits(n: int, fractions: Sequence[float], seed: int, what: str) -> dict[str, list[int]]:
    """Indices 0..n-1 shuffled with ``seed`` and dealt to train/val/test; an empty split is an error."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val, n_test = (round(f * n) if f > 0 else 0 for f in fractions[1:])
    n_val, n_test = max(n_val, int(fractions[1] > 0)), max(n_test, int(fractions[2] > 0))
    splits = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    empty = [s for s in SPLITS if not splits[s] and fractions[SPLITS.index(s)] > 0]
    if empty:
        raise GeoExploraError(f"{what}: {n} units are too few for the splits {fractions}; {', '.join(empty)} would be empty")
    return splits


class BlockWindowSampler(EpochSeeded, Sampler):
    """Windows of ``size`` pixels inside ``blocks``: ``length`` random ones per epoch (drawn from a generator
    seeded ``seed + epoch``), or a grid over each block."""

    def __init__(self, blocks: list[Block], res: tuple[float, float], size: int, length: int | None, seed: int) -> None:
        self.blocks, self.res, self.size, self.length, self.seed = blocks, res, size, length, seed

    def _window(self, block: Block, col: int, row: int) -> tuple[slice, slice]:
        xres, yres = self.res
        xmin, ymax = block[0] + col * xres, block[3] - row * yres
        return slice(xmin, xmin + self.size * xres, xres), slice(ymax - self.size * yres, ymax, yres)

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        span = round((self.blocks[0][2] - self.blocks[0][0]) / self.res[0]) - self.size
        if self.length is not None:
            generator = self.epoch_generator()
            for _ in range(self.length):
                b, c, r = (int(torch.randint(hi, (1,), generator=generator)) for hi in
                           (len(self.blocks), span + 1, span + 1))
                yield self._window(self.blocks[b], c, r)
        else:
            steps = range(0, span + 1, self.size)
            for block in self.blocks:
                yield from (self._window(block, c, r) for r in steps for c in steps)

    def __len__(self) -> int:
        return self.length if self.length is not None else len(self.blocks) * (1 + (
            round((self.blocks[0][2] - self.blocks[0][0]) / self.res[0]) - self.size) // self.size) ** 2


class PreparedSamples(Dataset):
    """``dataset[query]`` passed through ``prepare`` (normalised image, mapped targets)."""

    def __init__(self, dataset: Any, prepare: Any) -> None:
        self.dataset, self.prepare = dataset, prepare

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, query: Any) -> dict[str, Tensor]:
        return self.prepare(self.dataset[query])


class LabelledRasterDataModule(L.LightningDataModule):
    """Labelled windows of a raster, or labelled tiles, split train/val/test for fine-tuning.

    Give ``image`` with ``mask`` (label raster) or ``vector`` (points/polygons rasterised), or ``tiles``.

    Args:
        image: GeoTIFF file or folder of the imagery; with ``temporal``, the stack's files or folder.
        mask: single-band label raster (class values); any grid or CRS (reprojected, nearest).
        vector: vector file of labelled points/polygons (rasterised into a mask).
        class_column: the vector file's class column.
        tiles: a folder ``<class>/*.tif`` or a CSV (``path``, ``label`` with ``;`` between labels).
        label_mode: ``mask`` (segmentation targets) or ``majority`` (one class per window).
        class_values: label raster values that are classes, in class order; default every value present.
        classes: class names; default the values (raster), the vector's classes, or the tile labels.
        bands: bands to read, in order (must equal the backbone's bands); default all.
        band_names: names of all the image's bands, overriding its descriptions.
        nodata: image nodata value overriding the file's.
        window_size: window side in pixels.
        block_size: spatial split block side in pixels (>= window_size); default 2 * window_size.
        split_fractions: train, val, test shares of the blocks (or tiles).
        seed: seed of the split and of the training windows.
        windows_per_epoch: random training windows per epoch.
        batch_size: samples per batch.
        num_workers: data loader workers.
        normalization: ``standardize`` or ``percentile`` with ``band_statistics``.
        band_statistics: statistics (``BandStatistics.to_dict()``); default computed from the data.
        ignore_index: target value for unlabelled / nodata pixels.
        temporal: read ``image`` as a stack of dates labelled by one ``mask`` / ``vector``.
        dates: ISO dates of the stack's files, in file order (default: from the file names).
        date_pattern: regex whose ``date`` group finds the date in a file name.
        date_format: strftime format of that date.
    """

    def __init__(
        self,
        image: str | list[str] | None = None,
        mask: str | None = None,
        vector: str | None = None,
        class_column: str = "class",
        tiles: str | None = None,
        label_mode: Literal["mask", "majority"] = "mask",
        class_values: list[int] | None = None,
        classes: list[str] | None = None,
        bands: list[str] | None = None,
        band_names: list[str] | None = None,
        nodata: float | None = None,
        window_size: int = 64,
        block_size: int | None = None,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        windows_per_epoch: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        normalization: Literal["standardize", "percentile"] = "standardize",
        band_statistics: dict[str, Any] | None = None,
        ignore_index: int = 255,
        temporal: bool = False,
        dates: list[str] | None = None,
        date_pattern: str = DEFAULT_DATE_PATTERN,
        date_format: str = DEFAULT_DATE_FORMAT,
    ) -> None:
        super().__init__()
        if (tiles is None) == (image is None) or (image is not None and (mask is None) == (vector is None)):
            raise GeoExploraError("give either tiles, or image with exactly one of mask and vector")
        if temporal and tiles is not None:
            raise GeoExploraError("data.temporal reads a stack given as data.image, not data.tiles")
        if block_size is not None and block_size < window_size:
            raise GeoExploraError(f"block_size {block_size} is smaller than window_size {window_size}")
        self.options = dict(locals())
        self.options.pop("self")
        self.options.pop("__class__", None)
        self.batch_size, self.num_workers, self.normalization = batch_size, num_workers, normalization
        self.datasets: dict[str, Dataset] = {}
        self.samplers: dict[str, Sampler | None] = {}
        self.classes: list[str] = []
        self.band_names: tuple[str, ...] = ()
        self.band_statistics: BandStatistics | None = None
        # A stack is checked here, before a run writes anything (dates, bands, grid; opens headers only).
        self.stack = RasterStack.from_paths(image, dates, date_pattern, date_format) if temporal else None

    @property
    def num_dates(self) -> int | None:
        """T of the stack (``temporal``); None for single rasters and tiles."""
        return len(self.stack) if self.stack is not None else None

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        o = self.options
        if o["tiles"] is not None:
            self._setup_tiles()
        else:
            self._setup_raster()
        self.normalizer = Normalizer(self.band_statistics, self.band_names, self.normalization)

    def adopt_band_statistics(self, stats: dict[str, Any], normalization: str | None = None) -> None:
        """Normalise with ``stats`` and ``normalization`` (a pre-training checkpoint's) unless the recipe gave
        ``band_statistics``.

        The encoder was pre-trained on inputs normalised that way; fine-tuning keeps it.
        Call after :meth:`setup`, before the data loaders run.
        """
        if self.options["band_statistics"] is None:
            self.band_statistics = BandStatistics.from_dict(stats)
            self.normalization = normalization or self.normalization
            self.normalizer = Normalizer(self.band_statistics, self.band_names, self.normalization)

    def _statistics(self, compute: Any) -> BandStatistics:
        given = self.options["band_statistics"]
        return BandStatistics.from_dict(given) if given is not None else compute()

    def _setup_raster(self) -> None:
        o = self.options
        if o["temporal"]:
            image = TemporalRasterDataset(self.stack, bands=o["bands"], band_names=o["band_names"], nodata=o["nodata"])
        else:
            image = GeoRasterDataset(o["image"], o["bands"], o["band_names"], nodata=o["nodata"])
        self.band_names = image.band_names
        if o["mask"] is not None:
            labels = RasterMaskDataset(o["mask"], crs=image.crs, res=image.res, ignore_index=o["ignore_index"])
            present = raster_class_values(o["mask"])
            values = o["class_values"] if o["class_values"] is not None else present
            unknown = sorted(set(present) - set(values))
            if unknown:
                raise GeoExploraError(f"{o['mask']}: label values {unknown} are not among the class values {values}")
            self.class_values: Tensor | None = torch.tensor(values)
            self.classes = list(o["classes"] or [str(v) for v in values])
        else:
            labels = VectorMaskDataset(o["vector"], o["class_column"], image.crs, image.res, o["classes"],
                                       o["ignore_index"])
            self.class_values = None
            self.classes = list(labels.classes)
        if len(self.classes) != (len(self.class_values) if self.class_values is not None else len(self.classes)):
            raise GeoExploraError(f"{len(self.classes)} class names {self.classes} for {len(self.class_values)} class values")
        try:
            dataset = image & labels
        except RuntimeError as err:  # TorchGeo: "Datasets have no spatial intersection"
            raise GeoExploraError(f"{o['mask'] or o['vector']}: the labels do not overlap the image {o['image']} "
                                  f"({err}); give labels of the same place") from None
        self.band_statistics = self._statistics(lambda: compute_band_statistics(image, seed=o["seed"],
                                                                                window_size=o["window_size"]))
        x, y, _ = dataset.bounds
        size = o["window_size"]
        blocks = spatial_blocks((x.start, y.start, x.stop, y.stop), image.res, o["block_size"] or 2 * size)
        splits = deal_splits(len(blocks), o["split_fractions"], o["seed"], f"{o['image']} (blocks of the spatial split)")
        for split, indices in splits.items():
            chosen = [blocks[i] for i in sorted(indices)]
            length = o["windows_per_epoch"] if split == "train" else None
            self.samplers[split] = BlockWindowSampler(chosen, image.res, size, length, o["seed"]) if chosen else None
            self.datasets[split] = PreparedSamples(dataset, self.prepare_window)

    def _setup_tiles(self) -> None:
        o = self.options
        path = Path(o["tiles"])
        tiles = (SceneClassificationDataset.from_csv(path, classes=o["classes"]) if path.suffix.lower() == ".csv"
                 else SceneClassificationDataset.from_folder(path))
        self.classes = list(tiles.classes)
        count = tiles[0]["image"].shape[0]
        self.band_names = tuple(o["band_names"] or [f"B{i}" for i in range(1, count + 1)])
        if len(self.band_names) != count:
            raise GeoExploraError(f"{path}: {len(self.band_names)} band names for tiles with {count} bands")
        self.band_statistics = self._statistics(lambda: self._tile_statistics(tiles))
        for split, indices in deal_splits(len(tiles), o["split_fractions"], o["seed"], f"{path} (tiles)").items():
            self.datasets[split] = PreparedSamples(Subset(tiles, indices), self.prepare_tile)
            self.samplers[split] = None

    def _tile_statistics(self, tiles: SceneClassificationDataset) -> BandStatistics:
        chunks = []
        for i in range(min(len(tiles), 64)):
            sample = tiles[i]
            chunks.append(sample["image"][:, sample["valid"]].numpy())
        return band_statistics_from_pixels(self.band_names, np.concatenate(chunks, axis=1), num_windows=len(chunks))

    def prepare_window(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        """Normalised ``image``; ``mask`` as class indices (``ignore_index`` off labels/data) or ``label``."""
        ignore = self.options["ignore_index"]
        mask = sample["mask"]
        if self.class_values is not None:
            index = torch.searchsorted(self.class_values, mask).clamp(max=len(self.class_values) - 1)
            mask = torch.where(self.class_values[index] == mask, index, ignore)
        valid = sample["valid"]
        mask = mask.masked_fill(~(valid.any(dim=0) if valid.ndim == 3 else valid), ignore)
        out = {"image": self.normalizer(sample["image"], valid)}
        if "dates" in sample:
            out["dates"] = sample["dates"]
        if self.options["label_mode"] == "mask":
            out["mask"] = mask
        else:
            counts = torch.bincount(mask[mask != ignore], minlength=len(self.classes))
            out["label"] = counts.argmax() if counts.sum() > 0 else torch.tensor(ignore)
        return out

    def class_pixel_counts(self) -> Tensor:
        """Labelled pixels of each class (K,) int64 in the training split, read once on a grid over its blocks.

        Only for raster labels in ``mask`` mode (segmentation); ``ignore_index`` pixels are not counted.
        """
        self.setup()
        if self.options["tiles"] is not None or self.options["label_mode"] != "mask":
            raise GeoExploraError("class pixel counts need segmentation masks "
                                  "(image with mask or vector, label_mode mask)")
        train = self.samplers["train"]
        if train is None:
            raise GeoExploraError(f"the train split is empty (split_fractions {self.options['split_fractions']})")
        grid = BlockWindowSampler(train.blocks, train.res, train.size, None, self.options["seed"])
        ignore, counts = self.options["ignore_index"], torch.zeros(len(self.classes), dtype=torch.long)
        for query in grid:
            mask = self.datasets["train"][query]["mask"]
            counts += torch.bincount(mask[mask != ignore].flatten(), minlength=len(self.classes))
        return counts

    def prepare_tile(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"image": self.normalizer(sample["image"], sample["valid"]), "label": sample["label"]}

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        sampler = self.samplers[split]
        dataset = self.datasets[split]
        if sampler is None and self.options["tiles"] is None:
            raise GeoExploraError(f"the {split} split is empty (split_fractions {self.options['split_fractions']})")
        if sampler is None and split == "train":
            sampler = SeededShuffleSampler(len(dataset), self.options["seed"])
        return ResumableDataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
