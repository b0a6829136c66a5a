"""Tiny checkpoints for CLI tests: a fine-tuned segmentation one over generated source weights, a temporal one."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from geoexplora.data import GeoRasterDataset, compute_band_statistics
from geoexplora.models import (
    BackboneConfig,
    CheckpointConfig,
    Preprocessing,
    TaskConfig,
    create_backbone,
    create_strategy,
    save_checkpoint,
)
from geoexplora.tasks.finetune import FinetuneTask

TINY_VIT = dict(embed_dim=64, depth=2, num_heads=4, patch_size=8, img_size=32)


def write_segmentation_checkpoint(root: Path, scene: Path, bands: list[str]) -> tuple[Path, Path]:
    """Seeded random ViT weights (``root/vit.safetensors``) and a 3-class linear-head segmentation checkpoint
    (``root/ckpt``) over them, normalised with ``scene``'s band statistics. Returns (weights, checkpoint)."""
    torch.manual_seed(0)
    weights = root / "vit.safetensors"
    save_file(timm.create_model("vit_base_patch16_224", num_classes=0, **TINY_VIT).state_dict(), weights)
    task = FinetuneTask(task="segmentation", backbone=BackboneConfig(model="vit_base_patch16_224",
                        weights=str(weights), bands=bands, **TINY_VIT), classes=["a", "b", "c"],
                        segmentation_head="linear")
    task.band_statistics = compute_band_statistics(GeoRasterDataset(scene), num_windows=4, window_size=32).to_dict()
    task.normalization = "standardize"
    return weights, save_checkpoint(root / "ckpt", task.export_model(), task.export_config())


def write_temporal_checkpoint(root: Path, scene: Path, bands: list[str], num_frames: int = 3) -> Path:
    """A seeded random tiny temporal ViT (date encoding for ``num_frames`` dates) saved as a pre-training
    checkpoint (``root/temporal_ckpt``), normalised with ``scene``'s band statistics, for ``embed --stack``."""
    torch.manual_seed(0)
    config = BackboneConfig(model="vit_base_patch16_224", bands=bands, embed="temporal", num_frames=num_frames,
                            **TINY_VIT)
    strategy = create_strategy("full")
    model = strategy.apply(create_backbone(config))
    stats = compute_band_statistics(GeoRasterDataset(scene), num_windows=4, window_size=32)
    preprocessing = Preprocessing(tuple(bands), stats, "standardize", TINY_VIT["img_size"])
    return save_checkpoint(root / "temporal_ckpt", model, CheckpointConfig(config, strategy, TaskConfig("pretrain"),
                                                                            preprocessing))
