"""``embed_rasters`` / ``geoexplora embed``: the GeoParquet table, the dense PCA GeoTIFF, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import fake_rasters
import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from safetensors.torch import load_file

import geoexplora.cli
from geoexplora.cli import embed as embed_cli
from geoexplora.data.stats import band_statistics_from_pixels
from geoexplora.errors import GeoExploraError
from geoexplora.explore import load_embeddings, nearest
from geoexplora.inference.embed import Encoder, embed_rasters
from geoexplora.models import (
    BackboneConfig,
    CheckpointConfig,
    Preprocessing,
    TaskConfig,
    create_backbone,
    create_strategy,
    save_checkpoint,
)

BANDS = ["B1", "B2", "B3", "B4"]
WIDTH, HEIGHT, PATCH, DIM = 100, 80, 8, 64
NODATA = -9999.0
FAST = {"tile": 32, "batch_size": 4, "progress": False}
# tile 32, stride 32 over 100 x 80: window origins x in {0, 32, 64, 96}, y in {0, 32, 64}; x = 0 is all nodata.
ORIGINS = {(y, x) for y in (0, 32, 64) for x in (32, 64, 96)}


def tiny_config() -> BackboneConfig:
    return BackboneConfig(model="vit_base_patch16_224", embed_dim=DIM, depth=2, num_heads=4, patch_size=PATCH,
                          img_size=32, bands=BANDS)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 bands, 100 x 80, EPSG:32633; columns x < 32 nodata, so the first window column holds no data."""
    path = fake_rasters.write_raster(tmp_path_factory.mktemp("embed") / "S2_20200105.tif", width=WIDTH,
                                     height=HEIGHT, nodata=NODATA)
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        data[:, :, :32] = NODATA
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    values = fake_rasters.raster_values(width=16, height=16, count=4, dtype="float32", seed=0)
    stats = band_statistics_from_pixels(BANDS, values.reshape(4, -1))
    return Encoder(create_backbone(tiny_config()).eval(), tiny_config(), stats)


def test_table_has_one_row_per_valid_window(scene: Path, encoder: Encoder, tmp_path: Path) -> None:
    out = tmp_path / "emb.parquet"
    summary = embed_rasters([scene], out, encoder, **FAST)
    assert (summary.windows, summary.skipped, summary.dim) == (9, 3, DIM)
    assert "3 all-nodata windows skipped" in str(summary)
    gdf = gpd.read_parquet(out)
    assert len(gdf) == 9
    assert {(r, c) for r, c in zip(gdf["row"], gdf["col"], strict=True)} == ORIGINS
    with rasterio.open(scene) as src:
        assert gdf.crs == src.crs
        bounds = shapely.box(*src.bounds)
    assert gdf.geometry.within(bounds).all()
    assert gdf.geometry.area.sum() == pytest.approx((WIDTH - 32) * HEIGHT * 100.0)  # 10 m pixels
    assert set(gdf["source"]) == {str(scene)}
    assert str(gdf["date"].iloc[0].date()) == "2020-01-05"
    assert pq.read_schema(out).field("embedding").type == pa.list_(pa.float32(), DIM)
    assert all(len(e) == DIM and e.dtype == np.float32 for e in gdf["embedding"])
    assert json.loads(pq.read_schema(out).metadata[b"geo"])["primary_column"] == "geometry"


