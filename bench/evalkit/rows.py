"""The table's rows: linear probes on frozen features and fine-tunes with the project's FinetuneTask.

Both kinds end the same way: per-block confusion matrices on the validation split (for model selection)
and on the test split (for the table), see :mod:`evalkit.stats`.

* **Probe rows** take features from a frozen backbone (the source DINOv2, or an ExPLoRA checkpoint with its
  adapters merged) and fit :func:`geoexplora.tasks.linear_probe.fit_linear_probe`, the L2 strength chosen
  on validation. Classification: the DINOv2 linear-eval feature, cls token concatenated with the mean
  patch token of the last block (normed). Segmentation: a per-patch-token probe: the last block's patch
  tokens, bilinearly upsampled to pixels (as the project's linear segmentation head does), fitted on
  ``pixels_per_window`` labelled pixels sampled from each training window and scored on every pixel.
* **Fine-tune rows** run :class:`FinetuneTask` (strategy, options, optional ExPLoRA init checkpoint)
  under a Lightning ``Trainer``; the learning rate is chosen on validation (see ``explora_eval.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evalkit.datasets import ResizedWindows
from evalkit.stats import block_confusions, scores
from geoexplora.models import parameter_report
from geoexplora.tasks.finetune import FinetuneTask
from geoexplora.tasks.linear_probe import LinearProbe, fit_linear_probe

IGNORE = 255


@dataclass
class RunResult:
    """One row x seed: validation score, test block confusions, trainable parameters and time."""

    val_score: float
    test_blocks: np.ndarray
    trainable: int
    seconds: float
    choice: str


def _target(batch: dict[str, Tensor]) -> Tensor:
    return batch["mask"] if "mask" in batch else batch["label"]


def _scored(logits: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(logits, target) at the raster's own pixels: segmentation logits area-averaged to the mask as read."""
    if "native_mask" not in batch:
        return logits, _target(batch)
    native = batch["native_mask"]
    return F.interpolate(logits, size=native.shape[-2:], mode="area"), native


@torch.no_grad()
def _features(backbone: nn.Module, image: Tensor, segmentation: bool) -> Tensor:
    """(B, 2D) cls + mean patch token, or (B, D, h, w) patch-token maps, of the last block (normed)."""
    tokens = backbone.forward_features(image)
    patches = tokens[:, backbone.num_prefix_tokens:]
    if not segmentation:
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=1)
    h, w = backbone.patch_embed.dynamic_feat_size(image.shape[-2:])
    return patches.transpose(1, 2).reshape(len(image), -1, h, w)


def _probe_logits(probe: LinearProbe, features: Tensor, size: int | None) -> Tensor:
    """Logits (B, K) of vectors, or (B, K, size, size) of token maps (per-token logits, bilinear upsampled)."""
    if size is None:
        return probe.logits(features)
    per_token = probe.logits(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return F.interpolate(per_token, size=(size, size), mode="bilinear", align_corners=False)


def _pixel_samples(features: Tensor, target: Tensor, per_window: int, generator: torch.Generator,
                   size: int) -> tuple[Tensor, Tensor]:
    """``per_window`` labelled pixels of each window: their upsampled token features (n, D) and labels (n,)."""
    dense = F.interpolate(features, size=(size, size), mode="bilinear", align_corners=False)
    xs, ys = [], []
    for feats, labels in zip(dense, target, strict=True):
        labelled = (labels.flatten() != IGNORE).nonzero()[:, 0]
        if len(labelled) == 0:
            continue
        chosen = labelled[torch.randperm(len(labelled), generator=generator)[:per_window]]
        xs.append(feats.flatten(1)[:, chosen].T)
        ys.append(labels.flatten()[chosen])
    return torch.cat(xs), torch.cat(ys)


def probe_run(backbone: nn.Module, data: ResizedWindows, num_classes: int, segmentation: bool,
              pixels_per_window: int, weight_decays: tuple[float, ...], seed: int, metric: str) -> RunResult:
    """Linear probe of ``backbone``'s frozen features on ``data`` (its split and training windows)."""
    start = time.perf_counter()
    backbone.eval()
    size = data.input_size if segmentation else None
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = [], []
    for batch in data.batches("train"):
        feats, target = _features(backbone, batch["image"], segmentation), _target(batch)
        if segmentation:
            x, y = _pixel_samples(feats, target, pixels_per_window, generator, data.input_size)
        else:
            keep = target != IGNORE
            x, y = feats[keep], target[keep]
        train_x.append(x)
        train_y.append(y)
    cached = {split: [(_features(backbone, b["image"], segmentation), b) for b in data.batches(split)]
              for split in ("val", "test")}

    def confusions(probe: LinearProbe, split: str) -> np.ndarray:
        pairs = (_scored(_probe_logits(probe, f, size), b) for f, b in cached[split])
        return block_confusions(pairs, num_classes, data.windows_per_block(split), IGNORE)

    probe = fit_linear_probe(torch.cat(train_x), torch.cat(train_y), num_classes,
                             lambda p: scores(confusions(p, "val").sum(axis=0))[metric], weight_decays)
    return RunResult(probe.val_score, confusions(probe, "test"), probe.num_params, time.perf_counter() - start,
                     f"weight decay {probe.weight_decay:g}")


def _pairs(task: FinetuneTask, data: ResizedWindows, split: str) -> Iterator[tuple[Tensor, Tensor]]:
    with torch.no_grad():
        for batch in data.batches(split):
            yield _scored(task(batch["image"].to(task.device)).cpu(), batch)


@dataclass
class FinetuneRun:
    """A trained fine-tune, kept until model selection decides whether its test split is scored."""

    task: FinetuneTask
    data: ResizedWindows
    val_score: float
    seconds: float
    lr: float

    def result(self, num_classes: int) -> RunResult:
        blocks = block_confusions(_pairs(self.task, self.data, "test"), num_classes,
                                  self.data.windows_per_block("test"), IGNORE)
        trainable = parameter_report(self.task.model).trainable_params
        return RunResult(self.val_score, blocks, trainable, self.seconds, f"lr {self.lr:g}")


def finetune_run(make_task: Callable[[float], FinetuneTask], data: ResizedWindows, lr: float, epochs: int,
                 num_classes: int, metric: str, trainer_options: dict[str, Any]) -> FinetuneRun:
    """Fit ``make_task(lr)`` on ``data``'s training windows for ``epochs``; score the validation split."""
    start = time.perf_counter()
    task = make_task(lr)
    trainer = L.Trainer(max_epochs=epochs, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, **trainer_options)
    trainer.fit(task, datamodule=data)
    task.eval()
    val = block_confusions(_pairs(task, data, "val"), num_classes, data.windows_per_block("val"), IGNORE)
    return FinetuneRun(task, data, scores(val.sum(axis=0))[metric], time.perf_counter() - start, lr)
