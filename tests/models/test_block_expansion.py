"""Block Expansion: identity at init, only inserted blocks train, depth grows by p."""

from __future__ import annotations

import pytest
import torch

from geoexplora.errors import GeoExploraError
from geoexplora.models import BackboneConfig, create_backbone, create_strategy, parameter_report

BANDS = ["red", "green", "blue", "nir"]


def tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = BackboneConfig(model="vit_base_patch16_224", embed_dim=64, depth=6, num_heads=4, patch_size=8,
                         img_size=32, bands=BANDS)
    return create_backbone(cfg).eval()


def test_expanded_model_is_the_original_at_init() -> None:
    model = tiny_backbone()
    x = torch.randn(2, len(BANDS), 32, 32)
    with torch.no_grad():
        before = model.forward_features(x)
        create_strategy("block-expansion", num_expanded=3).apply(model)
        after = model.forward_features(x)
    assert len(model.blocks) == 9
    assert (after - before).abs().max().item() < 1e-5


def test_only_inserted_blocks_train_and_receive_gradients() -> None:
    model = create_strategy("block-expansion", num_expanded=2, split=3).apply(tiny_backbone())
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"3", "7"}
    assert all(n.startswith(("blocks.3.", "blocks.7.")) for n, p in model.named_parameters() if p.requires_grad)
    model.forward_features(torch.randn(2, len(BANDS), 32, 32)).square().mean().backward()
    assert model.blocks[3].attn.proj.weight.grad.abs().sum() > 0
    assert model.blocks[7].mlp.fc2.weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad is None


def test_vit_base_defaults_insert_three_blocks() -> None:
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=0)
    create_strategy("block-expansion").apply(model)
    report = parameter_report(model)
    assert len(model.blocks) == 15
    assert report.trainable_params == 3 * 7_087_872
    assert list(report.groups) == ["blocks.4 (unfrozen)", "blocks.9 (unfrozen)", "blocks.14 (unfrozen)"]


def test_bad_options_are_errors() -> None:
    with pytest.raises(GeoExploraError, match="num_expanded"):
        create_strategy("block-expansion", num_expanded=0)
    with pytest.raises(GeoExploraError, match="depth 6"):
        create_strategy("block-expansion", num_expanded=4, split=2).apply(tiny_backbone())
