"""Strategies: start at the base function, train exactly the intended parameters, merge/unmerge/export."""

import json

import pytest
import timm
import torch
from peft.tuners.lora import LoraLayer

from geoexplora.errors import GeoExploraError
from geoexplora.models.backbone import BackboneConfig, create_backbone
from geoexplora.models.strategies import (
    create_strategy,
    export_merged_state_dict,
    list_strategies,
    merge_lora,
    strategy_from_dict,
    unmerge_lora,
)

# no LayerScale (DINOv2 starts its blocks at 1e-5), so every block really shapes the output
TINY = dict(model="vit_base_patch16_224", embed_dim=64, depth=4, num_heads=4, patch_size=8, img_size=32)


def tiny(bands=("red", "green", "blue"), seed=0):
    torch.manual_seed(seed)
    return create_backbone(BackboneConfig(**TINY, bands=list(bands))).eval()


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def grads(model, x):
    model.zero_grad()
    model(x).square().sum().backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def randomise_lora_b(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)


def test_registry_lists_and_round_trips():
    assert {"explora", "lora", "linear", "full"} <= set(list_strategies())
    cfg = create_strategy("explora", unfreeze_blocks=[0, -1], lora_rank=4, train_patch_embed=True)
    again = strategy_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict()["name"] == "explora"
    with pytest.raises(GeoExploraError, match="unknown strategy 'adapter'"):
        create_strategy("adapter")
    with pytest.raises(GeoExploraError, match=r"no options \['rank'\]"):
        create_strategy("lora", rank=4)
    with pytest.raises(GeoExploraError, match="lora_rank must be a positive integer, got 0"):
        create_strategy("explora", lora_rank=0)


def test_explora_defaults_follow_the_published_recipe():
    cfg = create_strategy("explora")
    assert (cfg.unfreeze_blocks, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) == ([-1], 64, 1.0, 0.0)


@pytest.mark.parametrize("name, kwargs", [
    ("explora", {"lora_rank": 4}), ("lora", {"lora_rank": 4}), ("linear", {}), ("full", {}),
])
def test_strategy_starts_at_the_base_function(name, kwargs):
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        adapted = create_strategy(name, **kwargs).apply(model)
        assert adapted is model
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)


def test_explora_trains_exactly_the_intended_parameters():
    model = create_strategy("explora", lora_rank=4, unfreeze_blocks=[-1]).apply(tiny())
    names = trainable(model)
    lora = {n for n in names if ".lora_" in n}
    assert lora == {f"blocks.{i}.attn.qkv.{p}.lora_{ab}.default.weight"
                    for i in range(3) for p in "qv" for ab in "AB"}
    assert not any(".qkv.k." in n and "lora" in n for n, _ in model.named_parameters())  # K has no adapter
    assert {n for n in names if n.startswith("blocks.3.")} == {n for n, _ in model.named_parameters()
                                                               if n.startswith("blocks.3.")}
    norms = {f"blocks.{i}.{m}.{w}" for i in range(3) for m in ("norm1", "norm2") for w in ("weight", "bias")}
    assert names - lora - {n for n in names if n.startswith("blocks.3.")} == norms | {"cls_token", "norm.weight", "norm.bias"}
    # gradients reach exactly the trainable set (LoRA A gets none while B = 0: randomise B first)
    randomise_lora_b(model)
    reached = grads(model, torch.randn(2, 3, 32, 32))
    assert reached <= names
    assert {n for n in names if "lora_A" in n or n.startswith("blocks.3.")} <= reached


def test_explora_patch_embed_trains_only_when_bands_differ():
    rgb = create_strategy("explora", lora_rank=4).apply(tiny())
    assert not any(n.startswith("patch_embed.") for n in trainable(rgb))
    ms = create_strategy("explora", lora_rank=4).apply(tiny(bands=["B02", "B03", "B04", "B08"]))
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias"} <= trainable(ms)
    forced = create_strategy("explora", lora_rank=4, train_patch_embed=True).apply(tiny())
    assert "patch_embed.proj.weight" in trainable(forced)


@pytest.mark.parametrize("blocks", [[4], [-5], [0, 7]])
def test_explora_block_index_out_of_range_is_an_error(blocks):
    bad = next(i for i in blocks if not -4 <= i < 4)
    with pytest.raises(GeoExploraError, match=rf"block index {bad} out of range for a model of depth 4"):
        create_strategy("explora", unfreeze_blocks=blocks).apply(tiny())


def test_lora_linear_full_trainable_sets():
    lora = create_strategy("lora", lora_rank=4).apply(tiny())
    assert trainable(lora) == {f"blocks.{i}.attn.qkv.{p}.lora_{ab}.default.weight"
                               for i in range(4) for p in "qv" for ab in "AB"}
    assert trainable(create_strategy("linear").apply(tiny())) == set()
    full = create_strategy("full").apply(tiny())
    assert trainable(full) == {n for n, _ in full.named_parameters()}


def test_lora_can_train_the_patch_embedding_too():
    lora_ids = {f"blocks.{i}.attn.qkv.{p}.lora_{ab}.default.weight" for i in range(4) for p in "qv" for ab in "AB"}
    model = create_strategy("lora", lora_rank=4, train_patch_embed=True).apply(tiny(bands=["B02", "B03", "B04", "B08"]))
    assert trainable(model) == lora_ids | {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert grads(model, torch.randn(2, 4, 32, 32)) >= {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert trainable(create_strategy("lora", lora_rank=4, train_patch_embed=None).apply(tiny())) == lora_ids


def test_head_stays_trainable():
    model = tiny()
    model.reset_classifier(5)
    create_strategy("linear").apply(model)
    assert trainable(model) == {"head.weight", "head.bias"}


def test_merge_unmerge_round_trip_and_merged_export():
    model = create_strategy("explora", lora_rank=4).apply(tiny())
    randomise_lora_b(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        adapted = model(x)
        state = export_merged_state_dict(model)
        merge_lora(model)
        assert all(m.merged for m in model.modules() if isinstance(m, LoraLayer))
        torch.testing.assert_close(model(x), adapted, rtol=0, atol=1e-5)
        unmerge_lora(model)
        torch.testing.assert_close(model(x), adapted, rtol=0, atol=1e-5)
        # the export is plain timm: fused qkv keys, loads strictly, same function
        assert "blocks.0.attn.qkv.weight" in state and not any("lora" in k or ".q." in k for k in state)
        plain = timm.create_model("vit_base_patch16_224", num_classes=0, img_size=32, embed_dim=64, depth=4,
                                  num_heads=4, patch_size=8, dynamic_img_size=True).eval()
        plain.load_state_dict(state)
        torch.testing.assert_close(plain(x), adapted, rtol=0, atol=1e-5)
        assert (plain(x) - tiny()(x)).abs().max() > 1e-3  # the LoRA update is really in the export


def test_merge_refuses_nan():
    model = create_strategy("lora", lora_rank=4).apply(tiny())
    with torch.no_grad():
        model.blocks[0].attn.qkv.q.lora_B.default.weight.fill_(float("nan"))
    with pytest.raises(GeoExploraError, match="cannot merge LoRA"):
        merge_lora(model)
