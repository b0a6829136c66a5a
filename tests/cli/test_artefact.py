"""A fine-tuned checkpoint as one artefact: moved, exported (merged weights, ONNX), and outputs that carry
their classes (label values, colour table, names) and provenance."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import fake_rasters
from geoexplora.cli import main
from geoexplora.data import GeoRasterDataset, compute_band_statistics
from geoexplora.data.stats import band_statistics_from_pixels
from geoexplora.errors import GeoExploraError
from geoexplora.inference.model_predict import band_indexes
from geoexplora.models import (
    BackboneConfig,
    CheckpointConfig,
    Preprocessing,
    TaskConfig,
    create_backbone,
    create_strategy,
    load_model,
    register_strategy,
    save_checkpoint,
)
from geoexplora.models.export import onnx_parity
from geoexplora.models.lineage import checkpoint_sha256
from geoexplora.models.strategies import StrategyConfig
from geoexplora.tasks.finetune import FinetuneTask
from shared_paths import SHARED_DATA

BANDS = ["red", "green", "blue", "nir"]
TINY = dict(embed_dim=64, depth=2, num_heads=4, patch_size=8, img_size=32)
CLASSES = ["water", "forest", "urban"]
VALUES = [1, 5, 7]
COLORS = [(0, 0, 255), (0, 160, 0), (128, 128, 128)]
BIGEARTHNET_PATCH = SHARED_DATA / "bigearthnet_tiny" / "S2A_MSIL2A_20170617T113321_36_85"


def perturb(module: nn.Module, seed: int) -> nn.Module:
    """Pretend training moved every trainable tensor."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return module


def finetuned(root: Path, parent: Path, stats, strategy: str = "lora", **head: object) -> Path:
    """A segmentation fine-tune of ``parent`` with label values 1, 5, 7, saved as the trainer would."""
    task = FinetuneTask(task="segmentation", init_checkpoint=str(parent), strategy=strategy,
                        strategy_options={"lora_rank": 2} if strategy == "lora" else {}, classes=CLASSES,
                        class_colors=[list(c) for c in COLORS], **head)
    perturb(task.model, 1)
    task.band_statistics, task.normalization, task.class_values = stats.to_dict(), "standardize", VALUES
    return save_checkpoint(root, task.export_model(), task.export_config())


def pretrained(root: Path, weights: Path, bands: list[str], stats, sensor: str | None = None) -> Path:
    """An ExPLoRA pre-training checkpoint over ``weights``."""
    cfg = BackboneConfig(model="vit_base_patch16_224", weights=str(weights), bands=bands, sensor=sensor, **TINY)
    strategy = create_strategy("explora", lora_rank=4)
    model = perturb(strategy.apply(create_backbone(cfg)), 0)
    config = CheckpointConfig(cfg, strategy, TaskConfig("pretrain", objective="dinov2"),
                              Preprocessing(tuple(bands), stats, "standardize", 32))
    return save_checkpoint(root, model, config)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``weights/vit.safetensors`` -> ``runs/pre`` (ExPLoRA) -> ``runs/ft`` (LoRA segmentation), a scene."""
    root = tmp_path_factory.mktemp("chain")
    scene = fake_rasters.write_raster(root / "scene.tif", width=90, height=70, count=4, nodata=-9999.0,
                                      nodata_border=3, descriptions=BANDS)
    torch.manual_seed(0)
    weights = root / "weights" / "vit.safetensors"
    weights.parent.mkdir()
    save_file(timm.create_model("vit_base_patch16_224", num_classes=0, **TINY).state_dict(), weights)
    stats = compute_band_statistics(GeoRasterDataset(scene), num_windows=4, window_size=32)
    pretrained(root / "runs" / "pre", weights, BANDS, stats)
    finetuned(root / "runs" / "ft", root / "runs" / "pre", stats, segmentation_head="linear")
    return root


def predict(checkpoint: Path, scene: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--raster", str(scene), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--tile", "32", "--overlap", "8", "--no-preview", *extra])


@pytest.fixture(scope="module")
def reference(chain: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The class map of the checkpoint where it was trained."""
    out = tmp_path_factory.mktemp("reference") / "pred.tif"
    assert predict(chain / "runs" / "ft", chain / "scene.tif", out) == 0
    return out


def pixels(path: Path) -> bytes:
    with rasterio.open(path) as src:
        return src.read().tobytes()


def one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert all(n in err for n in needles), err
    return err


