"""ExPLoRA (arXiv 2406.10973): unfreeze a few blocks, LoRA on Q and V of all others, norms and cls train."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from geoexplora.models.strategies.base import (
    StrategyConfig,
    norm_parameter_names,
    register_strategy,
    set_trainable,
    validate_blocks,
)
from geoexplora.models.strategies.lora import check_lora_options, inject_qv_lora, is_lora_parameter


@register_strategy("explora")
@dataclass
class ExploraStrategy(StrategyConfig):
    """The ExPLoRA pre-training recipe.

    Trainable: every parameter of the blocks in ``unfreeze_blocks``; LoRA on the split ``q`` and ``v`` of
    every other block (K frozen, no adapter); all norm layers; ``cls_token`` (and register tokens); the
    patch embedding when ``train_patch_embed`` says so. Everything else in the backbone is frozen.

    Attributes:
        unfreeze_blocks: indices of fully trained blocks, negative from the end; default the last block
            (published ViT-L runs: block 23 of 24). Checked against the depth in ``apply``.
        lora_rank: r (published pre-training: 64).
        lora_alpha: alpha; the LoRA update is scaled by alpha / r. Published: alpha = 1, so 1/64 at r=64
            (the DESIGN notes' reading of the paper's scripts).
        lora_dropout: dropout on the adapter input (published: 0).
        train_patch_embed: train the patch embedding; ``None`` = only when the bands differ from the
            source's red, green, blue (or the embedding has new group encodings).
    """

    unfreeze_blocks: list[int] = field(default_factory=lambda: [-1])
    lora_rank: int = 64
    lora_alpha: float = 1.0
    lora_dropout: float = 0.0
    train_patch_embed: bool | None = None

    def __post_init__(self) -> None:
        self.unfreeze_blocks = list(self.unfreeze_blocks)
        check_lora_options(self.lora_rank, self.lora_alpha, self.lora_dropout)

    def apply(self, model: nn.Module) -> nn.Module:
        depth = len(model.blocks)
        unfrozen = validate_blocks(self.unfreeze_blocks, depth)
        inject_qv_lora(model, [i for i in range(depth) if i not in unfrozen], self.lora_rank, self.lora_alpha,
                       self.lora_dropout)
        train_embed = self.train_patch_embed
        if train_embed is None:
            train_embed = not getattr(model.patch_embed, "matches_source", False)
        norms = norm_parameter_names(model)
        block_prefixes = tuple(f"blocks.{i}." for i in unfrozen)

        def keep(name: str, _) -> bool:
            return (is_lora_parameter(name) or name in norms or name.startswith(block_prefixes)
                    or name in ("cls_token", "reg_token") or (train_embed and name.startswith("patch_embed.")))

        set_trainable(model, keep)
        return model
