"""Backbone factory: config validation, source weights carried over exactly, bad weights refused."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import checkpoint_filter_fn

from geoexplora.errors import GeoExploraError
from geoexplora.models.backbone import BackboneConfig, create_backbone
from geoexplora.models.date_encoding import stack_dates

from shared_paths import DINOV2_WEIGHTS

DINOV2 = str(DINOV2_WEIGHTS)
TINY = dict(model="vit_small_patch14_dinov2", embed_dim=64, depth=4, num_heads=4, patch_size=8, img_size=32)


@pytest.fixture(scope="module")
def dinov2_reference(dinov2_weights) -> torch.nn.Module:
    """timm's own ViT-S/14 at 56 px with the real DINOv2 weights, loaded timm's way."""
    model = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=56, dynamic_img_size=True)
    model.load_state_dict(checkpoint_filter_fn(load_file(DINOV2), model))
    return model.eval()


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    model = create_backbone(BackboneConfig(**TINY))
    path = tmp_path / "tiny.safetensors"
    save_file(model.state_dict(), path)
    return path, model.eval()


@pytest.mark.parametrize("embed, extra", [
    ("spectral", {}),
    ("group", {"band_groups": [["red", "green", "blue"]]}),
    ("temporal", {"num_frames": 1}),
])
def test_rgb_backbone_equals_source_model(dinov2_reference, embed, extra):
    model = create_backbone(BackboneConfig(weights=DINOV2, img_size=56, embed=embed, **extra)).eval()
    x = torch.randn(2, 3, 56, 56)
    x_in = x[:, None] if embed == "temporal" else x
    with torch.no_grad(), stack_dates(model, torch.tensor([[17_000]])):
        torch.testing.assert_close(model.forward_features(x_in), dinov2_reference.forward_features(x), rtol=0, atol=1e-6)
        # dynamic image size: another grid still matches (positions resampled the same way)
        y = torch.randn(1, 3, 70, 42)
        y_in = y[:, None] if embed == "temporal" else y
        torch.testing.assert_close(model(y_in), dinov2_reference(y), rtol=0, atol=1e-5)


def test_multispectral_backbone_carries_rgb_kernel(dinov2_reference):
    model = create_backbone(BackboneConfig(weights=DINOV2, img_size=56, bands=["B02", "B03", "B04", "B08"]))
    ref = dinov2_reference.patch_embed.proj.weight
    got = model.patch_embed.proj.weight
    scale = got[:, 2].flatten(1).norm(dim=1) / ref[:, 0].flatten(1).norm(dim=1)
    torch.testing.assert_close(got[:, 2], ref[:, 0] * scale.view(-1, 1, 1))  # B04 <- red
    torch.testing.assert_close(model.blocks[3].attn.qkv.weight, dinov2_reference.blocks[3].attn.qkv.weight)
    assert model(torch.randn(1, 4, 56, 56)).shape == (1, 384)


def test_group_and_temporal_token_counts():
    groups = create_backbone(BackboneConfig(**TINY, bands=["B02", "B03", "B04", "B05", "B06"], embed="group",
                                            band_groups=[["B02", "B03", "B04"], ["B05", "B06"]]))
    assert groups.forward_features(torch.randn(2, 5, 32, 32)).shape == (2, 1 + 2 * 16, 64)
    temporal = create_backbone(BackboneConfig(**TINY, embed="temporal", num_frames=3))
    with stack_dates(temporal, torch.tensor([[1, 2, 3], [4, 5, 6]])):
        assert temporal.forward_features(torch.randn(2, 3, 3, 32, 32)).shape == (2, 1 + 3 * 16, 64)


def test_pth_with_model_wrapper_loads_like_safetensors(tmp_path, tiny_weights):
    path, source = tiny_weights
    pth = tmp_path / "tiny.pth"
    torch.save({"model": load_file(path), "epoch": 3}, pth)
    model = create_backbone(BackboneConfig(**TINY, weights=str(pth))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


class _Arbitrary:
    pass


def test_pickle_with_objects_is_refused(tmp_path, tiny_weights):
    pth = tmp_path / "evil.pth"
    torch.save({"model": load_file(tiny_weights[0]), "obj": _Arbitrary()}, pth)
    with pytest.raises(GeoExploraError, match=r"evil\.pth: not a plain state dict"):
        create_backbone(BackboneConfig(**TINY, weights=str(pth)))


@pytest.mark.parametrize("override, message", [
    ({"depth": 3}, r"unexpected \['blocks\.3\."),
    ({"depth": 5}, r"missing \['blocks\.4\."),
    ({"embed_dim": 32, "num_heads": 2}, "shape mismatch"),
])
def test_weights_for_another_architecture_are_refused(tiny_weights, override, message):
    with pytest.raises(GeoExploraError, match=rf"tiny\.safetensors: weights do not fit.*{message}"):
        create_backbone(BackboneConfig(**{**TINY, **override}, weights=str(tiny_weights[0])))


def test_missing_and_corrupt_weight_files(tmp_path):
    with pytest.raises(GeoExploraError, match="nope.safetensors: weights file not found"):
        create_backbone(BackboneConfig(**TINY, weights=str(tmp_path / "nope.safetensors")))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(GeoExploraError, match="bad.safetensors: not a readable safetensors file"):
        create_backbone(BackboneConfig(**TINY, weights=str(bad)))


def test_weights_by_name_use_timm_pretrained_machinery(monkeypatch, dinov2_reference):
    calls = []

    def fake_hf(*args, **kwargs):
        calls.append(args)
        return load_file(DINOV2)

    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf", fake_hf)
    model = create_backbone(BackboneConfig(weights="timm", img_size=56)).eval()
    assert calls and "dinov2" in str(calls[0])
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dinov2_reference(x), rtol=0, atol=1e-6)


def test_unknown_model_lists_close_names():
    with pytest.raises(GeoExploraError, match="unknown timm model 'vit_smal_patch14_dinov2'.*vit_small_patch14_dinov2"):
        create_backbone(BackboneConfig(model="vit_smal_patch14_dinov2"))


@pytest.mark.parametrize("kwargs, message", [
    ({"bands": ["red", "red"]}, r"\['red', 'red'\]"),
    ({"embed": "pixel"}, "'pixel'"),
    ({"embed": "group"}, "band_groups is required"),
    ({"embed": "group", "band_groups": [["red"]]}, "exactly once"),
    ({"num_frames": 2}, "num_frames"),
    ({"img_size": 0}, "img_size must be a positive integer, got 0"),
    ({"weights": "model.onnx"}, "'model.onnx'"),
    ({"sensor": "modis"}, "unknown sensor 'modis'"),
])
def test_config_validation_quotes_bad_values(kwargs, message):
    with pytest.raises(GeoExploraError, match=message):
        BackboneConfig(**kwargs)


def test_config_json_round_trip_and_source_objective():
    cfg = BackboneConfig(model="vit_base_patch16_224.mae", bands=["B02", "B03", "B04", "B08"], embed="group",
                         band_groups=[["B02", "B03", "B04"], ["B08"]], sensor="sentinel2", img_size=96)
    again = BackboneConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert cfg.source_objective == "mae"
    assert BackboneConfig().source_objective == "dinov2"
    assert BackboneConfig(model="vit_base_patch16_224").source_objective is None
    with pytest.raises(GeoExploraError, match="unknown backbone config keys"):
        BackboneConfig.from_dict({**cfg.to_dict(), "colour": 1})
