"""Exploring embeddings in notebooks: nearest neighbours, PCA colours and k-means clusters as map layers.

Every function takes the GeoDataFrame that :func:`load_embeddings` returns (one row per window, an
``embedding`` column of D floats, see :func:`~geoexplora.inference.embed.embed_rasters`) and returns a
new GeoDataFrame with the same geometry and CRS plus its result columns, ready for ``gdf.explore()`` or
``gdf.plot(column=...)``.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
import torch
from matplotlib.colors import to_hex

from geoexplora.errors import GeoExploraError
from geoexplora.inference.embed import pca_fit


def load_embeddings(path: str | Path) -> gpd.GeoDataFrame:
    """The GeoParquet written by ``geoexplora embed`` (rows: windows; ``embedding``: arrays of D float32)."""
    path = Path(path)
    if not path.is_file():
        raise GeoExploraError(f"{path}: no such embeddings file")
    try:
        gdf = gpd.read_parquet(path)
    except (ValueError, OSError) as error:
        raise GeoExploraError(f"{path}: not a GeoParquet file ({str(error).splitlines()[0]})") from None
    if "embedding" not in gdf.columns:
        raise GeoExploraError(f"{path}: has no embedding column; write it with geoexplora embed")
    return gdf


def embedding_matrix(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """float32 (n, D): the ``embedding`` column stacked."""
    if "embedding" not in gdf.columns:
        raise GeoExploraError("the GeoDataFrame has no embedding column")
    if len(gdf) == 0:
        raise GeoExploraError("the GeoDataFrame has no rows")
    return np.stack([np.asarray(e, dtype=np.float32) for e in gdf["embedding"]])


def nearest(
    gdf: gpd.GeoDataFrame, query: int | tuple[float, float] | shapely.Point, k: int = 10
) -> gpd.GeoDataFrame:
    """The ``k`` rows most similar to the query, by decreasing cosine ``similarity`` (in [-1, 1]).

    Args:
        gdf: embeddings.
        query: a row position (0-based, as ``gdf.iloc``), or a point (x, y) in the gdf's CRS (e.g. a
            clicked location): the row whose window contains it, else the row nearest to it.
        k: rows to return (at most all).

    Returns:
        Those rows, with ``similarity`` (float) and ``rank`` (0 = the query row itself for a row query).
    """
    vectors = embedding_matrix(gdf)
    index = _query_row(gdf, query)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit[index]
    others = np.ones(len(gdf), dtype=bool)
    others[index] = False
    order = np.lexsort((others, -similarity))[: max(k, 0)]  # the query row first among ties
    result = gdf.iloc[order].copy()
    result["similarity"] = similarity[order].astype(np.float64)
    result["rank"] = np.arange(len(order))
    return result


def _query_row(gdf: gpd.GeoDataFrame, query: int | tuple[float, float] | shapely.Point) -> int:
    if isinstance(query, int | np.integer):
        if not -len(gdf) <= query < len(gdf):
            raise GeoExploraError(f"row {query}: the embeddings have {len(gdf)} rows")
        return int(query) % len(gdf)
    point = query if isinstance(query, shapely.Point) else shapely.Point(*query)
    inside = np.flatnonzero(gdf.geometry.contains(point).to_numpy())
    return int(inside[0]) if len(inside) else int(np.argmin(gdf.geometry.distance(point).to_numpy()))


def pca_colors(gdf: gpd.GeoDataFrame, k: int = 3) -> gpd.GeoDataFrame:
    """The first ``k`` principal components (``pc1``..``pck``) and an RGB ``color`` (``#rrggbb``).

    ``color`` maps the first three components (fewer when D or the rows allow fewer: the last repeats)
    from mean -+ 2 std to 0..255; similar windows get similar colours.
    """
    vectors = torch.from_numpy(embedding_matrix(gdf))
    if k < 1:
        raise GeoExploraError(f"k {k}: must be at least 1")
    basis = pca_fit(vectors, min(max(k, 3), vectors.shape[1]))
    scores = basis.project(vectors).numpy()
    result = gdf.copy()
    for j in range(min(k, scores.shape[1])):
        result[f"pc{j + 1}"] = scores[:, j]
    rgb = scores[:, [min(j, scores.shape[1] - 1) for j in range(3)]]
    std = np.sqrt(basis.variance.numpy())[[min(j, scores.shape[1] - 1) for j in range(3)]]
    rgb = np.clip(0.5 + rgb / (4 * np.where(std > 0, std, 1)), 0, 1)
    result["color"] = [to_hex(c) for c in rgb]
    return result


def kmeans(gdf: gpd.GeoDataFrame, n_clusters: int, seed: int = 0, iterations: int = 100) -> gpd.GeoDataFrame:
    """k-means (k-means++ start, seeded) on L2-normalised embeddings; adds an int ``cluster`` column.

    Normalised vectors make the squared distance ``2 - 2 cos``, so clusters group by cosine similarity
    like :func:`nearest`. The same ``seed`` gives the same labels.
    """
    vectors = torch.from_numpy(embedding_matrix(gdf))
    if not 1 <= n_clusters <= len(vectors):
        raise GeoExploraError(f"n_clusters {n_clusters}: must be between 1 and the {len(vectors)} rows")
    x = torch.nn.functional.normalize(vectors.double(), dim=1)
    generator = torch.Generator().manual_seed(seed)
    centers = _kmeans_plus_plus(x, n_clusters, generator)
    labels = torch.cdist(x, centers).argmin(1)
    for _ in range(iterations):
        for c in range(n_clusters):
            members = x[labels == c]
            if len(members):
                centers[c] = members.mean(0)
        new = torch.cdist(x, centers).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    result = gdf.copy()
    result["cluster"] = labels.numpy().astype(np.int64)
    return result


def _kmeans_plus_plus(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, D) initial centres: the first uniform, each next drawn with probability ~ squared distance."""
    centers = [x[torch.randint(len(x), (1,), generator=generator)].squeeze(0)]
    for _ in range(1, n):
        d2 = torch.cdist(x, torch.stack(centers)).min(1).values ** 2
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centers.append(x[torch.multinomial(weights, 1, generator=generator)].squeeze(0))
    return torch.stack(centers).clone()
