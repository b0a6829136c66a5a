"""The notebook API: nearest neighbours, PCA colours and k-means over an embeddings GeoDataFrame."""

from __future__ import annotations

import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geoexplora.errors import GeoExploraError
from geoexplora.explore import kmeans, load_embeddings, nearest, pca_colors

CRS = "EPSG:32633"


@pytest.fixture
def blobs() -> gpd.GeoDataFrame:
    """30 windows in a row of 10 m squares; embeddings (8,) from three well-separated blobs of 10 each."""
    rng = np.random.default_rng(0)
    centres = 5 * np.eye(8)[:3] + 1
    truth = np.repeat(np.arange(3), 10)
    vectors = (centres[truth] + 0.1 * rng.standard_normal((30, 8))).astype(np.float32)
    return gpd.GeoDataFrame(
        {"truth": truth, "embedding": list(vectors)},
        geometry=[shapely.box(10 * i, 0, 10 * i + 10, 10) for i in range(30)], crs=CRS,
    )


def test_load_embeddings_round_trip(blobs: gpd.GeoDataFrame, tmp_path: Path) -> None:
    blobs.to_parquet(tmp_path / "emb.parquet")
    loaded = load_embeddings(tmp_path / "emb.parquet")
    assert loaded.crs == blobs.crs and len(loaded) == 30
    assert np.allclose(np.stack(loaded["embedding"]), np.stack(blobs["embedding"]))


def test_load_embeddings_errors(blobs: gpd.GeoDataFrame, tmp_path: Path) -> None:
    with pytest.raises(GeoExploraError, match=r"nope\.parquet: no such embeddings file"):
        load_embeddings(tmp_path / "nope.parquet")
    blobs.drop(columns="embedding").to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(GeoExploraError, match=r"plain\.parquet: has no embedding column"):
        load_embeddings(tmp_path / "plain.parquet")


def test_nearest_of_a_row_is_that_row_then_its_blob(blobs: gpd.GeoDataFrame) -> None:
    found = nearest(blobs, 12, k=10)
    assert isinstance(found, gpd.GeoDataFrame) and found.crs == blobs.crs
    assert found.index[0] == 12 and found["similarity"].iloc[0] == pytest.approx(1.0)
    assert (found["truth"] == 1).all()
    assert np.all(np.diff(found["similarity"].to_numpy()) <= 0)
    assert list(found["rank"]) == list(range(10))


def test_nearest_of_a_point_uses_the_window_under_it(blobs: gpd.GeoDataFrame) -> None:
    assert nearest(blobs, (255.0, 5.0), k=1).index[0] == 25
    assert nearest(blobs, shapely.Point(-50, 5), k=1).index[0] == 0  # outside every window: the closest
    with pytest.raises(GeoExploraError, match="row 30: the embeddings have 30 rows"):
        nearest(blobs, 30)


def test_kmeans_is_deterministic_and_finds_the_blobs(blobs: gpd.GeoDataFrame) -> None:
    first = kmeans(blobs, 3, seed=1)
    assert first["cluster"].equals(kmeans(blobs, 3, seed=1)["cluster"])
    assert sorted(first["cluster"].unique()) == [0, 1, 2]
    pairs = set(zip(first["truth"], first["cluster"], strict=True))
    assert len(pairs) == 3  # one cluster per blob
    with pytest.raises(GeoExploraError, match="n_clusters 31"):
        kmeans(blobs, 31)


def test_kmeans_returns_n_clusters_labels_on_noise() -> None:
    rng = np.random.default_rng(1)
    gdf = gpd.GeoDataFrame({"embedding": list(rng.standard_normal((50, 4)).astype(np.float32))},
                           geometry=[shapely.Point(i, 0) for i in range(50)], crs=CRS)
    labels = [kmeans(gdf, 5, seed=s)["cluster"] for s in (0, 0, 7)]
    assert labels[0].nunique() == 5 and labels[0].equals(labels[1])


def test_pca_colors_are_valid_and_separate_blobs(blobs: gpd.GeoDataFrame) -> None:
    coloured = pca_colors(blobs, k=3)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in coloured["color"])
    assert {"pc1", "pc2", "pc3"} <= set(coloured.columns)
    by_blob = coloured.groupby("truth")["color"].agg(lambda c: c.mode()[0])
    assert by_blob.nunique() == 3
    assert pca_colors(blobs, k=1).columns.tolist().count("pc2") == 0