def test_torchgeo_embedding_dataset_reads_the_table(scene: Path, encoder: Encoder, tmp_path: Path) -> None:
    from pyproj import Transformer
    from torchgeo.datasets import EarthEmbeddings

    out = embed_rasters([scene], tmp_path / "emb.parquet", encoder, **FAST).outputs[0]
    dataset = EarthEmbeddings(out)
    gdf = gpd.read_parquet(out)
    assert len(dataset) == len(gdf) == 9
    with rasterio.open(scene) as src:
        to_wgs84 = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        for i, (row, col) in enumerate(zip(gdf["row"], gdf["col"], strict=True)):
            sample = dataset[i]
            # The window's part inside the raster: 32 px, clipped at the right and bottom edges.
            width, height = min(32, WIDTH - col), min(32, HEIGHT - row)
            lon, lat = to_wgs84.transform(*(src.transform * (col + width / 2, row + height / 2)))
            assert sample["x"].item() == pytest.approx(lon, abs=1e-9)
            assert sample["y"].item() == pytest.approx(lat, abs=1e-9)
            assert sample["t"].item() == 1578182400.0  # 2020-01-05T00:00Z, the date in the file name
            assert torch.equal(sample["embedding"], torch.from_numpy(np.asarray(gdf["embedding"].iloc[i])))
            assert sample["embedding"].shape == (DIM,)


def test_pooling_and_explore_round_trip(scene: Path, encoder: Encoder, tmp_path: Path) -> None:
    cls = load_embeddings(embed_rasters([scene], tmp_path / "cls.parquet", encoder, **FAST).outputs[0])
    mean = load_embeddings(embed_rasters([scene], tmp_path / "mean.parquet", encoder, pool="mean", **FAST).outputs[0])
    assert not np.allclose(np.stack(cls["embedding"]), np.stack(mean["embedding"]))
    found = nearest(cls, 4, k=3)
    assert found.index[0] == cls.index[4] and found["similarity"].iloc[0] == pytest.approx(1.0)


def test_dense_geotiff_is_aligned_to_the_raster_grid(scene: Path, encoder: Encoder, tmp_path: Path) -> None:
    dense = tmp_path / "emb.tif"
    summary = embed_rasters([scene], tmp_path / "emb.parquet", encoder, stride=24, dense=dense, pca=4, **FAST)
    assert {p.name for p in summary.outputs} == {"emb.parquet", "emb.tif", "emb.pca.safetensors", "emb.preview.png"}
    with rasterio.open(scene) as src, rasterio.open(dense) as out:
        assert out.crs == src.crs
        assert out.transform == src.transform @ Affine.scale(PATCH)
        assert (out.width, out.height) == (math.ceil(WIDTH / PATCH), math.ceil(HEIGHT / PATCH))
        assert (out.count, out.dtypes[0]) == (4, "float32")
        data = out.read()
    assert np.isnan(out.nodata)
    assert np.isnan(data[:, :, :4]).all()  # patch columns 0..3 cover the nodata pixels x < 32
    assert np.isfinite(data[:, :, 4:]).all()
    basis = load_file(tmp_path / "emb.pca.safetensors")
    assert basis["components"].shape == (4, DIM) and basis["mean"].shape == (DIM,)
    assert (tmp_path / "emb.preview.png").stat().st_size > 0


def test_dense_patches_average_to_the_mean_pooled_embedding(scene: Path, encoder: Encoder, tmp_path: Path) -> None:
    """Projection is linear: the window's mean patch projection is the projection of its mean-pooled vector."""
    dense = tmp_path / "emb.tif"
    embed_rasters([scene], tmp_path / "emb.parquet", encoder, pool="mean", dense=dense, **FAST)
    gdf = gpd.read_parquet(tmp_path / "emb.parquet")
    basis = load_file(tmp_path / "emb.pca.safetensors")
    vector = torch.tensor(gdf[(gdf["row"] == 32) & (gdf["col"] == 32)]["embedding"].iloc[0])
    expected = (vector - basis["mean"]) @ basis["components"].T
    with rasterio.open(dense) as src:
        patches = src.read(window=((4, 8), (4, 8)))  # window (y 32, x 32): patches 4..7 x 4..7
    assert np.allclose(patches.mean(axis=(1, 2)), expected.numpy(), atol=1e-4)


