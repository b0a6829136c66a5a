"""Adapter-only checkpoints: only trained tensors saved, round trip identical, bad files refused."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.backbone import BackboneConfig, create_backbone
from geoexplora.models.checkpoint import load_checkpoint, save_checkpoint
from geoexplora.models.strategies import create_strategy

TINY = dict(model="vit_base_patch16_224", embed_dim=64, depth=4, num_heads=4, patch_size=8, img_size=32)


@pytest.fixture
def source(tmp_path):
    """A local source weights file (stands in for a pretrained download)."""
    torch.manual_seed(0)
    path = tmp_path / "source.safetensors"
    save_file(create_backbone(BackboneConfig(**TINY)).state_dict(), path)
    return str(path)


def trained(source, bands=("B02", "B03", "B04", "B08")):
    backbone = BackboneConfig(**TINY, weights=source, bands=list(bands), sensor="sentinel2")
    strategy = create_strategy("explora", lora_rank=4)
    model = strategy.apply(create_backbone(backbone))
    with torch.no_grad():  # pretend training moved every trainable tensor
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval(), backbone, strategy


def test_round_trip_is_identical_and_saves_only_trained_tensors(tmp_path, source):
    model, backbone, strategy = trained(source)
    extra = {"stats": {"B02": [0.1, 0.02]}, "task": "pretrain"}
    save_checkpoint(tmp_path / "ckpt", model, {"backbone": backbone, "strategy": strategy, "extra": extra})
    saved = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks.0.attn.qkv.k.weight" not in saved and "blocks.3.attn.qkv.k.weight" in saved
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded, config = load_checkpoint(tmp_path / "ckpt")
    assert config["backbone"] == backbone and config["strategy"] == strategy and config["extra"] == extra
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


def test_round_trip_with_a_head_via_wrap(tmp_path, source):
    model, backbone, strategy = trained(source, bands=("red", "green", "blue"))
    task = nn.Sequential(model, nn.Linear(64, 5))
    save_checkpoint(tmp_path / "c", task, {"backbone": backbone.to_dict(), "strategy": strategy.to_dict(),
                                           "extra": {"classes": list("abcde")}})
    assert {"1.weight", "1.bias"} <= set(load_file(tmp_path / "c" / "model.safetensors"))
    loaded, config = load_checkpoint(tmp_path / "c", wrap=lambda m, c: nn.Sequential(m, nn.Linear(64, len(c["extra"]["classes"]))))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), task(x))
    with pytest.raises(GeoExploraError, match=r"model\.safetensors: does not fit.*unexpected \['0\.blocks"):
        load_checkpoint(tmp_path / "c")  # without the head the file has tensors nobody expects


def test_bad_checkpoints_are_one_line_errors(tmp_path, source):
    model, backbone, strategy = trained(source)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(GeoExploraError, match="config.json: checkpoint config not found"):
        load_checkpoint(ckpt)
    save_checkpoint(ckpt, model, {"backbone": backbone, "strategy": strategy})
    weights = ckpt / "model.safetensors"
    good = weights.read_bytes()
    torch.save({n: p.detach() for n, p in model.named_parameters()}, weights)  # a pickle, not safetensors
    with pytest.raises(GeoExploraError, match="model.safetensors: not a safetensors file"):
        load_checkpoint(ckpt)
    weights.unlink()
    with pytest.raises(GeoExploraError, match="model.safetensors: checkpoint weights not found"):
        load_checkpoint(ckpt)
    weights.write_bytes(good)
    config = ckpt / "config.json"
    text = config.read_text()
    config.write_text(text[:-20])
    with pytest.raises(GeoExploraError, match="config.json: not a geoexplora checkpoint config"):
        load_checkpoint(ckpt)
    data = json.loads(text)
    data["strategy"]["lora_rank"] = 8  # another strategy than the tensors were trained with
    config.write_text(json.dumps(data))
    with pytest.raises(GeoExploraError, match="model.safetensors: does not fit.*shape mismatch"):
        load_checkpoint(ckpt)
    with pytest.raises(GeoExploraError, match="checkpoint config needs 'backbone' and 'strategy'"):
        save_checkpoint(ckpt, model, {"backbone": backbone})
