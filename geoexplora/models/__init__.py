"""Models: spectral/group/temporal patch embeddings, the timm ViT backbone factory, adaptation strategies,
parameter reports, typed checkpoints, :func:`load_model` and :func:`export_checkpoint`. Knows nothing of
rasters (band statistics are plain numbers keyed by band name)."""

from geoexplora.models.backbone import BackboneConfig, create_backbone, read_state_dict
from geoexplora.models.checkpoint import (
    CheckpointConfig,
    ClassInfo,
    Preprocessing,
    TaskConfig,
    make_classes,
    read_checkpoint,
    save_checkpoint,
)
from geoexplora.models.lineage import Lineage, make_lineage
from geoexplora.models.export import export_checkpoint, export_onnx
from geoexplora.models.geomodel import GeoModel, build_task_model, load_model
from geoexplora.models.params import ParamReport, parameter_report
from geoexplora.models.patch_embed import (
    GroupPatchEmbed,
    SpectralPatchEmbed,
    TemporalPatchEmbed,
    carry_rgb_kernel,
)
from geoexplora.models.date_encoding import DateEncoding, DateEncodingConfig, stack_dates
from geoexplora.models.qkv import QKVLinear, fuse_qkv, split_qkv
from geoexplora.models.strategies import (
    StrategyConfig,
    create_strategy,
    export_merged_state_dict,
    list_strategies,
    merge_lora,
    merge_rlrr,
    register_strategy,
    strategy_from_dict,
    unmerge_lora,
)

__all__ = [
    "BackboneConfig",
    "CheckpointConfig",
    "DateEncoding",
    "DateEncodingConfig",
    "ClassInfo",
    "GeoModel",
    "Lineage",
    "Preprocessing",
    "TaskConfig",
    "build_task_model",
    "export_checkpoint",
    "export_onnx",
    "load_model",
    "make_classes",
    "make_lineage",
    "read_checkpoint",
    "GroupPatchEmbed",
    "ParamReport",
    "QKVLinear",
    "SpectralPatchEmbed",
    "StrategyConfig",
    "TemporalPatchEmbed",
    "carry_rgb_kernel",
    "create_backbone",
    "create_strategy",
    "export_merged_state_dict",
    "fuse_qkv",
    "list_strategies",
    "merge_lora",
    "merge_rlrr",
    "parameter_report",
    "read_state_dict",
    "register_strategy",
    "save_checkpoint",
    "split_qkv",
    "stack_dates",
    "strategy_from_dict",
    "unmerge_lora",
]
