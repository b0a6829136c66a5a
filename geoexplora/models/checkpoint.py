"""Adapter-only checkpoints: ``model.safetensors`` (trained tensors only) + ``config.json``.

``config.json`` holds ``{"backbone": BackboneConfig.to_dict(), "strategy": StrategyConfig.to_dict(),
"extra": {...}}``; ``extra`` is the caller's (band statistics, task, classes) and is stored as given.
Loading rebuilds the backbone (loading the source weights it names), applies the strategy, optionally
lets the caller wrap it (a task module with its head), then loads the trained tensors strictly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.backbone import BackboneConfig, create_backbone
from geoexplora.models.strategies import StrategyConfig, strategy_from_dict

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that train: every parameter with ``requires_grad`` (adapters, unfrozen parts, head)."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(directory: str | Path, model: nn.Module, config: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` (trainable tensors only) and ``config.json`` into ``directory``.

    Args:
        directory: created if needed; files are written under temporary names and renamed when complete.
        model: the adapted backbone, or a module wrapping it (keys are relative to this module).
        config: ``{"backbone": BackboneConfig, "strategy": StrategyConfig, "extra": dict}`` (configs may
            also be given as their ``to_dict()``; ``extra`` is optional and must be JSON-serialisable).
    """
    unknown = set(config) - {"backbone", "strategy", "extra"}
    if unknown or not {"backbone", "strategy"} <= set(config):
        raise GeoExploraError(
            f"checkpoint config needs 'backbone' and 'strategy' (and optional 'extra'), got {sorted(config)}"
        )
    backbone = config["backbone"]
    strategy = config["strategy"]
    if not isinstance(backbone, BackboneConfig):
        backbone = BackboneConfig.from_dict(backbone)
    if not isinstance(strategy, StrategyConfig):
        strategy = strategy_from_dict(strategy)
    payload = {
        "backbone": backbone.to_dict(),
        "strategy": strategy.to_dict(),
        "extra": config.get("extra") or {},
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_tmp, config_tmp = directory / f".{WEIGHTS_NAME}.tmp", directory / f".{CONFIG_NAME}.tmp"
    save_file(trainable_state_dict(model), weights_tmp)
    config_tmp.write_text(json.dumps(payload, indent=2))
    os.replace(weights_tmp, directory / WEIGHTS_NAME)
    os.replace(config_tmp, directory / CONFIG_NAME)
    return directory


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` parsed into ``{"backbone": BackboneConfig, "strategy": StrategyConfig, "extra": dict}``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise GeoExploraError(f"{path}: checkpoint config not found")
    try:
        data = json.loads(path.read_text())
        return {
            "backbone": BackboneConfig.from_dict(data["backbone"]),
            "strategy": strategy_from_dict(data["strategy"]),
            "extra": data.get("extra", {}),
        }
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise GeoExploraError(f"{path}: not a geoexplora checkpoint config ({type(e).__name__}: {e})") from None
    except GeoExploraError as e:
        raise GeoExploraError(f"{path}: {e}") from None


def load_trained_tensors(directory: str | Path, model: nn.Module) -> nn.Module:
    """Load a checkpoint's ``model.safetensors`` into ``model`` (rebuilt from its config), strictly.

    Every parameter of ``model`` that trains must be in the file and nothing else; shapes must match.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise GeoExploraError(f"{path}: checkpoint weights not found")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise GeoExploraError(f"{path}: not a safetensors file ({e})") from None
    expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [n for n in set(expected) & set(tensors) if expected[n].shape != tensors[n].shape]
    if missing or unexpected or mismatched:
        raise GeoExploraError(
            f"{path}: does not fit the model its config describes "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatch {mismatched[:3]})"
        )
    model.load_state_dict(tensors, strict=False)
    return model


def load_checkpoint(
    directory: str | Path,
    wrap: Callable[[nn.Module, dict[str, Any]], nn.Module] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from and load its trained tensors strictly.

    Args:
        directory: a directory written by :func:`save_checkpoint`.
        wrap: ``wrap(backbone, config) -> module`` rebuilding the module that was saved around the backbone
            (e.g. a task module with its head); None when the backbone itself was saved.

    Returns:
        (model, config) with config as in :func:`read_checkpoint_config`.
    """
    config = read_checkpoint_config(directory)
    model = config["strategy"].apply(create_backbone(config["backbone"]))
    if wrap is not None:
        model = wrap(model, config)
    return load_trained_tensors(directory, model), config
