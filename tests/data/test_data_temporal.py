"""TemporalRasterDataset: (T, C, H, W) stacks with ordered day numbers from names or an explicit list."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from fake_rasters import write_raster

from geoexplora.data import TemporalRasterDataset, grid_sampler, random_sampler
from geoexplora.errors import GeoExploraError

EXPECTED_DAYS = [(date(2020, 1, 5) - date(1970, 1, 1)).days, (date(2020, 3, 10) - date(1970, 1, 1)).days,
                 (date(2020, 6, 20) - date(1970, 1, 1)).days]


def test_stack_shapes_and_dates_from_file_names(temporal_folder: Path) -> None:
    ds = TemporalRasterDataset(temporal_folder)
    window = next(iter(grid_sampler(ds, 32)))
    sample = ds[window]
    assert sample["image"].shape == (3, 4, 32, 32)
    assert sample["valid"].shape == (3, 32, 32)
    assert sample["dates"].tolist() == EXPECTED_DAYS
    assert str(sample["dates"].dtype) == "torch.int64"
    with rasterio.open(temporal_folder / "S2_20200310.tif") as src:
        second = src.read()[:, 32:, :32]  # grid starts at the lower-left corner
    np.testing.assert_allclose(sample["image"][1].numpy(), second)


def test_random_windows_hold_every_date(temporal_folder: Path) -> None:
    ds = TemporalRasterDataset(temporal_folder)
    for window in random_sampler(ds, 16, length=3, seed=0):
        assert ds[window]["dates"].tolist() == EXPECTED_DAYS


def test_time_range_selects_dates(temporal_folder: Path) -> None:
    ds = TemporalRasterDataset(temporal_folder)
    x, y, _ = ds.bounds
    sample = ds[x.start : x.start + 160 : 10, y.start : y.start + 160 : 10, pd.Timestamp("2020-03-01") : pd.Timestamp("2020-12-31")]
    assert sample["dates"].tolist() == EXPECTED_DAYS[1:]
    assert sample["image"].shape == (2, 4, 16, 16)


def test_explicit_dates_reorder_files(tmp_path: Path) -> None:
    files = [write_raster(tmp_path / f"scene{i}.tif", count=2, seed=i) for i in range(3)]
    ds = TemporalRasterDataset(files, dates=["2021-05-01", date(2021, 1, 1), "2021-03-01"])
    sample = ds[next(iter(grid_sampler(ds, 64)))]
    start = (date(2021, 1, 1) - date(1970, 1, 1)).days
    assert sample["dates"].tolist() == [start, start + 59, start + 120]
    with rasterio.open(files[1]) as src:  # the earliest date comes first
        np.testing.assert_allclose(sample["image"][0].numpy(), src.read())


def test_custom_pattern_and_format(tmp_path: Path) -> None:
    write_raster(tmp_path / "L8_2019-07-04_T33.tif", count=1)
    ds = TemporalRasterDataset(tmp_path, date_pattern=r"_(?P<date>\d{4}-\d{2}-\d{2})_", date_format="%Y-%m-%d")
    assert ds.dates == (date(2019, 7, 4),)


def test_unparseable_file_name(temporal_folder: Path, tmp_path: Path) -> None:
    bad = write_raster(tmp_path / "S2_latest.tif", count=4)
    with pytest.raises(GeoExploraError, match=r"S2_latest\.tif: no date in the file name"):
        TemporalRasterDataset([*sorted(temporal_folder.glob("*.tif")), bad])
    invalid = write_raster(tmp_path / "S2_20201341.tif", count=4)
    with pytest.raises(GeoExploraError, match=r"S2_20201341\.tif: '20201341'.*not a date"):
        TemporalRasterDataset(invalid)


def test_date_list_length_must_match(temporal_folder: Path) -> None:
    with pytest.raises(GeoExploraError, match="2 dates given for 3 files"):
        TemporalRasterDataset(temporal_folder, dates=["2020-01-01", "2020-01-02"])


def test_real_sentinel2_stack_with_explicit_dates(shared_data: Path) -> None:
    files = [shared_data / "sentinel2_slovenia" / f"s2_l1c_scene{i}.tif" for i in range(5)]
    days = ["2015-08-20", "2015-07-31", "2015-09-09", "2015-08-30", "2015-07-11"]  # scene0..4's real days
    ds = TemporalRasterDataset(files, dates=days)
    sample = ds[next(iter(grid_sampler(ds, 64)))]
    assert sample["image"].shape == (5, 13, 64, 64)
    assert np.array_equal(np.diff(sample["dates"].numpy()), [20, 20, 10, 10])  # sorted: 07-11 .. 09-09
