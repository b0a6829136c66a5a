"""Parameter report reproduces the published ExPLoRA figures (real architectures on the meta device)."""

import pytest
import torch

from geoexplora.models.backbone import BackboneConfig, create_backbone
from geoexplora.models.params import parameter_report
from geoexplora.models.strategies import create_strategy


def explora_report(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = create_backbone(BackboneConfig(model=name, img_size=518))  # timm's DINOv2 default grid, 37 x 37
        create_strategy("explora").apply(model)
    return parameter_report(model)


def test_vit_b14_explora_defaults():
    report = explora_report("vit_base_patch14_dinov2")
    assert report.total_params - report.adapter_params == 86_579_712  # about 86.6 M
    assert report.trainable_params == 9_288_192  # about 9.2-9.3 M
    assert report.groups == {
        "blocks.11 (unfrozen)": 7_089_408,  # 7.09 M
        "lora q,v on blocks 0-10": 2_162_688,  # 11 blocks x 2 x (64 x 768) x 2 = 2.16 M
        "norms": 35_328,
        "cls_token": 768,
    }
    assert report.trainable_share == pytest.approx(9_288_192 / 88_742_400)
    assert 0.104 < report.trainable_params / (report.total_params - report.adapter_params) < 0.108


def test_vit_l14_explora_defaults():
    report = explora_report("vit_large_patch14_dinov2")
    assert report.total_params - report.adapter_params == pytest.approx(304e6, rel=0.002)
    assert report.trainable_params == pytest.approx(18.7e6, rel=0.005)
    assert report.trainable_share == pytest.approx(0.06, abs=0.002)
    assert list(report.groups)[:2] == ["blocks.23 (unfrozen)", "lora q,v on blocks 0-22"]


def test_report_to_dict_and_text():
    report = explora_report("vit_base_patch14_dinov2")
    d = report.to_dict()
    assert d["trainable_params"] == 9_288_192 and d["groups"]["cls_token"] == 768
    assert "blocks.11 (unfrozen): 7.09M" in str(report)
    assert "lora q,v on blocks 0-10: 2.16M" in str(report)
