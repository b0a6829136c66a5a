"""Segmentation decoders: full-resolution shapes for any patch, window and band count, gradient flow
under every strategy, the feature pyramid's scales, bad configurations."""

from __future__ import annotations

import pytest
import torch

from geoexplora.errors import GeoExploraError
from geoexplora.models import BackboneConfig, create_backbone, create_strategy
from geoexplora.models.decoders import SimpleFeaturePyramid, UPerNetHead
from geoexplora.models.heads import SupervisedModel, create_head, segmentation_feature_blocks

BANDS = ["red", "green", "blue", "nir", "swir"]


def tiny_backbone(patch_size: int, depth: int = 4, in_bands: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone(BackboneConfig(model="vit_base_patch16_224", bands=BANDS[:in_bands], embed_dim=64,
                                          depth=depth, num_heads=4, patch_size=patch_size, img_size=4 * patch_size))


def test_pyramid_scales_and_channels() -> None:
    pyramid = SimpleFeaturePyramid(64)
    assert pyramid.channels == [16, 32, 64, 64]
    out = pyramid([torch.randn(2, 64, 5, 3) for _ in range(4)])
    assert [tuple(o.shape) for o in out] == [(2, 16, 20, 12), (2, 32, 10, 6), (2, 64, 5, 3), (2, 64, 3, 2)]
    with pytest.raises(GeoExploraError, match="power of 2"):
        SimpleFeaturePyramid(64, scales=(3.0, 1.0))
    with pytest.raises(GeoExploraError, match="expects 4 feature levels"):
        pyramid([torch.randn(1, 64, 4, 4)] * 3)


@pytest.mark.parametrize(("patch_size", "window", "bands"),
                         [(8, (32, 32), 5), (16, (48, 80), 3), (14, (98, 56), 4), (14, (14, 14), 1)])
def test_upernet_logits_at_full_resolution(patch_size: int, window: tuple[int, int], bands: int) -> None:
    backbone = tiny_backbone(patch_size, in_bands=bands).eval()
    blocks = segmentation_feature_blocks(len(backbone.blocks), "upernet", None)
    assert blocks == [0, 1, 2, 3]
    model = SupervisedModel(backbone, create_head("segmentation", 64, 6, 1, segmentation_head="upernet",
                                                  num_levels=len(blocks), channels=32), blocks).eval()
    logits = model(torch.randn(2, bands, *window))
    assert logits.shape == (2, 6, *window)
    assert torch.isfinite(logits).all()
    # stride p/4 before the final resize: the decoder's grid is 4x the patch grid
    grid = [s // patch_size for s in window]
    features = backbone.forward_intermediates(torch.randn(1, bands, *window), indices=blocks, output_fmt="NCHW",
                                              intermediates_only=True, norm=True)
    assert model.head.decode(features).shape == (1, 32, 4 * grid[0], 4 * grid[1])


def test_upernet_output_depends_on_every_level() -> None:
    head = UPerNetHead(64, 3, channels=16).eval()
    features = [torch.randn(1, 64, 4, 4, requires_grad=True) for _ in range(4)]
    head(features, (32, 32)).square().sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in features)


@pytest.mark.parametrize("strategy", ["lora", "linear", "full", "block-expansion", "rlrr"])
def test_gradients_reach_the_decoder_and_only_what_the_strategy_trains(strategy: str) -> None:
    backbone = create_strategy(strategy).apply(tiny_backbone(8))
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    blocks = segmentation_feature_blocks(len(backbone.blocks), "upernet", None)
    model = SupervisedModel(backbone, create_head("segmentation", 64, 4, 1, segmentation_head="upernet",
                                                  num_levels=len(blocks), channels=16), blocks)
    torch.nn.functional.cross_entropy(model(torch.randn(2, 5, 32, 32)), torch.randint(0, 4, (2, 32, 32))).backward()
    head_params = dict(model.head.named_parameters())
    assert all(p.requires_grad for p in head_params.values())
    missing = [n for n, p in head_params.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert all(p.grad is None for n, p in backbone.named_parameters() if n in frozen)
    trained = [n for n, p in backbone.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert bool(trained) == (strategy != "linear"), trained[:3]


def test_upernet_needs_four_levels() -> None:
    with pytest.raises(GeoExploraError, match="takes 4 feature blocks"):
        create_head("segmentation", 64, 3, 1, segmentation_head="upernet", num_levels=2)
    with pytest.raises(GeoExploraError, match="segmentation_head must be one of"):
        create_head("segmentation", 64, 3, 1, segmentation_head="unet")
