"""A k-NN probe during pre-training: do the teacher's class tokens separate labelled windows better?

``model.probe`` in a pre-training recipe names a small labelled raster. The probe cuts it into
non-overlapping windows labelled by their majority class, keeps the left half of the raster (by window
centre) as the k-NN memory and scores the right half (a spatial split), every ``every_n_steps`` steps on
the features the checkpoint will hold (the EMA teacher's class token for DINOv2). The accuracy is logged
as ``probe_knn_accuracy`` and drawn by :class:`~geoexplora.tasks.learning_monitor.LearningMonitor`.
Nothing is trained on the labels.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from geoexplora.data.raster import file_band_names, inspect_raster, select_bands
from geoexplora.errors import GeoExploraError
from geoexplora.tasks.knn import knn_accuracy

logger = logging.getLogger(__name__)


@dataclass
class KNNProbeOptions:
    """A labelled raster to probe the features with while pre-training.

    Attributes:
        image: raster holding the pre-training's bands (matched by name).
        labels: single-band class raster; reprojected (nearest) onto the image's grid when it differs.
        band_names: names of the image's bands when it has no band descriptions (default ``B1..Bn``).
        window_size: side of the probe windows in pixels (resized to the pre-training crop size).
        every_n_steps: probe period in optimisation steps (and after the first step and the last).
        k: neighbours of the k-NN vote.
        min_valid: share of valid image pixels a window needs.
    """

    image: str
    labels: str
    band_names: list[str] | None = None
    window_size: int = 32
    every_n_steps: int = 50
    k: int = 20
    min_valid: float = 0.9

    def __post_init__(self) -> None:
        if self.window_size < 2 or self.every_n_steps < 1 or self.k < 1 or not 0 < self.min_valid <= 1:
            raise GeoExploraError(f"probe: window_size ({self.window_size}) must be >= 2, every_n_steps "
                                  f"({self.every_n_steps}) and k ({self.k}) >= 1, min_valid in (0, 1]")


@dataclass(frozen=True)
class ProbeWindows:
    """Windows of the probe raster: images (N, C, w, w) float32 in file units (NaN at nodata), valid
    (N, w, w), class labels (N,) as indices into the sorted label values, train (N,) bool (left half)."""

    images: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor
    train: torch.Tensor
    num_classes: int


def read_probe_windows(options: KNNProbeOptions, bands: list[str]) -> ProbeWindows:
    """Cut the probe raster into labelled windows of the pre-training's ``bands``."""
    image_path, labels_path, w = Path(options.image), Path(options.labels), options.window_size
    info = inspect_raster(image_path)
    names = list(options.band_names) if options.band_names else list(file_band_names(info))
    if len(names) != info.count:
        raise GeoExploraError(f"{image_path}: probe band_names lists {len(names)} bands, the file has {info.count}")
    indexes = [names.index(b) + 1 for b in select_bands(names, bands, image_path)]
    with rasterio.open(image_path) as src:
        image = src.read(indexes).astype(np.float32)
        invalid = ~src.read_masks(indexes).all(axis=0).astype(bool) | np.isnan(image).any(axis=0)
        grid = dict(crs=src.crs, transform=src.transform, width=src.width, height=src.height)
    try:
        with rasterio.open(labels_path) as lab, WarpedVRT(lab, resampling=Resampling.nearest, **grid) as vrt:
            labels = vrt.read(1)
            labelled = vrt.read_masks(1).astype(bool)
    except rasterio.errors.RasterioError as err:
        raise GeoExploraError(f"{labels_path}: cannot read the probe labels ({err})") from None
    image[:, invalid] = np.nan
    windows, values = [], []
    for r in range(0, grid["height"] - w + 1, w):
        for c in range(0, grid["width"] - w + 1, w):
            ok = ~invalid[r:r + w, c:c + w] & labelled[r:r + w, c:c + w]
            if ok.mean() < options.min_valid:
                continue
            values.append(Counter(labels[r:r + w, c:c + w][ok].tolist()).most_common(1)[0][0])
            windows.append((r, c))
    classes = sorted(set(values))
    train = torch.tensor([c + w / 2 < grid["width"] / 2 for _, c in windows])
    if len(classes) < 2 or train.all() or not train.any():
        raise GeoExploraError(f"{labels_path}: the probe needs windows of at least 2 classes in both halves of "
                              f"the raster; found {len(windows)} windows of {len(classes)} classes at {w} px")
    stack = np.stack([image[:, r:r + w, c:c + w] for r, c in windows])
    return ProbeWindows(torch.from_numpy(stack), torch.from_numpy(~np.isnan(stack).any(axis=1)),
                        torch.tensor([classes.index(v) for v in values]), train, len(classes))


class KNNProbe(L.Callback):
    """Log the k-NN accuracy of the task's exported features on a labelled raster every N steps.

    The task provides ``probe_features(images) -> (N, D)`` (normalised images, resized to its input size)
    and ``step_monitors`` (where the accuracy is added for the learning monitor).
    """

    def __init__(self, options: KNNProbeOptions) -> None:
        self.options = options
        self.windows: ProbeWindows | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.windows = read_probe_windows(self.options, list(pl_module.backbone_config.bands))
        logger.info("k-NN probe: %d windows (%d for the memory), %d classes, every %d steps", len(self.windows.labels),
                    int(self.windows.train.sum()), self.windows.num_classes, self.options.every_n_steps)

    @torch.no_grad()
    def accuracy(self, pl_module: Any) -> float:
        """k-NN accuracy (0-1) on the right half from the left half's features."""
        w = self.windows
        features = torch.cat([
            pl_module.probe_features(pl_module.normalizer.to(pl_module.device)(
                images.to(pl_module.device), valid.to(pl_module.device))).float().cpu()
            for images, valid in zip(w.images.split(64), w.valid.split(64))
        ])
        return knn_accuracy(features[w.train], w.labels[w.train], features[~w.train], w.labels[~w.train],
                            w.num_classes, k=self.options.k)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        last = trainer.max_steps is not None and step >= trainer.max_steps
        if step != 1 and step % self.options.every_n_steps and not last:
            return
        value = self.accuracy(pl_module)
        pl_module.log("probe_knn_accuracy", value)
        pl_module.step_monitors["probe_knn_accuracy"] = value
