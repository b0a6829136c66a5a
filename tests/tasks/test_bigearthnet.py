"""BigEarthNet: stacking the real tiny patches into tiles + a multi-label CSV, bad patches, and the recipe."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import rasterio
import yaml

from geoexplora.data.bigearthnet import BIGEARTHNET_BANDS, main as prepare_main, stack_bigearthnet
from geoexplora.errors import GeoExploraError

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "finetune-multilabel-bigearthnet.yaml"


@pytest.fixture(scope="module")
def source(shared_data: Path) -> Path:
    folder = shared_data / "bigearthnet_tiny"
    if not folder.is_dir():
        pytest.skip(f"BigEarthNet sample patches not found at {folder}")
    return folder


def json_labels(patch: Path) -> list[str]:
    return json.loads((patch / f"{patch.name}_labels_metadata.json").read_text())["labels"]


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_stack_real_patches(source: Path, tmp_path: Path) -> None:
    csv_path = stack_bigearthnet(source, tmp_path / "stacked")
    assert csv_path == tmp_path / "stacked" / "labels.csv"
    patches = sorted(d for d in source.iterdir() if d.is_dir())
    assert len(patches) == 11
    rows = read_rows(csv_path)
    assert [r["path"] for r in rows] == [f"{p.name}.tif" for p in patches]
    assert sorted(p.name for p in csv_path.parent.iterdir()) == sorted([r["path"] for r in rows] + ["labels.csv"])
    for patch, row in zip(patches, rows):
        assert row["label"].split(";") == json_labels(patch)
        with rasterio.open(csv_path.parent / row["path"]) as tile, \
                rasterio.open(patch / f"{patch.name}_B04.tif") as b04, \
                rasterio.open(patch / f"{patch.name}_B01.tif") as b01:
            assert (tile.count, tile.height, tile.width) == (12, 120, 120)
            assert tile.descriptions == BIGEARTHNET_BANDS
            assert tile.crs == b04.crs and tile.transform == b04.transform and tile.dtypes[0] == "uint16"
            assert (tile.read(4) == b04.read(1)).all()  # a 10 m band is unchanged
            assert abs(float(tile.read(1).mean()) - float(b01.read(1).mean())) < 0.05 * float(b01.read(1).mean())
    assert len({n for r in rows for n in r["label"].split(";")}) == 9


def test_missing_band_or_labels_is_one_line_error(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    patch = sorted(d for d in source.iterdir() if d.is_dir())[0]
    bad = tmp_path / "bad" / patch.name
    shutil.copytree(patch, bad, ignore=shutil.ignore_patterns("*_B8A.tif"))
    missing = bad / f"{patch.name}_B8A.tif"
    with pytest.raises(GeoExploraError, match="B8A") as err:
        stack_bigearthnet(bad.parent, tmp_path / "out")
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written for a bad source
    assert prepare_main([str(bad.parent), str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and str(missing) in message
    (bad / f"{patch.name}_labels_metadata.json").unlink()
    with pytest.raises(GeoExploraError, match="labels_metadata.json"):
        stack_bigearthnet(bad.parent, tmp_path / "out", bands=["B02", "B03"])


def test_recipe_runs_on_stacked_patches(source: Path, tmp_path: Path) -> None:
    from geoexplora.cli.finetune import main

    csv_path = stack_bigearthnet(source, tmp_path / "tiles", size=112)  # the recipe's prepare step
    config = yaml.safe_load(RECIPE.read_text())
    assert config["model"]["task"] == "multilabel" and config["model"]["strategy"] == "lora"
    assert config["model"]["backbone"]["bands"] == list(BIGEARTHNET_BANDS) == config["data"]["band_names"]
    assert config["model"]["backbone"]["img_size"] == 112 and config["data"]["tiles"] == "runs/bigearthnet_tiny/labels.csv"
    config["model"]["backbone"].update(model="vit_base_patch16_224", weights=None, embed_dim=32, depth=2,
                                       num_heads=2, patch_size=14)
    config["data"]["tiles"] = str(csv_path)
    config["trainer"].update(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["--config", str(recipe), "--out", str(out), "--trainer.max_steps", "2"]) == 0
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    expected = sorted({n for r in read_rows(csv_path) for n in r["label"].split(";")})
    assert saved["task"]["kind"] == "multilabel"
    assert [c["name"] for c in saved["classes"]] == expected and len(expected) == 9
    assert saved["backbone"]["bands"] == list(BIGEARTHNET_BANDS)
