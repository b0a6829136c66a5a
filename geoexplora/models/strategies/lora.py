"""LoRA on the split Q and V projections (peft), merge/unmerge, merged export, and the ``lora`` strategy.

Adapters are injected with ``peft.inject_adapter_in_model`` on ``blocks.<i>.attn.qkv.q`` and
``blocks.<i>.attn.qkv.v`` after :func:`~geoexplora.models.qkv.split_qkv`; K never gets an adapter. Keys:
``blocks.<i>.attn.qkv.q.base_layer.weight``, ``...q.lora_A.default.weight`` (r, D),
``...q.lora_B.default.weight`` (D, r). LoRA B starts at zero, so an adapted model starts as the base model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.qkv import QKVLinear, split_qkv
from geoexplora.models.strategies.base import StrategyConfig, register_strategy, set_trainable


def inject_qv_lora(model: nn.Module, blocks: Iterable[int], rank: int, alpha: float, dropout: float) -> nn.Module:
    """Split qkv and put peft LoRA (scaling alpha / rank) on q and v of the given blocks, in place."""
    split_qkv(model)
    targets = [f"blocks.{i}.attn.qkv.{p}" for i in blocks for p in ("q", "v")]
    if targets:
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
        inject_adapter_in_model(config, model)
    return model


def is_lora_parameter(name: str) -> bool:
    return ".lora_" in name


def _lora_layers(model: nn.Module) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA adapter into its base weight (peft safe merge: refuses NaN/inf), in place."""
    for layer in _lora_layers(model):
        try:
            layer.merge(safe_merge=True)
        except ValueError as e:
            raise GeoExploraError(f"cannot merge LoRA: {str(e).splitlines()[0]}") from None
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract merged LoRA adapters from their base weights again, in place."""
    for layer in _lora_layers(model):
        layer.unmerge()
    return model


@torch.no_grad()
def export_merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """timm-named state dict with LoRA folded in and q, k, v fused back into ``qkv``; model untouched.

    For the spectral embedding it loads into ``timm.create_model(name, in_chans=C, num_classes=0)``.
    """
    state: dict[str, torch.Tensor] = {}
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    for name, layer in layers.items():
        weight = layer.base_layer.weight.detach().clone()
        if not layer.merged:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    weight += layer.get_delta_weight(adapter)
        state[f"{name}.weight"] = weight
        if layer.base_layer.bias is not None:
            state[f"{name}.bias"] = layer.base_layer.bias.detach().clone()
    for key, value in model.state_dict().items():
        if not any(key.startswith(f"{name}.") for name in layers):
            state[key] = value.detach().clone()
    for name, module in model.named_modules():
        if isinstance(module, QKVLinear):
            for kind in ("weight", "bias"):
                parts = [state.pop(f"{name}.{p}.{kind}", None) for p in ("q", "k", "v")]
                if parts[0] is not None:
                    state[f"{name}.{kind}"] = torch.cat(parts)
    return state


@register_strategy("lora")
@dataclass
class LoraStrategy(StrategyConfig):
    """LoRA on Q and V of every block; everything else in the backbone frozen (optionally not the patch embedding).

    Attributes:
        lora_rank: r of every adapter (published task fine-tuning: 8).
        lora_alpha: LoRA alpha; the update is scaled by alpha / r (peft's default pairing r=8, alpha=8).
        lora_dropout: dropout on the adapter input.
        train_patch_embed: also train the patch embedding (all of ``patch_embed``), e.g. as the control that
            separates the effect of a trained multi-spectral stem from ExPLoRA's; ``None`` counts as False
            (the published LoRA fine-tune keeps it frozen).
    """

    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    train_patch_embed: bool | None = False

    def __post_init__(self) -> None:
        check_lora_options(self.lora_rank, self.lora_alpha, self.lora_dropout)

    def apply(self, model: nn.Module) -> nn.Module:
        inject_qv_lora(model, range(len(model.blocks)), self.lora_rank, self.lora_alpha, self.lora_dropout)
        embed = bool(self.train_patch_embed)
        set_trainable(model, lambda name, _: is_lora_parameter(name) or (embed and name.startswith("patch_embed.")))
        return model


def check_lora_options(rank: int, alpha: float, dropout: float) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise GeoExploraError(f"lora_rank must be a positive integer, got {rank!r}")
    if alpha <= 0:
        raise GeoExploraError(f"lora_alpha must be positive, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise GeoExploraError(f"lora_dropout must be in [0, 1), got {dropout!r}")
