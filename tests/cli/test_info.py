"""``geoexplora info``: the published parameter figures, JSON output, checkpoints and one-line errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import save_file

from geoexplora.cli import main
from geoexplora.models import (
    BackboneConfig,
    CheckpointConfig,
    Preprocessing,
    TaskConfig,
    create_backbone,
    create_strategy,
    save_checkpoint,
)

TINY = dict(model="vit_base_patch16_224", embed_dim=64, depth=4, num_heads=4, patch_size=8, img_size=32)


def _info_json(capsys, *args: str) -> dict:
    assert main(["info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_vit_b14_explora_defaults_published_figures(capsys):
    info = _info_json(capsys, "--backbone", "vit_base_patch14_dinov2")
    assert info["trainable_params"] == pytest.approx(9.2e6, rel=0.02)
    assert info["base_params"] == pytest.approx(86.6e6, rel=0.005)
    assert info["trainable_share"] == pytest.approx(0.106, abs=0.003)
    assert info["groups"]["blocks.11 (unfrozen)"] == 7_089_408


def test_vit_l14_explora_defaults_published_figures(capsys):
    info = _info_json(capsys, "--backbone", "vit_large_patch14_dinov2")
    assert info["trainable_params"] == pytest.approx(18.7e6, rel=0.01)
    assert info["base_params"] == pytest.approx(304e6, rel=0.005)
    assert info["trainable_share"] == pytest.approx(0.06, abs=0.002)


def test_bands_and_strategy_options(capsys):
    info = _info_json(capsys, "--backbone", "vit_small_patch14_dinov2", "--model-bands", "B02,B03,B04,B08",
                      "--sensor", "sentinel2", "--unfreeze-blocks", "10,11", "--lora-rank", "16")
    assert info["backbone"]["bands"] == ["B02", "B03", "B04", "B08"]
    assert info["strategy"]["unfreeze_blocks"] == [10, 11] and info["strategy"]["lora_rank"] == 16
    assert "blocks.10 (unfrozen)" in info["groups"] and "patch_embed" in info["groups"]
    info = _info_json(capsys, "--backbone", "vit_small_patch14_dinov2", "--in-chans", "13", "--strategy", "linear")
    assert info["trainable_params"] == 0 and len(info["backbone"]["bands"]) == 13


def test_human_output_names_groups(capsys):
    assert main(["info", "--backbone", "vit_small_patch14_dinov2"]) == 0
    out = capsys.readouterr().out
    assert "blocks.11 (unfrozen)" in out and "lora q,v on blocks 0-10" in out and "trainable" in out


def test_checkpoint_info_shows_what_was_trained(tmp_path, capsys):
    cfg = BackboneConfig(**TINY, bands=["B1", "B2"])
    strategy = create_strategy("explora", lora_rank=4)
    weights = tmp_path / "source.safetensors"
    save_file(create_backbone(BackboneConfig(**TINY)).state_dict(), weights)
    cfg = replace(cfg, weights=str(weights))
    save_checkpoint(tmp_path / "ckpt", strategy.apply(create_backbone(cfg)),
                    CheckpointConfig(cfg, strategy, TaskConfig("pretrain"), Preprocessing(("B1", "B2"), None)))
    info = _info_json(capsys, "--checkpoint", str(tmp_path / "ckpt"))
    assert info["stored_params"] == info["trainable_params"] > 0
    assert info["task"]["kind"] == "pretrain" and info["strategy"]["lora_rank"] == 4
    assert info["format_version"] == 2 and info["lineage"]["stored"] == "trained"
    assert info["lineage"]["source_weights"]["path"] == "../source.safetensors"
    assert main(["info", "--checkpoint", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "source weights  ../source.safetensors (sha256" in out and "task            pretrain" in out


@pytest.mark.parametrize("args, message", [
    (["--backbone", "vit_nonexistent_patch14"], "unknown timm model 'vit_nonexistent_patch14'"),
    (["--backbone", "vit_small_patch14_dinov2", "--unfreeze-blocks", "12"], "block index 12 out of range"),
    (["--backbone", "vit_small_patch14_dinov2", "--weights", "missing.safetensors"], "missing.safetensors"),
    (["--checkpoint", "no/such/dir"], "no/such/dir"),
])
def test_bad_input_is_one_line_error(capsys, args, message):
    assert main(["info", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_format1_checkpoint_info_reads_its_sections(capsys):
    fixture = Path(__file__).parents[1] / "models" / "fixtures" / "format1" / "segmentation"
    info = _info_json(capsys, "--checkpoint", str(fixture))
    assert info["format_version"] == 1 and info["task"]["kind"] == "segmentation"
    assert [c["name"] for c in info["classes"]] == ["water", "forest", "urban"]
    assert info["lineage"]["parent"]["path"] == "/home/user/runs/pretrain" and info["lineage"]["parent"]["sha256"] is None
