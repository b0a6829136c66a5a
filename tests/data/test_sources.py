"""Inputs where analysts keep imagery: HTTP range reads, /vsizip/, .vrt/.jp2 folders, STAC items and collections.

Real rasters from ``../shared/data`` served by a local range-capable HTTP server (tests/range_server.py)
or described by STAC JSON written here; those tests skip when that folder is absent.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import timm
import torch
from safetensors.torch import save_file

import fake_rasters
import range_server
from geoexplora.cli import main
from geoexplora.data import GeoRasterDataset, compute_band_statistics, find_raster_files
from geoexplora.data.sources import GdalPath, as_input_path
from geoexplora.data.stac import stac_rasters
from geoexplora.gdal_env import cloud_gdal_env, names_remote, to_gdal_path
from geoexplora.errors import GeoExploraError
from geoexplora.models import BackboneConfig, save_checkpoint
from geoexplora.tasks.finetune import FinetuneTask
from shared_paths import SHARED_DATA

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} (real sample data) is absent")

L7 = SHARED_DATA / "landsat7_stars" / "L7_ETMs.tif"
PATCH = SHARED_DATA / "bigearthnet_tiny" / "S2B_MSIL2A_20170927T094019_66_56"
SLOVENIA = SHARED_DATA / "sentinel2_slovenia"
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
COMMON = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B05": "rededge"}
TINY = dict(embed_dim=64, depth=2, num_heads=4, patch_size=8, img_size=32)


@pytest.fixture(scope="module")
def server():
    with range_server.serve(SHARED_DATA) as running:
        yield running


@pytest.fixture(scope="module")
def l7_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny segmentation checkpoint over the Landsat 7 scene's six bands (B1..B6: it has no descriptions)."""
    root = tmp_path_factory.mktemp("l7")
    bands = [f"B{i}" for i in range(1, 7)]
    torch.manual_seed(0)
    weights = root / "vit.safetensors"
    save_file(timm.create_model("vit_base_patch16_224", num_classes=0, **TINY).state_dict(), weights)
    task = FinetuneTask(task="segmentation", backbone=BackboneConfig(model="vit_base_patch16_224", weights=str(weights),
                        bands=bands, **TINY), classes=["a", "b", "c"], segmentation_head="linear")
    task.band_statistics = compute_band_statistics(GeoRasterDataset(L7), num_windows=4, window_size=32).to_dict()
    task.normalization = "standardize"
    save_checkpoint(root / "ckpt", task.export_model(), task.export_config())
    return root / "ckpt"


def test_gdal_paths_stay_strings() -> None:
    assert to_gdal_path("https://h/a.tif") == "/vsicurl/https://h/a.tif"
    assert to_gdal_path("s3://bucket/key/a.tif") == "/vsis3/bucket/key/a.tif"
    remote = as_input_path("http://127.0.0.1:9/x/scene.tif")
    assert isinstance(remote, GdalPath) and str(remote) == "/vsicurl/http://127.0.0.1:9/x/scene.tif"
    assert (remote.name, remote.stem, remote.suffix) == ("scene.tif", "scene", ".tif")
    assert as_input_path("/vsizip//data/a.zip/b/c.jp2").name == "c.jp2"
    assert isinstance(as_input_path("local/scene.tif"), Path)


