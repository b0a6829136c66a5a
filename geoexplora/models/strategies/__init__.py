"""Adaptation strategies: a registry of config dataclasses with ``apply(model) -> model``."""

from geoexplora.models.strategies.base import (
    StrategyConfig,
    create_strategy,
    list_strategies,
    register_strategy,
    strategy_from_dict,
)
from geoexplora.models.strategies.block_expansion import BlockExpansionStrategy
from geoexplora.models.strategies.baselines import FullFinetuneStrategy, LinearProbeStrategy
from geoexplora.models.strategies.explora import ExploraStrategy
from geoexplora.models.strategies.lora import (
    LoraStrategy,
    export_merged_state_dict,
    merge_lora,
    unmerge_lora,
)
from geoexplora.models.strategies.rlrr import RLRRLinear, RLRRNorm, RLRRStrategy, merge_rlrr

__all__ = [
    "BlockExpansionStrategy",
    "RLRRLinear",
    "RLRRNorm",
    "RLRRStrategy",
    "merge_rlrr",
    "ExploraStrategy",
    "FullFinetuneStrategy",
    "LinearProbeStrategy",
    "LoraStrategy",
    "StrategyConfig",
    "create_strategy",
    "export_merged_state_dict",
    "list_strategies",
    "merge_lora",
    "register_strategy",
    "strategy_from_dict",
    "unmerge_lora",
]
