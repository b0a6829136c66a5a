"""The README's DuckDB similarity query, run verbatim on a tiny ``embed`` output.

The query names ``'emb.parquet'`` and the window at row 224, col 448, so the test embeds a 512 x 256 scene
in 32-pixel windows (origins 0, 32, ..., 480 by 0, ..., 224) into ``emb.parquet`` in the working directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import fake_rasters
import numpy as np
import pytest
import torch

from geoexplora.explore import load_embeddings, nearest
from geoexplora.inference.embed import Encoder, embed_rasters
from geoexplora.models import BackboneConfig, create_backbone

duckdb = pytest.importorskip("duckdb")

README = Path(__file__).resolve().parents[2] / "README.md"
BANDS = ["B1", "B2", "B3", "B4"]


def readme_query() -> str:
    """The one ```sql block of the README's "Embeddings in other tools" section."""
    section = README.read_text().split("### Embeddings in other tools", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the section should hold exactly one SQL example"
    return blocks[0]


def test_readme_query_finds_the_query_window_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scene = fake_rasters.write_raster(tmp_path / "scene.tif", width=512, height=256, count=4)
    torch.manual_seed(0)
    config = BackboneConfig(model="vit_base_patch16_224", embed_dim=32, depth=1, num_heads=2, patch_size=8,
                            img_size=32, bands=BANDS)
    embed_rasters([scene], tmp_path / "emb.parquet", Encoder(create_backbone(config).eval(), config), tile=32,
                  pool="mean", progress=False)
    monkeypatch.chdir(tmp_path)

    rows = duckdb.sql(readme_query()).fetchall()

    assert len(rows) == 10
    source, row, col, lat, lon, similarity = rows[0]
    assert (row, col) == (224, 448) and similarity == pytest.approx(1.0, abs=1e-6)
    # The same ranking as geoexplora.explore.nearest on the same file.
    gdf = load_embeddings(tmp_path / "emb.parquet")
    expected = nearest(gdf, int(np.flatnonzero((gdf["row"] == 224) & (gdf["col"] == 448))[0]), k=10)
    assert [(r[1], r[2]) for r in rows] == list(zip(expected["row"], expected["col"], strict=True))
    assert [r[5] for r in rows] == pytest.approx(list(expected["similarity"]), abs=1e-5)
    assert len({r[5] for r in rows}) > 1  # the windows differ: a ranking, not ties