def test_cloud_options_are_set_for_the_call_and_the_users_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GDAL_DISABLE_READDIR_ON_OPEN", raising=False)
    monkeypatch.delenv("GDAL_HTTP_MERGE_CONSECUTIVE_RANGES", raising=False)
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "9")
    with cloud_gdal_env(remote=True):
        assert os.environ["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
        assert os.environ["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"] == "YES"
        assert os.environ["GDAL_HTTP_MAX_RETRY"] == "9"
    assert "GDAL_DISABLE_READDIR_ON_OPEN" not in os.environ and os.environ["GDAL_HTTP_MAX_RETRY"] == "9"
    with cloud_gdal_env(remote=False):  # local sidecars (.aux.xml, .ovr, .msk) still found
        assert os.environ["GDAL_DISABLE_READDIR_ON_OPEN"] == "TRUE"
    assert names_remote(["predict", "--raster", "s3://b/k.tif"]) and not names_remote(["--raster", "a.tif"])


@needs_shared
def test_prediction_over_http_is_byte_identical_to_the_local_file(server, l7_checkpoint: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{server.url}/landsat7_stars/L7_ETMs.tif"
    outs = {}
    for name, raster in (("local", str(L7)), ("http", url), ("vsicurl", f"/vsicurl/{url}")):
        outs[name] = tmp_path / f"{name}.tif"
        argv = ["predict", "--raster", raster, "--checkpoint", str(l7_checkpoint), "--out", str(outs[name]),
                "--probabilities", "--no-preview", "--no-progress"]
        assert main(argv) == 0, capsys.readouterr().err
    assert server.range_answers > 0  # GDAL read the remote file by byte ranges
    for name in ("http", "vsicurl"):
        for suffix in ("", ".probabilities"):
            local, remote = (outs[k].with_name(f"{outs[k].stem}{suffix}.tif") for k in ("local", name))
            assert remote.read_bytes() == local.read_bytes(), (name, suffix)
    with rasterio.open(outs["http"]) as src:
        assert src.shape == (352, 349) and len(np.unique(src.read(1))) > 1  # a real map, not a constant


@needs_shared
def test_stats_read_http_and_zip_as_the_local_file(server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(L7, "inner/L7_ETMs.tif")
        zipped.write(SHARED_DATA / "landsat_rgb" / "RGB.byte.tif", "inner/rgb/RGB.byte.tif")
        zipped.writestr("inner/README.txt", "not a raster")
    results = []
    for raster in (str(L7), f"{server.url}/landsat7_stars/L7_ETMs.tif", f"/vsizip/{archive}/inner/L7_ETMs.tif"):
        assert main(["stats", "--raster", raster, "--json", "--windows", "8", "--quiet"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["bands"] and results[1] == results[0] and results[2] == results[0]
    # A GDAL folder (a path ending in /) is listed like a local one.
    assert find_raster_files([f"/vsizip/{archive}/inner/"]) == [
        GdalPath(f"/vsizip/{archive}/inner/L7_ETMs.tif"), GdalPath(f"/vsizip/{archive}/inner/rgb/RGB.byte.tif")]


def test_folder_scan_finds_vrt_and_jp2(tmp_path: Path) -> None:
    source = fake_rasters.write_raster(tmp_path / "src" / "a.tif", width=40, height=40, count=3, dtype="uint8")
    folder = tmp_path / "scenes"
    folder.mkdir()
    with rasterio.open(source) as src:
        profile = {**src.profile, "driver": "JP2OpenJPEG", "QUALITY": "100", "REVERSIBLE": "YES"}
        profile.pop("tiled", None), profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(folder / "b.jp2", "w", **profile) as dst:
            dst.write(src.read())
    item = {"type": "Feature", "id": "c", "properties": {}, "assets": {"data": {"href": str(source), "type": "image/tiff"}}}
    (tmp_path / "item.json").write_text(json.dumps(item))
    vrt, = stac_rasters(tmp_path / "item.json", cache_dir=tmp_path / "cache")
    (folder / "c.vrt").write_text(vrt.read_text())
    assert [p.name for p in find_raster_files(folder)] == ["b.jp2", "c.vrt"]
    with rasterio.open(folder / "b.jp2") as jp2, rasterio.open(folder / "c.vrt") as vrt_src:
        assert np.array_equal(jp2.read(), vrt_src.read())


def _band_asset(href: str, name: str) -> dict:
    band = {"name": name, **({"common_name": COMMON[name]} if name in COMMON else {})}
    return {"href": href, "type": "image/tiff; application=geotiff", "roles": ["data"], "eo:bands": [band]}


def _patch_item(folder: Path) -> Path:
    """A STAC item for one BigEarthNet patch: one single-band asset per band (10 and 20 m), hrefs relative to
    the item's own location (as STAC says they resolve), and a thumbnail that is not a band."""
    hrefs = {n: os.path.relpath(PATCH / f"{PATCH.name}_{n}.tif", folder) for n in ("B02", "B03", "B04", "B08", "B05")}
    assets = {name: _band_asset(href, name) for name, href in hrefs.items()}
    assets["thumbnail"] = {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": PATCH.name, "geometry": None,
            "properties": {"datetime": "2017-09-27T09:40:19Z"}, "assets": assets, "links": [],
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"]}
    path = folder / f"{PATCH.name}.json"
    path.write_text(json.dumps(item))
    return path


@needs_shared
def test_stac_item_picks_assets_by_band_and_common_name(tmp_path: Path) -> None:
    item = _patch_item(tmp_path)
    vrt, = stac_rasters(item, ["blue", "green", "red", "B08", "rededge"], cache_dir=tmp_path / "cache")
    assert vrt.name == f"{PATCH.name}.vrt"  # the id already holds the date 20170927
    with rasterio.open(vrt) as src:
        assert src.descriptions == ("blue", "green", "red", "B08", "rededge")
        assert src.shape == (120, 120) and src.res == (10.0, 10.0)
        data = src.read()
    for i, name in enumerate(("B02", "B03", "B04", "B08")):
        with rasterio.open(PATCH / f"{PATCH.name}_{name}.tif") as band:
            assert np.array_equal(data[i], band.read(1))
    with rasterio.open(PATCH / f"{PATCH.name}_B05.tif") as band:  # 20 m, nearest to the 10 m grid
        assert np.array_equal(data[4], band.read(1).repeat(2, axis=0).repeat(2, axis=1))
    with pytest.raises(GeoExploraError, match=r"no asset or band named swir16; it offers B02 \(blue\), B03"):
        stac_rasters(item, ["swir16"], cache_dir=tmp_path / "cache")
    # The training data path: a dataset over the item reads the same pixels.
    dataset = GeoRasterDataset([str(item)], bands=["red", "nir"])
    assert dataset.band_names == ("red", "nir")


def _slovenia_collection(folder: Path, scenes: list[int]) -> Path:
    """A STAC ItemCollection of Sentinel-2 scenes: one 13-band asset each with eo:bands, dated items."""
    features = [{
        "type": "Feature", "stac_version": "1.0.0", "id": f"s2-slovenia-{i}", "geometry": None, "links": [],
        "properties": {"datetime": f"2017-0{i + 1}-15T10:00:00Z"},
        "assets": {"data": {"href": str(SLOVENIA / f"s2_l1c_scene{i}.tif"), "type": "image/tiff", "roles": ["data"],
                            "eo:bands": [{"name": b, **({"common_name": COMMON[b]} if b in COMMON else {})}
                                         for b in S2_BANDS]}},
    } for i in scenes]
    path = folder / "collection.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@needs_shared
def test_stac_collection_embeds_like_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOEXPLORA_CACHE", str(tmp_path / "cache"))
    collection = _slovenia_collection(tmp_path, [0, 1])
    common = ["--backbone", "vit_small_patch14_dinov2", "--tile", "56", "--batch-size", "4", "--no-progress"]
    torch.manual_seed(0)
    assert main(["embed", "--raster", str(collection), "--model-bands", "blue,green,red,nir",
                 "--out", str(tmp_path / "stac.parquet"), *common]) == 0
    torch.manual_seed(0)
    names = [COMMON.get(b, b) for b in S2_BANDS]  # the same names, so the same RGB kernel mapping
    assert main(["embed", "--raster", *(str(SLOVENIA / f"s2_l1c_scene{i}.tif") for i in (0, 1)),
                 "--file-bands", ",".join(names), "--model-bands", "blue,green,red,nir",
                 "--out", str(tmp_path / "files.parquet"), *common]) == 0
    stac, files = gpd.read_parquet(tmp_path / "stac.parquet"), gpd.read_parquet(tmp_path / "files.parquet")
    assert len(stac) == len(files) == 8
    assert [Path(s).name for s in dict.fromkeys(stac["source"])] == ["s2-slovenia-0_20170115.vrt",
                                                                     "s2-slovenia-1_20170215.vrt"]
    assert [str(t.date()) for t in dict.fromkeys(stac["timestamp"])] == ["2017-01-15", "2017-02-15"]
    assert np.array_equal(np.stack(stac["embedding"]), np.stack(files["embedding"]))
