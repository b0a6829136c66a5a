"""Overviews are resampled by what an output means (issue 11): the class map by mode, probabilities by average."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch

import fake_rasters
from geoexplora.inference import predict_raster


def stripes(x: torch.Tensor) -> torch.Tensor:
    """Logits (B, 2, H, W) favouring class 1 on every third column of each window: a thin-stripe class map."""
    b, _, h, w = x.shape
    one = (torch.arange(w) % 3 == 0).float().expand(b, h, w)
    return torch.stack([1 - one, one], dim=1) * 10


def test_class_map_overviews_are_mode_and_probability_overviews_average(tmp_path: Path):
    raster = fake_rasters.write_raster(tmp_path / "r.tif", width=1536, height=1536, count=1)
    out = tmp_path / "o.tif"
    predict_raster(raster, out, stripes, num_classes=2, tile=512, overlap=0, batch_size=4, progress=False,
                   probabilities=tmp_path / "p.tif")
    with rasterio.open(out) as classes, rasterio.open(tmp_path / "p.tif") as probs:
        assert classes.overviews(1) and probs.overviews(1)
        first = classes.read(1, out_shape=(768, 768))  # the first overview level (factor 2)
        assert set(np.unique(first)) <= {0, 1}  # mode: a class value, never a blend
        assert (first == 0).mean() > 0.5  # class 0 covers 2 of 3 columns: mode keeps it the majority
        p1 = probs.read(2, out_shape=(768, 768)).astype(float)
    # average: a 2 x 2 block over columns (1, 0) or (0, 0) of the stripes gives 127 or 0, so intermediate values
    # appear; nearest would keep only 0 and 254
    assert ((p1 > 10) & (p1 < 244)).mean() > 0.2
