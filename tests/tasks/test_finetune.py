"""Fine-tuning: each task x strategy runs a few steps on tiny generated rasters; checkpoints reload; bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import timm
import torch
import yaml
from safetensors.torch import save_file

import fake_rasters
from geoexplora.data.stats import BandStatistics
from geoexplora.errors import GeoExploraError
from geoexplora.models import (
    BackboneConfig,
    CheckpointConfig,
    Preprocessing,
    TaskConfig,
    create_backbone,
    create_strategy,
    load_model,
    save_checkpoint,
)
from geoexplora.models.lineage import checkpoint_sha256
from geoexplora.tasks.finetune import FinetuneTask
from geoexplora.tasks.finetune_data import LabelledRasterDataModule

REPO = Path(__file__).resolve().parents[2]
BANDS = ["red", "green", "blue", "nir"]
TINY = dict(embed_dim=64, depth=4, num_heads=4, patch_size=8, img_size=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-band 96x96 image, a 3-class stripe mask, tiny ViT source weights, and a tiles CSV."""
    root = tmp_path_factory.mktemp("finetune")
    image = fake_rasters.write_raster(root / "image.tif", width=96, height=96, count=4, descriptions=BANDS)
    mask = fake_rasters.write_label_raster(root / "mask.tif", width=96, height=96, num_classes=3)
    torch.manual_seed(0)
    save_file(timm.create_model("vit_base_patch16_224", num_classes=0, **TINY).state_dict(), root / "vit.safetensors")
    rows = ["path,label"]
    for i in range(8):
        fake_rasters.write_raster(root / "tiles" / f"t{i}.tif", width=32, height=32, count=4, seed=i)
        rows.append(f"tiles/t{i}.tif,{['a;b', 'b', 'c;a', 'a'][i % 4]}")
    (root / "tiles.csv").write_text("\n".join(rows) + "\n")
    return {"root": root, "image": image, "mask": mask, "weights": root / "vit.safetensors", "csv": root / "tiles.csv"}


def recipe(data: dict[str, Path], name: str, **model: object) -> Path:
    config = yaml.safe_load((REPO / "recipes" / name).read_text())
    config["model"]["backbone"]["weights"] = str(data["weights"])
    config["model"].update(model)
    config["data"].update(image=str(data["image"]), mask=str(data["mask"]))
    path = data["root"] / f"{name}-{abs(hash(str(model)))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def finetune(config: Path, out: Path, *extra: str) -> int:
    from geoexplora.cli.finetune import main

    return main(["--config", str(config), "--out", str(out), "--trainer.max_steps", "2", *extra])


@pytest.mark.parametrize("strategy", ["lora", "linear", "full", "block-expansion", "rlrr"])
def test_segmentation_strategies_run_and_reload(data: dict[str, Path], tmp_path: Path, strategy: str) -> None:
    config = recipe(data, "tiny-finetune-segmentation.yaml", strategy=strategy, strategy_options={})
    assert finetune(config, tmp_path) == 0
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert saved["strategy"]["name"] == strategy and saved["task"]["kind"] == "segmentation"
    assert [(c["value"], c["name"]) for c in saved["classes"]] == [(0, "0"), (1, "1"), (2, "2")]
    assert saved["lineage"]["source_weights"]["path"] == os.path.relpath(data["weights"], tmp_path / "checkpoint")
    model = load_model(tmp_path / "checkpoint")
    assert model.model(torch.randn(1, 4, 32, 32)).shape == (1, 3, 32, 32)


def test_classification_and_evaluate_cli(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import argparse

    from geoexplora.cli import evaluate

    config = recipe(data, "tiny-finetune-classification.yaml")
    assert finetune(config, tmp_path / "run") == 0
    parser = argparse.ArgumentParser()
    evaluate.add_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--config",
                              str(config), "--json", "--out", str(tmp_path / "eval"), "--retention", str(config)])
    assert args.run(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "top5_accuracy", "macro_f1", "confusion_matrix", "knn_retention"} <= set(result)
    assert np.array(result["confusion_matrix"]).shape == (3, 3)
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 0
    args.json = False
    args.run(args)
    assert "accuracy" in capsys.readouterr().out


def test_multilabel_tiles_csv(data: dict[str, Path], tmp_path: Path) -> None:
    module = LabelledRasterDataModule(tiles=str(data["csv"]), band_names=BANDS, batch_size=2,
                                      split_fractions=(0.5, 0.25, 0.25))
    task = FinetuneTask(task="multilabel", backbone=BackboneConfig(**TINY, weights=str(data["weights"]),
                        model="vit_base_patch16_224", bands=BANDS), strategy="lora")
    import lightning as L

    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=module)
    assert task.classes == ["a", "b", "c"]
    assert set(trainer.callback_metrics) >= {"val/mAP", "val/micro_f1", "val/macro_f1"}


