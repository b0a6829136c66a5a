"""``embed`` over stacks of dates (temporal backbones), and resuming an interrupted run from its parts."""

from __future__ import annotations

import os
from pathlib import Path

import fake_rasters
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from safetensors.torch import load_file

import geoexplora.cli
from geoexplora.cli import embed as embed_cli
from geoexplora.data import RasterStack
from geoexplora.data.stats import band_statistics_from_pixels
from geoexplora.errors import GeoExploraError
from geoexplora.inference import embed as engine
from geoexplora.inference.embed import Encoder, embed_rasters, parts_folder
from geoexplora.models import BackboneConfig, create_backbone
from fake_checkpoints import write_temporal_checkpoint

BANDS = ["B1", "B2", "B3", "B4"]
FAST = {"tile": 32, "batch_size": 4, "progress": False}
DATES = ("20200105", "20200310", "20200620")


def tiny(embed: str = "spectral") -> BackboneConfig:
    extra = {"embed": "temporal", "num_frames": 3} if embed == "temporal" else {}
    return BackboneConfig(model="vit_base_patch16_224", embed_dim=64, depth=2, num_heads=4, patch_size=8,
                          img_size=32, bands=BANDS, **extra)


def encoder(embed: str = "spectral") -> Encoder:
    torch.manual_seed(0)
    stats = band_statistics_from_pixels(BANDS, fake_rasters.raster_values(width=16, height=16, count=4,
                                                                          dtype="float32", seed=0).reshape(4, -1))
    return Encoder(create_backbone(tiny(embed)).eval(), tiny(embed), stats, name=f"tiny-{embed}")


@pytest.fixture(scope="module")
def temporal() -> Encoder:
    model = encoder("temporal")
    with torch.no_grad():  # a date encoding that is not zero, so the dates change the tokens
        model.backbone.patch_embed.date_encoding.weight.normal_(std=0.5)
    return model


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> RasterStack:
    """3 dates of a 4-band 72 x 40 place (windows: 3 x 2 at tile 32); the last date nodata on x < 8."""
    folder = tmp_path_factory.mktemp("stack")
    paths = fake_rasters.write_temporal_folder(folder, DATES, width=72, height=40, count=4, nodata=-9999.0)
    with rasterio.open(paths[-1], "r+") as dst:
        data = dst.read()
        data[:, :, :8] = -9999.0
        dst.write(data)
    return RasterStack.from_paths(folder)


def test_a_stack_gives_one_row_per_window_with_its_dates(stack: RasterStack, temporal: Encoder, tmp_path: Path) -> None:
    summary = embed_rasters([stack], tmp_path / "e.parquet", temporal, **FAST)
    assert (summary.windows, summary.stacks, len(summary.rasters)) == (6, 1, 3)
    gdf = gpd.read_parquet(tmp_path / "e.parquet")
    assert len(gdf) == 6 and len(gdf["embedding"].iloc[0]) == 64
    assert set(gdf["source"]) == {str(stack.paths[0])}
    assert {(r, c) for r, c in zip(gdf["row"], gdf["col"], strict=True)} == {(y, x) for y in (0, 32) for x in (0, 32, 64)}
    assert (gdf["date_start"].dt.date.astype(str) == "2020-01-05").all()
    assert (gdf["date_end"].dt.date.astype(str) == "2020-06-20").all()
    assert list(gdf["dates"].iloc[0]) == ["2020-01-05", "2020-03-10", "2020-06-20"]
    assert (gdf["timestamp"] == gdf["date_start"].dt.tz_localize("UTC")).all()
    assert not parts_folder(tmp_path / "e.parquet").exists()
    shifted = RasterStack.from_paths(list(stack.paths), dates=["2021-01-05", "2021-03-10", "2021-06-20"])
    embed_rasters([shifted], tmp_path / "later.parquet", temporal, **FAST)
    later = gpd.read_parquet(tmp_path / "later.parquet")
    assert not np.allclose(np.stack(gdf["embedding"]), np.stack(later["embedding"]))  # the dates reach the model


def test_stack_dense_tokens_average_over_dates_to_the_mean_vector(stack: RasterStack, temporal: Encoder,
                                                                  tmp_path: Path) -> None:
    """Dense tokens are each patch's tokens averaged over the dates: a window's mean dense token projects
    like its ``mean`` vector (the mean over dates and patches)."""
    embed_rasters([stack], tmp_path / "e.parquet", temporal, pool="mean", dense=tmp_path / "e.tif", **FAST)
    gdf = gpd.read_parquet(tmp_path / "e.parquet")
    basis = load_file(tmp_path / "e.pca.safetensors")
    vector = torch.tensor(gdf[(gdf["row"] == 0) & (gdf["col"] == 32)]["embedding"].iloc[0])
    with rasterio.open(tmp_path / "e.tif") as src:
        assert (src.width, src.height, src.count) == (9, 5, 3)
        patches = src.read(window=((0, 4), (4, 8)))
    assert np.allclose(patches.mean(axis=(1, 2)), ((vector - basis["mean"]) @ basis["components"].T).numpy(),
                       atol=1e-4)


