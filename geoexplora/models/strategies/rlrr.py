"""RLRR (arXiv 2403.19067): residual low-rank rescaling of every frozen Linear, scale/shift after norms.

Each Linear ``y = W x + b`` in the blocks (qkv or q/k/v, proj, fc1, fc2) becomes
``y = (W + diag(s_out) W diag(s_in)) x + b + delta_b`` with trainable vectors ``s_out`` (out,), ``s_in``
(in,) and ``delta_b`` (out,); each norm layer (in the blocks and the final norm) is followed by a
trainable ``scale * x + shift``. The wrappers hold the pretrained layer untouched (frozen) and
:func:`merge_rlrr` folds them back into plain ``nn.Linear`` / norm weights for export.

Initialisation: ``s_out = 0``, ``s_in = 1``, ``delta_b = 0``, ``scale = 1``, ``shift = 0``, so the adapted
model computes exactly the pretrained function at start, and the first gradient reaches ``s_out``
(d y / d s_out = W diag(s_in) x != 0), while ``s_in`` starts to move once ``s_out`` is non-zero. The
official code instead starts from kaiming-initialised scales, i.e. not at the pretrained function.

Two further deviations from the official code, kept on purpose: on timm's fused ``qkv`` one ``s_in`` is
shared by Q, K and V (the input is the same token; separate vectors would add 2 x D parameters per block
and change the tensor names of every saved RLRR checkpoint), and the patch embedding gets no scale/shift
(with multi-spectral input the patch embedding is usually trained outright, so a rescaling on top of it
adds nothing; for RGB input it is the one frozen layer before the first norm's scale/shift, which
already rescales its output per channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoexplora.models.strategies.base import StrategyConfig, register_strategy, set_trainable

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


class RLRRLinear(nn.Module):
    """``(W + diag(s_out) W diag(s_in)) x + b + bias_shift`` around a frozen ``nn.Linear`` (kept as ``base``)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.s_out = nn.Parameter(torch.zeros(base.out_features, device=base.weight.device))
        self.s_in = nn.Parameter(torch.ones(base.in_features, device=base.weight.device))
        self.bias_shift = nn.Parameter(torch.zeros(base.out_features, device=base.weight.device))

    def merged_weight(self) -> Tensor:
        w = self.base.weight
        return w + self.s_out[:, None] * w * self.s_in[None, :]

    def merged_bias(self) -> Tensor:
        return self.bias_shift if self.base.bias is None else self.base.bias + self.bias_shift

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.merged_weight(), self.merged_bias())


class RLRRNorm(nn.Module):
    """``scale * norm(x) + shift`` around a frozen norm layer (kept as ``base``)."""

    def __init__(self, base: nn.Module, dim: int) -> None:
        super().__init__()
        self.base = base
        device = next(base.parameters()).device
        self.scale = nn.Parameter(torch.ones(dim, device=device))
        self.shift = nn.Parameter(torch.zeros(dim, device=device))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) * self.scale + self.shift


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _norm_width(norm: nn.Module) -> int | None:
    weight = getattr(norm, "weight", None)
    return None if weight is None or weight.dim() != 1 else weight.shape[0]


@torch.no_grad()
def merge_rlrr(model: nn.Module) -> nn.Module:
    """Replace every RLRR wrapper in ``model`` by a plain layer with the rescaling folded in, in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, RLRRLinear):
            plain = module.base
            plain.weight.copy_(module.merged_weight())
            if plain.bias is None:
                plain.bias = nn.Parameter(module.bias_shift.detach().clone())
            else:
                plain.bias.copy_(module.merged_bias())
            _replace(model, name, plain)
        elif isinstance(module, RLRRNorm):
            plain = module.base
            plain.bias.mul_(module.scale).add_(module.shift)
            plain.weight.mul_(module.scale)
            _replace(model, name, plain)
    return model


@register_strategy("rlrr")
@dataclass
class RLRRStrategy(StrategyConfig):
    """RLRR on every Linear of the blocks and every affine norm layer; only its vectors train.

    About 0.27 M trainable parameters on ViT-B/16 (19,200 per block for the four Linears, 3,072 for the
    two norms, plus the final norm). Norms without an affine weight and bias are left alone.
    """

    def apply(self, model: nn.Module) -> nn.Module:
        for name, module in list(model.named_modules()):
            in_blocks = name.startswith("blocks.")
            if in_blocks and isinstance(module, nn.Linear) and ".lora_" not in name:
                _replace(model, name, RLRRLinear(module))
            elif (in_blocks or name == "norm") and isinstance(module, _NORMS) and _has_affine(module):
                _replace(model, name, RLRRNorm(module, _norm_width(module)))
        trained = {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, (RLRRLinear, RLRRNorm))
                   for p, _ in m.named_parameters(recurse=False)}
        set_trainable(model, lambda name, _: name in trained)
        return model


def _has_affine(norm: nn.Module) -> bool:
    return _norm_width(norm) is not None and getattr(norm, "bias", None) is not None
