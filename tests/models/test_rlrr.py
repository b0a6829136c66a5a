"""RLRR: identity at init, gradients reach the scales, merged plain model equals the reparametrised one."""

from __future__ import annotations

import copy

import timm
import torch

from geoexplora.models import BackboneConfig, create_backbone, create_strategy, merge_rlrr, parameter_report
from geoexplora.models.strategies import RLRRLinear, RLRRNorm

BANDS = ["red", "green", "blue", "nir"]


def tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = BackboneConfig(model="vit_base_patch16_224", embed_dim=64, depth=4, num_heads=4, patch_size=8,
                         img_size=32, bands=BANDS)
    return create_backbone(cfg).eval()


def test_rlrr_starts_at_the_pretrained_function() -> None:
    model = tiny_backbone()
    x = torch.randn(2, len(BANDS), 32, 32)
    with torch.no_grad():
        before = model.forward_features(x)
        create_strategy("rlrr").apply(model)
        after = model.forward_features(x)
    assert torch.equal(before, after)
    assert sum(isinstance(m, RLRRLinear) for m in model.modules()) == 4 * 4
    assert sum(isinstance(m, RLRRNorm) for m in model.modules()) == 4 * 2 + 1


def test_gradients_reach_s_out_and_only_rlrr_vectors_train() -> None:
    model = create_strategy("rlrr").apply(tiny_backbone())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.rsplit(".", 1)[1] in {"s_out", "s_in", "bias_shift", "scale", "shift"}
                             for n in trainable)
    model.forward_features(torch.randn(2, len(BANDS), 32, 32)).square().mean().backward()
    assert model.blocks[0].attn.qkv.s_out.grad.abs().sum() > 0
    assert model.blocks[1].mlp.fc2.bias_shift.grad.abs().sum() > 0


def test_merged_plain_model_equals_the_trained_reparametrised_one() -> None:
    model = create_strategy("rlrr").apply(tiny_backbone())
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x = torch.randn(2, len(BANDS), 32, 32)
    for _ in range(3):
        optimiser.zero_grad()
        model.forward_features(x).square().mean().backward()
        optimiser.step()
    assert model.blocks[0].attn.qkv.s_in.detach().ne(1).any()
    with torch.no_grad():
        expected = model.forward_features(x)
        merged = merge_rlrr(copy.deepcopy(model))
        got = merged.forward_features(x)
    assert not any(isinstance(m, (RLRRLinear, RLRRNorm)) for m in merged.modules())
    plain = timm.create_model("vit_base_patch16_224", num_classes=0)
    assert set(merged.state_dict()) - {"patch_embed.proj.weight", "patch_embed.proj.bias"} <= set(plain.state_dict())
    assert (expected - got).abs().max().item() < 1e-5


def test_vit_base_trainable_count() -> None:
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=0)
    report = parameter_report(create_strategy("rlrr").apply(model))
    assert report.trainable_params == 268_800  # 12 x (19,200 Linear + 3,072 norm) + 1,536 final norm
