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

``stacks`` gives several such stacks (different places, numbers of dates and CRSs), each with its own
labels: every sample holds ``num_dates`` dates (default: the fewest of any stack), a seeded subset of
its stack's dates for a stack with more (:mod:`geoexplora.data.multistack`). Each stack is cut into
blocks on its own grid; the blocks of all stacks are dealt to the splits together, and training windows
are drawn uniformly over the train blocks of every stack. Mask labels take the class values of all
masks; vector labels the classes of ``classes``, else of the first stack's file.
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
    RasterMaskDataset,
    SceneClassificationDataset,
    VectorMaskDataset,
    compute_band_statistics,
)
from geoexplora.data.multistack import (
    MultiStackDataset,
    MultiStackSampler,
    StackWindows,
    check_num_dates,
    open_stacks,
    random_stack_windows,
    stack_entries,
    stack_name,
)
from geoexplora.data.resumable import EpochSeeded, ResumableDataLoader, SeededShuffleSampler
from geoexplora.data.stack import DEFAULT_DATE_FORMAT, DEFAULT_DATE_PATTERN, RasterStack
from geoexplora.data.stats import band_statistics_from_pixels
from geoexplora.errors import GeoExploraError

SPLITS = ("train", "val", "test")
Block = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in CRS units
#: Random windows of the computed band statistics (``compute_band_statistics``'s default).
STATISTICS_WINDOWS = 64
STACK_KEYS = ("image", "mask", "vector", "dates")


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


def _bounds(dataset: Any) -> Block:
    """A GeoDataset's footprint: xmin, ymin, xmax, ymax in its CRS units."""
    x, y, _ = dataset.bounds
    return x.start, y.start, x.stop, y.stop


