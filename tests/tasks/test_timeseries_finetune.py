"""Fine-tuning on stacks: one label map per stack, temporal tokens averaged over dates before the head;
the Sentinel-2 time-series recipe end to end (pre-train -> fine-tune -> evaluate), made tiny."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import timm
import torch
import yaml
from safetensors.torch import save_file

import fake_rasters
from geoexplora.cli import main
from geoexplora.models import BackboneConfig, create_backbone, load_model, stack_dates
from geoexplora.models.heads import SupervisedModel, create_head

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "finetune-segmentation-sentinel2-timeseries.yaml"
TINY = dict(embed_dim=64, depth=4, num_heads=4, patch_size=8, img_size=32)
BANDS = ["red", "green", "blue", "nir"]
QUIET = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary",
         "false"]
#: The recipe's pre-training step (explora-dinov2-sentinel2.yaml with a temporal backbone), made tiny.
TINY_PRETRAIN = [
    "--model.backbone.embed", "temporal", "--model.backbone.weights", "null",
    *[a for k, v in TINY.items() for a in (f"--model.backbone.{k}", str(v))],
    "--model.dinov2.num_prototypes", "8", "--model.dinov2.head_hidden_dim", "64", "--model.dinov2.head_bottleneck_dim",
    "32", "--model.dinov2.global_crop_size", "32", "--model.dinov2.local_crop_size", "16",
    "--model.dinov2.num_local_crops", "2", "--model.strategy_options.lora_rank", "4", "--trainer.max_steps", "2",
    "--trainer.precision", "32-true", "--trainer.devices", "1", "--data.window_size", "32", "--data.batch_size", "2",
    "--data.num_workers", "0", "--data.statistics_windows", "4", "--data.windows_per_epoch", "4",
    "--checkpoint_every_n_steps", "0", *QUIET,
]
TINY_FINETUNE = ["--data.window_size", "32", "--data.block_size", "32", "--data.windows_per_epoch", "8",
                 "--data.batch_size", "4", "--trainer.max_epochs", "1", "--model.decoder_channels", "16", *QUIET]


def test_recipe_pretrain_finetune_evaluate(shared_data: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # recipe paths are relative to the repository
    dates = yaml.safe_load(RECIPE.read_text())["data"]["dates"]
    pre_recipe = REPO / "recipes" / "explora-dinov2-sentinel2.yaml"
    assert yaml.safe_load(pre_recipe.read_text())["data"]["dates"] == dates  # the same real days in both recipes
    pretrain = ["pretrain", "--config", str(pre_recipe), "--out", str(tmp_path / "pre"), *TINY_PRETRAIN]
    assert main(pretrain) == 0
    finetune = ["finetune", "--config", str(RECIPE), "--out", str(tmp_path / "ft"),
                "--model.init_checkpoint", str(tmp_path / "pre" / "checkpoint"), *TINY_FINETUNE]
    assert main(finetune) == 0
    checkpoint = tmp_path / "ft" / "checkpoint"
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["backbone"]["embed"] == "temporal" and config["backbone"]["num_frames"] == 5
    evaluation = tmp_path / "eval.yaml"  # the recipe's data at the tiny window size
    data = {**yaml.safe_load(RECIPE.read_text())["data"], "window_size": 32, "block_size": 32}
    evaluation.write_text(yaml.safe_dump({"data": data}))
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--config", str(evaluation), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert scores["classes"] == ["0", "1", "2", "3", "4", "8"] and 0.0 <= scores["mIoU"] <= 1.0
    assert sum(map(sum, scores["confusion_matrix"])) > 0
    # predict --stack: one map on the earliest date's grid, the dates in its metadata
    files = [str(REPO / f) for f in data["image"]]
    options = ["--checkpoint", str(checkpoint), "--tile", "32", "--overlap", "8", "--no-preview", "--probabilities",
               "--threads", "1"]
    predict = ["predict", "--stack", "--raster", *files, "--dates", ",".join(map(str, dates)), *options]
    assert main([*predict, "--out", str(tmp_path / "lulc.tif")]) == 0
    earliest = files[[str(d) for d in dates].index(min(map(str, dates)))]
    with rasterio.open(tmp_path / "lulc.tif") as pred, rasterio.open(earliest) as first:
        assert (pred.crs, pred.transform, pred.shape) == (first.crs, first.transform, first.shape)
        assert pred.tags()["stack_dates"] == ",".join(sorted(map(str, dates)))
        assert set(np.unique(pred.read(1))) <= {0, 1, 2, 3, 4, 8, 255}
    assert main([*predict, "--out", str(tmp_path / "again.tif"), "--reader-threads", "2"]) == 0
    assert (tmp_path / "again.tif").read_bytes() == (tmp_path / "lulc.tif").read_bytes()
    # the same dates as a STAC item collection (one VRT per item, dated by the items): the same map
    collection = _stac_collection(tmp_path, files, dates, yaml.safe_load(RECIPE.read_text())["model"]["backbone"]["bands"])
    monkeypatch.setenv("GEOEXPLORA_CACHE", str(tmp_path / "cache"))
    assert main(["predict", "--stack", "--raster", str(collection), *options, "--out", str(tmp_path / "stac.tif")]) == 0
    with rasterio.open(tmp_path / "stac.tif") as stac, rasterio.open(tmp_path / "lulc.tif") as files_map:
        assert np.array_equal(stac.read(), files_map.read()) and stac.tags()["stack_dates"] == files_map.tags()["stack_dates"]
    # embed --stack over the real stack, from the files and from the STAC items: one row per window, the dates
    embed = ["embed", "--stack", "--checkpoint", str(checkpoint), "--tile", "32", "--no-progress"]
    assert main([*embed, "--raster", *files, "--dates", ",".join(map(str, dates)), "--out", str(tmp_path / "e.parquet")]) == 0
    assert main([*embed, "--raster", str(collection), "--out", str(tmp_path / "stac.parquet")]) == 0
    table, stac_table = gpd.read_parquet(tmp_path / "e.parquet"), gpd.read_parquet(tmp_path / "stac.parquet")
    assert len(table) == 16 and list(table["dates"].iloc[0]) == sorted(map(str, dates))  # 4 x 4 windows of 32 px
    assert (table["date_end"].dt.date.astype(str) == max(map(str, dates))).all()
    assert np.array_equal(np.stack(table["embedding"]), np.stack(stac_table["embedding"]))
    capsys.readouterr()
    single = ["predict", "--raster", files[0], "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.tif")]
    assert main(single) == 2  # a temporal checkpoint and one raster: one line, nothing written
    assert "pass --stack" in capsys.readouterr().err and not (tmp_path / "x.tif").exists()


def _stac_collection(folder: Path, files: list[str], dates: list, bands: list[str]) -> Path:
    """A STAC ItemCollection of ``files`` (one asset each, its bands named by eo:bands), dated ``dates``."""
    features = [{"type": "Feature", "stac_version": "1.0.0", "id": f"scene-{i}", "geometry": None, "links": [],
                 "properties": {"datetime": f"{day}T10:00:00Z"},
                 "assets": {"data": {"href": tif, "type": "image/tiff", "roles": ["data"],
                                     "eo:bands": [{"name": b} for b in bands]}}}
                for i, (tif, day) in enumerate(zip(files, dates, strict=True))]
    path = folder / "collection.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture(scope="module")
def stack_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3 dates of a 4-band 96x96 place, a 3-class stripe mask, tiny temporal-ready ViT source weights."""
    root = tmp_path_factory.mktemp("stack")
    for i, day in enumerate(("20200105", "20200310", "20200620")):
        fake_rasters.write_raster(root / "stack" / f"S2_{day}.tif", width=96, height=96, count=4, seed=i,
                                  descriptions=BANDS)
    fake_rasters.write_raster(root / "single.tif", width=96, height=96, count=4, descriptions=BANDS)
    fake_rasters.write_label_raster(root / "mask.tif", width=96, height=96, num_classes=3)
    torch.manual_seed(0)
    save_file(timm.create_model("vit_base_patch16_224", num_classes=0, **TINY).state_dict(), root / "vit.safetensors")
    return {"root": root}


