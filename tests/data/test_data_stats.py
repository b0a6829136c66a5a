"""compute_band_statistics against numpy on the same pixels; BandStatistics JSON round trip; Normalizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_rasters import write_raster

from geoexplora.data import BandStatistics, GeoRasterDataset, Normalizer, compute_band_statistics, random_sampler
from geoexplora.data.stats import BandStat
from geoexplora.errors import GeoExploraError


def test_statistics_match_numpy_on_valid_pixels(multiband_geotiff: Path) -> None:
    ds = GeoRasterDataset(multiband_geotiff)
    stats = compute_band_statistics(ds, num_windows=6, window_size=24, seed=7)
    pixels = []
    for window in random_sampler(ds, 24, length=6, seed=7):
        sample = ds[window]
        pixels.append(sample["image"][:, sample["valid"]].numpy())
    expected = np.concatenate(pixels, axis=1).astype(np.float64)
    assert stats.band_names == ds.band_names
    assert stats.num_pixels == expected.shape[1] and stats.skipped_windows == 0
    for i, name in enumerate(ds.band_names):
        band = stats.bands[name]
        assert band.mean == pytest.approx(expected[i].mean())
        assert band.std == pytest.approx(expected[i].std())
        assert band.p2 == pytest.approx(np.percentile(expected[i], 2))
        assert band.p98 == pytest.approx(np.percentile(expected[i], 98))
        assert 100 * (i + 1) <= band.p2 < band.p98 <= 100 * (i + 1) + 50  # nodata/NaN never leak in


def test_windows_without_valid_pixels_are_skipped_and_counted(tmp_path: Path) -> None:
    write_raster(tmp_path / "good.tif", count=2, nodata=-1.0)
    write_raster(tmp_path / "empty.tif", count=2, nodata=-1.0, nodata_border=32, origin=(500_640.0, 5_100_000.0))
    stats = compute_band_statistics(GeoRasterDataset(tmp_path), num_windows=12, window_size=32, seed=0)
    assert stats.skipped_windows > 0
    assert stats.num_windows + stats.skipped_windows == 12
    assert 100 <= stats.bands["B1"].mean <= 150


def test_all_windows_invalid_is_an_error(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "void.tif", count=1, nodata=-1.0, nodata_border=32)
    with pytest.raises(GeoExploraError, match=r"void\.tif: all 3 sampled windows hold only nodata"):
        compute_band_statistics(GeoRasterDataset(path), num_windows=3, window_size=16)


def test_to_dict_round_trips_through_json() -> None:
    stats = BandStatistics({"B1": BandStat(1.5, 2.0, 0.1, 3.0), "B2": BandStat(-1.0, 0.5, -2.0, 0.0)}, 10, 2, 1)
    restored = BandStatistics.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert restored == stats
    assert restored.band_names == ("B1", "B2")
    with pytest.raises(GeoExploraError, match="malformed"):
        BandStatistics.from_dict({"bands": {"B1": {"mean": 1.0}}})


STATS = BandStatistics({"a": BandStat(10.0, 2.0, 6.0, 16.0), "b": BandStat(0.0, 4.0, -8.0, 8.0), "c": BandStat(5, 1, 4, 6)})


def test_normalizer_modes_on_batched_tensors_in_band_order() -> None:
    image = torch.tensor([[12.0, 16.0], [4.0, -8.0]]).view(1, 2, 1, 2).expand(3, 2, 1, 2)  # (B, C=2, H, W)
    standard = Normalizer(STATS, ["a", "b"], mode="standardize")(image)
    torch.testing.assert_close(standard[0], torch.tensor([[[1.0, 3.0]], [[1.0, -2.0]]]))
    percentile = Normalizer(STATS, ["a", "b"], mode="percentile")(image)
    torch.testing.assert_close(percentile[0], torch.tensor([[[0.6, 1.0]], [[0.75, 0.0]]]))
    swapped = Normalizer(STATS, ["b", "a"])(image.flip(1))
    torch.testing.assert_close(swapped.flip(1), standard)


def test_normalizer_zeroes_invalid_and_nan_pixels() -> None:
    image = torch.full((2, 2, 2), 14.0)
    image[1, 0, 0] = float("nan")
    valid = torch.tensor([[True, True], [True, False]])
    out = Normalizer(STATS, ["a", "a"])(image, valid)
    assert out[:, 1, 1].tolist() == [0.0, 0.0]
    assert out[1, 0, 0] == 0.0 and out[0, 0, 0] == 2.0


def test_normalizer_missing_bands_named() -> None:
    with pytest.raises(GeoExploraError, match=r"band statistics have no nir, swir; they cover a, b, c"):
        Normalizer(STATS, ["a", "nir", "swir"])
    with pytest.raises(GeoExploraError, match="mode 'minmax'"):
        Normalizer(STATS, ["a"], mode="minmax")  # type: ignore[arg-type]
