"""Direct window reads give TorchGeo's samples exactly, and are taken only where they may be."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from pyproj import CRS
from torchgeo.datasets import RasterDataset

import fake_rasters
from geoexplora.data import GeoRasterDataset, RasterMaskDataset, TemporalRasterDataset, grid_sampler, random_sampler
from geoexplora.data.direct_reads import DirectWindowReads, ProcessHandles


def torchgeo_sample(ds: DirectWindowReads, query) -> dict:
    return RasterDataset.__getitem__(ds, query)


def assert_same(ds: DirectWindowReads, queries: list) -> int:
    """Every query's direct sample (when taken) equals TorchGeo's, bit for bit; returns how many were direct."""
    direct = 0
    for query in queries:
        got = ds._direct_sample(query)
        if got is None:
            continue
        direct += 1
        expected = torchgeo_sample(ds, query)
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key].dtype == expected[key].dtype, key
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, equal_nan=True)
    return direct


def windows(ds, size: int) -> list:
    # the grid's last row and column reach past the footprint: reads partly outside the file
    return list(grid_sampler(ds, size, stride=size // 2 + 3)) + list(random_sampler(ds, size, 40, seed=1))


@pytest.mark.parametrize("kind", ["float-nodata-nan", "uint8-no-nodata", "uint16-nodata"])
def test_single_file_windows_equal_torchgeo(tmp_path: Path, kind: str, multiband_geotiff: Path, rgb_geotiff: Path):
    path = {"float-nodata-nan": multiband_geotiff, "uint8-no-nodata": rgb_geotiff,
            "uint16-nodata": fake_rasters.write_raster(tmp_path / "u16.tif", width=70, height=50, dtype="uint16",
                                                       nodata=0, nodata_border=2)}[kind]
    ds = GeoRasterDataset(path)
    queries = windows(ds, 24)
    assert assert_same(ds, queries) == len(queries)  # one file on the dataset's grid: every window direct


def test_band_subset_and_label_masks_equal_torchgeo(multiband_geotiff: Path, tmp_path: Path):
    ds = GeoRasterDataset(multiband_geotiff, bands=["nir", "blue"])
    queries = windows(ds, 16)
    assert assert_same(ds, queries) == len(queries)
    for name, nodata in (("labels.tif", 255), ("no-nodata.tif", None)):  # None: TorchGeo fills NaN, float64
        path = fake_rasters.write_label_raster(tmp_path / name, nodata=nodata, nodata_border=3 if nodata else 0)
        labels = RasterMaskDataset(path)
        queries = windows(labels, 16)
        assert assert_same(labels, queries) == len(queries)


def test_overlapping_files_and_time_series_equal_torchgeo(tmp_path: Path, temporal_folder: Path):
    # b overlaps a by 16 px and both have a nodata border: merge takes a's pixels first, then b's where a has
    # nodata; windows over the seam and partly outside both are direct too
    fake_rasters.write_raster(tmp_path / "m" / "a.tif", nodata=-1.0, nodata_border=3, seed=0)
    fake_rasters.write_raster(tmp_path / "m" / "b.tif", nodata=-1.0, nodata_border=3, seed=1,
                              origin=(500_480.0, 5_100_000.0))
    mosaic = GeoRasterDataset(tmp_path / "m")
    queries = windows(mosaic, 32)
    assert assert_same(mosaic, queries) == len(queries)
    stack = TemporalRasterDataset(temporal_folder)  # (T, C, H, W): each date merged alone
    queries = windows(stack, 24)
    assert assert_same(stack, queries) == len(queries)


def test_other_crs_goes_to_torchgeo(tmp_path: Path):
    other = fake_rasters.write_raster(tmp_path / "utm34.tif", crs="EPSG:32634", origin=(166_000.0, 5_100_000.0))
    reprojected = GeoRasterDataset([fake_rasters.write_raster(tmp_path / "utm33.tif"), other])  # other: warped
    inside_other = [q for q in windows(reprojected, 16) if q[0].start > 501_000]
    assert inside_other and all(reprojected._direct_sample(q) is None for q in inside_other)
    assert all(reprojected[q]["image"].shape == (4, 16, 16) for q in inside_other[:3])


def test_a_crs_change_is_seen(multiband_geotiff: Path):
    ds = GeoRasterDataset(multiband_geotiff)
    query = next(iter(random_sampler(ds, 16, 1)))
    assert ds._direct_sample(query) is not None
    ds.crs = CRS.from_epsg(32634)  # TorchGeo reprojects the index in place (the next UTM zone, still metres)
    query = next(iter(random_sampler(ds, 16, 1)))
    assert ds._direct_sample(query) is None and ds[query]["image"].shape[0] == 6


def test_handles_are_per_process_and_pickle_empty(tmp_path: Path):
    handles = ProcessHandles(maxsize=2)
    opened: list[str] = []

    def opener(name: str):
        return lambda: opened.append(name) or name

    assert handles.get("a", opener("a")) == "a" and handles.get("a", opener("a")) == "a"
    assert opened == ["a"]  # cached
    handles.get("b", opener("b")), handles.get("c", opener("c"))
    handles.get("a", opener("a"))
    assert opened == ["a", "b", "c", "a"]  # at most 2 kept: "a" was dropped and opened again
    handles._pid = os.getpid() + 1  # as in a worker forked after these were opened
    handles.get("c", opener("c"))
    assert opened[-1] == "c"  # the worker opens its own
    restored = pickle.loads(pickle.dumps(handles))
    assert restored.maxsize == 2 and restored.get("c", opener("c2")) == "c2"


def test_real_rasters_equal_torchgeo(shared_data: Path):
    # non-square 300.04 x 300.04 m pixels (fractional source windows, read as merge reads them) and a stack
    # of 5 dates with one footprint, merged first-come and as a time series
    scenes = sorted((shared_data / "sentinel2_slovenia").glob("s2_l1c_scene*.tif"))
    dates = [f"2017-01-0{i}" for i in range(1, 6)]
    for ds, size in ((GeoRasterDataset(shared_data / "landsat_rgb" / "RGB.byte.tif"), 224),
                     (GeoRasterDataset(scenes), 48), (TemporalRasterDataset(scenes, dates=dates), 48)):
        queries = windows(ds, size)[:50]
        assert assert_same(ds, queries) == len(queries)
