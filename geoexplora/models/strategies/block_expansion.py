"""Block Expansion (arXiv 2404.17245): insert zero-initialised copies of blocks and train only those."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.strategies.base import StrategyConfig, register_strategy, set_trainable


def identity_copy(block: nn.Module) -> nn.Module:
    """A deep copy of a timm ViT block with ``attn.proj`` and ``mlp.fc2`` (weights and biases) set to zero.

    Both residual branches then add zero, so the copy is the identity at start whatever its norms,
    attention or LayerScale (``ls1``/``ls2`` stay as copied) hold.
    """
    new = copy.deepcopy(block)
    with torch.no_grad():
        for layer in (new.attn.proj, new.mlp.fc2):
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
    return new


@register_strategy("block-expansion")
@dataclass
class BlockExpansionStrategy(StrategyConfig):
    """Insert ``num_expanded`` identity blocks, one after every ``split``-th block; train only those.

    The model's depth grows by ``num_expanded``; every original backbone parameter is frozen. Block
    indices after ``apply`` count the inserted blocks (block ``split`` is the first inserted one).

    Attributes:
        num_expanded: p, the number of inserted blocks (published ViT-B: 3).
        split: insert after blocks ``split - 1``, ``2 * split - 1``, ...; ``None`` = depth // num_expanded,
            so the last inserted block follows the last original block when p divides the depth.
    """

    num_expanded: int = 3
    split: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_expanded, int) or self.num_expanded < 1:
            raise GeoExploraError(f"num_expanded must be a positive integer, got {self.num_expanded!r}")
        if self.split is not None and (not isinstance(self.split, int) or self.split < 1):
            raise GeoExploraError(f"split must be a positive integer or None, got {self.split!r}")

    def apply(self, model: nn.Module) -> nn.Module:
        depth = len(model.blocks)
        split = self.split or depth // self.num_expanded
        if split < 1 or self.num_expanded * split > depth:
            raise GeoExploraError(
                f"cannot insert {self.num_expanded} blocks every {split} blocks into a model of depth {depth}"
            )
        blocks: list[nn.Module] = []
        inserted: list[int] = []
        for i, block in enumerate(model.blocks):
            blocks.append(block)
            if (i + 1) % split == 0 and len(inserted) < self.num_expanded:
                inserted.append(len(blocks))
                blocks.append(identity_copy(block))
        model.blocks = nn.Sequential(*blocks)
        prefixes = tuple(f"blocks.{i}." for i in inserted)
        set_trainable(model, lambda name, _: name.startswith(prefixes))
        return model
