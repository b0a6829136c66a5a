"""Patch masks: block masks for iBOT (DINOv2) and per-sample random token dropping for MAE."""

from __future__ import annotations

import math

import torch


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    """An integer in [0, high]."""
    return int(torch.randint(high + 1, (), generator=generator).item())


def block_mask(
    grid: tuple[int, int],
    num_masked: int,
    min_block: int = 4,
    aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BEiT-style block mask over a patch grid with exactly ``num_masked`` True entries.

    Rectangles of random area and log-uniform aspect ratio are added until the target is reached or
    ten draws in a row add nothing; any shortfall is topped up with random single patches.

    Args:
        grid: (h, w) patches.
        num_masked: Patches to mask, 0 <= num_masked <= h * w.
        min_block: Smallest rectangle area drawn, in patches.
        aspect_ratio: Range of rectangle height / width.
        generator: Optional random generator.

    Returns:
        (h * w,) bool, row-major, True where masked.
    """
    h, w = grid
    mask = torch.zeros(h, w, dtype=torch.bool)
    log_low, log_high = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    count, failures = 0, 0
    while count < num_masked and failures < 10:
        remaining = num_masked - count
        area = _uniform(min(min_block, remaining), remaining, generator)
        ratio = math.exp(_uniform(log_low, log_high, generator))
        bh = min(max(round(math.sqrt(area * ratio)), 1), h)
        bw = min(max(round(math.sqrt(area / ratio)), 1), w)
        top, left = _randint(h - bh, generator), _randint(w - bw, generator)
        block = mask[top : top + bh, left : left + bw]
        added = int((~block).sum())
        if 0 < added <= remaining:
            block.fill_(True)
            count += added
            failures = 0
        else:
            failures += 1
    flat = mask.flatten()
    if count < num_masked:
        free = (~flat).nonzero().squeeze(1)
        flat[free[torch.randperm(free.numel(), generator=generator)[: num_masked - count]]] = True
    return flat


def ibot_masks(
    num_images: int,
    grid: tuple[int, int],
    ratio_range: tuple[float, float] = (0.1, 0.5),
    probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Masks for a batch of global crops, as in DINOv2's collate.

    A share ``probability`` of the images gets a block mask; their mask ratios are spread evenly over
    ``ratio_range``; the other images are not masked. Image order is shuffled.

    Returns:
        (num_images, h * w) bool, True where a patch is masked.
    """
    num_patches = grid[0] * grid[1]
    num_masked_images = int(num_images * probability)
    bounds = torch.linspace(ratio_range[0], ratio_range[1], num_masked_images + 1).tolist()
    masks = torch.zeros(num_images, num_patches, dtype=torch.bool)
    for i in range(num_masked_images):
        ratio = _uniform(bounds[i], bounds[i + 1], generator)
        masks[i] = block_mask(grid, int(round(ratio * num_patches)), generator=generator)
    return masks[torch.randperm(num_images, generator=generator)]


def random_masking(
    x: torch.Tensor, mask_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random token dropping (MAE): keep ``round((1 - mask_ratio) * L)`` tokens.

    Args:
        x: (N, L, D) tokens.
        mask_ratio: Share of tokens removed, in [0, 1).

    Returns:
        kept: (N, L_keep, D) tokens, in random order.
        mask: (N, L) float, 1 where a token was removed, 0 where kept, in the original order.
        ids_restore: (N, L) long; ``gather`` with it undoes the shuffle.
    """
    n, length, dim = x.shape
    len_keep = int(round((1 - mask_ratio) * length))
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :len_keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


def consistent_masking(
    x: torch.Tensor, mask_ratio: float, frames: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random token dropping that hides the same patches at every date (SatMAE's ``same_mask``).

    Args:
        x: (N, T*L, D) tokens, date-major (T = ``frames`` sets of L patches).
        mask_ratio: Share of each date's patches removed, in [0, 1).
        frames: T.

    Returns:
        As :func:`random_masking`: kept (N, T*L_keep, D) with ``L_keep = round((1 - mask_ratio) * L)``,
        mask (N, T*L) (identical for every date), ids_restore (N, T*L).
    """
    n, length, dim = x.shape
    patches = length // frames
    len_keep = int(round((1 - mask_ratio) * patches))
    spatial = torch.rand(n, patches, device=x.device).argsort(dim=1)  # (N, L)
    offsets = torch.arange(frames, device=x.device).view(1, frames, 1) * patches
    per_date = spatial.unsqueeze(1) + offsets  # (N, T, L): the same order at every date
    ids_shuffle = torch.cat([per_date[:, :, :len_keep].flatten(1), per_date[:, :, len_keep:].flatten(1)], dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = x.gather(1, ids_shuffle[:, : frames * len_keep].unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device)
    mask[:, : frames * len_keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore
