"""MAE objective on a tiny multi-spectral ViT."""

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from geoexplora.errors import GeoExploraError
from geoexplora.models.ssl import MAEObjective


def tiny_mae(in_chans: int = 5, **kwargs) -> MAEObjective:
    vit = VisionTransformer(
        img_size=32, patch_size=8, in_chans=in_chans, embed_dim=64, depth=4, num_heads=4, num_classes=0, dynamic_img_size=True
    )
    for name, p in vit.named_parameters():
        p.requires_grad = name.startswith("blocks.3.")
    return MAEObjective(vit, decoder_dim=32, decoder_depth=1, decoder_heads=4, **kwargs)


@pytest.mark.parametrize("bands", [5, 13])
def test_patchify_round_trip_uses_real_band_count(bands):
    mae = tiny_mae(bands)
    imgs = torch.randn(2, bands, 32, 48)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 4 * 6, 8 * 8 * bands)
    assert torch.equal(patches[0, 1, :bands], imgs[0, :, 0, 8])  # pixel order (row, col, band)
    assert torch.equal(mae.unpatchify(patches, (4, 6)), imgs)


def test_forward_shapes_and_mask_ratio():
    mae = tiny_mae(13)
    out = mae(torch.randn(3, 13, 32, 32))
    assert out["pred"].shape == (3, 16, 8 * 8 * 13)
    assert torch.equal(out["mask"].sum(dim=1), torch.full((3,), 12.0))
    assert out["loss"].ndim == 0


def test_image_size_must_fit_the_patch_size():
    with pytest.raises(GeoExploraError, match="patch size"):
        tiny_mae()(torch.randn(1, 5, 30, 32))


def test_loss_ignores_nodata_pixels():
    mae = tiny_mae()
    imgs = torch.randn(2, 5, 32, 32)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[0, 4:20, 3:30] = False
    valid[1, :, :8] = False  # whole patches without data
    torch.manual_seed(0)
    loss = mae(imgs, valid)["loss"]
    changed = imgs.clone()
    changed[:, 2][~valid] = float("nan")
    changed[:, 0][~valid] = 1e4
    torch.manual_seed(0)
    assert torch.isclose(mae(changed, valid)["loss"], loss)
    torch.manual_seed(0)
    assert not torch.isclose(mae(changed)["loss"].nan_to_num(0.0), loss)


def test_optimisation_reduces_loss_and_only_trainable_params_get_gradients():
    torch.manual_seed(0)
    mae = tiny_mae()
    imgs = torch.randn(4, 5, 32, 32)
    optimizer = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(8):
        torch.manual_seed(1)  # same masks every step
        loss = mae(imgs)["loss"]
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            for name, p in mae.named_parameters():
                assert (p.grad is not None) == p.requires_grad, name
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_load_decoder_from_rgb_mae_checkpoint():
    source = tiny_mae(3)
    checkpoint = {k: v for k, v in source.state_dict().items() if not k.startswith("backbone.")}
    checkpoint["decoder_pos_embed"] = torch.zeros(1, 17, 32)
    checkpoint["pos_embed"] = torch.zeros(1, 17, 64)  # encoder keys of the same file are ignored
    target = tiny_mae(13)
    fresh = target.load_decoder_state_dict(checkpoint)
    assert fresh == ["decoder_pred.bias", "decoder_pred.weight"]
    assert torch.equal(target.mask_token, source.mask_token)
    assert torch.equal(target.decoder_blocks[0].attn.qkv.weight, source.decoder_blocks[0].attn.qkv.weight)
    checkpoint["decoder_embed.weight"] = torch.zeros(32, 128)
    with pytest.raises(GeoExploraError, match="decoder_embed.weight"):
        target.load_decoder_state_dict(checkpoint)


def test_reconstruction_preview_is_an_rgb_strip():
    mae = tiny_mae(13)
    imgs = torch.randn(2, 13, 32, 32)
    out = mae(imgs)
    preview = mae.reconstruction_preview(imgs, out["pred"], out["mask"], rgb_indices=(3, 2, 1))
    assert preview.shape == (32, 96, 3) and preview.dtype == np.uint8
    assert preview[:, :32].std() > 0
