"""Label sources: raster masks (incl. real CRS-tag mismatch), vector masks / windows, scene tiles."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from fake_rasters import DEFAULT_ORIGIN, write_label_raster, write_raster
from shapely.geometry import Point, box

from geoexplora.data import (
    GeoRasterDataset,
    RasterMaskDataset,
    SceneClassificationDataset,
    VectorMaskDataset,
    VectorWindowDataset,
    grid_sampler,
)
from geoexplora.errors import GeoExploraError

X0, Y0 = DEFAULT_ORIGIN


def test_raster_mask_intersection_with_nodata_as_ignore_index(rgb_geotiff: Path, tmp_path: Path) -> None:
    labels = write_label_raster(tmp_path / "labels.tif", num_classes=4, nodata=9, nodata_border=5)
    image = GeoRasterDataset(rgb_geotiff)
    masks = RasterMaskDataset(labels, crs=image.crs, res=image.res, ignore_index=200)
    sample = (image & masks)[next(iter(grid_sampler(image, 64)))]
    assert sample["image"].shape == (3, 64, 64)
    assert sample["mask"].shape == (64, 64) and sample["mask"].dtype == torch.int64
    assert (sample["mask"][:5] == 200).all()
    expected = np.arange(64) * 4 // 64
    np.testing.assert_array_equal(sample["mask"][5:].numpy(), np.broadcast_to(expected, (59, 64)))


def test_raster_mask_must_have_one_band(rgb_geotiff: Path) -> None:
    with pytest.raises(GeoExploraError, match=r"rgb\.tif: a label raster must have 1 band"):
        RasterMaskDataset(rgb_geotiff)


def test_real_landsat_strata_line_up(shared_data: Path) -> None:
    folder = shared_data / "landsat7_nc"
    image = GeoRasterDataset(folder / "landsat_multiband.tif")
    masks = RasterMaskDataset(folder / "strata.tif", crs=image.crs, res=image.res)  # EPSG:3358 -> 32119
    x, y, _ = image.bounds
    rx, ry = image.res
    window = (slice(x.start + 100 * rx, x.start + 164 * rx, rx), slice(y.stop - 164 * ry, y.stop - 100 * ry, ry))
    sample = (image & masks)[window]
    assert sample["mask"].shape == (64, 64)
    assert len(np.unique(sample["mask"])) >= 3
    with rasterio.open(folder / "strata.tif") as src:
        truth = src.read(1)[100:164, 100:164]
    assert (sample["mask"].numpy() == truth).mean() > 0.99


@pytest.fixture
def labelled_vectors(tmp_path: Path) -> Path:
    """Two polygons and three points in EPSG:4326 (so they must be reprojected) over the fake rasters."""
    frame = gpd.GeoDataFrame(
        {"kind": ["water", "forest", "forest", "urban", "water"]},
        geometry=[
            box(X0 + 0, Y0 - 200, X0 + 200, Y0),  # top-left 20x20 pixels
            box(X0 + 400, Y0 - 640, X0 + 640, Y0 - 400),  # bottom-right 24x24 pixels
            Point(X0 + 105, Y0 - 305),
            Point(X0 + 325, Y0 - 125),
            Point(X0 + 5000, Y0 - 5000),  # outside the raster
        ],
        crs="EPSG:32633",
    ).to_crs("EPSG:4326")
    path = tmp_path / "labels.gpkg"
    frame.to_file(path)
    return path


def test_vector_mask_rasterises_classes(rgb_geotiff: Path, labelled_vectors: Path) -> None:
    image = GeoRasterDataset(rgb_geotiff)
    masks = VectorMaskDataset(labelled_vectors, "kind", crs=image.crs, res=image.res)
    assert masks.classes == ("forest", "urban", "water")
    sample = (image & masks)[next(iter(grid_sampler(image, 64)))]
    mask = sample["mask"]
    assert mask.shape == (64, 64) and mask.dtype == torch.int64
    assert (mask[2:18, 2:18] == 2).all()  # water polygon (inner part: edges move with reprojection)
    assert (mask[42:62, 42:62] == 0).all()  # forest polygon
    assert 0.6 < (mask == 255).float().mean() < 0.85


def test_vector_windows_centred_with_class_index(rgb_geotiff: Path, labelled_vectors: Path) -> None:
    image = GeoRasterDataset(rgb_geotiff)
    windows = VectorWindowDataset(image, labelled_vectors, "kind", window_size=8)
    assert len(windows) == 4 and windows.num_dropped == 1
    assert windows.class_to_index == {"forest": 0, "urban": 1, "water": 2}
    assert sorted(windows.labels.tolist()) == [0, 0, 1, 2]
    with rasterio.open(rgb_geotiff) as src:
        pixels = src.read()
    for i in range(len(windows)):
        sample = windows[i]
        assert sample["image"].shape == (3, 8, 8) and sample["label"].dtype == torch.int64
    point = int(np.argmin(np.hypot(windows.centres[:, 0] - (X0 + 105), windows.centres[:, 1] - (Y0 - 305))))  # row 30, col 10
    np.testing.assert_array_equal(windows[point]["image"][:, 4, 4].numpy(), pixels[:, 30, 10])
    assert windows[point]["label"].item() == 0


def test_vector_missing_column_and_unknown_class(labelled_vectors: Path, rgb_geotiff: Path) -> None:
    image = GeoRasterDataset(rgb_geotiff)
    with pytest.raises(GeoExploraError, match=r"labels\.gpkg: no column 'class'; its columns are kind"):
        VectorWindowDataset(image, labelled_vectors, "class", window_size=8)
    with pytest.raises(GeoExploraError, match=r"labels\.gpkg: classes urban, water not in"):
        VectorMaskDataset(labelled_vectors, "kind", image.crs, image.res, classes=["forest"])


def test_real_landsat_points_and_polygons(shared_data: Path) -> None:
    folder = shared_data / "landsat7_nc"
    image = GeoRasterDataset(folder / "landsat_multiband.tif")
    points = VectorWindowDataset(image, folder / "landsat96_points.shp", "label", window_size=16)
    assert len(points.classes) == 7
    assert len(points) + points.num_dropped == 1000 and len(points) > 500
    assert points[0]["image"].shape == (5, 16, 16)
    polygons = VectorMaskDataset(folder / "landsat96_polygons.shp", "label", image.crs, image.res)
    x, y, _ = image.bounds
    mask = polygons[x.start : x.stop : image.res[0], y.start : y.stop : image.res[1]]["mask"]
    assert mask.shape == (443, 489)
    assert set(np.unique(mask).tolist()) == {*range(7), 255}


def test_scene_folder_dataset(tmp_path: Path) -> None:
    for name, count in (("forest", 2), ("water", 1)):
        for i in range(count):
            write_raster(tmp_path / name / f"{i}.tif", width=16, height=16, count=3, seed=i, nodata=-1.0)
    ds = SceneClassificationDataset.from_folder(tmp_path)
    assert ds.classes == ("forest", "water") and len(ds) == 3
    sample = ds[2]
    assert sample["image"].shape == (3, 16, 16) and sample["image"].dtype == torch.float32
    assert sample["label"].dtype == torch.int64 and sample["label"].item() == 1
    assert sample["valid"].all()


def test_scene_csv_multi_label(tmp_path: Path) -> None:
    write_raster(tmp_path / "tiles" / "a.tif", width=16, height=16, count=2)
    write_raster(tmp_path / "tiles" / "b.tif", width=16, height=16, count=2, nan_pixels=3)
    (tmp_path / "labels.csv").write_text("path,label\ntiles/a.tif,river;forest\ntiles/b.tif,urban\n")
    ds = SceneClassificationDataset.from_csv(tmp_path / "labels.csv")
    assert ds.multi_label and ds.classes == ("forest", "river", "urban")
    assert ds[0]["label"].tolist() == [1.0, 1.0, 0.0]
    assert ds[1]["label"].tolist() == [0.0, 0.0, 1.0]
    assert int((~ds[1]["valid"]).sum()) == 3 and not torch.isnan(ds[1]["image"]).any()


def test_scene_csv_single_label_and_errors(tmp_path: Path) -> None:
    write_raster(tmp_path / "a.tif", width=16, height=16, count=1)
    (tmp_path / "ok.csv").write_text("path,label\na.tif,crop\n")
    ds = SceneClassificationDataset.from_csv(tmp_path / "ok.csv")
    assert not ds.multi_label and ds[0]["label"].item() == 0
    (tmp_path / "missing.csv").write_text("path,label\na.tif,crop\ngone.tif,crop\n")
    with pytest.raises(GeoExploraError, match=r"missing\.csv: line 3: tile .*gone\.tif does not exist"):
        SceneClassificationDataset.from_csv(tmp_path / "missing.csv")
    (tmp_path / "cols.csv").write_text("file,label\na.tif,crop\n")
    with pytest.raises(GeoExploraError, match=r"cols\.csv: no column path"):
        SceneClassificationDataset.from_csv(tmp_path / "cols.csv")