def test_init_checkpoint_is_merged_then_lora(data: dict[str, Path], tmp_path: Path) -> None:
    cfg = BackboneConfig(model="vit_base_patch16_224", weights=str(data["weights"]), bands=BANDS, **TINY)
    pretrained = create_strategy("explora", lora_rank=4).apply(create_backbone(cfg))
    with torch.no_grad():
        for name, p in pretrained.named_parameters():
            if "lora_B" in name or name.startswith("blocks.3."):
                p.add_(0.05)
    save_checkpoint(tmp_path / "pre", pretrained, CheckpointConfig(cfg, create_strategy("explora", lora_rank=4),
                                                                   TaskConfig("pretrain"), Preprocessing(tuple(BANDS), None)))
    task = FinetuneTask(task="classification", init_checkpoint=str(tmp_path / "pre"), classes=["x", "y"])
    x = torch.randn(2, 4, 32, 32)
    pretrained.eval()
    with torch.no_grad():
        diff = task.model.backbone.eval().forward_features(x) - pretrained.forward_features(x)
    assert diff.abs().max().item() < 1e-3, diff.abs().max()
    trainable = {n for n, p in task.model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    other = BackboneConfig(model="vit_base_patch16_224", bands=["red", "green", "blue"], **TINY)
    with pytest.raises(GeoExploraError, match="does not match"):
        FinetuneTask(backbone=other, init_checkpoint=str(tmp_path / "pre"))


def test_spatial_split_keeps_windows_inside_disjoint_blocks(data: dict[str, Path]) -> None:
    module = LabelledRasterDataModule(image=str(data["image"]), mask=str(data["mask"]), window_size=16,
                                      block_size=32, seed=3)
    module.setup()
    regions = {}
    for split in ("train", "val", "test"):
        blocks = module.samplers[split].blocks
        regions[split] = set(blocks)
        for x, y in module.samplers[split]:
            assert any(b[0] - 1e-6 <= x.start and x.stop <= b[2] + 1e-6 and b[1] - 1e-6 <= y.start
                       and y.stop <= b[3] + 1e-6 for b in blocks)
    assert not regions["train"] & regions["val"] and not regions["train"] & regions["test"]
    assert sum(map(len, regions.values())) == 9
    again = LabelledRasterDataModule(image=str(data["image"]), mask=str(data["mask"]), window_size=16,
                                     block_size=32, seed=3)
    again.setup()
    assert again.samplers["val"].blocks == module.samplers["val"].blocks


def test_bad_labels_and_empty_splits(data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(GeoExploraError, match=r"label values \[2\]"):
        LabelledRasterDataModule(image=str(data["image"]), mask=str(data["mask"]), class_values=[0, 1]).setup()
    with pytest.raises(GeoExploraError, match="too few"):
        LabelledRasterDataModule(image=str(data["image"]), mask=str(data["mask"]), window_size=48).setup()


def test_label_raster_on_another_crs_is_reprojected(data: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "mask_3857.tif"
    with rasterio.open(data["mask"]) as src:
        from rasterio.warp import calculate_default_transform, reproject, Resampling

        transform, w, h = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height, *src.bounds)
        array = np.full((h, w), 255, dtype="uint8")
        reproject(src.read(1), array, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs="EPSG:3857", resampling=Resampling.nearest)
        with rasterio.open(other, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", nodata=255,
                           crs="EPSG:3857", transform=transform) as dst:
            dst.write(array, 1)
    module = LabelledRasterDataModule(image=str(data["image"]), mask=str(other), window_size=16, block_size=32)
    module.setup()
    batch = next(iter(module.val_dataloader()))
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 255}
    assert module.classes == ["0", "1", "2"]


def test_finetune_keeps_the_pretraining_band_statistics(data: dict[str, Path], tmp_path: Path) -> None:
    cfg = BackboneConfig(model="vit_base_patch16_224", weights=str(data["weights"]), bands=BANDS, **TINY)
    strategy = create_strategy("explora", lora_rank=4)
    stats = {"bands": {b: {"mean": 100.0 * i, "std": 7.0, "p2": 1.0, "p98": 2.0} for i, b in enumerate(BANDS)},
             "num_pixels": 1, "num_windows": 1, "skipped_windows": 0}
    save_checkpoint(tmp_path / "pre", strategy.apply(create_backbone(cfg)),
                    CheckpointConfig(cfg, strategy, TaskConfig("pretrain"),
                                     Preprocessing(tuple(BANDS), BandStatistics.from_dict(stats), "percentile")))
    config = recipe(data, "tiny-finetune-segmentation.yaml", init_checkpoint=str(tmp_path / "pre"))
    assert finetune(config, tmp_path / "run") == 0
    saved = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert saved["preprocessing"]["statistics"] == stats and saved["preprocessing"]["normalization"] == "percentile"
    assert saved["lineage"]["parent"] == {"path": "../../pre", "sha256": checkpoint_sha256(tmp_path / "pre"),
                                          "size": None}
    moved = tmp_path / "moved"  # the run and its parent moved together; the source weights found by name
    shutil.copytree(tmp_path / "run" / "checkpoint", moved / "run" / "checkpoint")
    shutil.copytree(tmp_path / "pre", moved / "pre")
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        expected = load_model(tmp_path / "run" / "checkpoint").model(x)
        assert torch.equal(load_model(moved / "run" / "checkpoint", weights_dir=data["weights"].parent).model(x),
                           expected)
