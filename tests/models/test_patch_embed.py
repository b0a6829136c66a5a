"""Spectral kernel carry-over, group and temporal embeddings."""

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from geoexplora.bands import SENTINEL2
from geoexplora.errors import GeoExploraError
from geoexplora.models.patch_embed import (
    GroupPatchEmbed,
    SpectralPatchEmbed,
    TemporalPatchEmbed,
    carry_rgb_kernel,
    date_encoding,
)

from shared_paths import DINOV2_WEIGHTS

DINOV2 = str(DINOV2_WEIGHTS)


@pytest.fixture(scope="module")
def rgb_kernel(dinov2_weights) -> torch.Tensor:
    """The real DINOv2 ViT-S/14 kernel (384, 3, 14, 14): correlated R, G, B like any natural-image stem."""
    with safe_open(DINOV2, "pt") as f:
        return f.get_tensor("patch_embed.proj.weight")


def test_rgb_in_order_is_copied_unchanged(rgb_kernel):
    out = carry_rgb_kernel(rgb_kernel, ["red", "green", "blue"])
    assert torch.equal(out, rgb_kernel)
    assert out.data_ptr() != rgb_kernel.data_ptr()


def test_permuted_rgb_is_permuted_not_rescaled(rgb_kernel):
    out = carry_rgb_kernel(rgb_kernel, ["B02", "B03", "B04"])  # Sentinel-2 blue, green, red
    torch.testing.assert_close(out, rgb_kernel[:, [2, 1, 0]], rtol=1e-6, atol=0)


def test_bands_get_their_role_kernel_or_the_mean(rgb_kernel):
    out = carry_rgb_kernel(rgb_kernel, list(SENTINEL2.band_names))
    assert out.shape == (384, 13, 14, 14)
    # one common per-output-channel scale s: B04 = s * red, B02 = s * blue, B01 = s * mean
    scale = out[:, 3].flatten(1).norm(dim=1) / rgb_kernel[:, 0].flatten(1).norm(dim=1)
    assert float(scale.max()) < 1.0
    torch.testing.assert_close(out[:, 3], rgb_kernel[:, 0] * scale.view(-1, 1, 1))
    torch.testing.assert_close(out[:, 1], rgb_kernel[:, 2] * scale.view(-1, 1, 1))
    torch.testing.assert_close(out[:, 0], rgb_kernel.mean(1) * scale.view(-1, 1, 1))
    torch.testing.assert_close(out[:, 12], out[:, 0])


def test_landsat_band_needs_its_sensor(rgb_kernel):
    l7 = carry_rgb_kernel(rgb_kernel, ["landsat7:B1", "landsat7:B2", "landsat7:B3"])
    l8 = carry_rgb_kernel(rgb_kernel, ["B2", "B3", "B4"], sensor="landsat8")
    torch.testing.assert_close(l7, rgb_kernel[:, [2, 1, 0]], rtol=1e-6, atol=0)
    torch.testing.assert_close(l8, l7)


@pytest.mark.parametrize("bands", [["nir"], ["red", "green", "blue", "nir"], list(SENTINEL2.band_names)])
def test_output_variance_matches_rgb_embedding(rgb_kernel, bands):
    """Unit-variance independent bands: output std within 5% of the RGB embedding's on unit-variance RGB."""
    torch.manual_seed(0)
    kernel = carry_rgb_kernel(rgb_kernel, bands)
    rgb_std = F.conv2d(torch.randn(512, 3, 14, 14), rgb_kernel).std(dim=0)
    new_std = F.conv2d(torch.randn(512, len(bands), 14, 14), kernel).std(dim=0)
    ratio = (new_std / rgb_std).flatten()
    assert abs(float(ratio.mean()) - 1) < 0.05
    # the naive copy (no rescale) would be far off for 13 bands: the check can fail
    if len(bands) == 13:
        naive = torch.cat([rgb_kernel, rgb_kernel.mean(1, keepdim=True).expand(-1, 10, -1, -1)], 1)
        naive_std = F.conv2d(torch.randn(512, 13, 14, 14), naive).std(dim=0)
        assert float((naive_std / rgb_std).mean()) > 1.2


def test_in_chans_must_match_band_names():
    with pytest.raises(GeoExploraError, match="in_chans=4"):
        SpectralPatchEmbed(["red", "green", "blue"], in_chans=4, img_size=32, patch_size=8, embed_dim=16)


def test_group_embed_tokens_and_group_encoding():
    torch.manual_seed(0)
    embed = GroupPatchEmbed(["B02", "B03", "B04", "B05", "B8A"], [["B04", "B03", "B02"], ["B05", "B8A"]],
                            img_size=32, patch_size=8, embed_dim=16)
    x = torch.randn(2, 5, 32, 32)
    out = embed(x)
    assert out.shape == (2, 2 * 16, 16)
    assert embed.groups[0].proj.in_channels == 3 and embed.groups[1].proj.in_channels == 2
    # group 0 sees channels B04, B03, B02 = input channels 2, 1, 0
    g0 = embed.groups[0](x[:, [2, 1, 0]]).reshape(2, 16, 16) + embed.positions.pos_embed
    torch.testing.assert_close(out[:, :16], g0)
    with torch.no_grad():
        embed.group_embed[1] += 1.0
    torch.testing.assert_close(embed(x)[:, 16:] - out[:, 16:], torch.ones(2, 16, 16))


def test_group_embed_rejects_bad_groups():
    with pytest.raises(GeoExploraError, match="exactly once"):
        GroupPatchEmbed(["red", "green", "blue"], [["red", "green"]], img_size=32, patch_size=8, embed_dim=16)


def test_date_encoding_is_zero_at_first_date_and_distinct():
    enc = date_encoding(torch.arange(4), 16)
    assert enc.shape == (4, 16)
    assert torch.equal(enc[0], torch.zeros(16))
    assert torch.cdist(enc[1:], enc[1:]).add(torch.eye(3)).min() > 0.1


def test_temporal_embed_shares_projection_and_adds_dates():
    torch.manual_seed(0)
    embed = TemporalPatchEmbed(["red", "green", "blue", "nir"], num_frames=3, img_size=32, patch_size=8, embed_dim=16)
    frame = torch.randn(1, 1, 4, 32, 32)
    out = embed(frame.expand(2, 3, -1, -1, -1))
    assert out.shape == (2, 3 * 16, 16)
    per_date = out.reshape(2, 3, 16, 16)
    torch.testing.assert_close(per_date[:, 1] - per_date[:, 0], embed.date_embed[1].expand(2, 16, 16))
    with pytest.raises(GeoExploraError, match=r"\(B, 3, C, H, W\)"):
        embed(torch.randn(2, 2, 4, 32, 32))