def test_several_rasters_share_one_table_and_basis(scene: Path, encoder: Encoder, tmp_path: Path) -> None:
    other = fake_rasters.write_raster(tmp_path / "other.tif", width=40, height=40, seed=3)
    summary = embed_rasters([scene, other], tmp_path / "emb.parquet", encoder, dense=tmp_path / "emb.tif", **FAST)
    gdf = gpd.read_parquet(tmp_path / "emb.parquet")
    assert len(gdf) == 9 + 4 and set(gdf["source"]) == {str(scene), str(other)}
    assert gdf["date"].isna().sum() == 4
    assert {p.name for p in summary.outputs} >= {"emb_S2_20200105.tif", "emb_other.tif", "emb.pca.safetensors"}


def test_band_names_rename_the_files_bands(encoder: Encoder, tmp_path: Path) -> None:
    described = fake_rasters.write_raster(tmp_path / "d.tif", width=40, height=40, descriptions=["a", "b", "c", "d"])
    with pytest.raises(GeoExploraError, match=r"d\.tif: the model needs bands B1, B2, B3, B4 but the file has "
                                              r"a, b, c, d \(missing B1, B2, B3, B4"):
        embed_rasters([described], tmp_path / "emb.parquet", encoder, **FAST)
    summary = embed_rasters([described], tmp_path / "emb.parquet", encoder, band_names=BANDS, **FAST)
    assert summary.windows == 4


def expect_error(rasters: list[Path], out: Path, encoder: Encoder, match: str, **kwargs: object) -> None:
    with pytest.raises(GeoExploraError, match=match) as info:
        embed_rasters(rasters, out, encoder, **{**FAST, **kwargs})
    assert "\n" not in str(info.value)
    if out.parent.is_dir():
        assert not list(out.parent.glob("*emb*"))


def test_bad_inputs(scene: Path, encoder: Encoder, tmp_path: Path) -> None:
    out = tmp_path / "emb.parquet"
    expect_error([tmp_path / "nope.tif"], out, encoder, r"nope\.tif: no such raster file")
    bogus = tmp_path / "bogus.tif"
    bogus.write_text("not a tiff")
    expect_error([bogus], out, encoder, r"bogus\.tif: not a readable raster")
    no_crs = fake_rasters.write_raster(tmp_path / "nocrs.tif", width=40, height=40, georeferenced=False)
    expect_error([no_crs], out, encoder, r"nocrs\.tif: raster has no CRS")
    five = fake_rasters.write_raster(tmp_path / "five.tif", width=40, height=40, count=5)
    expect_error([scene, five], out, encoder, r"five\.tif: bands B1, B2, B3, B4, B5 differ from .*S2_20200105\.tif")
    expect_error([scene], tmp_path / "missing" / "emb.parquet", encoder, r"output folder .*missing does not exist")
    expect_error([scene], out, encoder, r"stride 8: must be between 16 and the tile \(32\)", stride=8)
    expect_error([scene], out, encoder, r"tile 36: must be a multiple of the patch size 8", tile=36)
    expect_error([scene], out, encoder, r"stride 28: must be a multiple of the patch size 8 for dense",
                 stride=28, dense=tmp_path / "emb.tif")


def test_all_nodata_raster_is_an_error(encoder: Encoder, tmp_path: Path) -> None:
    empty = fake_rasters.write_raster(tmp_path / "empty.tif", width=40, height=40, nodata=0.0)
    with rasterio.open(empty, "r+") as dst:
        dst.write(np.zeros((4, 40, 40), dtype="float32"))
    expect_error([empty], tmp_path / "emb.parquet", encoder, r"empty\.tif: every window is nodata/NaN")


def test_existing_output_needs_overwrite(scene: Path, encoder: Encoder, tmp_path: Path) -> None:
    out = tmp_path / "emb.parquet"
    out.write_text("old")
    with pytest.raises(GeoExploraError, match=r"emb\.parquet: already exists"):
        embed_rasters([scene], out, encoder, **FAST)
    embed_rasters([scene], out, encoder, overwrite=True, **FAST)
    assert len(gpd.read_parquet(out)) == 9


