"""Typed checkpoints (format 2): what is stored, lineage and path resolution, format 1, bad files, determinism."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from geoexplora.data.stats import BandStat, BandStatistics
from geoexplora.errors import GeoExploraError
from geoexplora.models import (
    CheckpointConfig,
    Preprocessing,
    TaskConfig,
    load_model,
    make_classes,
    read_checkpoint,
    save_checkpoint,
)
from geoexplora.models.backbone import BackboneConfig, create_backbone
from geoexplora.models.lineage import file_sha256
from geoexplora.models.strategies import create_strategy

TINY = dict(model="vit_base_patch16_224", embed_dim=64, depth=2, num_heads=4, patch_size=8, img_size=32)
BANDS = ("B02", "B03", "B04", "B08")
FORMAT1 = Path(__file__).parent / "fixtures" / "format1"
STATS = BandStatistics({b: BandStat(100.0 * (i + 1), 10.0, 90.0, 110.0) for i, b in enumerate(BANDS)}, 100, 2)


@pytest.fixture
def source(tmp_path):
    """A local source weights file (stands in for a pretrained download)."""
    torch.manual_seed(0)
    path = tmp_path / "weights" / "source.safetensors"
    path.parent.mkdir()
    save_file(create_backbone(BackboneConfig(**TINY)).state_dict(), path)
    return path


def trained(weights: Path | None, strategy_name: str = "explora", **options):
    backbone = BackboneConfig(**TINY, weights=None if weights is None else str(weights), bands=list(BANDS),
                              sensor="sentinel2")
    strategy = create_strategy(strategy_name, **options)
    model = strategy.apply(create_backbone(backbone))
    with torch.no_grad():  # pretend training moved every trainable tensor
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    config = CheckpointConfig(backbone, strategy, TaskConfig("pretrain", objective="dinov2", steps=5),
                              Preprocessing(BANDS, STATS, "percentile", 32))
    return model.eval(), config


def test_round_trip_stores_trained_tensors_and_lineage(tmp_path, source):
    model, config = trained(source, lora_rank=4)
    save_checkpoint(tmp_path / "ckpt", model, config)
    saved = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks.0.attn.qkv.k.weight" not in saved and "blocks.1.attn.qkv.k.weight" in saved
    data = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert data["format_version"] == 2 and data["geoexplora_version"]
    assert data["lineage"]["source_weights"] == {"path": "../weights/source.safetensors",
                                                 "sha256": file_sha256(source), "size": source.stat().st_size}
    assert data["backbone"]["weights"] == "../weights/source.safetensors" and data["lineage"]["stored"] == "trained"
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config.strategy == config.strategy and loaded.task == config.task
    assert loaded.preprocessing == config.preprocessing and loaded.preprocessing.normalizer().mode == "percentile"
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_moved_checkpoint_finds_its_weights_relative_to_itself_then_in_the_search_path(tmp_path, source, monkeypatch):
    model, config = trained(source, lora_rank=4)
    save_checkpoint(tmp_path / "ckpt", model, config)
    moved = tmp_path / "elsewhere" / "deep"
    moved.mkdir(parents=True)
    shutil.copytree(tmp_path / "ckpt", moved / "ckpt")
    monkeypatch.chdir(moved)
    with pytest.raises(GeoExploraError, match=r"config.json: source weights ../weights/source.safetensors not found "
                                              r"\(looked in .*\); pass --weights-dir DIR"):
        load_model(moved / "ckpt")
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        reference = model(x)
        assert torch.equal(load_model(moved / "ckpt", weights_dir=source.parent).model(x), reference)
        monkeypatch.setenv("GEOEXPLORA_WEIGHTS", str(source.parent))
        assert torch.equal(load_model(moved / "ckpt").model(x), reference)
        shutil.copytree(source.parent, moved / "weights")  # the same layout as at training
        monkeypatch.delenv("GEOEXPLORA_WEIGHTS")
        assert torch.equal(load_model(moved / "ckpt").model(x), reference)


def test_changed_source_weights_are_refused_naming_both_files(tmp_path, source):
    model, config = trained(source, lora_rank=4)
    save_checkpoint(tmp_path / "ckpt", model, config)
    state = load_file(source)
    state["norm.weight"] = state["norm.weight"] + 1
    save_file(state, source)
    with pytest.raises(GeoExploraError) as error:
        load_model(tmp_path / "ckpt")
    message = str(error.value)
    assert "\n" not in message and str(source) in message and str(tmp_path / "ckpt" / "config.json") in message
    assert "sha256" in message and "differs" in message


def test_random_base_is_stored_in_full_and_every_load_is_the_same_network(tmp_path):
    model, config = trained(None, "lora", lora_rank=2)
    save_checkpoint(tmp_path / "ckpt", model, config)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["lineage"]["stored"] == "full"
    first, second = load_model(tmp_path / "ckpt"), load_model(tmp_path / "ckpt")
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and len(a) > 20
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        outputs = [m.model(x).numpy().tobytes() for m in (first, second)]
        assert outputs[0] == outputs[1] == model(x).numpy().tobytes()


def test_classes_keep_label_values_names_and_colours(tmp_path):
    classes = make_classes(["water", "forest"], values=[1, 7], colors=["#0000ff", [0, 128, 0]])
    assert [(c.value, c.name, c.color) for c in classes] == [(1, "water", (0, 0, 255)), (7, "forest", (0, 128, 0))]
    assert make_classes(["a", "b"])[1].color == (255, 127, 14)  # the fixed default palette
    with pytest.raises(GeoExploraError, match="class colour 'blue'"):
        make_classes(["a"], colors=["blue"])
    with pytest.raises(GeoExploraError, match="distinct"):
        make_classes(["a", "b"], values=[3, 3])


def test_format1_fixture_loads_and_computes_what_format1_computed(monkeypatch):
    monkeypatch.chdir(FORMAT1.parent)
    with pytest.raises(GeoExploraError, match=r"segmentation/config.json: parent checkpoint /home/user/runs/pretrain not "
                                              r"found .*--weights-dir"):
        load_model(FORMAT1 / "segmentation")
    model = load_model(FORMAT1 / "segmentation", weights_dir=FORMAT1)
    assert model.config.format_version == 1 and model.task.kind == "segmentation"
    assert [c.name for c in model.classes] == ["water", "forest", "urban"] and model.classes[2].value == 2
    assert model.preprocessing.statistics.bands["nir"].mean == 400.0
    expected = load_file(FORMAT1 / "expected.safetensors")
    with torch.no_grad():
        # Float tolerance: the fixture was computed with one thread; a CPU's thread count changes summation order.
        assert torch.allclose(model.model(expected["input"]), expected["logits"], atol=1e-5, rtol=0)


def test_bad_checkpoints_are_one_line_errors(tmp_path, source):
    model, config = trained(source, lora_rank=4)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(GeoExploraError, match="ckpt: no such checkpoint folder"):
        load_model(ckpt)
    ckpt.mkdir()
    with pytest.raises(GeoExploraError, match="config.json: checkpoint config not found"):
        load_model(ckpt)
    save_checkpoint(ckpt, model, config)
    weights = ckpt / "model.safetensors"
    good = weights.read_bytes()
    torch.save({n: p.detach() for n, p in model.named_parameters()}, weights)  # a pickle, not safetensors
    with pytest.raises(GeoExploraError, match="model.safetensors: not a safetensors file"):
        load_model(ckpt)
    weights.unlink()
    with pytest.raises(GeoExploraError, match="model.safetensors: checkpoint weights not found"):
        load_model(ckpt)
    weights.write_bytes(good)
    path = ckpt / "config.json"
    text = path.read_text()
    path.write_text(text[:-20])
    with pytest.raises(GeoExploraError, match="config.json: not a geoexplora checkpoint config"):
        load_model(ckpt)
    for change, message in [
        (lambda d: d["strategy"].update(lora_rank=8), "model.safetensors: does not fit.*shape mismatch"),
        (lambda d: d.update(format_version=3), "config.json: checkpoint format 3 is newer .* upgrade geoexplora"),
        (lambda d: d.pop("preprocessing"), "config.json: missing section 'preprocessing'"),
        (lambda d: d["task"].update(kind="detection"), "config.json: task kind 'detection'"),
    ]:
        data = json.loads(text)
        change(data)
        path.write_text(json.dumps(data))
        with pytest.raises(GeoExploraError, match=message) as error:
            load_model(ckpt)
        assert "\n" not in str(error.value)
    with pytest.raises(GeoExploraError, match="save_checkpoint needs a CheckpointConfig"):
        save_checkpoint(ckpt, model, {"backbone": config.backbone})


def test_read_checkpoint_needs_no_weights(tmp_path, source):
    model, config = trained(source, lora_rank=4)
    save_checkpoint(tmp_path / "ckpt", model, config)
    source.unlink()
    assert read_checkpoint(tmp_path / "ckpt").lineage.source_weights.path == "../weights/source.safetensors"
