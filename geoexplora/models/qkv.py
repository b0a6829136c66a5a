"""Split timm's fused ``attn.qkv`` Linear (D -> 3D) into ``q``, ``k``, ``v`` children, and fuse back.

After :func:`split_qkv` every attention's ``qkv`` is a :class:`QKVLinear`, so peft can target
``blocks.<i>.attn.qkv.q`` and ``blocks.<i>.attn.qkv.v`` alone; state-dict keys become
``blocks.<i>.attn.qkv.{q,k,v}.{weight,bias}``. :func:`fuse_qkv` restores timm's layout and keys.
"""

from __future__ import annotations

import torch
from torch import nn


class QKVLinear(nn.Module):
    """Three Linears (D -> D each) computing what timm's fused qkv Linear computes.

    forward: x (..., D) -> cat(q(x), k(x), v(x)) of shape (..., 3D), the fused layer's output layout.
    """

    def __init__(self, q: nn.Module, k: nn.Module, v: nn.Module):
        super().__init__()
        self.q, self.k, self.v = q, k, v

    @classmethod
    @torch.no_grad()
    def from_fused(cls, fused: nn.Linear) -> QKVLinear:
        """Split a fused (3D, D) Linear; weights and biases are copied, ``requires_grad`` kept."""
        dim = fused.out_features // 3
        parts = []
        for i in range(3):
            part = nn.Linear(fused.in_features, dim, bias=fused.bias is not None,
                             device=fused.weight.device, dtype=fused.weight.dtype)
            part.weight.copy_(fused.weight[i * dim:(i + 1) * dim])
            part.weight.requires_grad_(fused.weight.requires_grad)
            if fused.bias is not None:
                part.bias.copy_(fused.bias[i * dim:(i + 1) * dim])
                part.bias.requires_grad_(fused.bias.requires_grad)
            parts.append(part)
        return cls(*parts)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        """One (3D, D) Linear equal to this module. q, k, v must be plain Linears (merge LoRA first)."""
        parts = (self.q, self.k, self.v)
        if not all(type(p) is nn.Linear for p in parts):
            raise TypeError("fuse() needs plain nn.Linear q, k, v; merge and unload adapters first")
        weight = torch.cat([p.weight for p in parts])
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=self.q.bias is not None,
                          device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def _attention_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(getattr(m, "qkv", None), (nn.Linear, QKVLinear))]


def split_qkv(model: nn.Module) -> nn.Module:
    """Replace every fused ``qkv`` Linear in ``model`` by a :class:`QKVLinear`, in place (idempotent)."""
    for attn in _attention_modules(model):
        if isinstance(attn.qkv, nn.Linear):
            attn.qkv = QKVLinear.from_fused(attn.qkv)
    return model


def fuse_qkv(model: nn.Module) -> nn.Module:
    """Replace every :class:`QKVLinear` by one fused Linear (timm's layout), in place."""
    for attn in _attention_modules(model):
        if isinstance(attn.qkv, QKVLinear):
            attn.qkv = attn.qkv.fuse()
    return model
