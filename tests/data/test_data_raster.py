"""GeoRasterDataset: band names, band selection, nodata/NaN valid mask, mixed CRS, input validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from fake_rasters import MULTIBAND_BORDER, MULTIBAND_NAMES, MULTIBAND_NODATA
from fake_rasters import raster_values, write_raster

from geoexplora.data import GeoRasterDataset
from geoexplora.errors import GeoExploraError


def full_window(ds: GeoRasterDataset) -> tuple[slice, slice]:
    x, y, _ = ds.bounds
    return slice(x.start, x.stop, ds.res[0]), slice(y.start, y.stop, ds.res[1])


def test_sample_keys_shapes_and_band_names_from_descriptions(multiband_geotiff: Path) -> None:
    ds = GeoRasterDataset(multiband_geotiff)
    assert ds.band_names == MULTIBAND_NAMES
    sample = ds[full_window(ds)]
    assert sample["image"].shape == (6, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["valid"].shape == (64, 64) and sample["valid"].dtype == torch.bool
    assert {"bounds", "transform"} <= set(sample)
    with rasterio.open(multiband_geotiff) as src:
        expected = src.read().astype(np.float32)
    expected_valid = ~(np.isnan(expected) | (expected == MULTIBAND_NODATA)).any(axis=0)
    np.testing.assert_array_equal(sample["valid"].numpy(), expected_valid)
    np.testing.assert_allclose(sample["image"].numpy(), np.nan_to_num(expected, nan=0.0))
    assert not torch.isnan(sample["image"]).any()
    inner = 64 - 2 * MULTIBAND_BORDER
    assert inner * inner - 6 <= int(sample["valid"].sum()) <= inner * inner


def test_default_band_names_and_user_names(rgb_geotiff: Path, tmp_path: Path) -> None:
    plain = write_raster(tmp_path / "plain.tif", count=3)
    assert GeoRasterDataset(plain).band_names == ("B1", "B2", "B3")
    assert GeoRasterDataset(rgb_geotiff).band_names == ("red", "green", "blue")
    assert GeoRasterDataset(plain, band_names=["r", "g", "b"]).band_names == ("r", "g", "b")


def test_band_subset_by_name_reorders_channels(multiband_geotiff: Path) -> None:
    full = GeoRasterDataset(multiband_geotiff)
    subset = GeoRasterDataset(multiband_geotiff, bands=["nir", "red"])
    assert subset.band_names == ("nir", "red")
    window = full_window(full)
    torch.testing.assert_close(subset[window]["image"], full[window]["image"][[4, 3]])


def test_unknown_band_names_the_file_and_its_bands(multiband_geotiff: Path) -> None:
    with pytest.raises(GeoExploraError, match=r"multiband\.tif.*no band named B99.*coastal, blue, green, red, nir, swir"):
        GeoRasterDataset(multiband_geotiff, bands=["red", "B99"])


def test_wrong_number_of_band_names(rgb_geotiff: Path) -> None:
    with pytest.raises(GeoExploraError, match=r"rgb\.tif: 2 band names"):
        GeoRasterDataset(rgb_geotiff, band_names=["a", "b"])


def test_nodata_override_marks_that_value_invalid(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "ints.tif", count=2, dtype="uint16")
    values = raster_values(width=64, height=64, count=2, dtype="uint16", seed=0)
    target = float(values[0, 10, 10])
    ds = GeoRasterDataset(path, nodata=target)
    valid = ds[full_window(ds)]["valid"].numpy()
    np.testing.assert_array_equal(valid, ~((values == target).any(axis=0)))
    assert not valid[10, 10]
    assert GeoRasterDataset(path)[full_window(ds)]["valid"].all()


def test_folder_mosaic_and_mixed_crs_reprojected(tmp_path: Path) -> None:
    write_raster(tmp_path / "a.tif", count=2, seed=1)
    # Same grid expressed in WGS84 / UTM 32N: TorchGeo reprojects it to the first file's EPSG:32633.
    write_raster(tmp_path / "b.tif", count=2, seed=2, crs="EPSG:32632", origin=(920_000.0, 5_120_000.0), res=10.0)
    ds = GeoRasterDataset(tmp_path)
    assert ds.crs.to_epsg() == 32633
    assert len(ds.index) == 2
    assert ds.band_names == ("B1", "B2")


def test_list_of_files_is_accepted(tmp_path: Path) -> None:
    files = [write_raster(tmp_path / f"t{i}.tif", count=1, seed=i, origin=(500_000.0 + 640 * i, 5_100_000.0)) for i in range(2)]
    ds = GeoRasterDataset(files)
    x, y, _ = ds.bounds
    assert (x.stop - x.start, y.stop - y.start) == (1280.0, 640.0)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(GeoExploraError, match=r"nope\.tif: no such file"):
        GeoRasterDataset(tmp_path / "nope.tif")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(GeoExploraError, match=r"folder holds no \.tif"):
        GeoRasterDataset(tmp_path)


def test_text_file_renamed_tif(tmp_path: Path) -> None:
    fake = tmp_path / "fake.tif"
    fake.write_text("not a raster\n")
    with pytest.raises(GeoExploraError, match=r"fake\.tif: not a readable raster"):
        GeoRasterDataset(fake)


def test_truncated_tiff(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "cut.tif", count=3, width=128, height=128)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GeoExploraError, match=r"cut\.tif: not a readable raster") as info:
        GeoRasterDataset(path)
    assert "\n" not in str(info.value)


def test_raster_without_crs_or_transform(tmp_path: Path) -> None:
    no_crs = write_raster(tmp_path / "nocrs.tif", crs=None)
    with pytest.raises(GeoExploraError, match=r"nocrs\.tif: raster has no CRS"):
        GeoRasterDataset(no_crs)
    bare = write_raster(tmp_path / "bare.tif", georeferenced=False)
    with pytest.raises(GeoExploraError, match=r"bare\.tif: raster has no"):
        GeoRasterDataset(bare)


def test_different_band_counts(tmp_path: Path) -> None:
    write_raster(tmp_path / "a.tif", count=3)
    write_raster(tmp_path / "b.tif", count=4)
    with pytest.raises(GeoExploraError, match=r"b\.tif: has 4 bands but .*a\.tif has 3"):
        GeoRasterDataset(tmp_path)


def test_real_landsat_nodata_is_invalid(shared_data: Path) -> None:
    path = shared_data / "landsat7_nc" / "landsat_multiband.tif"
    ds = GeoRasterDataset(path)
    assert ds.band_names == ("B1", "B2", "B3", "B4", "B5")
    sample = ds[full_window(ds)]
    with rasterio.open(path) as src:
        raw = src.read()
    np.testing.assert_array_equal(sample["valid"].numpy(), ~(raw == -99999).any(axis=0))
