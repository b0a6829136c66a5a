"""Domain pre-training (ExPLoRA): continue a ViT's own self-supervised objective on unlabelled rasters.

:class:`PretrainTask` is a thin Lightning loop over the plain objectives in :mod:`geoexplora.models.ssl`.
It builds its model in ``setup``, because the bands and band statistics come from the data module
(``trainer.datamodule.band_names`` / ``.statistics``, see
:class:`~geoexplora.tasks.pretrain_data.UnlabelledRasterDataModule`): backbone -> strategy (what
trains) -> objective (heads, EMA teacher or decoder). Windows are normalised on the device with the
data module's statistics; windows without any valid pixel are dropped and counted.

The Lightning ``.ckpt`` (for ``--resume``) holds the whole module state: trainable and frozen weights,
the teacher's EMA tensors, the loss centres and the MAE decoder, plus optimiser and scheduler state.
The exported geoexplora checkpoint holds only the backbone's trained tensors (the student's for DINOv2).
"""

from __future__ import annotations

import logging
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from peft import LoraConfig, inject_adapter_in_model
from PIL import Image
from torch import nn

from geoexplora.bands import rgb_role
from geoexplora.data import BandStatistics, Normalizer
from geoexplora.errors import GeoExploraError
from geoexplora.models import BackboneConfig, create_backbone, create_strategy, parameter_report, read_state_dict
from geoexplora.models.checkpoint import CheckpointConfig, Preprocessing, TaskConfig
from geoexplora.models.lineage import make_lineage
from geoexplora.models.ssl import DINOv2Objective, MAEObjective
from geoexplora.transforms import MAEAugmentation, MultiCropAugmentation

logger = logging.getLogger(__name__)

Objective = Literal["dinov2", "mae"]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up from 0 over ``warmup_steps``, then cosine to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 0.5 * (1 + math.cos(math.pi * progress))


