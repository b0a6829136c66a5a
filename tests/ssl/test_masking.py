"""Block masks for iBOT and random masking for MAE."""

import pytest
import torch

from geoexplora.models.ssl import block_mask, ibot_masks, random_masking


@pytest.mark.parametrize("num_masked", [0, 1, 5, 30, 64])
def test_block_mask_masks_exactly_the_requested_count(num_masked):
    g = torch.Generator().manual_seed(num_masked)
    mask = block_mask((8, 8), num_masked, generator=g)
    assert mask.shape == (64,) and mask.dtype == torch.bool
    assert int(mask.sum()) == num_masked


def test_block_mask_is_blocky():
    g = torch.Generator().manual_seed(0)
    mask = block_mask((14, 14), 60, generator=g).view(14, 14)
    horizontal_neighbours = (mask[:, 1:] & mask[:, :-1]).sum()
    assert horizontal_neighbours > 30  # random scattering would give about 60 * 60 / 196 * 13 / 14 = 17


def test_ibot_masks_mask_the_requested_share_of_images():
    g = torch.Generator().manual_seed(0)
    masks = ibot_masks(8, (6, 6), ratio_range=(0.1, 0.5), probability=0.5, generator=g)
    counts = masks.sum(dim=1)
    assert masks.shape == (8, 36)
    assert int((counts > 0).sum()) == 4
    assert counts.max() <= round(0.5 * 36) and counts[counts > 0].min() >= round(0.1 * 36)


@pytest.mark.parametrize("length,ratio", [(16, 0.75), (196, 0.75), (10, 0.5), (7, 0.3)])
def test_random_masking_keeps_round_share(length, ratio):
    x = torch.randn(3, length, 4)
    kept, mask, ids_restore = random_masking(x, ratio)
    keep = round((1 - ratio) * length)
    assert kept.shape == (3, keep, 4)
    assert torch.equal(mask.sum(dim=1), torch.full((3,), float(length - keep)))
    for i in range(3):  # the kept tokens are exactly the unmasked ones
        assert torch.equal(kept[i].sort(dim=0).values, x[i][mask[i] == 0].sort(dim=0).values)
    shuffled = torch.cat([kept, torch.zeros(3, length - keep, 4)], dim=1)
    restored = shuffled.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, 4))
    assert torch.equal(restored[mask == 0], x[mask == 0])