# --- the command line ---------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    """``geoexplora.cli.main`` with the embed command registered (until ``COMMANDS`` lists it)."""
    if embed_cli not in geoexplora.cli.COMMANDS:
        monkeypatch.setattr(geoexplora.cli, "COMMANDS", (*geoexplora.cli.COMMANDS, embed_cli))
    return geoexplora.cli.main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    backbone = create_backbone(tiny_config())
    backbone.load_state_dict(encoder.backbone.state_dict())
    strategy = create_strategy("full")
    model = strategy.apply(backbone)
    config = CheckpointConfig(tiny_config(), strategy, TaskConfig("pretrain"),
                              Preprocessing(tuple(tiny_config().bands), encoder.statistics, "standardize", 32))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", model, config)


def test_cli_checkpoint(cli, scene: Path, checkpoint: Path, encoder: Encoder, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "emb.parquet"
    argv = ["embed", "--raster", str(scene), "--checkpoint", str(checkpoint), "--out", str(out), "--tile", "32",
            "--device", "cpu", "--dense", str(tmp_path / "emb.tif"), "--pca", "3"]
    assert cli(argv) == 0
    assert "Embedded 9 windows" in capsys.readouterr().out
    direct = embed_rasters([scene], tmp_path / "direct.parquet", encoder, **FAST)
    assert np.allclose(np.stack(gpd.read_parquet(out)["embedding"]),
                       np.stack(gpd.read_parquet(direct.outputs[0])["embedding"]), atol=1e-5)
    assert cli(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_backbone_computes_statistics(cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raster = fake_rasters.write_raster(tmp_path / "rgb.tif", width=40, height=40, count=3,
                                       descriptions=["red", "green", "blue"])
    argv = ["embed", "--raster", str(raster), "--backbone", "vit_tiny_patch16_224", "--model-bands", "red,green,blue",
            "--out", str(tmp_path / "emb.parquet"), "--tile", "32", "--pool", "mean"]
    assert cli(argv) == 0
    assert "Embedded 4 windows" in capsys.readouterr().out
    assert len(gpd.read_parquet(tmp_path / "emb.parquet")["embedding"].iloc[0]) == 192  # vit_tiny width


def cli_error(cli, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_checkpoint_without_encoder(cli, scene: Path, checkpoint: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["embed", "--raster", str(scene), "--out", str(tmp_path / "emb.parquet"), "--tile", "32"]
    empty = tmp_path / "empty_ckpt"
    empty.mkdir()
    assert "empty_ckpt: no encoder to embed with" in cli_error(cli, [*base, "--checkpoint", str(empty)], capsys)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((checkpoint / "config.json").read_text())
    err = cli_error(cli, [*base, "--checkpoint", str(no_weights)], capsys)
    assert "no_weights: no encoder" in err and "model.safetensors" in err
    no_backbone = tmp_path / "no_backbone"
    no_backbone.mkdir()
    config = json.loads((checkpoint / "config.json").read_text())
    del config["backbone"]
    (no_backbone / "config.json").write_text(json.dumps(config))
    (no_backbone / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    assert "no_backbone: no encoder" in cli_error(cli, [*base, "--checkpoint", str(no_backbone)], capsys)
    assert "either --checkpoint" in cli_error(cli, base, capsys)
    assert "needs --model-bands" in cli_error(cli, [*base, "--backbone", "vit_tiny_patch16_224"], capsys)
    assert not (tmp_path / "emb.parquet").exists()


def test_cli_missing_raster(cli, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["embed", "--raster", str(tmp_path / "nope.tif"), "--checkpoint", str(checkpoint),
            "--out", str(tmp_path / "emb.parquet")]
    assert "nope.tif: no such raster file" in cli_error(cli, argv, capsys)
