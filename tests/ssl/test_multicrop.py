"""Batched multi-crop on 13-band input."""

import kornia.augmentation as K
import torch

from geoexplora.transforms import BandJitter, MAEAugmentation, MultiCropAugmentation


def test_multicrop_shapes_with_13_bands():
    torch.manual_seed(0)
    aug = MultiCropAugmentation(global_size=32, local_size=16, num_local=3)
    x = torch.rand(4, 13, 48, 48)
    global_crops, local_crops = aug(x)
    assert [g.shape for g in global_crops] == [(4, 13, 32, 32)] * 2
    assert [c.shape for c in local_crops] == [(4, 13, 16, 16)] * 3
    assert all(c.device == x.device and c.dtype == x.dtype for c in global_crops + local_crops)
    assert not torch.allclose(global_crops[0], global_crops[1])


def test_no_rgb_only_colour_operations():
    aug = MultiCropAugmentation(global_size=32, local_size=16, num_local=2)
    rgb_only = (K.ColorJitter, K.ColorJiggle, K.RandomGrayscale, K.RandomHue, K.RandomSaturation, K.RandomSolarize)
    assert not any(isinstance(m, rgb_only) for m in aug.modules())
    assert any(isinstance(m, K.RandomRotation90) for m in aug.modules())


def test_band_jitter_is_independent_per_band():
    torch.manual_seed(0)
    band = torch.rand(2, 1, 16, 16)
    x = band.expand(2, 13, 16, 16).contiguous()  # 13 identical bands
    out = BandJitter(brightness=0.4, contrast=0.4, p=1.0)(x)
    spreads = out.std(dim=(2, 3))  # (2, 13): contrast factor differs per band
    means = out.mean(dim=(2, 3))  # brightness shift differs per band
    assert spreads.std(dim=1).min() > 1e-3
    assert means.std(dim=1).min() > 1e-3
    assert not torch.allclose(out[0], out[1])


def test_band_jitter_probability_zero_is_identity():
    x = torch.rand(2, 4, 8, 8)
    assert torch.equal(BandJitter(p=0.0)(x), x)


def test_mae_augmentation_moves_the_nodata_mask_with_the_image():
    torch.manual_seed(0)
    valid = torch.ones(4, 40, 40, dtype=torch.bool)
    valid[:, 5:25, 10:18] = False
    x = valid.unsqueeze(1).float().expand(4, 13, 40, 40)
    out, out_valid = MAEAugmentation(size=32)(x, valid)
    assert out.shape == (4, 13, 32, 32) and out_valid.shape == (4, 32, 32)
    assert torch.equal(out_valid, out[:, 5] > 0.999)
    assert (~out_valid).any()
