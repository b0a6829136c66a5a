"""Baseline strategies: ``linear`` (frozen backbone, linear probing) and ``full`` (full fine-tuning)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from geoexplora.models.strategies.base import StrategyConfig, register_strategy, set_trainable


@register_strategy("linear")
@dataclass
class LinearProbeStrategy(StrategyConfig):
    """Every backbone parameter frozen; only a head trains."""

    def apply(self, model: nn.Module) -> nn.Module:
        set_trainable(model, lambda name, _: False)
        return model


@register_strategy("full")
@dataclass
class FullFinetuneStrategy(StrategyConfig):
    """Every backbone parameter trainable."""

    def apply(self, model: nn.Module) -> nn.Module:
        set_trainable(model, lambda name, _: True)
        return model
