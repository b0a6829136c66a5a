"""Vector output round trip and the preview PNG."""

from __future__ import annotations

from pathlib import Path

import fake_rasters
import geopandas as gpd
import numpy as np
import pytest
import rasterio
from inference_helpers import pixel_model

from geoexplora.errors import GeoExploraError
from geoexplora.inference import predict_raster, vectorize_classes, write_preview, write_vectors

NAMES = ("water", "field", "forest")


@pytest.fixture(scope="module")
def class_map(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pred") / "pred.tif"
    predict_raster(scene, out, pixel_model(), num_classes=3, tile=32, overlap=8, progress=False)
    return out


@pytest.fixture(scope="module")
def stripes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 x 64 uint8 stripes of classes 0, 1, 2, nodata 255 on the top 4 rows."""
    return fake_rasters.write_label_raster(tmp_path_factory.mktemp("stripes") / "stripes.tif", nodata=255,
                                           nodata_border=4)


@pytest.mark.parametrize("suffix", [".gpkg", ".parquet"])
def test_vector_round_trip(stripes: Path, tmp_path: Path, suffix: str) -> None:
    frame = vectorize_classes(stripes, class_names=NAMES)
    path = write_vectors(frame, tmp_path / f"classes{suffix}")
    back = gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path)
    with rasterio.open(stripes) as src:
        assert back.crs == src.crs
    assert sorted(back["class_id"]) == [0, 1, 2]
    assert sorted(back["class_name"]) == sorted(NAMES)
    # each stripe is about 21 px wide x 60 rows (4 nodata rows) of 10 m pixels
    assert back["area"].sum() == pytest.approx(64 * 60 * 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_min_area_and_simplify(stripes: Path, tmp_path: Path) -> None:
    specks = tmp_path / "specks.tif"
    with rasterio.open(stripes) as src:
        profile, data = src.profile, src.read(1)
    data[[10, 20, 30], [5, 5, 5]] = 2  # three one-pixel (100 m^2) specks of class 2 inside stripe 0
    with rasterio.open(specks, "w", **profile) as dst:
        dst.write(data, 1)
    everything = vectorize_classes(specks)
    large = vectorize_classes(specks, min_area=150.0, simplify=5.0)
    assert len(everything) == 3 + 3 and len(large) == 3
    assert sorted(large["class_id"]) == [0, 1, 2] and (large["area"] >= 150.0).all()


def test_vector_errors(stripes: Path, tmp_path: Path) -> None:
    frame = vectorize_classes(stripes)
    with pytest.raises(GeoExploraError, match=r"classes\.shp: unknown vector format"):
        write_vectors(frame, tmp_path / "classes.shp")
    with pytest.raises(GeoExploraError, match="class id 2 has no name"):
        vectorize_classes(stripes, class_names=NAMES[:2])
    (tmp_path / "v.gpkg").write_text("x")
    with pytest.raises(GeoExploraError, match=r"v\.gpkg: already exists"):
        write_vectors(frame, tmp_path / "v.gpkg")


def test_preview_png(class_map: Path, scene: Path) -> None:
    png = write_preview(class_map, scene, rgb_bands=(3, 2, 1), class_names=NAMES, max_size=128)
    assert png == class_map.with_name("pred.preview.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 50
    assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 10