def cosine_value(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (``total_steps``): the weight-decay schedule."""
    progress = min(step / max(total_steps, 1), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise lr decay: embeddings 0, block i -> i + 1, the rest depth + 1."""
    local = name.split("backbone.", 1)[1] if "backbone." in name else ""
    if local.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed")):
        return 0
    if local.startswith("blocks."):
        return int(local.split(".")[1]) + 1
    return depth + 1


def rgb_indices(band_names: tuple[str, ...], sensor: str | None) -> list[int]:
    """Channels to show as red, green, blue in previews: by band role, else the first three bands."""
    roles = {rgb_role(b, sensor): i for i, b in enumerate(band_names)}
    if all(r in roles for r in ("red", "green", "blue")):
        return [roles["red"], roles["green"], roles["blue"]]
    return [min(i, len(band_names) - 1) for i in range(3)]


class PretrainTask(L.LightningModule):
    """ExPLoRA domain pre-training with the DINOv2 or MAE objective.

    Args:
        model: timm ViT name, with a weights tag when it matters (``vit_small_patch14_dinov2``,
            ``vit_base_patch16_224.mae``).
        weights: source weights: a local ``.safetensors``/``.pth`` file, ``timm`` (Hugging Face cache), or
            null for random init.
        sensor: sensor table for band roles (``sentinel2``, ``landsat7``, ...), or null.
        img_size: size the position table is resampled to (use the global crop size).
        embed: ``spectral`` (one token per patch) or ``group`` (one token per band group and patch).
        band_groups: for ``embed: group``: lists of band names.
        embed_dim: architecture override (tiny test models only).
        depth: architecture override (tiny test models only).
        num_heads: architecture override (tiny test models only).
        patch_size: architecture override (tiny test models only).
        strategy: what trains: ``explora`` (published), ``full``, ``lora``, ``linear``...
        unfreeze_blocks: for explora: fully trained blocks, negative from the end.
        lora_rank: LoRA rank (explora, lora).
        lora_alpha: LoRA alpha; updates are scaled by alpha / rank (explora, lora).
        lora_dropout: dropout on the LoRA input (explora, lora).
        train_patch_embed: for explora: train the patch embedding (null: when the bands are not RGB).
        objective: ``dinov2`` or ``mae``; a warning is logged when it is not the backbone's own.
        num_prototypes: DINOv2: prototypes of the DINO and iBOT heads (65536 published).
        head_hidden_dim: DINOv2: hidden width of the heads.
        head_bottleneck_dim: DINOv2: bottleneck width of the heads.
        global_crop_size: DINOv2: side of the 2 global crops (a multiple of the patch size).
        local_crop_size: DINOv2: side of the local crops (a multiple of the patch size).
        num_local_crops: DINOv2: local crops per window.
        teacher_temp: DINOv2: teacher temperature (start, end of warm-up).
        teacher_temp_warmup: DINOv2: share of training over which the teacher temperature warms up.
        momentum: DINOv2: teacher EMA momentum (start, end), cosine over training.
        koleo_weight: DINOv2: weight of the KoLeo regulariser.
        crop_size: MAE: side of the random resized crop fed to the encoder (a multiple of the patch size).
        mask_ratio: MAE: share of patches hidden from the encoder.
        decoder_dim: MAE: decoder width.
        decoder_depth: MAE: decoder blocks.
        decoder_heads: MAE: decoder attention heads.
        decoder_weights: MAE: an original MAE checkpoint (``.pth``) holding the decoder; then the decoder
            is frozen and gets LoRA of rank ``decoder_lora_rank`` (published: 8). Null: a fresh, trained decoder.
        decoder_lora_rank: MAE: LoRA rank on the pretrained decoder's attention.
        norm_pix_loss: MAE: reconstruct per-patch normalised pixels.
        preview_every_n_steps: MAE: save a reconstruction PNG under ``<out>/previews`` every N steps (0: never).
        lr: peak learning rate (after warm-up), for the whole batch over all devices.
        weight_decay: AdamW weight decay at the start (biases, norms and tokens get none).
        weight_decay_end: weight decay at the end, cosine from ``weight_decay`` (null: constant).
        warmup_steps: linear learning-rate warm-up steps; then cosine to 0 at the last step.
        layerwise_lr_decay: lr of block i is scaled by decay ** (depth - i) (null: no decay).
    """

    def __init__(
        self,
        model: str = "vit_small_patch14_dinov2",
        weights: str | None = None,
        sensor: str | None = None,
        img_size: int = 224,
        embed: Literal["spectral", "group"] = "spectral",
        band_groups: list[list[str]] | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        patch_size: int | None = None,
        strategy: str = "explora",
        unfreeze_blocks: list[int] | None = None,
        lora_rank: int = 64,
        lora_alpha: float = 1.0,
        lora_dropout: float = 0.0,
        train_patch_embed: bool | None = None,
        objective: Objective = "dinov2",
        num_prototypes: int = 4096,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        global_crop_size: int = 224,
        local_crop_size: int = 98,
        num_local_crops: int = 8,
        teacher_temp: tuple[float, float] = (0.04, 0.07),
        teacher_temp_warmup: float = 0.3,
        momentum: tuple[float, float] = (0.992, 1.0),
        koleo_weight: float = 0.1,
        crop_size: int = 224,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        decoder_weights: str | None = None,
        decoder_lora_rank: int = 8,
        norm_pix_loss: bool = True,
        preview_every_n_steps: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.04,
        weight_decay_end: float | None = 0.2,
        warmup_steps: int = 0,
        layerwise_lr_decay: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if objective not in ("dinov2", "mae"):
            raise GeoExploraError(f"objective must be 'dinov2' or 'mae', got {objective!r}")
        options = dict(unfreeze_blocks=unfreeze_blocks if unfreeze_blocks is not None else [-1], lora_rank=lora_rank,
                       lora_alpha=lora_alpha, lora_dropout=lora_dropout, train_patch_embed=train_patch_embed)
        accepted = {f.name for f in fields(create_strategy(strategy))}
        self.strategy_config = create_strategy(strategy, **{k: v for k, v in options.items() if k in accepted})
        self.objective_name = objective
        self.skipped_windows = 0
        self._momentum = 1.0
        self.backbone_config: BackboneConfig | None = None

    # --- model -------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Build the model from the data module's bands and statistics (before a resumed state is loaded)."""
        if self.backbone_config is not None:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None or getattr(datamodule, "statistics", None) is None:
            raise GeoExploraError("PretrainTask needs a data module with band_names and statistics (UnlabelledRasterDataModule)")
        self.build(datamodule.band_names, datamodule.statistics, datamodule.normalization)

    def build(self, band_names: tuple[str, ...] | list[str], statistics: BandStatistics, normalization: str = "standardize") -> None:
        """Backbone over ``band_names`` -> strategy -> objective and augmentation; normaliser from ``statistics``."""
        h = self.hparams
        self.backbone_config = BackboneConfig(
            model=h.model, weights=h.weights, bands=list(band_names), sensor=h.sensor, img_size=h.img_size,
            embed=h.embed, band_groups=h.band_groups, embed_dim=h.embed_dim, depth=h.depth, num_heads=h.num_heads,
            patch_size=h.patch_size,
        )
        source = self.backbone_config.source_objective
        if source is not None and source != self.objective_name:
            logger.warning("backbone %s was trained with %s, but pretraining continues with %s (allowed; "
                           "ExPLoRA continues the source objective)", h.model, source, self.objective_name)
        self.statistics = statistics
        self.normalizer = Normalizer(statistics, band_names, normalization)
        backbone = self.strategy_config.apply(create_backbone(self.backbone_config))
        if self.objective_name == "dinov2":
            self.objective = DINOv2Objective(
                backbone, num_prototypes=h.num_prototypes, head_hidden_dim=h.head_hidden_dim,
                head_bottleneck_dim=h.head_bottleneck_dim, teacher_temp=tuple(h.teacher_temp),
                teacher_temp_warmup=h.teacher_temp_warmup, momentum=tuple(h.momentum), koleo_weight=h.koleo_weight,
            )
            self.augment = MultiCropAugmentation(h.global_crop_size, h.local_crop_size, h.num_local_crops)
        else:
            self.objective = MAEObjective(backbone, h.decoder_dim, h.decoder_depth, h.decoder_heads, h.mask_ratio,
                                          h.norm_pix_loss)
            if h.decoder_weights:
                self._load_pretrained_decoder(h.decoder_weights, h.decoder_lora_rank)
            self.augment = MAEAugmentation(h.crop_size)
        logger.info("pretrain %s with %s: %s", h.model, self.strategy_config.name, parameter_report(backbone))

    def _load_pretrained_decoder(self, path: str, rank: int) -> None:
        """Load an MAE decoder, freeze it and put LoRA on its attention; fresh tensors (band count) still train."""
        fresh = self.objective.load_decoder_state_dict(read_state_dict(path))
        for root in self.objective.decoder_modules():
            root.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=r"decoder_blocks\.\d+\.attn\.qkv"),
                                self.objective)
        for name, p in self.objective.named_parameters():
            if name in fresh:
                p.requires_grad_(True)

    @property
    def backbone(self) -> nn.Module:
        return self.objective.student.backbone if self.objective_name == "dinov2" else self.objective.backbone

    def export_model(self) -> nn.Module:
        """The adapted backbone: its trainable tensors make up the geoexplora checkpoint."""
        return self.backbone

    def export_config(self) -> CheckpointConfig:
        """The checkpoint's sections: a ``pretrain`` task, the normalisation trained with, the source weights."""
        return CheckpointConfig(
            backbone=self.backbone_config,
            strategy=self.strategy_config,
            task=TaskConfig("pretrain", objective=self.objective_name, steps=int(self.global_step)),
            preprocessing=Preprocessing(tuple(self.backbone_config.bands), self.statistics, self.normalizer.mode,
                                        self.backbone_config.img_size),
            lineage=make_lineage(self.backbone_config),
        )

    # --- optimisation ------------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the trainable parameters; step-wise warm-up + cosine lr; optional layer-wise decay."""
        h = self.hparams
        depth = len(self.backbone.blocks)
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, p in self.objective.named_parameters():
            if not p.requires_grad:
                continue
            layer = layer_id(name, depth) if h.layerwise_lr_decay else depth + 1
            decays = p.ndim > 1 and not name.endswith(("cls_token", "reg_token", "mask_token", "pos_embed"))
            group = groups.setdefault((layer, decays), {
                "params": [], "lr": h.lr * (h.layerwise_lr_decay or 1.0) ** (depth + 1 - layer),
                "weight_decay": h.weight_decay if decays else 0.0, "wd_scale": float(decays),
            })
            group["params"].append(p)
        optimizer = torch.optim.AdamW(list(groups.values()), lr=h.lr, betas=(0.9, 0.999))
        total = self.total_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, h.warmup_steps, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @property
    def total_steps(self) -> int:
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise GeoExploraError("set trainer.max_steps (or trainer.max_epochs): the schedules need a run length")
        return int(steps)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Apply the weight-decay schedule for this step."""
        if self.hparams.weight_decay_end is None:
            return
        wd = cosine_value(self.global_step, self.total_steps, self.hparams.weight_decay, self.hparams.weight_decay_end)
        for group in self.optimizers().param_groups:
            group["weight_decay"] = wd * group["wd_scale"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the DINOv2 teacher's EMA update with this step's momentum."""
        super().optimizer_step(*args, **kwargs)
        if self.objective_name == "dinov2":
            self.objective.update_teacher(self._momentum)

    # --- steps -------------------------------------------------------------------------------------------

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Normalised images (B', C, H, W) and valid (B', H, W) without all-invalid windows; dates fold into B."""
        image, valid = batch["image"], batch["valid"]
        if image.ndim == 5:  # (B, T, C, H, W): each date is a sample of its own
            image, valid = image.flatten(0, 1), valid.flatten(0, 1)
        keep = valid.flatten(1).any(dim=1)
        self.skipped_windows += int((~keep).sum())
        if not keep.any():
            return None
        return self.normalizer(image[keep], valid[keep]), valid[keep]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        inputs = self._inputs(batch)
        if inputs is None:
            return None  # Lightning skips the optimiser step
        image, valid = inputs
        if self.objective_name == "dinov2":
            global_crops, local_crops = self.augment(image)
            out = self.objective(global_crops, local_crops, self.global_step, self.total_steps)
            self._momentum = out["momentum"]
            logs = {k: out[k] for k in ("dino_loss", "ibot_loss", "koleo_loss", "teacher_temp", "momentum")}
        else:
            image, valid = self.augment(image, valid)
            out = self.objective(image, valid)
            if not torch.isfinite(out["loss"]):
                raise GeoExploraError(f"MAE loss is {out['loss'].item()} at step {self.global_step}; "
                                      "lower the learning rate or check the input for inf pixels")
            self._save_preview(image, out)
            logs = {}
        lr = self.optimizers().param_groups[-1]["lr"]
        self.log("loss", out["loss"].detach(), prog_bar=True, batch_size=image.shape[0])
        self.log_dict({"lr": lr, **logs}, batch_size=image.shape[0])
        return out["loss"]

    def _save_preview(self, image: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        every = self.hparams.preview_every_n_steps
        if not every or self.global_step % every or not self.trainer.is_global_zero:
            return
        strip = self.objective.reconstruction_preview(
            image, out["pred"], out["mask"], rgb_indices(self.normalizer.band_names, self.hparams.sensor)
        )
        path = Path(self.trainer.default_root_dir) / "previews" / f"step-{self.global_step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(strip).save(path)

    def on_fit_end(self) -> None:
        report = logger.warning if self.skipped_windows else logger.info
        report("pretrain: skipped %d window(s) without any valid pixel", self.skipped_windows)
