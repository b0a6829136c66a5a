"""The notebooks' scene: the Landsat sample from a data folder, else the demo's cache, else None (synthetic)."""

from __future__ import annotations

from pathlib import Path

from geoexplora.samples import find_landsat_sample


def put_sample(folder: Path) -> Path:
    (folder / "landsat7_nc").mkdir(parents=True)
    for name in ("landsat_multiband.tif", "strata.tif"):
        (folder / "landsat7_nc" / name).write_bytes(b"")
    return folder / "landsat7_nc"


def test_data_folder_first_then_the_cache_then_nothing(tmp_path: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    assert find_landsat_sample(data, cache) is None
    cached = put_sample(cache)
    sample, where = find_landsat_sample(data, cache)
    assert sample.image == cached / "landsat_multiband.tif" and where == f"the demo's cache {cached}"
    shared = put_sample(data)
    sample, where = find_landsat_sample(data, cache)
    assert sample.labels == shared / "strata.tif" and where == str(data)
    assert sample.bands == ("B1", "B2", "B3", "B4", "B5")


def test_half_a_sample_is_no_sample(tmp_path: Path) -> None:
    folder = put_sample(tmp_path / "data")
    (folder / "strata.tif").unlink()
    assert find_landsat_sample(tmp_path / "data", tmp_path / "empty-cache") is None