def test_outputs_carry_label_values_colours_names_and_provenance(chain, tmp_path, capsys):
    out = tmp_path / "pred.tif"
    assert predict(chain / "runs" / "ft", chain / "scene.tif", out, "--probabilities",
                   "--vector", str(tmp_path / "pred.gpkg")) == 0
    sha = checkpoint_sha256(chain / "runs" / "ft")
    with rasterio.open(out) as pred:
        values = set(np.unique(pred.read(1)).tolist())
        assert values - {255} and values <= {*VALUES, 255}
        colormap = pred.colormap(1)
        assert [colormap[v] for v in VALUES] == [(*c, 255) for c in COLORS]
        assert {k: v for k, v in pred.tags(1).items() if k.startswith("class_")} == {
            f"class_{v}": n for v, n in zip(VALUES, CLASSES)}
        tags = pred.tags()
        assert tags["checkpoint_sha256"] == sha and tags["tile"] == "32" and tags["overlap"] == "8"
        assert tags["geoexplora_version"] and tags["mode"] == "segmentation"
    with rasterio.open(tmp_path / "pred.probabilities.tif") as probs:
        assert probs.descriptions == tuple(CLASSES) and probs.tags(2) == {"class_value": "5", "class_name": "forest"}
        assert probs.tags()["checkpoint_sha256"] == sha
    polygons = gpd.read_file(tmp_path / "pred.gpkg")
    assert set(polygons["class_id"]) <= set(VALUES)
    assert all(dict(zip(VALUES, CLASSES))[i] == n for i, n in zip(polygons["class_id"], polygons["class_name"]))
    if shutil.which("gdalinfo"):
        info = subprocess.run(["gdalinfo", str(out)], capture_output=True, text=True, check=True).stdout
        assert "Color Table" in info and "class_5=forest" in info


def test_moved_checkpoint_predicts_the_same_class_map(chain, reference, tmp_path, monkeypatch, capsys):
    fresh = tmp_path / "fresh"
    shutil.copytree(chain / "runs", fresh / "runs")
    shutil.copytree(chain / "weights", fresh / "weights")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert predict(fresh / "runs" / "ft", chain / "scene.tif", tmp_path / "moved.tif") == 0
    assert (tmp_path / "moved.tif").read_bytes() == reference.read_bytes()
    capsys.readouterr()

    lonely = tmp_path / "lonely" / "ft"
    shutil.copytree(chain / "runs" / "ft", lonely)
    assert predict(lonely, chain / "scene.tif", tmp_path / "lonely.tif") == 2
    one_line_error(capsys, "ft/config.json: parent checkpoint ../pre not found", "--weights-dir")
    assert not list(tmp_path.glob("lonely.tif*"))
    assert predict(lonely, chain / "scene.tif", tmp_path / "found.tif", "--weights-dir", str(fresh / "runs")) == 0
    assert (tmp_path / "found.tif").read_bytes() == reference.read_bytes()


def test_changed_parent_is_refused_naming_both_files(chain, tmp_path, capsys):
    shutil.copytree(chain / "runs", tmp_path / "runs")
    shutil.copytree(chain / "weights", tmp_path / "weights")
    parent = tmp_path / "runs" / "pre" / "model.safetensors"
    save_file({k: v + 1 for k, v in load_file(parent).items()}, parent)  # e.g. overwritten by a --resume
    assert predict(tmp_path / "runs" / "ft", chain / "scene.tif", tmp_path / "p.tif") == 2
    one_line_error(capsys, f"{parent}: sha256", "differs from", str(tmp_path / "runs" / "ft" / "config.json"))
    assert not list(tmp_path.glob("p.tif*"))


def test_exported_checkpoint_is_self_contained(chain, reference, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(chain / "runs", work / "runs")
    shutil.copytree(chain / "weights", work / "weights")
    assert main(["export", "--checkpoint", str(work / "runs" / "ft"), "--out", str(work / "export")]) == 0
    assert "exported" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(work / "runs" / "ft"), "--out", str(work / "export")]) == 2
    one_line_error(capsys, "export: already exists")
    model = tmp_path / "fresh" / "model"
    model.parent.mkdir()
    shutil.move(work / "export", model)
    shutil.rmtree(work)  # the source weights, the parent and the adapter-only checkpoint are gone
    config = json.loads((model / "config.json").read_text())
    assert config["lineage"]["stored"] == "full" and config["strategy"] == {"name": "linear"}
    assert config["lineage"]["parent"]["sha256"] == checkpoint_sha256(chain / "runs" / "ft")
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]
    monkeypatch.chdir(tmp_path)
    assert predict(model, chain / "scene.tif", tmp_path / "exported.tif") == 0
    assert pixels(tmp_path / "exported.tif") == pixels(reference)