def test_stacks_and_single_date_encoders_do_not_mix(stack: RasterStack, temporal: Encoder, tmp_path: Path) -> None:
    with pytest.raises(GeoExploraError, match=r"tiny-temporal: a temporal checkpoint reads a stack .*pass --stack"):
        embed_rasters([stack.paths[0]], tmp_path / "e.parquet", temporal, **FAST)
    with pytest.raises(GeoExploraError, match=r"tiny-spectral: --stack needs a temporal checkpoint"):
        embed_rasters([stack], tmp_path / "e.parquet", encoder(), **FAST)
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("rasters")
    return [fake_rasters.write_raster(folder / f"r{i}.tif", width=40 + 16 * i, height=40, seed=i) for i in range(3)]


def interrupt_at(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """Make ``embed_part`` raise KeyboardInterrupt when it reaches the raster ``name`` (None: never); the
    names of the rasters it embeds are appended to the returned list."""
    real, embedded = engine.embed_part, []

    def part(job, enc, unit, *args, **kwargs):
        if unit.path.name == name:
            raise KeyboardInterrupt
        embedded.append(unit.path.name)
        return real(job, enc, unit, *args, **kwargs)

    monkeypatch.setattr(engine, "embed_part", part)
    return embedded


def test_resume_after_an_interruption_writes_the_uninterrupted_table(rasters: list[Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model, options = encoder(), {**FAST, "stride": 24}
    embed_rasters(rasters, tmp_path / "whole.parquet", model, dense=tmp_path / "whole.tif", **options)
    out, dense = tmp_path / "e.parquet", tmp_path / "e.tif"
    interrupt_at(monkeypatch, "r2.tif")
    with pytest.raises(KeyboardInterrupt):
        embed_rasters(rasters, out, model, dense=dense, **options)
    monkeypatch.undo()
    assert len(list(parts_folder(out).glob("*.safetensors"))) == 2 and not out.exists()
    with pytest.raises(GeoExploraError, match=r"\.e\.parquet\.parts: an interrupted embed run .*--resume.*--overwrite"):
        embed_rasters(rasters, out, model, dense=dense, **options)
    embedded = interrupt_at(monkeypatch, None)
    embed_rasters(rasters, out, model, dense=dense, resume=True, **options)
    assert embedded == ["r2.tif"]  # the finished parts were kept
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "whole.parquet"))
    for name in ("r0", "r1", "r2"):
        with rasterio.open(tmp_path / f"whole_{name}.tif") as a, rasterio.open(tmp_path / f"e_{name}.tif") as b:
            np.testing.assert_array_equal(a.read(), b.read())
    assert not parts_folder(out).exists()


def test_resume_refuses_changed_inputs_and_options(rasters: list[Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    copies = rasters[:2]
    model, out = encoder(), tmp_path / "e.parquet"
    interrupt_at(monkeypatch, copies[1].name)
    with pytest.raises(KeyboardInterrupt):
        embed_rasters(copies, out, model, **FAST)
    monkeypatch.undo()
    with pytest.raises(GeoExploraError, match=r"r0\.tif: the interrupted run embedded it with other pool"):
        embed_rasters(copies, out, model, pool="mean", resume=True, **FAST)
    stat = copies[0].stat()
    os.utime(copies[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        with pytest.raises(GeoExploraError, match=r"r0\.tif: changed since the interrupted run .*--overwrite"):
            embed_rasters(copies, out, model, resume=True, **FAST)
    finally:
        os.utime(copies[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert embed_rasters(copies, out, model, overwrite=True, **FAST).windows == 4 + 4
    assert not parts_folder(out).exists()


# --- the command line ---------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    if embed_cli not in geoexplora.cli.COMMANDS:
        monkeypatch.setattr(geoexplora.cli, "COMMANDS", (*geoexplora.cli.COMMANDS, embed_cli))
    return geoexplora.cli.main


def test_cli_embeds_a_stack_folder_and_one_date_with_a_warning(cli, stack: RasterStack, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = write_temporal_checkpoint(tmp_path, stack.paths[0], BANDS)
    base = ["embed", "--checkpoint", str(ckpt), "--tile", "32", "--device", "cpu", "--stack"]
    assert cli([*base, "--raster", str(stack.paths[0].parent), "--out", str(tmp_path / "e.parquet")]) == 0
    assert "Embedded 6 windows of 3 raster(s) in 1 stack(s)" in capsys.readouterr().out
    assert len(gpd.read_parquet(tmp_path / "e.parquet")) == 6
    one = [*base, "--raster", str(stack.paths[1]), "--dates", "2020-03-10", "--out", str(tmp_path / "one.parquet")]
    assert cli(one) == 0
    assert "a stack of one date" in caplog.text
    assert set(gpd.read_parquet(tmp_path / "one.parquet")["dates"].map(list).map(tuple)) == {("2020-03-10",)}
