"""The offline embeddings map: self-contained HTML, the scene overlay, and a real offline browser drawing it.

The browser test opens the exported page in headless Chromium with every host name unresolvable and
compares the grey-level variance of the screenshot's map area with ``BLANK_VARIANCE`` (tests/explore/
map_checks.py: the threshold and the figures measured for blank and drawn pages); a stock folium map of
the same windows is the control that must come out blank.
"""
from __future__ import annotations

from pathlib import Path

import fake_rasters
import folium
import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.warp import transform_bounds

from geoexplora.errors import GeoExploraError
from geoexplora.explore import kmeans, nearest, pca_colors
from geoexplora.explore_map import OfflineMap, embeddings_map, scene_overlay
from geoexplora.explore_screenshot import find_chromium, screenshot

from map_checks import BLANK_VARIANCE, VIEWPORT, fetched_urls, map_variance


@pytest.fixture
def windows(rgb_geotiff: Path) -> gpd.GeoDataFrame:
    """16 windows (a 4 x 4 grid of 16-pixel squares over ``rgb_geotiff``) with PCA colours, 3 clusters and
    similarity to window 5; embeddings (8,) from three blobs."""
    with rasterio.open(rgb_geotiff) as src:
        left, top, crs = src.bounds.left, src.bounds.top, src.crs
    side = 160.0
    boxes = [shapely.box(left + i * side, top - (j + 1) * side, left + (i + 1) * side, top - j * side)
             for j in range(4) for i in range(4)]
    rng = np.random.default_rng(0)
    vectors = (5 * np.eye(8)[np.arange(16) % 3] + 0.2 * rng.standard_normal((16, 8))).astype(np.float32)
    gdf = gpd.GeoDataFrame({"embedding": list(vectors)}, geometry=boxes, crs=crs)
    return pca_colors(gdf).join(kmeans(gdf, 3)["cluster"]).join(nearest(gdf, 5, k=16)["similarity"])


def test_html_is_self_contained(windows: gpd.GeoDataFrame, rgb_geotiff: Path, tmp_path: Path) -> None:
    m = embeddings_map(windows, scene=rgb_geotiff, query=windows.geometry.iloc[5].centroid)
    m.save(tmp_path / "map.html")
    html = (tmp_path / "map.html").read_text()
    urls = fetched_urls(html)
    assert not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
    assert "Leaflet 1.9.4" in html and "L.map(" in html  # the library is inlined, the map built with it
    assert html.count("data:image/png;base64,") == 1  # the scene overlay, embedded
    for layer in ("PCA colours", "k-means (3 clusters)", "similarity to the query"):
        assert layer in html
    assert "Leaflet 1.9.4" in OfflineMap().get_root().render()  # a bare map inlines Leaflet too


def test_stock_folium_links_cdns_the_offline_map_does_not(windows: gpd.GeoDataFrame) -> None:
    stock = folium.Map(tiles=None).get_root().render()
    assert any(u.startswith("https:") for u in fetched_urls(stock))  # why OfflineMap exists
    with pytest.raises(GeoExploraError, match="no web tiles"):
        OfflineMap(tiles="OpenStreetMap")


def test_scene_overlay_covers_the_scene_in_web_mercator(rgb_geotiff: Path, tmp_path: Path) -> None:
    rgba, ((south, west), (north, east)) = scene_overlay(rgb_geotiff)
    with rasterio.open(rgb_geotiff) as src:
        expected = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        profile, data = src.profile, src.read()
    pixel = (east - west) / rgba.shape[1]  # degrees: the warp may round the extent out by up to one pixel
    assert (west, south, east, north) == pytest.approx(expected, abs=pixel)
    assert rgba.dtype == np.uint8 and rgba.ndim == 3 and rgba.shape[2] == 4
    assert rgba[..., 3].max() == 255 and len(np.unique(rgba[..., :3])) > 10
    data[:, :, :32] = 0  # the west half as nodata: transparent there
    with rasterio.open(tmp_path / "half.tif", "w", **{**profile, "nodata": 0}) as dst:
        dst.write(data)
    alpha = scene_overlay(tmp_path / "half.tif")[0][..., 3]
    assert alpha[:, : alpha.shape[1] // 2 - 2].max() == 0 and alpha[:, alpha.shape[1] // 2 + 2 :].min() == 255


def test_bad_input_is_one_clear_error(windows: gpd.GeoDataFrame, rgb_geotiff: Path, tmp_path: Path) -> None:
    with pytest.raises(GeoExploraError, match="nothing to map"):
        embeddings_map(windows[["geometry"]])
    with pytest.raises(GeoExploraError, match="no rows"):
        embeddings_map(windows.iloc[:0])
    with pytest.raises(GeoExploraError, match=r"bands \(1, 2, 4\): .* has bands 1\.\.3"):
        scene_overlay(rgb_geotiff, bands=(1, 2, 4))
    with pytest.raises(GeoExploraError, match="give three"):
        scene_overlay(rgb_geotiff, bands=(1, 2))
    with pytest.raises(GeoExploraError, match=r"nope\.tif: cannot be read as a raster"):
        embeddings_map(windows, scene=rgb_geotiff.parent / "nope.tif")
    with pytest.raises(GeoExploraError, match="has no CRS"):
        scene_overlay(fake_rasters.write_raster(tmp_path / "nocrs.tif", count=3, crs=None))
    with pytest.raises(GeoExploraError, match="the windows have no CRS"):
        embeddings_map(windows.set_crs(None, allow_override=True))


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_offline_chromium_draws_the_map_and_not_a_cdn_map(windows: gpd.GeoDataFrame, rgb_geotiff: Path,
                                                          tmp_path: Path) -> None:
    embeddings_map(windows, scene=rgb_geotiff, query=windows.geometry.iloc[5].centroid).save(tmp_path / "map.html")
    drawn = map_variance(screenshot(tmp_path / "map.html", tmp_path / "map.png", size=VIEWPORT))
    assert drawn > BLANK_VARIANCE, f"the offline map's area is blank (variance {drawn:.1f})"
    # The control: the same windows in a stock folium map (CDN links) draw nothing offline.
    stock = folium.Map(tiles=None)
    folium.GeoJson(windows[["color", "geometry"]].to_crs(4326),
                   style_function=lambda f: {"fillColor": f["properties"]["color"], "fillOpacity": 1}).add_to(stock)
    stock.fit_bounds([[float(v) for v in c] for c in windows.to_crs(4326).total_bounds.reshape(2, 2)[:, ::-1]])
    stock.save(tmp_path / "stock.html")
    blank = map_variance(screenshot(tmp_path / "stock.html", tmp_path / "stock.png", size=VIEWPORT))
    assert blank < BLANK_VARIANCE, f"a CDN map drew offline (variance {blank:.1f}): the browser is not offline"