def stack_recipe(data: dict[str, Path], task: str, num_frames: int, **extra_data: object) -> Path:
    root = data["root"]
    config = {
        "model": {"task": task, "strategy": "lora", "strategy_options": {"lora_rank": 4},
                  "segmentation_head": "linear", "backbone": {
                      "model": "vit_base_patch16_224", "weights": str(root / "vit.safetensors"), "bands": BANDS,
                      "embed": "temporal", "num_frames": num_frames, **TINY}},
        "data": {"temporal": True, "image": str(root / "stack"), "mask": str(root / "mask.tif"),
                 "label_mode": "mask" if task == "segmentation" else "majority", "window_size": 32,
                 "block_size": 32, "windows_per_epoch": 8, "batch_size": 4, **extra_data},
        "trainer": {"max_epochs": 1, "devices": 1},
    }
    path = root / f"{task}-{num_frames}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_finetune_on_a_stack_and_reload(stack_data, tmp_path: Path, task: str):
    out = tmp_path / task
    assert main(["finetune", "--config", str(stack_recipe(stack_data, task, 3)), "--out", str(out), *QUIET]) == 0
    model = load_model(out / "checkpoint")
    assert model.config.backbone.embed == "temporal" and model.config.backbone.num_frames == 3
    x, days = torch.randn(2, 3, 4, 32, 32), torch.tensor([[18_266, 18_331, 18_433]]).repeat(2, 1)
    with torch.no_grad(), stack_dates(model.backbone, days):
        logits = model.model(x)
    assert logits.shape == ((2, 3, 32, 32) if task == "segmentation" else (2, 3))


def test_stack_larger_than_the_date_encoding_or_a_single_raster_is_one_line(stack_data, tmp_path: Path, capsys):
    too_many = ["finetune", "--config", str(stack_recipe(stack_data, "segmentation", 2)), "--out", str(tmp_path / "a"),
                *QUIET]
    assert main(too_many) == 2
    err = capsys.readouterr().err
    assert "the stack has 3 dates, more than the 2 the model's date encoding supports" in err
    assert "Traceback" not in err
    single = ["finetune", "--config", str(stack_recipe(stack_data, "segmentation", 3)), "--out", str(tmp_path / "b"),
              "--data.temporal", "false", "--data.image", str(stack_data["root"] / "single.tif"), *QUIET]
    assert main(single) == 2
    assert "the backbone is temporal (embed: temporal): give the data as a stack" in capsys.readouterr().err


def test_one_date_pooled_segmentation_equals_the_single_image_model(dinov2_weights: Path):
    """Averaging over dates adds nothing for one date: the temporal model with its zero date encoding
    computes the single-image model's segmentation logits."""
    common = dict(weights=str(dinov2_weights), img_size=56)
    spectral = create_backbone(BackboneConfig(**common)).eval()
    temporal = create_backbone(BackboneConfig(**common, embed="temporal", num_frames=4)).eval()
    head = create_head("segmentation", 384, 3, 1, segmentation_head="progressive", num_levels=2, channels=16)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad(), stack_dates(temporal, torch.tensor([[16_000], [17_000]])):
        expected = SupervisedModel(spectral, head, [5, 11])(x)
        got = SupervisedModel(temporal, head, [5, 11])(x[:, None])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
