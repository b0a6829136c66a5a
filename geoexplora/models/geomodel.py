"""Load a checkpoint into a plain ``nn.Module`` with what it needs to run: :func:`load_model` -> :class:`GeoModel`.

No Lightning: the model is rebuilt from ``config.json`` alone (backbone from its source weights or its
parent checkpoint, strategy, task head) and the stored tensors are loaded strictly. ``tasks/`` builds its
head with :func:`build_task_model` too, so training and loading construct the same module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.backbone import BackboneConfig, create_backbone
from geoexplora.models.checkpoint import CheckpointConfig, ClassInfo, Preprocessing, TaskConfig, load_tensors, read_checkpoint
from geoexplora.models.lineage import SearchDirs, checkpoint_sha256, resolve_ref, search_path
from geoexplora.models.heads import SupervisedModel, create_head, segmentation_feature_blocks
from geoexplora.models.strategies import export_merged_state_dict, merge_rlrr

if TYPE_CHECKING:
    from geoexplora.data.stats import Normalizer
    from geoexplora.inference.predict import PredictSummary

logger = logging.getLogger(__name__)


def build_task_model(backbone: nn.Module, task: TaskConfig, num_classes: int) -> nn.Module:
    """The module a checkpoint of ``task`` holds: the backbone itself (``pretrain``), or backbone + head.

    For segmentation, ``task.head["feature_blocks"]`` is filled in with the blocks actually used.
    """
    if task.kind == "pretrain":
        return backbone
    options = task.head
    head_kind = options.get("segmentation_head", "progressive")
    blocks = segmentation_feature_blocks(len(backbone.blocks), head_kind, options.get("feature_blocks"))
    if task.kind == "segmentation":
        options["feature_blocks"] = blocks
    head = create_head(
        task.kind, backbone.embed_dim, num_classes, backbone.num_prefix_tokens, pool=options.get("pool", "cls"),
        segmentation_head=head_kind, num_levels=len(blocks), channels=options.get("decoder_channels", 128),
    )
    return SupervisedModel(backbone, head, blocks)


def fold_backbone(adapted: nn.Module, config: BackboneConfig) -> tuple[nn.Module, BackboneConfig]:
    """A plain timm backbone computing what ``adapted`` computes: LoRA and RLRR folded into the weights,
    q/k/v fused back, inserted (Block Expansion) blocks kept as ordinary blocks.

    ``adapted`` is changed (RLRR wrappers are replaced by merged layers). The returned config has no
    source weights and the folded depth.

    Raises:
        GeoExploraError: when the adapted model holds modules a plain ViT has no place for.
    """
    merge_rlrr(adapted)
    plain_config = replace(config, weights=None, depth=len(adapted.blocks))
    plain = create_backbone(plain_config)
    try:
        plain.load_state_dict(export_merged_state_dict(adapted), strict=True)
    except RuntimeError as e:
        raise GeoExploraError(f"the adapted backbone does not fold into plain weights ({str(e).splitlines()[0]})") from None
    return plain, plain_config


def load_merged_backbone(
    directory: str | Path, weights_dir: SearchDirs = None, allow_download: bool = False
) -> tuple[nn.Module, CheckpointConfig]:
    """A checkpoint's backbone with its adapters folded in (the base that fine-tuning starts from)."""
    geomodel = load_model(directory, weights_dir=weights_dir, allow_download=allow_download)
    plain, plain_config = fold_backbone(geomodel.backbone, geomodel.config.backbone)
    return plain, replace(geomodel.config, backbone=plain_config)


def source_backbone(directory: str | Path, config: CheckpointConfig, weights_dir: SearchDirs = None) -> BackboneConfig:
    """The checkpoint's backbone config with its source weights found (absolute path) and checked."""
    source = config.lineage.source_weights
    if source is None:
        return config.backbone
    weights = resolve_ref(source, Path(directory), search_path(weights_dir), "source weights")
    return replace(config.backbone, weights=str(weights.resolve()))


