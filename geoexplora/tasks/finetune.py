"""Supervised fine-tuning: one Lightning module for scene classification, multi-label and segmentation.

The module is thin: :class:`~geoexplora.models.heads.SupervisedModel` (backbone + head) computes logits,
the loss is cross-entropy (``ignore_index`` skipped), binary cross-entropy (multi-label), or for
segmentation :class:`~geoexplora.tasks.segmentation_loss.SegmentationLoss` (cross-entropy, optionally
class-weighted, optionally plus Dice), and one torchmetrics ``MetricCollection`` per task is cloned per
split. Classes, band statistics and normalisation come from the data module at ``setup`` unless given,
and go into the exported checkpoint.

An ``init_checkpoint`` (e.g. an ExPLoRA pre-training run) is rebuilt from its config, its adapters folded
into plain weights, and the fine-tuning strategy (published: ``lora`` rank 8) applied on top of that; the
exported checkpoint records that parent (path and sha256) in its lineage. Loading a checkpoint for
inference needs no Lightning: :func:`geoexplora.models.load_model`.

Stacks: a temporal backbone (``embed: temporal``) fine-tunes on a stack (``data.temporal: true``) with
one label map for it; batches carry ``dates`` (B, T), set on the backbone for each forward pass. The
tokens of all dates attend to each other in every block and are **averaged over the dates** before a
segmentation head (:mod:`geoexplora.models.temporal_pool` says why the mean); classification reads the
cls token, which attends over every date. A stack may have fewer dates than the model's ``num_frames``
(one date is allowed, with a warning), never more; ``data.num_dates`` samples that many of each stack's
dates (several stacks of different lengths: :mod:`geoexplora.data.multistack`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from geoexplora.errors import GeoExploraError
from geoexplora.data.stats import BandStatistics
from geoexplora.models import BackboneConfig, create_backbone, create_strategy
from geoexplora.models.date_encoding import stack_dates
from geoexplora.models.checkpoint import CheckpointConfig, Preprocessing, TaskConfig, make_classes, read_checkpoint
from geoexplora.models.geomodel import build_task_model, load_merged_backbone, source_backbone
from geoexplora.models.heads import SupervisedModel
from geoexplora.models.lineage import make_lineage
from geoexplora.tasks.segmentation_loss import SegmentationLoss, frequency_class_weights

Task = Literal["classification", "multilabel", "segmentation"]
TASKS = ("classification", "multilabel", "segmentation")
SPLITS = ("train", "val", "test")

logger = logging.getLogger(__name__)


def task_metrics(task: str, num_classes: int, ignore_index: int) -> MetricCollection:
    """The metrics of ``task``; non-scalar ones (confusion matrix, per-class IoU) are not logged per step."""
    k = num_classes
    metrics: dict[str, Metric]
    if task == "classification":
        metrics = {
            "accuracy": MulticlassAccuracy(k, top_k=1, average="micro", ignore_index=ignore_index),
            "top5_accuracy": MulticlassAccuracy(k, top_k=min(5, k), average="micro", ignore_index=ignore_index),
            "macro_f1": MulticlassF1Score(k, average="macro", ignore_index=ignore_index),
            "confusion_matrix": MulticlassConfusionMatrix(k, ignore_index=ignore_index),
        }
    elif task == "multilabel":
        metrics = {
            "mAP": MultilabelAveragePrecision(k, average="macro"),
            "micro_f1": MultilabelF1Score(k, average="micro"),
            "macro_f1": MultilabelF1Score(k, average="macro"),
        }
    else:
        metrics = {
            "mIoU": MulticlassJaccardIndex(k, average="macro", ignore_index=ignore_index),
            "per_class_iou": MulticlassJaccardIndex(k, average="none", ignore_index=ignore_index),
            "pixel_accuracy": MulticlassAccuracy(k, average="micro", ignore_index=ignore_index),
            "confusion_matrix": MulticlassConfusionMatrix(k, ignore_index=ignore_index),
        }
    return MetricCollection(metrics)


class FinetuneTask(L.LightningModule):
    """Fine-tune an adapted ViT with a new head for classification, multi-label or segmentation.

    Args:
        task: ``classification`` (one class per sample, ``label`` int64), ``multilabel`` (``label``
            multi-hot float (K,)) or ``segmentation`` (``mask`` int64 (H, W)).
        backbone: the backbone (timm model, source weights, bands); with ``init_checkpoint`` it may be
            omitted, and when given its model and bands must match the checkpoint's.
        init_checkpoint: a geoexplora checkpoint folder (e.g. ExPLoRA pre-training) to start from: its
            adapters are merged into the weights before ``strategy`` is applied. Fine-tuned checkpoints
            refer to it by path and sha256 (``geoexplora export`` makes a copy that does not).
        strategy: adaptation strategy (``lora``, ``linear``, ``full``, ``block-expansion``, ``rlrr``, ...).
        strategy_options: the strategy's options, e.g. ``{lora_rank: 8}``.
        classes: class names; default: the data module's.
        class_colors: one colour per class (``"#rrggbb"`` or ``[r, g, b]``), written into the checkpoint and
            the class maps; default a fixed palette.
        pool: classification pooling, ``cls`` token or ``mean`` of the patch tokens.
        segmentation_head: ``linear`` (last block, per patch), ``progressive`` (several blocks summed,
            x2 upsampling stages) or ``upernet`` (4 blocks: simple feature pyramid, pyramid pooling, FPN).
        feature_blocks: blocks feeding the segmentation head, shallowest first (``upernet``: 4 blocks,
            the first becomes the finest pyramid level); default the last (linear) or 4 evenly spaced.
        decoder_channels: width of the progressive or upernet segmentation head.
        loss: segmentation loss, ``ce`` (cross-entropy) or ``dice_ce`` (cross-entropy + soft Dice).
        class_weights: segmentation cross-entropy weights: one per class, ``frequency`` (from the
            training masks' class pixel counts, see :func:`frequency_class_weights`), or none.
        lr: AdamW learning rate (cosine decay over the run).
        weight_decay: AdamW weight decay.
        ignore_index: target value that is not scored (nodata / unlabelled pixels).
        allow_download: let ``init_checkpoint``'s source weights (``timm`` or ``torchgeo:...``, which that
            checkpoint names, not you) download when they are not cached; refused otherwise.
    """

    def __init__(
        self,
        task: Task = "classification",
        backbone: BackboneConfig | None = None,
        init_checkpoint: str | None = None,
        strategy: str = "lora",
        strategy_options: dict[str, Any] | None = None,
        classes: list[str] | None = None,
        class_colors: list[str | list[int]] | None = None,
        pool: Literal["cls", "mean"] = "cls",
        segmentation_head: Literal["linear", "progressive", "upernet"] = "progressive",
        feature_blocks: list[int] | None = None,
        decoder_channels: int = 128,
        loss: Literal["ce", "dice_ce"] = "ce",
        class_weights: Literal["frequency"] | list[float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        ignore_index: int = 255,
        allow_download: bool = False,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise GeoExploraError(f"task must be one of {TASKS}, got {task!r}")
        if task != "segmentation" and (loss != "ce" or class_weights is not None):
            raise GeoExploraError(f"loss and class_weights are segmentation options; a {task} task uses its own loss")
        self.save_hyperparameters()
        self.task = task
        self.init_checkpoint = init_checkpoint
        self.strategy_config = create_strategy(strategy, **(strategy_options or {}))
        self.backbone_config, self.backbone = self._build_backbone(backbone, init_checkpoint, allow_download)
        self.strategy_config.apply(self.backbone)
        self.head_options: dict[str, Any] = {"pool": pool, "segmentation_head": segmentation_head,
                                             "feature_blocks": feature_blocks, "decoder_channels": decoder_channels}
        self.lr, self.weight_decay, self.ignore_index = lr, weight_decay, ignore_index
        self.class_weights = class_weights
        given = None if class_weights in (None, "frequency") else class_weights
        self.criterion = SegmentationLoss(loss, given, ignore_index) if task == "segmentation" else None
        self.band_statistics: dict[str, Any] | None = None
        self.normalization: str | None = None
        self.window_size = self.backbone_config.img_size
        self.file_bands: list[str] | None = None
        self.classes: list[str] | None = None
        self.class_values: list[int] | None = None
        self.class_colors = class_colors
        self.model: SupervisedModel | None = None
        if classes is not None:
            self.build_head(classes)

    @staticmethod
    def _build_backbone(config: BackboneConfig | None, init_checkpoint: str | None,
                        allow_download: bool) -> tuple[BackboneConfig, nn.Module]:
        if init_checkpoint is None:
            if config is None:
                raise GeoExploraError("fine-tuning needs a backbone config or an init_checkpoint")
            return config, create_backbone(config)
        parent = read_checkpoint(init_checkpoint)
        source = parent.backbone
        if config is not None and (config.model, config.bands) != (source.model, source.bands):
            raise GeoExploraError(
                f"{init_checkpoint}: checkpoint backbone {source.model} on bands {source.bands} does not match "
                f"the configured {config.model} on bands {config.bands}"
            )
        backbone, _ = load_merged_backbone(init_checkpoint, allow_download=allow_download)
        return source_backbone(init_checkpoint, parent), backbone

    def build_head(self, classes: list[str]) -> None:
        """Create the head for ``classes`` and the metrics (once)."""
        if len(classes) < 2 and self.task != "multilabel":
            raise GeoExploraError(f"a {self.task} task needs at least 2 classes, got {classes}")
        if isinstance(self.class_weights, list) and len(self.class_weights) != len(classes):
            raise GeoExploraError(f"{len(self.class_weights)} class_weights for {len(classes)} classes {list(classes)}")
        self.classes = list(classes)
        self.model = build_task_model(self.backbone, TaskConfig(self.task, self.head_options), len(classes))
        metrics = task_metrics(self.task, len(classes), self.ignore_index)
        self.metrics = nn.ModuleDict({f"{split}_metrics": metrics.clone() for split in SPLITS})

    def setup(self, stage: str) -> None:
        """Take classes, band statistics and normalisation from the data module; check they fit."""
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if data is None:
            return
        self._check_dates(getattr(data, "num_dates", None))
        if tuple(data.band_names) != tuple(self.backbone_config.bands):
            raise GeoExploraError(
                f"data bands {list(data.band_names)} differ from the backbone's bands {self.backbone_config.bands}"
            )
        if self.model is None:
            self.build_head(list(data.classes))
        elif len(data.classes) > len(self.classes):
            raise GeoExploraError(f"data has {len(data.classes)} classes {list(data.classes)}, "
                                  f"more than the head's {len(self.classes)} {self.classes}")
        if self.init_checkpoint is not None:
            pretrained = read_checkpoint(self.init_checkpoint).preprocessing
            if pretrained.statistics is not None:
                data.adopt_band_statistics(pretrained.statistics.to_dict(), pretrained.normalization)
        self.band_statistics = data.band_statistics.to_dict()
        self.normalization = data.normalization
        values = getattr(data, "class_values", None)
        self.class_values = [int(v) for v in values] if values is not None and len(values) == len(self.classes) else None
        options = getattr(data, "options", {})
        if options.get("image") is not None or options.get("stacks") is not None:
            self.window_size = int(options["window_size"])
        self.file_bands = list(options["band_names"]) if options.get("band_names") else None
        if self.class_weights == "frequency" and self.criterion.class_weights is None:
            if not hasattr(data, "class_pixel_counts"):
                raise GeoExploraError(f"class_weights: frequency needs class pixel counts, which "
                                      f"{type(data).__name__} does not give; list the weights instead")
            counts = data.class_pixel_counts()
            self.criterion.class_weights = frequency_class_weights(counts)
            logger.info("class weights from the training masks' pixel counts %s: %s", counts.tolist(),
                        [round(w, 3) for w in self.criterion.class_weights.tolist()])

    def check_data(self, data: L.LightningDataModule) -> None:
        """Before the run: a stack for a temporal backbone (and only then), with at most ``num_frames`` dates."""
        self._check_dates(getattr(data, "num_dates", None))

    def _check_dates(self, num_dates: int | None) -> None:
        """A stack needs a temporal backbone whose date encoding takes its T dates; single images need none."""
        config = self.backbone_config
        temporal = config.embed == "temporal"
        if num_dates is None and temporal:
            raise GeoExploraError("the backbone is temporal (embed: temporal): give the data as a stack "
                                  "(data.temporal: true with the dated rasters as data.image)")
        if num_dates is not None and not temporal:
            raise GeoExploraError(f"the data is a stack of {num_dates} dates but the backbone takes single images; "
                                  "use a temporal backbone (model.backbone.embed: temporal)")
        if num_dates is not None and num_dates > config.num_frames:
            raise GeoExploraError(f"the stack has {num_dates} dates, more than the {config.num_frames} the model's "
                                  "date encoding supports (backbone.num_frames); give fewer dates "
                                  f"(data.num_dates: {config.num_frames})")
        if num_dates == 1:
            logger.warning("fine-tuning a temporal backbone on a stack of one date (allowed; nothing changes over time)")

    def forward(self, image: Tensor, dates: Tensor | None = None) -> Tensor:
        """image: (B, C, H, W), or stacks (B, T, C, H, W) with ``dates`` (B, T) days since 1970-01-01."""
        with stack_dates(self.model.backbone, dates):
            return self.model(image)

    def target(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["mask"] if self.task == "segmentation" else batch["label"]

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, target.float())
        if self.task == "segmentation":
            return self.criterion(logits, target)
        if (target == self.ignore_index).all():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index)

    def _step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        logits = self(batch["image"], batch.get("dates"))
        target = self.target(batch)
        loss = self.loss(logits, target)
        scores = logits.sigmoid() if self.task == "multilabel" else logits
        self.metrics[f"{split}_metrics"].update(scores.detach(), target.long() if self.task == "multilabel" else target)
        # val/test losses are epoch means: averaged over DDP processes (train logs each step's own)
        self.log(f"{split}/loss", loss, prog_bar=split != "test", batch_size=target.shape[0], sync_dist=split != "train")
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, split: str) -> None:
        results = self.metrics[f"{split}_metrics"].compute()
        # compute() already gathered every process's state: the values agree, the mean keeps Lightning quiet
        self.log_dict({f"{split}/{k}": v for k, v in results.items() if v.numel() == 1}, sync_dist=True)
        self.metrics[f"{split}_metrics"].reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def export_model(self) -> nn.Module:
        return self.model

    def export_config(self) -> CheckpointConfig:
        """The checkpoint's sections: task and head, preprocessing, classes and lineage (parent, weights)."""
        stats = None if self.band_statistics is None else BandStatistics.from_dict(self.band_statistics)
        return CheckpointConfig(
            backbone=self.backbone_config,
            strategy=self.strategy_config,
            task=TaskConfig(self.task, dict(self.head_options), self.ignore_index, steps=int(self.global_step)),
            preprocessing=Preprocessing(tuple(self.backbone_config.bands), stats, self.normalization or "standardize",
                                        self.window_size, None if self.file_bands is None else tuple(self.file_bands)),
            classes=make_classes(self.classes, self.class_values, self.class_colors),
            lineage=make_lineage(self.backbone_config, self.init_checkpoint),
        )