@register_strategy("test-unfoldable")
@dataclass
class UnfoldableStrategy(StrategyConfig):
    """A strategy export does not know how to fold (stands in for a third-party one)."""

    note: str = field(default="")

    def apply(self, model: nn.Module) -> nn.Module:
        return model


def test_export_bad_input_is_one_line_and_writes_nothing(chain, tmp_path, capsys):
    lonely = tmp_path / "ft"
    shutil.copytree(chain / "runs" / "ft", lonely)
    assert main(["export", "--checkpoint", str(lonely), "--out", str(tmp_path / "out")]) == 2
    one_line_error(capsys, "parent checkpoint ../pre not found")
    future = tmp_path / "future"
    shutil.copytree(chain / "runs" / "ft", future)
    config = json.loads((future / "config.json").read_text())
    (future / "config.json").write_text(json.dumps({**config, "format_version": 9}))
    assert main(["export", "--checkpoint", str(future), "--out", str(tmp_path / "out")]) == 2
    one_line_error(capsys, "checkpoint format 9 is newer")
    unfoldable = tmp_path / "unfoldable"
    backbone = BackboneConfig(model="vit_base_patch16_224", bands=BANDS, **TINY)
    stats = load_model(chain / "runs" / "pre").preprocessing.statistics
    save_checkpoint(unfoldable, create_backbone(backbone), CheckpointConfig(
        backbone, UnfoldableStrategy(), TaskConfig("pretrain"), Preprocessing(tuple(BANDS), stats)))
    assert main(["export", "--checkpoint", str(unfoldable), "--out", str(tmp_path / "out"),
                 "--onnx", str(tmp_path / "m.onnx")]) == 2
    one_line_error(capsys, "strategy 'test-unfoldable' cannot be folded into plain weights")
    assert main(["export", "--checkpoint", str(chain / "runs" / "ft"), "--out", str(tmp_path / "out"),
                 "--onnx", str(tmp_path / "m.txt")]) == 2
    one_line_error(capsys, "give a .onnx file name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft", "future", "unfoldable"]


@pytest.mark.skipif(not BIGEARTHNET_PATCH.is_dir(), reason=f"real Sentinel-2 patch not found at {BIGEARTHNET_PATCH}")
def test_onnx_matches_pytorch_on_a_real_sentinel2_window(chain, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'geoexplora[onnx]') is not installed")
    bands = ["B02", "B03", "B04", "B08"]
    image = np.stack([rasterio.open(BIGEARTHNET_PATCH / f"{BIGEARTHNET_PATCH.name}_{b}.tif").read(1)
                      for b in bands]).astype(np.float32)  # (4, 120, 120) reflectance, 10 m
    stats = band_statistics_from_pixels(bands, image.reshape(4, -1))
    pretrained(tmp_path / "pre", chain / "weights" / "vit.safetensors", bands, stats, sensor="sentinel2")
    finetuned(tmp_path / "ft", tmp_path / "pre", stats, strategy="rlrr", decoder_channels=16)
    assert main(["export", "--checkpoint", str(tmp_path / "ft"), "--out", str(tmp_path / "export"),
                 "--onnx", str(tmp_path / "model.onnx")]) == 0
    assert "max abs difference to PyTorch" in capsys.readouterr().out
    window = image[None, :, 40:72, 56:88].copy()
    window[0, :, 0, :3] = np.nan  # nodata pixels: NaN in, zero after normalisation, inside the graph too
    difference = onnx_parity(load_model(tmp_path / "export"), tmp_path / "model.onnx", window)
    print(f"ONNX vs PyTorch on a real Sentinel-2 window: max abs difference {difference:.2e}")
    assert difference < 1e-4


def test_files_without_band_names_use_the_training_files_names(tmp_path):
    unnamed = fake_rasters.write_raster(tmp_path / "unnamed.tif", width=40, height=40, count=5)
    training = Preprocessing(("red", "nir"), None, file_bands=("blue", "green", "red", "nir", "swir"))
    assert band_indexes(training, unnamed) == [3, 4]
    assert band_indexes(training, unnamed, ["nir", "red", "a", "b", "c"]) == [2, 1]
    with pytest.raises(GeoExploraError, match="the model needs bands red, nir but the file has B1"):
        band_indexes(Preprocessing(("red", "nir"), None), unnamed)


def test_layering_inference_without_lightning_and_a_light_cli():
    code = ("import sys, geoexplora as gx, geoexplora.cli; assert 'torch' not in sys.modules; "
            "import geoexplora.inference; gx.load_model; assert 'lightning' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
