"""Fused qkv split into q, k, v and fused back: the same function, timm's keys restored."""

import torch
from torch import nn

from geoexplora.models.backbone import BackboneConfig, create_backbone
from geoexplora.models.qkv import QKVLinear, fuse_qkv, split_qkv

# no LayerScale (DINOv2 starts its blocks at 1e-5), so every block really shapes the output
TINY = dict(model="vit_base_patch16_224", embed_dim=64, depth=4, num_heads=4, patch_size=8, img_size=32)


def test_split_is_the_same_linear():
    torch.manual_seed(0)
    fused = nn.Linear(16, 48)
    split = QKVLinear.from_fused(fused)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(split(x), fused(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(split.k.weight, fused.weight[16:32], rtol=0, atol=0)
    torch.testing.assert_close(split.v.bias, fused.bias[32:], rtol=0, atol=0)
    back = split.fuse()
    assert torch.equal(back.weight, fused.weight) and torch.equal(back.bias, fused.bias)


def test_split_and_fuse_model_keys_and_output():
    torch.manual_seed(0)
    model = create_backbone(BackboneConfig(**TINY)).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        split_qkv(model)
        split_qkv(model)  # idempotent
        assert "blocks.0.attn.qkv.q.weight" in model.state_dict()
        assert "blocks.0.attn.qkv.weight" not in model.state_dict()
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
        fuse_qkv(model)
    assert model.state_dict().keys() == original.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
