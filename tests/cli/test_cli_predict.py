"""``geoexplora predict`` with a fine-tuned checkpoint: geometry, band mapping, outputs and one-line errors."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import timm
import torch
from safetensors.torch import save_file

import fake_rasters
from geoexplora.cli import main
from geoexplora.data import GeoRasterDataset, compute_band_statistics
from geoexplora.models import BackboneConfig, save_checkpoint
from geoexplora.tasks.finetune import FinetuneTask

BANDS = ["red", "green", "blue", "nir"]
TINY = dict(embed_dim=64, depth=2, num_heads=4, patch_size=8, img_size=32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 4-band 70x90 scene with a nodata border and a tiny fine-tuned segmentation checkpoint for it."""
    root = tmp_path_factory.mktemp("predict")
    image = fake_rasters.write_raster(root / "scene.tif", width=90, height=70, count=4, nodata=-9999.0,
                                      nodata_border=3, descriptions=BANDS)
    torch.manual_seed(0)
    weights = root / "vit.safetensors"
    save_file(timm.create_model("vit_base_patch16_224", num_classes=0, **TINY).state_dict(), weights)
    task = FinetuneTask(task="segmentation", backbone=BackboneConfig(model="vit_base_patch16_224",
                        weights=str(weights), bands=BANDS, **TINY), classes=["water", "forest", "urban"],
                        segmentation_head="linear")
    task.band_statistics = compute_band_statistics(GeoRasterDataset(image), num_windows=4, window_size=32).to_dict()
    task.normalization = "standardize"
    save_checkpoint(root / "ckpt", task.export_model(), task.export_config())
    return {"root": root, "image": image, "checkpoint": root / "ckpt"}


def test_predict_writes_aligned_class_map_probabilities_vectors_and_preview(scene, tmp_path, capsys):
    out = tmp_path / "pred.tif"
    assert main(["predict", "--raster", str(scene["image"]), "--checkpoint", str(scene["checkpoint"]),
                 "--out", str(out), "--probabilities", "--vector", str(tmp_path / "pred.gpkg"),
                 "--tile", "32", "--overlap", "8"]) == 0
    with rasterio.open(scene["image"]) as src, rasterio.open(out) as pred:
        assert (pred.crs, pred.transform, pred.shape) == (src.crs, src.transform, src.shape)
        classes = pred.read(1)
        nodata_in = src.read(1) == src.nodata
        assert pred.nodata == 255 and (classes[nodata_in] == 255).all()
        assert set(np.unique(classes[~nodata_in])) <= {0, 1, 2}
    with rasterio.open(tmp_path / "pred.probabilities.tif") as probs:
        assert probs.count == 3 and probs.shape == (70, 90)
    polygons = gpd.read_file(tmp_path / "pred.gpkg")
    assert len(polygons) > 0 and polygons.crs == rasterio.open(scene["image"]).crs
    assert (tmp_path / "pred.preview.png").stat().st_size > 0
    assert "Predicted" in capsys.readouterr().out


def test_band_names_are_mapped_and_checked(scene, tmp_path, capsys):
    unnamed = fake_rasters.write_raster(tmp_path / "unnamed.tif", width=40, height=40, count=4)
    args = ["predict", "--raster", str(unnamed), "--checkpoint", str(scene["checkpoint"]),
            "--out", str(tmp_path / "p.tif"), "--tile", "32", "--no-preview"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the model needs bands red, green, blue, nir but the file has B1, B2, B3, B4" in err and err.count("\n") == 1
    assert main([*args, "--file-bands", "nir,red,green,blue"]) == 0
    assert main([*args, "--overwrite", "--file-bands", "a,b,c"]) == 2
    assert "3 band names given (a, b, c) for a file with 4 bands" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda a, s, t: a.__setitem__(a.index("--checkpoint") + 1, str(t / "nowhere")), "nowhere"),
    (lambda a, s, t: a.__setitem__(a.index("--out") + 1, str(t / "missing" / "p.tif")), "does not exist"),
    (lambda a, s, t: a.__setitem__(a.index("--raster") + 1, str(t / "none.tif")), "none.tif: no such file"),
])
def test_bad_input_fails_before_any_work(scene, tmp_path, capsys, change, message):
    args = ["predict", "--raster", str(scene["image"]), "--checkpoint", str(scene["checkpoint"]),
            "--out", str(tmp_path / "p.tif")]
    change(args, scene, tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "p.tif").exists()


def test_existing_output_is_refused_without_overwrite(scene, tmp_path, capsys):
    (tmp_path / "p.tif").write_bytes(b"keep me")
    assert main(["predict", "--raster", str(scene["image"]), "--checkpoint", str(scene["checkpoint"]),
                 "--out", str(tmp_path / "p.tif")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "p.tif").read_bytes() == b"keep me"