def labelled_stack_entries(stacks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``data.stacks`` for fine-tuning: per stack ``image`` with exactly one of ``mask`` and ``vector`` (the same
    kind for every stack) and optional ``dates``; every key of :data:`STACK_KEYS` present (None when not given)."""
    entries = [{key: e.get(key) for key in STACK_KEYS} for e in stack_entries(stacks, "image", STACK_KEYS)]
    for i, entry in enumerate(entries):
        if (entry["mask"] is None) == (entry["vector"] is None):
            raise GeoExploraError(f"{stack_name(i, entry, 'image')}: give exactly one of mask and vector")
    if len({entry["mask"] is None for entry in entries}) > 1:
        raise GeoExploraError("data.stacks mix mask and vector labels; give every stack the same kind")
    return entries


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

    @property
    def _span(self) -> int:
        """Window offsets in a block, per axis, minus one."""
        return round((self.blocks[0][2] - self.blocks[0][0]) / self.res[0]) - self.size

    def draw(self, generator: torch.Generator) -> tuple[slice, slice]:
        """One random window: a block, then its column and row offsets, from ``generator``."""
        b, c, r = (int(torch.randint(hi, (1,), generator=generator)) for hi in
                   (len(self.blocks), self._span + 1, self._span + 1))
        return self._window(self.blocks[b], c, r)

    def grid(self) -> BlockWindowSampler:
        """The same blocks visited on a grid."""
        return BlockWindowSampler(self.blocks, self.res, self.size, None, self.seed)

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        if self.length is not None:
            generator = self.epoch_generator()
            for _ in range(self.length):
                yield self.draw(generator)
        else:
            steps = range(0, self._span + 1, self.size)
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
        stacks: several labelled stacks instead of ``image`` (read as stacks: ``temporal`` implied), each
            ``{image: folder_or_files, mask: raster}`` or ``{image: ..., vector: file}``, with optional
            ``dates`` (ISO dates in file order); every stack needs the same bands and the same kind of labels.
        num_dates: dates per sample, for stacks (default: the fewest dates of any stack); a stack with
            more gives each window a seeded random subset of its dates, in increasing order.
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
        stacks: list[dict[str, Any]] | None = None,
        num_dates: int | None = None,
    ) -> None:
        super().__init__()
        if sum(v is not None for v in (tiles, image, stacks)) != 1 or (
                image is not None and (mask is None) == (vector is None)):
            raise GeoExploraError("give either tiles, or image with exactly one of mask and vector, or stacks")
        if stacks is not None and any(v is not None for v in (mask, vector, dates)):
            raise GeoExploraError("data.mask, data.vector and data.dates go with data.image; give each stack's "
                                  "as data.stacks[i].mask / vector / dates")
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
        self.temporal = temporal or stacks is not None
        if not self.temporal and num_dates is not None:
            raise GeoExploraError("data.num_dates is for stacks: set data.temporal: true or give data.stacks")
        # One entry per labelled raster or stack (none for tiles), and how messages name it.
        if stacks is not None:
            self.entries = labelled_stack_entries(stacks)
            self.stack_names = [stack_name(i, e, "image") for i, e in enumerate(self.entries)]
        else:
            self.entries = [] if image is None else [dict(image=image, mask=mask, vector=vector, dates=dates)]
            self.stack_names = ["data.image"]
        # Stacks are checked here, before a run writes anything (dates, bands, grid; opens headers only).
        self.stacks = [RasterStack.from_paths(e["image"], e.get("dates"), date_pattern, date_format)
                       for e in self.entries] if self.temporal else []
        self.dates_per_sample = check_num_dates(self.stacks, self.stack_names, num_dates) if self.temporal else None

    @property
    def num_dates(self) -> int | None:
        """T, the dates of every sample (``data.num_dates``, stacks); None for single rasters and tiles."""
        return self.dates_per_sample

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
        common = dict(bands=o["bands"], band_names=o["band_names"], nodata=o["nodata"])
        images = (open_stacks(self.stacks, self.stack_names, **common) if self.temporal
                  else [GeoRasterDataset(o["image"], **common)])
        self.band_names = images[0].band_names
        if self.entries[0]["mask"] is not None:
            self._mask_classes()
        else:
            self.class_values = None
        datasets = [self._labelled(image, entry) for image, entry in zip(images, self.entries, strict=True)]
        self.band_statistics = self._statistics(lambda: self._image_statistics(images))
        size = o["window_size"]
        blocks = [(k, block) for k, (image, dataset) in enumerate(zip(images, datasets, strict=True))
                  for block in spatial_blocks(_bounds(dataset), image.res, o["block_size"] or 2 * size)]
        what = o["image"] if o["stacks"] is None else "data.stacks"
        splits = deal_splits(len(blocks), o["split_fractions"], o["seed"], f"{what} (blocks of the spatial split)")
        source = MultiStackDataset(images, datasets) if self.temporal else datasets[0]
        for split, indices in splits.items():
            length = o["windows_per_epoch"] if split == "train" else None
            self.samplers[split] = self._split_sampler([blocks[i] for i in sorted(indices)], images, length)
            self.datasets[split] = PreparedSamples(source, self.prepare_window)

    def _mask_classes(self) -> None:
        """Class values and names of the masks: ``class_values``, else every value of any mask."""
        o = self.options
        present = {e["mask"]: raster_class_values(e["mask"]) for e in self.entries}
        values = o["class_values"] if o["class_values"] is not None else sorted(set().union(*present.values()))
        for mask, found in present.items():
            unknown = sorted(set(found) - set(values))
            if unknown:
                raise GeoExploraError(f"{mask}: label values {unknown} are not among the class values {values}")
        self.class_values = torch.tensor(values)
        self.classes = list(o["classes"] or [str(v) for v in values])
        if len(self.classes) != len(self.class_values):
            raise GeoExploraError(f"{len(self.classes)} class names {self.classes} for {len(self.class_values)} class values")

    def _labelled(self, image: GeoRasterDataset, entry: dict[str, Any]) -> Any:
        """``image`` intersected with its labels (a mask raster or a vector file rasterised on its grid); vector
        labels take ``classes``, else the first stack's classes."""
        o = self.options
        if entry["mask"] is not None:
            labels = RasterMaskDataset(entry["mask"], crs=image.crs, res=image.res, ignore_index=o["ignore_index"])
        else:
            labels = VectorMaskDataset(entry["vector"], o["class_column"], image.crs, image.res,
                                       self.classes or o["classes"], o["ignore_index"])
            self.classes = self.classes or list(labels.classes)
        try:
            return image & labels
        except RuntimeError as err:  # TorchGeo: "Datasets have no spatial intersection"
            raise GeoExploraError(f"{entry['mask'] or entry['vector']}: the labels do not overlap the image "
                                  f"{entry['image']} ({err}); give labels of the same place") from None

    def _image_statistics(self, images: list[GeoRasterDataset]) -> BandStatistics:
        """Band statistics of random windows of the image (of the stacks by pixel area, ``num_dates`` dates each)."""
        o = self.options
        if not self.temporal:
            return compute_band_statistics(images[0], seed=o["seed"], window_size=o["window_size"])
        windows = random_stack_windows(images, o["window_size"], STATISTICS_WINDOWS, o["seed"], self.dates_per_sample)
        return compute_band_statistics(MultiStackDataset(images), STATISTICS_WINDOWS, o["window_size"], o["seed"],
                                       windows=windows)

    def _split_sampler(self, blocks: list[tuple[int, Block]], images: list[GeoRasterDataset],
                       length: int | None) -> Sampler | None:
        """The windows of one split's ``(stack, block)`` pairs: ``length`` random ones (uniform over the blocks of
        every stack) or a grid; None for a split without blocks."""
        o = self.options
        per_stack = {k: [block for stack, block in blocks if stack == k] for k in range(len(images))}
        samplers = {k: BlockWindowSampler(chosen, images[k].res, o["window_size"], length, o["seed"])
                    for k, chosen in per_stack.items() if chosen}
        if not self.temporal:
            return samplers.get(0)
        parts = [StackWindows(k, s, len(images[k].stack), len(s.blocks)) for k, s in samplers.items()]
        return MultiStackSampler(parts, self.dates_per_sample, length, o["seed"]) if parts else None

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
        grid = train.grid()
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
