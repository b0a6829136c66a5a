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
)
from geoexplora.models.date_encoding import DateEncoding, stack_dates, year_and_day

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


def test_year_and_day_match_the_calendar():
    from datetime import date, timedelta
    days = torch.arange(-400_000, 400_000, 1_237)
    year, doy = year_and_day(days)
    expected = [date(1970, 1, 1) + timedelta(days=int(d)) for d in days]
    assert year.tolist() == [d.year for d in expected]
    assert doy.tolist() == [d.timetuple().tm_yday for d in expected]


def test_date_encoding_starts_at_zero_and_separates_dates_once_trained():
    encoding = DateEncoding(16)
    days = torch.tensor([[16_000, 16_100, 16_465]])  # two seasons, then the first one a year later
    assert torch.equal(encoding(days), torch.zeros(1, 3, 16))
    features = encoding.features(days)[0]  # the fixed SatMAE-style features (year | day of year)
    assert features.shape == (3, 128)
    assert torch.cdist(features, features).add(torch.eye(3) * 1e3).min() > 0.5
    encoding.weight.data.normal_()
    out = encoding(days)[0]
    assert torch.cdist(out, out).add(torch.eye(3) * 1e3).min() > 0.5


def test_temporal_embed_shares_projection_and_adds_dates():
    torch.manual_seed(0)
    embed = TemporalPatchEmbed(["red", "green", "blue", "nir"], num_frames=3, img_size=32, patch_size=8, embed_dim=16)
    embed.date_encoding.weight.data.normal_()
    frame = torch.randn(1, 1, 4, 32, 32)
    days = torch.tensor([[18_000, 18_050, 18_200]])
    with stack_dates(nn_holder(embed), days):
        out = embed(frame.expand(2, 3, -1, -1, -1))  # 2 samples share the dates of 1 (crops of one batch)
    assert out.shape == (2, 3 * 16, 16)
    per_date = out.reshape(2, 3, 16, 16)
    shift = embed.date_encoding(days)[0]
    torch.testing.assert_close(per_date[:, 1] - per_date[:, 0], (shift[1] - shift[0]).expand(2, 16, 16))
    with stack_dates(nn_holder(embed), days[:, :2]):
        assert embed(frame.expand(1, 2, -1, -1, -1)).shape == (1, 2 * 16, 16)  # fewer dates than num_frames
        with pytest.raises(GeoExploraError, match=r"1 <= T <= 3"):
            embed(torch.randn(1, 4, 4, 32, 32))
    with pytest.raises(GeoExploraError, match="needs the dates"):
        embed(frame)


def nn_holder(embed: torch.nn.Module) -> torch.nn.Module:
    """A module whose ``patch_embed`` is ``embed`` (what ``stack_dates`` sets dates on)."""
    holder = torch.nn.Module()
    holder.patch_embed = embed
    return holder
