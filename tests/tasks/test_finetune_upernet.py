"""A tiny UPerNet fine-tune with Dice + frequency-weighted cross-entropy through the CLI; the checkpoint
rebuilds the head; the class pixel counts match the training blocks of the mask; bad loss options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import timm
import torch
import yaml
from rasterio.windows import from_bounds
from safetensors.torch import load_file, save_file

import fake_rasters
from geoexplora.errors import GeoExploraError
from geoexplora.models import BackboneConfig, load_model
from geoexplora.tasks.finetune import FinetuneTask
from geoexplora.tasks.finetune_data import LabelledRasterDataModule

REPO = Path(__file__).resolve().parents[2]
BANDS = ["red", "green", "blue", "nir"]
TINY = dict(embed_dim=64, depth=4, num_heads=4, patch_size=8, img_size=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-band 96x96 image, a 3-stripe mask with a 4-row nodata top border, tiny ViT source weights."""
    root = tmp_path_factory.mktemp("upernet")
    image = fake_rasters.write_raster(root / "image.tif", width=96, height=96, count=4, descriptions=BANDS)
    mask = fake_rasters.write_label_raster(root / "mask.tif", width=96, height=96, num_classes=3, nodata=255,
                                           nodata_border=4)
    torch.manual_seed(0)
    save_file(timm.create_model("vit_base_patch16_224", num_classes=0, **TINY).state_dict(), root / "vit.safetensors")
    return {"root": root, "image": image, "mask": mask, "weights": root / "vit.safetensors"}


def test_class_pixel_counts_are_the_training_blocks_labelled_pixels(data: dict[str, Path]) -> None:
    module = LabelledRasterDataModule(image=str(data["image"]), mask=str(data["mask"]), window_size=16,
                                      block_size=32, seed=1)
    counts = module.class_pixel_counts()
    expected = np.zeros(3, dtype=np.int64)
    with rasterio.open(data["mask"]) as src:
        for block in module.samplers["train"].blocks:
            labels = src.read(1, window=from_bounds(*block, transform=src.transform)).round()
            expected += np.bincount(labels[labels != 255].astype(np.int64), minlength=3)[:3]
    assert counts.tolist() == expected.tolist() and expected.sum() > 0


def test_tiny_upernet_dice_ce_finetune_and_reload(data: dict[str, Path], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from geoexplora.cli.finetune import main

    config = yaml.safe_load((REPO / "recipes" / "tiny-finetune-segmentation.yaml").read_text())
    config["model"]["backbone"]["weights"] = str(data["weights"])
    config["model"].update(segmentation_head="upernet", loss="dice_ce", class_weights="frequency")
    config["data"].update(image=str(data["image"]), mask=str(data["mask"]))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    with caplog.at_level("INFO", logger="geoexplora.tasks.finetune"):
        assert main(["--config", str(recipe), "--out", str(tmp_path), "--trainer.max_steps", "3"]) == 0
    assert "class weights from the training masks' pixel counts" in caplog.text
    metrics = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in metrics
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert saved["task"]["head"] == {"pool": "cls", "segmentation_head": "upernet", "feature_blocks": [0, 1, 2, 3],
                                     "decoder_channels": 32}
    model = load_model(tmp_path / "checkpoint").model
    assert type(model.head).__name__ == "UPerNetHead"
    stored = load_file(tmp_path / "checkpoint" / "model.safetensors")
    head = {n: t for n, t in stored.items() if n.startswith("head.")}
    assert any(".ppm." in n for n in head) and any(".pyramid." in n for n in head)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[n], t) for n, t in head.items())
    assert model.eval()(torch.randn(1, 4, 32, 32)).shape == (1, 3, 32, 32)


def test_loss_options_are_checked() -> None:
    backbone = BackboneConfig(model="vit_base_patch16_224", bands=BANDS, **TINY)
    with pytest.raises(GeoExploraError, match="segmentation options"):
        FinetuneTask(task="classification", backbone=backbone, loss="dice_ce")
    with pytest.raises(GeoExploraError, match="2 class_weights for 3 classes"):
        FinetuneTask(task="segmentation", backbone=backbone, class_weights=[1.0, 2.0], classes=["a", "b", "c"])
