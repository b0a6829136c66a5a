"""Interactive embedding maps that need no network: folium (Leaflet) with Leaflet inlined, no web tiles.

folium links Leaflet, jQuery, Bootstrap and Font Awesome from CDNs, so offline a folium map is a blank page
(``L is not defined``). :class:`OfflineMap` links nothing: it inlines the Leaflet 1.9.4 JavaScript and CSS
vendored in ``geoexplora/explore_assets/`` into the page's ``<head>``, and has no tile layer. The base
layer is the scene itself (:func:`scene_overlay`: warped to Web Mercator, embedded as a PNG data URL),
and :func:`embeddings_map` draws the windows as GeoJSON polygons coloured by the columns that
:mod:`geoexplora.explore` adds (``color``, ``cluster``, ``similarity``). The same HTML is what Jupyter
shows (folium's iframe) and what ``Map.save`` writes. Needs folium: ``pip install 'geoexplora[maps]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path

import folium
import geopandas as gpd
import numpy as np
import rasterio
import rasterio.errors
import shapely
from branca.element import Element
from matplotlib import colormaps
from matplotlib.colors import to_hex
from rasterio.transform import array_bounds
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform

from geoexplora.errors import GeoExploraError

WEB_MERCATOR = "EPSG:3857"
_COLUMNS = ("color", "pc1", "pc2", "pc3", "cluster", "similarity")  # the result columns embeddings_map keeps
_ASSETS = files("geoexplora") / "explore_assets"


@cache
def _asset(name: str, tag: str) -> str:
    """The vendored file ``name`` wrapped in ``<tag>``; refuses a text that would close the tag early."""
    text = (_ASSETS / name).read_text(encoding="utf-8")
    if f"</{tag}" in text.lower():
        raise GeoExploraError(f"explore_assets/{name} contains </{tag}> and cannot be inlined")
    return f"<{tag}>\n{text}\n</{tag}>"


class OfflineMap(folium.Map):
    """A ``folium.Map`` whose page loads nothing from the network.

    Leaflet's JavaScript and CSS are inlined in ``<head>`` instead of folium's CDN links, and there are
    no tiles (``tiles=None``, the container's plain grey shows where no layer is). Every other keyword
    is ``folium.Map``'s. Use layers whose drawing is Leaflet's own (GeoJson, ImageOverlay, CircleMarker,
    LayerControl, tooltips); a folium plugin links its own CDN scripts, and ``folium.Marker``'s icon is an
    image file that the inlined CSS cannot point at.
    """

    default_js: list[tuple[str, str]] = []
    default_css: list[tuple[str, str]] = []

    def __init__(self, location: Sequence[float] | None = None, **kwargs: object) -> None:
        if kwargs.setdefault("tiles", None) is not None:
            raise GeoExploraError("an offline map has no web tiles: leave tiles unset")
        super().__init__(location, **kwargs)

    def render(self, **kwargs: object) -> None:
        header = self.get_root().header
        header.add_child(Element(_asset("leaflet.css", "style")), name="leaflet_css")
        header.add_child(Element(_asset("leaflet.js", "script")), name="leaflet")
        super().render(**kwargs)


def scene_overlay(path: str | Path, bands: Sequence[int] = (1, 2, 3)) -> tuple[np.ndarray, list[list[float]]]:
    """The scene in colour on Leaflet's grid, for ``folium.raster_layers.ImageOverlay``.

    Three bands are warped (bilinear) to Web Mercator, the projection Leaflet draws in, so the picture
    lies exactly over its bounds at every zoom; they are stretched together between their 2nd and 98th
    percentiles.

    Args:
        path: a raster with a CRS.
        bands: 1-based red, green, blue band indexes.

    Returns:
        ``(rgba, bounds)``: uint8 (H, W, 4), transparent outside the scene and at nodata; bounds
        ``[[south, west], [north, east]]`` in degrees.
    """
    if len(bands) != 3:
        raise GeoExploraError(f"bands {tuple(bands)}: give three, red, green and blue")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        raise GeoExploraError(f"{path}: cannot be read as a raster ({str(error).splitlines()[0]})") from None
    with src:
        if src.crs is None:
            raise GeoExploraError(f"{path}: has no CRS, so it cannot be placed on a map")
        if not all(1 <= b <= src.count for b in bands):
            raise GeoExploraError(f"bands {tuple(bands)}: {path} has bands 1..{src.count}")
        dst_transform, width, height = calculate_default_transform(
            src.crs, WEB_MERCATOR, src.width, src.height, *src.bounds)
        rgb = np.full((3, height, width), np.nan, dtype=np.float32)
        reproject(src.read(list(bands), masked=True).astype(np.float32).filled(np.nan), rgb,
                  src_transform=src.transform, src_crs=src.crs, src_nodata=np.nan, dst_transform=dst_transform,
                  dst_crs=WEB_MERCATOR, dst_nodata=np.nan, resampling=Resampling.bilinear)
    valid = ~np.isnan(rgb).any(axis=0)
    if not valid.any():
        raise GeoExploraError(f"{path}: bands {tuple(bands)} hold only nodata")
    lo, hi = np.percentile(rgb[:, valid], [2, 98])
    stretched = np.clip((rgb - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgba = np.concatenate([np.nan_to_num(stretched), valid[None]]).transpose(1, 2, 0)
    west, south, east, north = array_bounds(height, width, dst_transform)
    (lon_w, lon_e), (lat_s, lat_n) = transform(WEB_MERCATOR, "EPSG:4326", [west, east], [south, north])
    return np.round(rgba * 255).astype(np.uint8), [[lat_s, lon_w], [lat_n, lon_e]]


def embeddings_map(
    windows: gpd.GeoDataFrame,
    scene: str | Path | None = None,
    bands: Sequence[int] = (1, 2, 3),
    query: shapely.Point | None = None,
    opacity: float = 0.6,
) -> OfflineMap:
    """An offline map of embedding windows: one toggleable layer per result column present.

    Layers, each a GeoJSON of the window polygons with a tooltip: ``color`` (from
    :func:`~geoexplora.explore.pca_colors`) as "PCA colours"; ``cluster`` (from
    :func:`~geoexplora.explore.kmeans`) in tab10 colours as "k-means"; ``similarity`` (from
    :func:`~geoexplora.explore.nearest`, in [-1, 1]) in viridis as "similarity". The first layer is
    shown, the others are ticked on in the layer control.

    Args:
        windows: GeoDataFrame with a CRS and at least one of those columns (other columns are ignored).
        scene: optional raster drawn underneath (see :func:`scene_overlay`).
        bands: its 1-based red, green, blue bands.
        query: optional point in ``windows``' CRS (the similarity query), drawn as a red circle.
        opacity: fill opacity of the window polygons, 0..1.

    Returns:
        The map, fitted to the windows (and scene); ``.save(path)`` writes a self-contained HTML file.
    """
    if windows.crs is None:
        raise GeoExploraError("the windows have no CRS, so they cannot be placed on a map")
    if len(windows) == 0:
        raise GeoExploraError("the GeoDataFrame has no rows")
    styled = _styled_layers(windows)
    if not styled:
        raise GeoExploraError("nothing to map: add color (pca_colors), cluster (kmeans) or similarity (nearest)")
    shown = windows[[c for c in windows.columns if c in _COLUMNS] + [windows.geometry.name]].to_crs(4326)
    west, south, east, north = shown.total_bounds
    bounds = [[south, west], [north, east]]
    m = OfflineMap(control_scale=True, zoom_snap=0.25)  # fit_bounds fills the view, not the next whole zoom
    if scene is not None:
        rgba, scene_bounds = scene_overlay(scene, bands)
        folium.raster_layers.ImageOverlay(rgba, bounds=scene_bounds, name="scene").add_to(m)
        bounds = [[min(bounds[0][0], scene_bounds[0][0]), min(bounds[0][1], scene_bounds[0][1])],
                  [max(bounds[1][0], scene_bounds[1][0]), max(bounds[1][1], scene_bounds[1][1])]]
    for i, (name, fill, fields) in enumerate(styled):
        layer = shown[fields + [shown.geometry.name]].assign(fill=fill)
        folium.GeoJson(
            layer, name=name, show=i == 0,
            style_function=lambda f: {"fillColor": f["properties"]["fill"], "color": "white", "weight": 0.3,
                                      "fillOpacity": opacity},
            tooltip=folium.GeoJsonTooltip(fields=fields),
        ).add_to(m)
    if query is not None:
        lon, lat = gpd.GeoSeries([query], crs=windows.crs).to_crs(4326).iloc[0].coords[0]
        folium.CircleMarker([lat, lon], radius=7, color="red", weight=2, fill=True, fill_opacity=0.8,
                            tooltip="query").add_to(m)
    folium.LayerControl(collapsed=False).add_to(m)
    m.fit_bounds(bounds)
    return m


def _styled_layers(windows: gpd.GeoDataFrame) -> list[tuple[str, list[str], list[str]]]:
    """(layer name, fill colour per row, tooltip columns) for each result column of ``windows``."""
    layers = []
    if "color" in windows.columns:
        fields = [c for c in ("pc1", "pc2", "pc3") if c in windows.columns] or ["color"]
        layers.append(("PCA colours", list(windows["color"]), fields))
    if "cluster" in windows.columns:
        clusters = windows["cluster"].to_numpy()
        n = int(clusters.max()) + 1 if len(clusters) else 0
        layers.append((f"k-means ({n} clusters)", [to_hex(colormaps["tab10"](int(c) % 10)) for c in clusters],
                       ["cluster"]))
    if "similarity" in windows.columns:
        viridis = colormaps["viridis"]
        layers.append(("similarity to the query",
                       [to_hex(viridis((float(s) + 1) / 2)) for s in windows["similarity"]], ["similarity"]))
    return layers
