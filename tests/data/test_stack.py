"""RasterStack: dated rasters checked up front (dates, bands, grid) before any read."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import rasterio
from fake_rasters import DEFAULT_ORIGIN, DEFAULT_RES, write_raster
from rasterio.warp import transform

from geoexplora.data import RasterStack, TemporalRasterDataset, grid_sampler
from geoexplora.errors import GeoExploraError

#: The acquisition days of the Slovenia stack's files s2_l1c_scene0..4: each file's NDVI equals (to float
#: precision) one frame of eo-learn's TestEOPatch NDVI, whose timestamps.json gives these dates.
SLOVENIA_DATES = ["2015-08-20", "2015-07-31", "2015-09-09", "2015-08-30", "2015-07-11"]


def test_folder_dates_sorted_and_grid_recorded(tmp_path: Path) -> None:
    for day, seed in (("20200620", 0), ("20200105", 1), ("20200310", 2)):
        write_raster(tmp_path / f"S2_{day}.tif", count=3, seed=seed)
    stack = RasterStack.from_paths(tmp_path)
    assert stack.dates == (date(2020, 1, 5), date(2020, 3, 10), date(2020, 6, 20))
    assert [p.name for p in stack.paths] == ["S2_20200105.tif", "S2_20200310.tif", "S2_20200620.tif"]
    assert (stack.width, stack.height, stack.band_count, stack.res) == (64, 64, 3, (DEFAULT_RES, DEFAULT_RES))
    assert stack.days[0] == (date(2020, 1, 5) - date(1970, 1, 1)).days
    assert stack.reprojected == ()


@pytest.mark.parametrize(("names", "dates", "message"), [
    (["S2_20200105.tif", "S2_latest.tif"], None, r"S2_latest\.tif: no date in the file name"),
    (["a_20200105.tif", "b_20200105.tif"], None, r"b_20200105\.tif: date 2020-01-05 is also the date of .*a_20200105"),
    (["x.tif", "y.tif"], ["2020-01-05", "5 Jan"], r"y\.tif: date '5 Jan' is not an ISO date"),
    (["x.tif", "y.tif"], ["2020-01-05", "2020-01-05"], r"y\.tif: date 2020-01-05 is also the date of .*x\.tif"),
    (["x.tif", "y.tif"], ["2020-01-05"], r"1 dates given for 2 files"),
])
def test_bad_dates_are_one_line_naming_the_file(tmp_path: Path, names, dates, message) -> None:
    files = [write_raster(tmp_path / n, count=2) for n in names]
    with pytest.raises(GeoExploraError, match=message):
        RasterStack.from_paths(files, dates=dates)


def test_other_bands_or_grid_are_refused(tmp_path: Path) -> None:
    first = write_raster(tmp_path / "S2_20200105.tif", count=3)
    bands = write_raster(tmp_path / "b" / "S2_20200310.tif", count=4)
    with pytest.raises(GeoExploraError, match=r"S2_20200310\.tif: 4 bands, but .*S2_20200105\.tif has 3"):
        RasterStack.from_paths([first, bands])
    shifted = write_raster(tmp_path / "g" / "S2_20200310.tif", count=3,
                           origin=(DEFAULT_ORIGIN[0] + DEFAULT_RES / 2, DEFAULT_ORIGIN[1]))
    with pytest.raises(GeoExploraError, match=r"S2_20200310\.tif: misaligned with .*S2_20200105\.tif"):
        RasterStack.from_paths([first, shifted])
    elsewhere = write_raster(tmp_path / "e" / "S2_20200310.tif", count=3, crs="EPSG:4326", origin=(10.0, 50.0),
                             res=0.0001)
    with pytest.raises(GeoExploraError, match=r"S2_20200310\.tif: in EPSG:4326 it does not cover"):
        RasterStack.from_paths([first, elsewhere])


def test_a_date_in_another_crs_is_reprojected_onto_the_first(tmp_path: Path) -> None:
    first = write_raster(tmp_path / "S2_20200105.tif", count=2)
    with rasterio.open(first) as src:
        crs, bounds = src.crs, src.bounds
    xs, ys = transform(crs, "EPSG:4326", [bounds.left - 200, bounds.right + 200], [bounds.top + 200, bounds.bottom - 200])
    lonlat = write_raster(tmp_path / "S2_20200310.tif", count=2, crs="EPSG:4326", origin=(xs[0], ys[0]),
                          res=max(xs[1] - xs[0], ys[0] - ys[1]) / 64)
    stack = RasterStack.from_paths(tmp_path)
    assert stack.reprojected == (lonlat,)
    ds = TemporalRasterDataset(stack)
    sample = ds[next(iter(grid_sampler(ds, 32)))]
    assert sample["image"].shape == (2, 2, 32, 32) and ds.res == (DEFAULT_RES, DEFAULT_RES)


def test_real_slovenia_stack(shared_data: Path) -> None:
    files = [shared_data / "sentinel2_slovenia" / f"s2_l1c_scene{i}.tif" for i in range(5)]
    stack = RasterStack.from_paths(files, dates=SLOVENIA_DATES)
    assert [p.name for p in stack.paths] == [f"s2_l1c_scene{i}.tif" for i in (4, 1, 0, 3, 2)]
    assert (stack.width, stack.height, stack.band_count, str(stack.crs)) == (100, 101, 13, "EPSG:32633")


def test_a_stac_item_collection_is_a_stack_dated_by_its_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Items in any order, ids without dates: the stack takes each item's datetime, sorted."""
    import json

    monkeypatch.setenv("GEOEXPLORA_CACHE", str(tmp_path / "cache"))
    when = ["2020-06-20T10:00:00Z", "2020-01-05T10:00:00Z", "2020-03-10T10:00:00Z"]
    features = []
    for i, day in enumerate(when):
        tif = write_raster(tmp_path / f"scene{i}.tif", count=2, seed=i, descriptions=["red", "nir"])
        features.append({"type": "Feature", "stac_version": "1.0.0", "id": f"scene-{i}", "geometry": None,
                         "links": [], "properties": {"datetime": day},
                         "assets": {"data": {"href": str(tif), "type": "image/tiff", "roles": ["data"],
                                             "eo:bands": [{"name": "red"}, {"name": "nir"}]}}})
    collection = tmp_path / "collection.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    stack = RasterStack.from_paths(collection)
    assert stack.dates == (date(2020, 1, 5), date(2020, 3, 10), date(2020, 6, 20))
    assert [p.suffix for p in stack.paths] == [".vrt"] * 3 and stack.band_count == 2
    with rasterio.open(stack.paths[0]) as first, rasterio.open(tmp_path / "scene1.tif") as tif:
        assert (first.read() == tif.read()).all()
    explicit = RasterStack.from_paths(collection, dates=["2021-01-01", "2021-01-02", "2021-01-03"])
    assert explicit.dates[0] == date(2021, 1, 1)  # dates given win over the items'
