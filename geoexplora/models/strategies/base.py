"""Strategy registry and the one interface every adaptation strategy follows.

A strategy is a config dataclass registered by name. ``apply(model)`` adapts a backbone in place (adapters
wrap existing layers, never copy the model) and sets ``requires_grad`` on the backbone's parameters only:
parameters under ``model.head`` (timm's classifier slot) are left as they are, and a task head kept outside
the backbone is never seen, so a head stays trainable. ``to_dict()``/``strategy_from_dict()`` round-trip
through JSON with the registry name under ``"name"``. New strategies (block expansion, RLRR) register the
same way and may insert blocks or reparametrise Linears inside ``apply``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import asdict, fields
from typing import Any, ClassVar

from torch import nn

from geoexplora.errors import GeoExploraError

_STRATEGIES: dict[str, type[StrategyConfig]] = {}


class StrategyConfig(ABC):
    """Base of strategy configs (subclasses are dataclasses). ``name`` is set by :func:`register_strategy`."""

    name: ClassVar[str]

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module:
        """Adapt ``model`` (a timm VisionTransformer) in place, set what trains, and return it."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


def register_strategy(name: str) -> Callable[[type[StrategyConfig]], type[StrategyConfig]]:
    """Class decorator: register a StrategyConfig dataclass under ``name``."""

    def register(cls: type[StrategyConfig]) -> type[StrategyConfig]:
        if name in _STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        cls.name = name
        _STRATEGIES[name] = cls
        return cls

    return register


def list_strategies() -> list[str]:
    return sorted(_STRATEGIES)


def create_strategy(name: str, **kwargs: Any) -> StrategyConfig:
    """The config of strategy ``name`` with ``kwargs``; unknown names or fields are GeoExploraErrors."""
    if name not in _STRATEGIES:
        raise GeoExploraError(f"unknown strategy {name!r}; known: {', '.join(list_strategies())}")
    cls = _STRATEGIES[name]
    unknown = set(kwargs) - {f.name for f in fields(cls)}
    if unknown:
        raise GeoExploraError(f"strategy {name!r} has no options {sorted(unknown)}")
    return cls(**kwargs)


def strategy_from_dict(data: dict[str, Any]) -> StrategyConfig:
    """Inverse of ``StrategyConfig.to_dict``."""
    data = dict(data)
    if "name" not in data:
        raise GeoExploraError(f"strategy config {data!r} has no 'name'")
    return create_strategy(data.pop("name"), **data)


def backbone_parameters(model: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    """The named parameters a strategy may touch: all but those under ``model.head``."""
    return ((n, p) for n, p in model.named_parameters() if not n.startswith("head."))


def set_trainable(model: nn.Module, keep: Callable[[str, nn.Parameter], bool]) -> None:
    """``requires_grad = keep(name, param)`` for every backbone parameter."""
    for name, param in backbone_parameters(model):
        param.requires_grad_(keep(name, param))


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters of every LayerNorm/GroupNorm/BatchNorm/RMSNorm in ``model``."""
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.RMSNorm)
    return {f"{m_name}.{p_name}".lstrip(".") for m_name, m in model.named_modules() if isinstance(m, norms)
            for p_name, _ in m.named_parameters(recurse=False)}


def validate_blocks(indices: Iterable[int], depth: int) -> list[int]:
    """Block indices (negative count from the end) as sorted non-negative ints; out of range is an error."""
    out = set()
    for i in indices:
        if not isinstance(i, int) or not -depth <= i < depth:
            raise GeoExploraError(f"block index {i!r} out of range for a model of depth {depth}")
        out.add(i % depth)
    return sorted(out)
