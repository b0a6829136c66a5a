"""A quick-look PNG: the class map in a palette with a legend, over a true-colour rendering of the input.

Both rasters are read decimated to at most ``max_size`` px on the long side (GDAL serves such reads
from overviews when the file has them, as the COG outputs do), so a preview of a huge scene stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import rasterio
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from rasterio.enums import Resampling  # noqa: E402

from geoexplora.errors import GeoExploraError  # noqa: E402


def preview_path(class_map: Path) -> Path:
    """``pred.tif`` -> ``pred.preview.png`` in the same folder."""
    return class_map.with_name(f"{class_map.stem}.preview.png")


def write_preview(
    class_map: Path,
    raster: Path | None = None,
    *,
    out: Path | None = None,
    rgb_bands: Sequence[int] = (1, 2, 3),
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    max_size: int = 1024,
    alpha: float = 0.5,
) -> Path:
    """Draw ``class_map`` (over ``raster``'s ``rgb_bands``, 2-98 percentile stretch) to a PNG.

    Args:
        class_map: single-band class raster.
        raster: the input scene for the background (None: classes alone).
        out: PNG path (default :func:`preview_path`); written under a temporary name then renamed.
        rgb_bands: 1-based red, green, blue band indexes of ``raster`` (one index gives grey).
        class_names: legend labels by raster value (a sequence labels values 0..n-1; default ``class i``).
        colors: 8-bit RGB by raster value (default a tab10/tab20/turbo palette over the classes).
        max_size: long side of the rendering, pixels.
        alpha: opacity of the classes over the background.
    """
    class_map = Path(class_map)
    out = preview_path(class_map) if out is None else Path(out)
    with rasterio.open(class_map) as src:
        shape = _decimated_shape(src.height, src.width, max_size)
        classes = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        nodata, bounds = src.nodata, src.bounds
    valid = classes != nodata if nodata is not None else np.ones(classes.shape, dtype=bool)
    if class_names is None:
        class_names = [f"class {i}" for i in range(int(classes[valid].max(initial=0)) + 1)]
    by_value = dict(class_names) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    values = sorted(by_value)
    names = [by_value[v] for v in values]
    num_classes = len(values)
    palette = [(*(c / 255 for c in colors[v]), 1.0) for v in values] if colors is not None else _palette(num_classes)
    valid &= np.isin(classes, values)
    classes = np.searchsorted(values, classes)  # raster value -> position in the legend
    extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)

    # A bare Figure (no pyplot): drawing a preview never switches the caller's backend (e.g. a notebook's).
    fig = Figure(figsize=(8, 8 * shape[0] / shape[1] + 0.5), dpi=100)
    ax = fig.subplots()
    if raster is not None:
        ax.imshow(_true_colour(Path(raster), rgb_bands, max_size), extent=_extent(Path(raster)), interpolation="nearest")
    overlay = np.ma.masked_array(classes, mask=~valid)
    ax.imshow(overlay, cmap=ListedColormap(palette), vmin=-0.5, vmax=num_classes - 0.5, extent=extent,
              alpha=alpha if raster is not None else 1.0, interpolation="nearest")
    present = sorted(set(np.unique(classes[valid]).tolist()))
    ax.legend(handles=[Patch(color=palette[i], label=names[i]) for i in present if i < num_classes],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.set_title(class_map.name)
    ax.set_axis_off()
    partial = out.with_name(f"{out.stem}.partial.png")
    fig.savefig(partial, bbox_inches="tight", metadata={"Software": None})
    os.replace(partial, out)
    return out


def _decimated_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _extent(raster: Path) -> tuple[float, float, float, float]:
    with rasterio.open(raster) as src:
        b = src.bounds
    return (b.left, b.right, b.bottom, b.top)


def _true_colour(raster: Path, bands: Sequence[int], max_size: int) -> np.ndarray:
    """float (h, w, 3) in [0, 1]: each band stretched between its 2nd and 98th percentile of valid pixels."""
    with rasterio.open(raster) as src:
        if max(bands) > src.count:
            raise GeoExploraError(f"{raster}: has {src.count} bands; preview bands {tuple(bands)} asked for")
        shape = _decimated_shape(src.height, src.width, max_size)
        data = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest).astype(np.float64)
        if src.nodata is not None:
            data[data == src.nodata] = np.nan
    rgb = np.zeros((*shape, 3))
    for i, band in enumerate(data if len(bands) == 3 else [data[0]] * 3):
        finite = band[np.isfinite(band)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        rgb[..., i] = np.clip((band - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.nan_to_num(rgb)


def _palette(num_classes: int) -> list[tuple[float, float, float, float]]:
    """One RGBA colour per class: matplotlib's tab10/tab20 for up to 20 classes, else a spread of turbo."""
    if num_classes <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(num_classes)]
    if num_classes <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(num_classes)]
    return [matplotlib.colormaps["turbo"](i / max(num_classes - 1, 1)) for i in range(num_classes)]