def _base(directory: Path, config: CheckpointConfig, search: list[Path], allow_download: bool) -> nn.Module:
    """The frozen base before the strategy: the parent's folded backbone, or the source weights."""
    lineage = config.lineage
    if lineage.stored == "full":
        return create_backbone(replace(config.backbone, weights=None))
    if lineage.parent is not None:
        parent = resolve_ref(lineage.parent, directory, search, "parent checkpoint", is_dir=True)
        return load_merged_backbone(parent, search, allow_download)[0]
    backbone = source_backbone(directory, config, search)
    if lineage.source_weights is not None:
        return create_backbone(backbone)
    if backbone.downloads and not allow_download:
        raise GeoExploraError(f"{directory / 'config.json'}: the base is {backbone.model} with {backbone.weights} "
                              "weights, which may need a download; pass --allow-download (finetune: --model.allow_download true), "
                              "or load an exported copy")
    if backbone.weights is None:
        logger.warning("%s: format-1 checkpoint over a random initialisation that it did not store; this load "
                       "is one random draw of its frozen base", directory)
    return create_backbone(backbone)


def build_model(directory: str | Path, config: CheckpointConfig, weights_dir: SearchDirs = None,
                allow_download: bool = False) -> nn.Module:
    """Rebuild the module ``config`` describes and load ``directory``'s tensors into it, strictly."""
    directory = Path(directory)
    base = _base(directory, config, search_path(weights_dir), allow_download)
    model = build_task_model(config.strategy.apply(base), config.task, len(config.classes))
    return load_tensors(directory, model, config.lineage.stored)


@dataclass
class GeoModel:
    """A loaded checkpoint: the model and what its inputs and outputs mean.

    Attributes:
        model: ``nn.Module`` in eval mode: images (B, C, H, W) normalised -> logits (B, K) or (B, K, H, W)
            (a :class:`~geoexplora.models.heads.SupervisedModel`); for ``pretrain`` the backbone itself.
        config: every section of the checkpoint's ``config.json``.
        directory: the checkpoint folder.
        sha256: sha256 of its ``model.safetensors`` (provenance of every output).
    """

    model: nn.Module
    config: CheckpointConfig
    directory: Path
    sha256: str

    @property
    def preprocessing(self) -> Preprocessing:
        return self.config.preprocessing

    @property
    def task(self) -> TaskConfig:
        return self.config.task

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        return self.config.classes

    @property
    def backbone(self) -> nn.Module:
        """The (adapted) timm ViT."""
        return self.model.backbone if isinstance(self.model, SupervisedModel) else self.model

    def normalizer(self) -> Normalizer:
        """The model's normaliser (:meth:`Preprocessing.normalizer`), on the model's device."""
        device = next(self.model.parameters()).device
        return self.preprocessing.normalizer().to(device)

    def to(self, device: str | torch.device) -> GeoModel:
        """Move the model to ``device`` (in place); returns self."""
        self.model.to(device)
        return self

    def predict_raster(self, raster: str | Path, out: str | Path, **options: Any) -> PredictSummary:
        """Predict ``raster`` into the class map ``out``: see :func:`geoexplora.inference.predict_with_model`.

        Options: ``probabilities`` (True or a path), ``bands`` (the file's band names), ``tile``, ``overlap``,
        ``batch_size``, ``device``, ``overwrite``, ``resume``, ``allow_no_crs``, ``progress``.
        """
        from geoexplora.inference.model_predict import predict_with_model  # the layer above models

        return predict_with_model(self, Path(raster), Path(out), **options)


def load_model(directory: str | Path, *, weights_dir: SearchDirs = None, allow_download: bool = False) -> GeoModel:
    """Load the checkpoint in ``directory`` (format 2 or 1) as a :class:`GeoModel`, in eval mode, on the CPU.

    Args:
        directory: checkpoint folder (``config.json`` + ``model.safetensors``).
        weights_dir: folder(s) searched for the source weights and the parent checkpoint after the
            checkpoint folder and the working directory (before ``$GEOEXPLORA_WEIGHTS``).
        allow_download: let a checkpoint over timm's pretrained weights fetch them (otherwise refused).

    Raises:
        GeoExploraError: one line naming the file and the fix for a missing folder, a bad or future
            ``config.json``, missing or changed source weights or parent, or tensors that do not fit.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise GeoExploraError(f"{directory}: no such checkpoint folder")
    config = read_checkpoint(directory)
    model = build_model(directory, config, weights_dir, allow_download)
    return GeoModel(model.eval(), config, directory, checkpoint_sha256(directory))
