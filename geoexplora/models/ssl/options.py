"""Typed options of the two pre-training objectives: what a recipe's ``model.dinov2`` / ``model.mae`` hold.

Each field says what it does and how it departs from the published recipe; ``__post_init__`` rejects bad
values with the value quoted. Both round-trip through JSON (``dataclasses.asdict``), so a checkpoint can
record the options it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from geoexplora.errors import GeoExploraError

Centering = Literal["auto", "centering", "sinkhorn_knopp"]
HeadInit = Literal["data", "random"]


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    value = tuple(float(v) for v in value)
    if len(value) != 2 or not low <= value[0] <= high or not low <= value[1] <= high:
        raise GeoExploraError(f"{name} must be two numbers in [{low}, {high}], got {list(value)}")
    return value  # type: ignore[return-value]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise GeoExploraError(f"{name} must be positive, got {value!r}")


@dataclass
class DINOv2Options:
    """The DINOv2 objective (DINO class-token loss + iBOT masked-patch loss + KoLeo) and its multi-crop.

    Defaults are for continued pre-training at the small batches of one GPU or a CPU (8-64 windows per
    step), measured on the Landsat 7 NC scene with DINOv2 ViT-S/14 (``bench/dinov2_regime.md``); the
    published DINOv2 values are given where they differ.

    Attributes:
        num_prototypes: K of the DINO head. Published 65,536 for batches of 1,024; with data-initialised
            heads a K near the number of teacher crops per step keeps every prototype in use.
        ibot_num_prototypes: K of a separate iBOT head (default: ``num_prototypes``).
        ibot_separate_head: a separate iBOT head (DINOv2's ViT-L/g configs) or the DINO head shared.
        head_hidden_dim: hidden width of the head MLPs (2048 published).
        head_bottleneck_dim: bottleneck compared with the prototypes (256 published).
        head_layers: Linear layers in the head MLPs (3 published).
        head_init: ``data`` (deviation from DINOv2: before the first step the heads standardise their
            input with the start backbone's feature statistics and take their prototypes from real
            windows, see :class:`~geoexplora.models.ssl.DINOHead`) or ``random`` (DINOv2's).
        centering: teacher targets by EMA ``centering`` (DINOv2's default), ``sinkhorn_knopp`` (DINOv2's
            large-scale configs), or ``auto``: Sinkhorn-Knopp when a step has at least K teacher crops over
            all devices (it spreads M crops evenly over K prototypes, so with M < K it must blur every
            target), else centring.
        student_temp: student softmax temperature (0.1 published).
        teacher_temp: teacher temperature at the start and the end of its warm-up. Published 0.04 -> 0.07;
            here 0.04 throughout: with data-initialised heads the warm-up to 0.07 took the teacher's entropy
            from 0.27 to 0.62 of ln K within 40 steps at batch 16, against 0.37 at a fixed 0.04.
        teacher_temp_warmup: share of the run over which the teacher temperature warms up.
        momentum: teacher EMA momentum (start, end), cosine over the run. Published 0.992 -> 1 for runs of
            100k+ steps; here 0.998 -> 1: over 150 steps at batch 16 the slower teacher kept the head's
            logit spread at 0.155 (from 0.199) where 0.992 let it fall to 0.079.
        dino_weight, ibot_weight, koleo_weight: loss weights (1, 1, 0.1 published).
        mask_ratio: range of the iBOT block-mask ratio per masked crop (0.1-0.5 published).
        mask_probability: share of global crops that are masked (0.5 published); only student globals.
        freeze_prototypes_steps: steps at the start during which the prototypes (the weight-normed last
            layer) get no update (DINOv2 freezes it for the first epoch, 1,250 steps; here 50, so the
            data-initialised prototypes stay put while the rest of the head and the backbone adapt).
        drop_path_rate: stochastic depth of the student's blocks (the teacher runs without). DINOv2 uses
            0.1-0.4 when every block trains; here the default is 0 because in ExPLoRA all but one block
            are frozen and dropping their residual branches only adds noise to the frozen features.
        global_crop_size, local_crop_size: sides of the 2 global and the local crops (multiples of the
            patch size; 224 / 98 published).
        num_local_crops: local crops per window (8 published).
    """

    num_prototypes: int = 64
    ibot_num_prototypes: int | None = None
    ibot_separate_head: bool = True
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    head_init: HeadInit = "data"
    centering: Centering = "auto"
    student_temp: float = 0.1
    teacher_temp: tuple[float, float] = (0.04, 0.04)
    teacher_temp_warmup: float = 0.3
    momentum: tuple[float, float] = (0.998, 1.0)
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = 0.5
    freeze_prototypes_steps: int = 50
    drop_path_rate: float = 0.0
    global_crop_size: int = 224
    local_crop_size: int = 98
    num_local_crops: int = 8

    def __post_init__(self) -> None:
        for name in ("num_prototypes", "head_hidden_dim", "head_bottleneck_dim", "head_layers", "global_crop_size",
                     "local_crop_size"):
            if int(getattr(self, name)) < 1:
                raise GeoExploraError(f"dinov2.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.ibot_num_prototypes is not None and self.ibot_num_prototypes < 1:
            raise GeoExploraError(f"dinov2.ibot_num_prototypes must be at least 1, got {self.ibot_num_prototypes!r}")
        if self.head_init not in ("data", "random"):
            raise GeoExploraError(f"dinov2.head_init must be 'data' or 'random', got {self.head_init!r}")
        if self.centering not in ("auto", "centering", "sinkhorn_knopp"):
            raise GeoExploraError(f"dinov2.centering must be auto, centering or sinkhorn_knopp, got {self.centering!r}")
        _check_positive(**{"dinov2.student_temp": self.student_temp})
        self.teacher_temp = _check_range("dinov2.teacher_temp", self.teacher_temp, 1e-4, 10.0)
        self.momentum = _check_range("dinov2.momentum", self.momentum, 0.0, 1.0)
        self.mask_ratio = _check_range("dinov2.mask_ratio", self.mask_ratio, 0.0, 1.0)
        if not 0 <= self.teacher_temp_warmup <= 1 or not 0 <= self.mask_probability <= 1:
            raise GeoExploraError(f"dinov2.teacher_temp_warmup ({self.teacher_temp_warmup}) and "
                                  f"dinov2.mask_probability ({self.mask_probability}) must be in [0, 1]")
        if min(self.dino_weight, self.ibot_weight, self.koleo_weight) < 0:
            raise GeoExploraError("dinov2 loss weights must not be negative, got dino "
                                  f"{self.dino_weight}, ibot {self.ibot_weight}, koleo {self.koleo_weight}")
        if self.num_local_crops < 0 or self.freeze_prototypes_steps < 0 or not 0 <= self.drop_path_rate < 1:
            raise GeoExploraError(f"dinov2.num_local_crops ({self.num_local_crops}) and freeze_prototypes_steps "
                                  f"({self.freeze_prototypes_steps}) must be >= 0, drop_path_rate "
                                  f"({self.drop_path_rate}) in [0, 1)")

    @property
    def ibot_prototypes(self) -> int:
        """K of the head that scores the masked patches."""
        return (self.ibot_num_prototypes or self.num_prototypes) if self.ibot_separate_head else self.num_prototypes

    def resolve_centering(self, teacher_crops_per_step: int) -> Literal["centering", "sinkhorn_knopp"]:
        """The centring rule for M = ``teacher_crops_per_step`` (global crops x batch x devices)."""
        if self.centering != "auto":
            return self.centering
        return "sinkhorn_knopp" if teacher_crops_per_step >= self.num_prototypes else "centering"

    def small_batch_warning(self, teacher_crops_per_step: int) -> str | None:
        """A warning when a step's M teacher crops are far (8x) below K, None otherwise."""
        if teacher_crops_per_step * 8 > self.num_prototypes:
            return None
        return (f"each step gives the teacher {teacher_crops_per_step} crops for {self.num_prototypes} "
                "prototypes: most prototypes get no target; lower model.dinov2.num_prototypes (about the crops "
                "per step) or raise the batch")


@dataclass
class MAEOptions:
    """The MAE objective: hide most patches, reconstruct their pixels with a light decoder.

    Attributes:
        crop_size: side of the random resized crop fed to the encoder (a multiple of the patch size).
        mask_ratio: share of patches hidden from the encoder (0.75 published).
        decoder_dim, decoder_depth, decoder_heads: decoder width, blocks and heads (512, 8, 16 published).
        decoder_weights: an original MAE checkpoint (``.pth`` / ``.safetensors``) holding the decoder; then
            the decoder is frozen and gets LoRA of rank ``decoder_lora_rank`` (ExPLoRA: 8). Null: a fresh
            decoder that trains.
        decoder_lora_rank: LoRA rank on the pretrained decoder's attention.
        norm_pix_loss: reconstruct per-patch normalised pixels. Off by default (deviation from MAE's
            paper, which found it better): the public MAE checkpoints that ship a decoder
            (``mae_pretrain_vit_*_full``) were trained without it, so a loaded decoder predicts raw
            normalised pixels.
        preview_every_n_steps: save a reconstruction PNG under ``<out>/previews`` every N steps (0: never).
        time_masking: stacks with a temporal backbone: ``independent`` (any token of any date) or
            ``consistent`` (the same patches hidden at every date, SatMAE's ``same_mask``).
    """

    crop_size: int = 224
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_weights: str | None = None
    decoder_lora_rank: int = 8
    norm_pix_loss: bool = False
    preview_every_n_steps: int = 0
    time_masking: Literal["independent", "consistent"] = "independent"

    def __post_init__(self) -> None:
        if self.time_masking not in ("independent", "consistent"):
            raise GeoExploraError(f"mae.time_masking must be 'independent' or 'consistent', got {self.time_masking!r}")
        if not 0 < self.mask_ratio < 1:
            raise GeoExploraError(f"mae.mask_ratio must be in (0, 1), got {self.mask_ratio!r}")
        for name in ("crop_size", "decoder_dim", "decoder_depth", "decoder_heads", "decoder_lora_rank"):
            if int(getattr(self, name)) < 1:
                raise GeoExploraError(f"mae.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            raise GeoExploraError(f"mae.decoder_dim {self.decoder_dim} must be divisible by decoder_heads "
                                  f"{self.decoder_heads} and by 4 (sine-cosine positions)")
        if self.preview_every_n_steps < 0:
            raise GeoExploraError(f"mae.preview_every_n_steps must be >= 0, got {self.preview_every_n_steps!r}")
