"""The evaluation's rasters: what each set is, the derived files it needs, and data modules that resize windows.

Labelled sets go through the project's :class:`LabelledRasterDataModule` (its spatial block split: blocks
shuffled with the seed and dealt to train / val / test, every window inside one block). The ViT sees each
window resized to ``input_size`` (bilinear for the image, nearest for a mask, integer factors where a mask
is resized so every label pixel keeps the same weight), done on the batch after transfer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import rasterio
import torch.nn.functional as F
from rasterio.windows import Window
from torch import Tensor
from torch.utils.data import Dataset

from geoexplora.tasks.finetune_data import LabelledRasterDataModule


@dataclass(frozen=True)
class ImageSpec:
    """One unlabelled domain: the rasters ExPLoRA pre-trains on (shared by the labelled sets over it).

    Attributes:
        key: short name (``nc``, ``s2``).
        paths: rasters, relative to the data root.
        band_names: names of the rasters' bands, in order.
        sensor: sensor table for the RGB kernel carry-over.
        window: pre-training window side read from the rasters (px).
        batch_size: windows per pre-training step (each date counts as a sample when ``dates`` is given).
        dates: placeholder ISO dates, one per raster, to read ``paths`` as one place's time series.
    """

    key: str
    paths: tuple[str, ...]
    band_names: tuple[str, ...]
    sensor: str
    window: int
    batch_size: int
    dates: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LabelledSpec:
    """One labelled evaluation set.

    Attributes:
        key: short name (``nc-seg``).
        title: what it is, for the report.
        image: labelled image, relative to the data root.
        mask: label raster, relative to the data root.
        domain: the :class:`ImageSpec` key it is pre-trained on.
        task: ``segmentation`` (pixel labels) or ``classification`` (the majority label of a window).
        class_values: label values that are classes.
        class_names: their names.
        window: window side read from the raster (px).
        block: spatial split block side (px).
        input_size: side the ViT sees (px, a multiple of the patch size).
        windows_per_epoch: random training windows per epoch (also the probe's training windows).
        epochs: fine-tuning epochs.
        batch_size: windows per batch.
        pixels_per_window: segmentation probe: labelled pixels sampled per training window.
        mask_nodata: label value to write as nodata into a derived copy of the mask (None: use as is).
        split_fractions: train, val, test shares of the blocks.
    """

    key: str
    title: str
    image: str
    mask: str
    domain: str
    task: Literal["segmentation", "classification"]
    class_values: tuple[int, ...]
    class_names: tuple[str, ...]
    window: int
    block: int
    input_size: int
    windows_per_epoch: int
    epochs: int
    batch_size: int = 16
    pixels_per_window: int = 32
    mask_nodata: float | None = None
    # 40% of the blocks for test: NC windows ~780 and S2 ~20 test blocks, so one seed's block-bootstrap SE
    # stays near or under 2.5 points (measured with 30%: 2.8 on NC windows, 2.7 mIoU on S2).
    split_fractions: tuple[float, float, float] = field(default=(0.45, 0.15, 0.4))

    @property
    def headline(self) -> str:
        """The metric a row is judged by: mIoU for segmentation, accuracy for window classification."""
        return "miou" if self.task == "segmentation" else "accuracy"


def _striped(profile: dict[str, Any]) -> dict[str, Any]:
    """A rasterio profile without the source's tiling, for small derived GeoTIFFs (GDAL picks the layout)."""
    return {k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled")}


def crop_raster(source: Path, target: Path, size: int) -> Path:
    """Write the central ``size`` x ``size`` pixels of ``source`` (all bands, its CRS and nodata) to ``target``."""
    with rasterio.open(source) as src:
        row, col = max(0, (src.height - size) // 2), max(0, (src.width - size) // 2)
        window = Window(col, row, min(size, src.width), min(size, src.height))
        profile = _striped(src.profile) | {"width": window.width, "height": window.height,
                                           "transform": src.window_transform(window)}
        data, descriptions = src.read(window=window), src.descriptions
    target.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    return target


def with_nodata(source: Path, target: Path, nodata: float) -> Path:
    """Copy a single-band label raster with ``nodata`` declared (e.g. eo-learn's LULC value 0, "no data")."""
    with rasterio.open(source) as src:
        profile, data = _striped(src.profile) | {"nodata": nodata}, src.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(data)
    return target


def prepare_files(spec: LabelledSpec, data_root: Path, work: Path, crop: int | None) -> tuple[Path, Path]:
    """The image and mask a labelled set reads: the originals, or derived copies under ``work/data/<key>``."""
    image, mask = data_root / spec.image, data_root / spec.mask
    folder = work / "data" / spec.key
    if crop is not None:
        image = crop_raster(image, folder / f"image-{Path(spec.image).name}", crop)
        mask = crop_raster(mask, folder / f"mask-{Path(spec.mask).name}", crop)
    if spec.mask_nodata is not None:
        mask = with_nodata(mask, folder / f"mask-nodata-{Path(spec.mask).name}", spec.mask_nodata)
    return image, mask


def prepare_domain(domain: ImageSpec, data_root: Path, work: Path, crop: int | None) -> list[Path]:
    """The rasters a domain pre-trains on: the originals, or central crops under ``work/data/<key>``."""
    paths = [data_root / p for p in domain.paths]
    if crop is None:
        return paths
    return [crop_raster(p, work / "data" / domain.key / f"pretrain-{p.name}", crop) for p in paths]


def resize_batch(batch: dict[str, Tensor], size: int) -> dict[str, Tensor]:
    """``image`` (B, C, h, w) -> (B, C, size, size) bilinear; ``mask`` (B, h, w) -> (B, size, size) nearest.

    The mask as read stays in ``native_mask`` (B, h, w): scores are computed at the raster's own pixels.
    """
    out = dict(batch)
    if "mask" in batch:
        out["native_mask"] = batch["mask"]
    if batch["image"].shape[-1] != size:
        out["image"] = F.interpolate(batch["image"], size=(size, size), mode="bilinear", align_corners=False)
        if "mask" in batch:
            out["mask"] = F.interpolate(batch["mask"][:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    return out


class CachedReads(Dataset):
    """``dataset[query]`` remembered in ``cache``, a dict shared by the data modules of one labelled set.

    Every row of a seed reads the same windows (same split, same seeded training windows): TorchGeo reads
    each once. Samples are read-only downstream (normalising and collating make new tensors).
    """

    def __init__(self, dataset: Any, cache: dict[Any, dict[str, Tensor]]) -> None:
        self.dataset, self.cache = dataset, cache

    def __getitem__(self, query: Any) -> dict[str, Tensor]:
        if query not in self.cache:
            self.cache[query] = self.dataset[query]
        return self.cache[query]


class ResizedWindows(LabelledRasterDataModule):
    """:class:`LabelledRasterDataModule` whose batches are resized to ``input_size`` after transfer.

    Args:
        input_size: side of the windows the model sees (px).
        cache: raw window reads shared with other modules over the same rasters (None: no cache).
        **options: the data module's arguments.
    """

    def __init__(self, input_size: int, cache: dict[Any, dict[str, Tensor]] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.input_size = input_size
        self.cache = cache

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.cache is None:
            return
        for prepared in self.datasets.values():
            if not isinstance(prepared.dataset, CachedReads):
                prepared.dataset = CachedReads(prepared.dataset, self.cache)

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        return resize_batch(batch, self.input_size)

    def batches(self, split: str) -> list[dict[str, Tensor]]:
        """Every batch of ``split`` (one pass, resized), in the sampler's order."""
        return [resize_batch(b, self.input_size) for b in self._loader(split)]

    def windows_per_block(self, split: str) -> int:
        """Windows the grid visits in each block of ``split`` (val and test are visited block by block)."""
        sampler = self.samplers[split]
        return len(sampler) // len(sampler.blocks)


def labelled_data(spec: LabelledSpec, domain: ImageSpec, image: Path, mask: Path, seed: int,
                  statistics: dict[str, Any] | None, cache: dict[Any, dict[str, Tensor]]) -> ResizedWindows:
    """The data module of ``spec`` for ``seed`` (which also seeds the spatial split), set up.

    ``statistics`` (``BandStatistics.to_dict()``) normalise the windows; None: the module computes its own.
    ``cache`` holds the raw window reads of ``spec``'s rasters (see :class:`CachedReads`).
    """
    data = ResizedWindows(
        spec.input_size, cache, image=str(image), mask=str(mask), band_names=list(domain.band_names),
        class_values=list(spec.class_values), classes=list(spec.class_names),
        label_mode="mask" if spec.task == "segmentation" else "majority", window_size=spec.window,
        block_size=spec.block, split_fractions=spec.split_fractions, seed=seed,
        windows_per_epoch=spec.windows_per_epoch, batch_size=spec.batch_size, band_statistics=statistics,
    )
    data.setup("fit")
    return data

