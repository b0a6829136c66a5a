"""Temporal tokens -> one spatial feature map per block, for heads that predict one map per stack.

The ViT attends over all T x N tokens in every block (each token sees every date of its stack); before a
segmentation head, the patch tokens of each requested block are **averaged over the dates**. Why the
mean: it is what a label map shared by all dates asks for (one prediction per place), it has no
parameters (so ``linear`` and every other strategy apply unchanged and a single date computes exactly
the single-date model), it accepts any 1 <= T <= ``num_frames`` at inference, and the attention before
it already weighs the dates against each other. A learned temporal attention pool would add a module
the strategies do not know and that a 1-date stack could not train.

Classification needs nothing here: the cls token attends over all dates, and ``pool: mean`` averages
over dates and patches alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import VisionTransformer
from timm.models._features import feature_take_indices


def temporal_intermediates(vit: VisionTransformer, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
    """The normed patch features of blocks ``indices`` (negative from the end), averaged over the dates.

    Args:
        vit: a timm ViT with a :class:`~geoexplora.models.patch_embed.TemporalPatchEmbed` whose dates are set
            (:func:`~geoexplora.models.date_encoding.stack_dates`).
        x: (B, T, C, H, W) normalised stacks.
        indices: block indices, as timm's ``forward_intermediates`` takes them.

    Returns:
        One (B, D, h, w) tensor per block, in block order (h, w: the patch grid of H, W).
    """
    b, t = x.shape[:2]
    h, w = vit.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
    take, _ = feature_take_indices(len(vit.blocks), list(indices))
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    features = []
    for i, block in enumerate(vit.blocks):
        tokens = block(tokens)
        if i in take:
            patches = vit.norm(tokens)[:, vit.num_prefix_tokens:]  # (B, T*h*w, D)
            pooled = patches.reshape(b, t, h, w, -1).mean(dim=1)
            features.append(pooled.permute(0, 3, 1, 2))
    return features
