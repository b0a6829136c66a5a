"""Domain pre-training (ExPLoRA): continue a ViT's own self-supervised objective on unlabelled rasters.

:class:`PretrainTask` is a thin Lightning loop over the plain objectives in :mod:`geoexplora.models.ssl`.
It builds its model in ``setup``, because the bands, band statistics and batch size come from the data
module (:class:`~geoexplora.tasks.pretrain_data.UnlabelledRasterDataModule`): backbone -> strategy (what
trains) -> objective (heads, EMA teacher or decoder). Windows are normalised on the device with the data
module's statistics; windows without any valid pixel are dropped and counted. Stacks (``data.temporal``)
with a temporal backbone (``embed: temporal``) stay (B, T, C, H, W) with their dates set on the backbone
for each step (multi-crop and MAE crops shared by all dates of a sample); with any other backbone each
date is an image of its own.

Optimisation follows facebookresearch/dinov2 ``train/train.py`` where it matters at small scale: AdamW,
warm-up + cosine lr, cosine weight decay, the patch embedding at ``patch_embed_lr_mult`` (0.2) of the lr,
the prototypes frozen for ``dinov2.freeze_prototypes_steps``, and gradients clipped per module (backbone,
each head, the rest) at ``trainer.gradient_clip_val`` rather than once over everything.

The Lightning ``.ckpt`` (for ``--resume``) holds the whole module state: trainable and frozen weights,
the teacher's EMA tensors, the loss centres and the MAE decoder, plus optimiser and scheduler state.
The exported geoexplora checkpoint holds only the backbone's trained tensors: for DINOv2 the EMA
*teacher*'s (``export: teacher``, as DINOv2 and ExPLoRA evaluate it), else the student's.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from PIL import Image
from torch import nn

from geoexplora.bands import rgb_role
from geoexplora.data import BandStatistics, Normalizer
from geoexplora.errors import GeoExploraError
from geoexplora.models import BackboneConfig, create_backbone, create_strategy, parameter_report, read_state_dict
from geoexplora.models.checkpoint import CheckpointConfig, Preprocessing, TaskConfig
from geoexplora.models.date_encoding import stack_dates
from geoexplora.models.lineage import make_lineage
from geoexplora.models.ssl import DINOv2Objective, DINOv2Options, MAEObjective, MAEOptions, forward_tokens
from geoexplora.models.ssl.teacher import eval_mode
from geoexplora.tasks.knn_probe import KNNProbe, KNNProbeOptions
from geoexplora.tasks.learning_monitor import LearningMonitor
from geoexplora.transforms import MAEAugmentation, MultiCropAugmentation

logger = logging.getLogger(__name__)

Objective = Literal["dinov2", "mae"]
#: Windows drawn (with their own seed) to initialise data-initialised DINOv2 heads, at least this many.
HEAD_INIT_WINDOWS = 64


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


def clip_group(name: str) -> str:
    """The gradient-clipping group of a parameter of the objective: DINOv2 clips each module on its own."""
    for group in ("dino_head", "ibot_head", "backbone"):
        if f"{group}." in name or name.startswith(group):
            return group
    return "rest"


def rgb_indices(band_names: tuple[str, ...], sensor: str | None) -> list[int]:
    """Channels to show as red, green, blue in previews: by band role, else the first three bands."""
    roles = {rgb_role(b, sensor): i for i, b in enumerate(band_names)}
    if all(r in roles for r in ("red", "green", "blue")):
        return [roles["red"], roles["green"], roles["blue"]]
    return [min(i, len(band_names) - 1) for i in range(3)]


class PretrainTask(L.LightningModule):
    """ExPLoRA domain pre-training with the DINOv2 or MAE objective.

    Args:
        backbone: the ViT (timm name with a weights tag when it matters, source weights, sensor, input
            size, patch embedding). Its bands come from the data module (``data.band_names``/``bands``);
            giving other bands here is an error.
        strategy: what trains: ``explora`` (published), ``full``, ``lora``, ``linear``...
        strategy_options: the strategy's options (``unfreeze_blocks``, ``lora_rank``, ``lora_alpha``,
            ``train_patch_embed``...); an option the strategy does not have is an error.
        objective: ``dinov2`` or ``mae``; a warning is logged when it is not the backbone's own.
        dinov2: options of the DINOv2 objective (heads, temperatures, centring, crops).
        mae: options of the MAE objective (mask ratio, decoder, loss).
        lr: peak learning rate (after warm-up), for the whole batch over all devices.
        weight_decay: AdamW weight decay at the start (biases, norms and tokens get none).
        weight_decay_end: weight decay at the end, cosine from ``weight_decay`` (null: constant).
        warmup_steps: linear learning-rate warm-up steps; then cosine to 0 at the last step.
        layerwise_lr_decay: lr of block i is scaled by decay ** (depth - i) (null: no decay).
        patch_embed_lr_mult: lr multiplier of the patch embedding (DINOv2: 0.2).
        monitor_every_n_steps: record the learning monitors every N steps (``monitors.csv``/``.png``).
        collapse_patience: steps of a uniform teacher before the collapse warning.
        export: DINOv2: export the EMA ``teacher`` (default) or the ``student``.
        probe: a labelled raster for a k-NN probe of the exported features every N steps (logged as
            ``probe_knn_accuracy``), or null.
    """

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        strategy: str = "explora",
        strategy_options: dict[str, Any] | None = None,
        objective: Objective = "dinov2",
        dinov2: DINOv2Options | None = None,
        mae: MAEOptions | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.04,
        weight_decay_end: float | None = 0.2,
        warmup_steps: int = 0,
        layerwise_lr_decay: float | None = None,
        patch_embed_lr_mult: float = 0.2,
        monitor_every_n_steps: int = 1,
        collapse_patience: int = 50,
        export: Literal["teacher", "student"] = "teacher",
        probe: KNNProbeOptions | None = None,
    ) -> None:
        super().__init__()
        if objective not in ("dinov2", "mae"):
            raise GeoExploraError(f"objective must be 'dinov2' or 'mae', got {objective!r}")
        if export not in ("teacher", "student"):
            raise GeoExploraError(f"export must be 'teacher' or 'student', got {export!r}")
        if lr <= 0 or patch_embed_lr_mult < 0 or warmup_steps < 0:
            raise GeoExploraError(f"lr ({lr}) must be positive, patch_embed_lr_mult ({patch_embed_lr_mult}) and "
                                  f"warmup_steps ({warmup_steps}) not negative")
        self.strategy_config = create_strategy(strategy, **(strategy_options or {}))
        self.requested_backbone = backbone or BackboneConfig()
        self.objective_name = objective
        self.dinov2_options = dinov2 or DINOv2Options()
        self.mae_options = mae or MAEOptions()
        self.lr, self.weight_decay, self.weight_decay_end = lr, weight_decay, weight_decay_end
        self.warmup_steps, self.layerwise_lr_decay, self.patch_embed_lr_mult = warmup_steps, layerwise_lr_decay, patch_embed_lr_mult
        self.monitor_every_n_steps, self.collapse_patience, self.export = monitor_every_n_steps, collapse_patience, export
        self.probe = probe
        # Plain values only: Lightning's .ckpt is read back with weights_only=True.
        self.save_hyperparameters({
            "backbone": self.requested_backbone.to_dict(), "strategy": self.strategy_config.to_dict(),
            "objective": objective, "dinov2": asdict(self.dinov2_options), "mae": asdict(self.mae_options),
            "lr": lr, "weight_decay": weight_decay, "weight_decay_end": weight_decay_end, "warmup_steps": warmup_steps,
            "layerwise_lr_decay": layerwise_lr_decay, "patch_embed_lr_mult": patch_embed_lr_mult, "export": export,
            "probe": asdict(probe) if probe else None,
        })
        self.skipped_windows = 0
        self._momentum = 1.0
        self.step_monitors: dict[str, float] = {}
        self.backbone_config: BackboneConfig | None = None
        self.temporal = False

    # --- model -------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Build the model from the data module's bands, statistics and batch size (before a resume loads)."""
        if self.backbone_config is not None:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None or getattr(datamodule, "statistics", None) is None:
            raise GeoExploraError("PretrainTask needs a data module with band_names and statistics (UnlabelledRasterDataModule)")
        crops = 2 * datamodule.batch_size * self.trainer.world_size
        self.build(datamodule.band_names, datamodule.statistics, datamodule.normalization, teacher_crops_per_step=crops,
                   num_dates=getattr(datamodule, "num_dates", None))

    def check_data(self, data: L.LightningDataModule) -> None:
        """Before the run: a temporal backbone pre-trains on a stack."""
        self._check_stack(getattr(data, "num_dates", None))

    def _check_stack(self, num_dates: int | None) -> None:
        if self.requested_backbone.embed == "temporal" and num_dates is None:
            raise GeoExploraError("model.backbone.embed: temporal pre-trains on a stack: set data.temporal: true "
                                  "(dated rasters of one place)")

    def build(self, band_names: tuple[str, ...] | list[str], statistics: BandStatistics,
              normalization: str = "standardize", teacher_crops_per_step: int | None = None,
              num_dates: int | None = None) -> None:
        """Backbone over ``band_names`` -> strategy -> objective and augmentation; normaliser from ``statistics``.

        ``num_dates``: T of the stack the data module reads (None: single images). A temporal backbone
        (``embed: temporal``) needs one and records ``num_frames = max(num_frames, T)``; other backbones
        see each date as an image of its own.
        """
        requested = self.requested_backbone
        default_bands = BackboneConfig().bands
        if requested.bands != default_bands and list(requested.bands) != list(band_names):
            raise GeoExploraError(f"model.backbone.bands {requested.bands} differ from the data's bands "
                                  f"{list(band_names)}: give the bands once, in data.band_names / data.bands")
        self.temporal = requested.embed == "temporal"
        frames = requested.num_frames
        self._check_stack(num_dates)
        if self.temporal:
            if self.probe is not None:
                raise GeoExploraError("model.probe (k-NN on single images) does not apply to a temporal backbone; "
                                      "remove it")
            frames = max(frames, num_dates)
            if num_dates == 1:
                logger.warning("pretrain: the stack has a single date; the temporal backbone learns no change over time")
        self.backbone_config = replace(requested, bands=list(band_names), num_frames=frames)
        source = self.backbone_config.source_objective
        if source is not None and source != self.objective_name:
            logger.warning("backbone %s was trained with %s, but pretraining continues with %s (allowed; "
                           "ExPLoRA continues the source objective)", requested.model, source, self.objective_name)
        self.statistics = statistics
        self.normalizer = Normalizer(statistics, band_names, normalization)
        backbone = self.strategy_config.apply(create_backbone(self.backbone_config))
        if self.objective_name == "dinov2":
            o = self.dinov2_options
            if teacher_crops_per_step is not None and (warning := o.small_batch_warning(teacher_crops_per_step)):
                logger.warning("pretrain: %s", warning)
            self.objective = DINOv2Objective(backbone, o, teacher_crops_per_step)
            self.augment = MultiCropAugmentation(o.global_crop_size, o.local_crop_size, o.num_local_crops)
            logger.info("pretrain: DINOv2 with %d prototypes, %s, %s heads", o.num_prototypes,
                        self.objective.centering, o.head_init)
        else:
            m = self.mae_options
            self.objective = MAEObjective(backbone, m.decoder_dim, m.decoder_depth, m.decoder_heads, m.mask_ratio,
                                          m.norm_pix_loss, time_masking=m.time_masking)
            if m.decoder_weights:
                self._load_pretrained_decoder(m.decoder_weights, m.decoder_lora_rank)
            self.augment = MAEAugmentation(m.crop_size)
        # Set once the DINOv2 heads are fitted to data; saved in the .ckpt so a resume does not refit them.
        self.register_buffer("heads_initialised", torch.tensor(False))
        logger.info("pretrain %s with %s: %s", requested.model, self.strategy_config.name, parameter_report(backbone))

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
        """The adapted backbone whose trainable tensors make up the checkpoint: for DINOv2 a copy holding
        the EMA teacher's tensors (unless ``export: student``), else the trained backbone itself."""
        if self.objective_name != "dinov2" or self.export == "student":
            return self.backbone
        teacher = copy.deepcopy(self.backbone)
        ema = self.objective.teacher.ema_tensors()
        with torch.no_grad():
            for name, p in teacher.named_parameters():
                if p.requires_grad:
                    p.copy_(ema[f"backbone.{name}"])
        return teacher

    def export_config(self) -> CheckpointConfig:
        """The checkpoint's sections: a ``pretrain`` task with the objective's options and which network was
        exported, the normalisation trained with, the source weights."""
        options = asdict(self.dinov2_options) if self.objective_name == "dinov2" else asdict(self.mae_options)
        options["export"] = self.export if self.objective_name == "dinov2" else "student"
        return CheckpointConfig(
            backbone=self.backbone_config,
            strategy=self.strategy_config,
            task=TaskConfig("pretrain", objective=self.objective_name, steps=int(self.global_step),
                            objective_options=options),
            preprocessing=Preprocessing(tuple(self.backbone_config.bands), self.statistics, self.normalizer.mode,
                                        self.backbone_config.img_size),
            lineage=make_lineage(self.backbone_config),
        )

    def configure_callbacks(self) -> list[L.Callback]:
        # The probe first: it adds its accuracy to the step's monitors before the learning monitor reads them.
        probe = [KNNProbe(self.probe)] if self.probe is not None else []
        return [*probe, LearningMonitor(self.monitor_every_n_steps, patience=self.collapse_patience)]

    @torch.no_grad()
    def probe_features(self, images: torch.Tensor) -> torch.Tensor:
        """Class tokens (N, D) of normalised images (N, C, h, w), resized to the pre-training input size, from
        the network the checkpoint holds (the EMA teacher for DINOv2 with ``export: teacher``)."""
        dinov2 = self.objective_name == "dinov2"
        size = self.dinov2_options.global_crop_size if dinov2 else self.mae_options.crop_size
        x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        if dinov2 and self.export == "teacher":
            return self.objective.teacher(self.objective.student, x)[0]
        with eval_mode(self.backbone):
            return forward_tokens(self.backbone, x)[0]

    # --- optimisation ------------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the trainable parameters; step-wise warm-up + cosine lr; optional layer-wise decay."""
        depth = len(self.backbone.blocks)
        groups: dict[tuple[int, bool, bool], dict[str, Any]] = {}
        for name, p in self.objective.named_parameters():
            if not p.requires_grad:
                continue
            layer = layer_id(name, depth) if self.layerwise_lr_decay else depth + 1
            decays = p.ndim > 1 and not name.endswith(("cls_token", "reg_token", "mask_token", "pos_embed"))
            patch_embed = ".patch_embed." in f".{name}"
            lr = self.lr * (self.layerwise_lr_decay or 1.0) ** (depth + 1 - layer)
            group = groups.setdefault((layer, decays, patch_embed), {
                "params": [], "lr": lr * (self.patch_embed_lr_mult if patch_embed else 1.0),
                "weight_decay": self.weight_decay if decays else 0.0, "wd_scale": float(decays),
            })
            group["params"].append(p)
        optimizer = torch.optim.AdamW(list(groups.values()), lr=self.lr, betas=(0.9, 0.999))
        total = self.total_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.warmup_steps, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @property
    def total_steps(self) -> int:
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise GeoExploraError("set trainer.max_steps (or trainer.max_epochs): the schedules need a run length")
        return int(steps)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradient norm of the backbone, each head and the rest separately (DINOv2's per-module clip)."""
        if not gradient_clip_val:
            return
        groups: dict[str, list[torch.Tensor]] = {}
        for name, p in self.objective.named_parameters():
            if p.grad is not None:
                groups.setdefault(clip_group(name), []).append(p)
        for params in groups.values():
            if gradient_clip_algorithm in (None, "norm"):
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)

    def on_train_start(self) -> None:
        """Fit data-initialised DINOv2 heads to the start backbone, once (a resumed run keeps its heads)."""
        if self.objective_name != "dinov2" or self.dinov2_options.head_init != "data" or bool(self.heads_initialised):
            return
        o = self.dinov2_options
        datamodule = self.trainer.datamodule
        count = max(HEAD_INIT_WINDOWS, math.ceil(max(o.num_prototypes, o.ibot_prototypes) / 2))
        batch = datamodule.sample_batch(count, seed=datamodule.seed + 1)
        inputs = self._inputs({k: v.to(self.device) for k, v in batch.items()}, count_skipped=False)
        if inputs is None or inputs[0].shape[0] * 2 < o.num_prototypes:
            raise GeoExploraError(f"too few windows with valid pixels ({0 if inputs is None else inputs[0].shape[0]} "
                                  f"of {count}) to initialise {o.num_prototypes} prototypes; lower "
                                  "model.dinov2.num_prototypes or check the rasters' nodata")
        global_crops, _ = self.augment(inputs[0])
        generator = torch.Generator().manual_seed(datamodule.seed)
        with stack_dates(self.backbone, inputs[2]):
            self.objective.initialise_heads(global_crops, generator)
        self._broadcast_heads()
        self.heads_initialised.fill_(True)
        logger.info("pretrain: DINOv2 heads fitted to %d windows of the start model", inputs[0].shape[0])

    @torch.no_grad()
    def _broadcast_heads(self) -> None:
        """Under DDP, give every process rank 0's fitted heads and teacher: the windows' augmentations may
        differ between processes, and DDP synchronises parameters only when it wraps the model."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        student = self.objective.student
        modules = [student.dino_head, self.objective.teacher] + ([student.ibot_head] if student.ibot_head else [])
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Freeze the prototypes during the first ``dinov2.freeze_prototypes_steps`` steps (DINOv2's
        ``cancel_gradients_last_layer``): AdamW skips parameters without a gradient, weight decay included."""
        if self.objective_name == "dinov2" and self.global_step < self.dinov2_options.freeze_prototypes_steps:
            for p in self.objective.prototype_parameters():
                p.grad = None

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Apply the weight-decay schedule for this step."""
        if self.weight_decay_end is None:
            return
        wd = cosine_value(self.global_step, self.total_steps, self.weight_decay, self.weight_decay_end)
        for group in self.optimizers().param_groups:
            group["weight_decay"] = wd * group["wd_scale"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the DINOv2 teacher's EMA update with this step's momentum."""
        super().optimizer_step(*args, **kwargs)
        if self.objective_name == "dinov2":
            self.objective.update_teacher(self._momentum)

    # --- steps -------------------------------------------------------------------------------------------

    def _inputs(self, batch: dict[str, Any], count_skipped: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """Normalised images (B', C, H, W), valid (B', H, W) and None, without all-invalid windows.

        Stacks: for a temporal backbone (B', T, C, H, W), (B', T, H, W) and their dates (B', T); for any
        other backbone the dates fold into B (each date an image of its own, dates None).
        """
        image, valid, days = batch["image"], batch["valid"], batch.get("dates")
        if image.ndim == 5 and not self.temporal:
            image, valid, days = image.flatten(0, 1), valid.flatten(0, 1), None
        keep = valid.flatten(1).any(dim=1)
        if count_skipped:
            self.skipped_windows += int((~keep).sum())
        if not keep.any():
            return None
        return self.normalizer(image[keep], valid[keep]), valid[keep], None if days is None else days[keep]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        inputs = self._inputs(batch)
        if inputs is None:
            return None  # Lightning skips the optimiser step
        image, valid, days = inputs
        if self.objective_name == "dinov2":
            global_crops, local_crops = self.augment(image)
            with stack_dates(self.backbone, days):
                out = self.objective(global_crops, local_crops, self.global_step, self.total_steps)
            self._momentum = out["momentum"]
            logs = {k: out[k] for k in ("dino_loss", "ibot_loss", "koleo_loss", "teacher_temp", "momentum")}
            logs.update(out["monitors"])
        else:
            image, valid = self.augment(image, valid)
            out = self.objective(image, valid, days)
            if not torch.isfinite(out["loss"]):
                raise GeoExploraError(f"MAE loss is {out['loss'].item()} at step {self.global_step}; "
                                      "lower the learning rate or check the input for inf pixels")
            self._save_preview(image, out)
            logs = {"mae_loss": out["loss"].detach()}
        lr = self.optimizers().param_groups[-1]["lr"]
        self.log("loss", out["loss"].detach(), prog_bar=True, batch_size=image.shape[0])
        self.log_dict({"lr": lr, **logs}, batch_size=image.shape[0])
        self.step_monitors = {"step": float(self.global_step), "loss": float(out["loss"].detach()),
                              **{k: float(v) for k, v in logs.items()}}
        return out["loss"]

    def _save_preview(self, image: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        every = self.mae_options.preview_every_n_steps
        if not every or self.global_step % every or not self.trainer.is_global_zero:
            return
        if image.ndim == 5:  # a stack: show its first date (date-major tokens: the first L of T*L)
            patches = out["pred"].shape[1] // image.shape[1]
            image, out = image[:, 0], {"pred": out["pred"][:, :patches], "mask": out["mask"][:, :patches]}
        strip = self.objective.reconstruction_preview(
            image, out["pred"], out["mask"], rgb_indices(self.normalizer.band_names, self.backbone_config.sensor)
        )
        path = Path(self.trainer.default_root_dir) / "previews" / f"step-{self.global_step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(strip).save(path)

    def on_fit_end(self) -> None:
        report = logger.warning if self.skipped_windows else logger.info
        report("pretrain: skipped %d window(s) without any valid pixel", self.skipped_windows)
