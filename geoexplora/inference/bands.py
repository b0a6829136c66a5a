"""Which of a raster's bands a model reads: the checkpoint's band names looked up among the file's."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from geoexplora.data.raster import file_band_names, inspect_raster
from geoexplora.errors import GeoExploraError

logger = logging.getLogger(__name__)


def model_band_indexes(
    raster: Path, model_bands: Sequence[str], file_bands: Sequence[str] | None = None,
    training_bands: Sequence[str] | None = None,
) -> tuple[tuple[str, ...], list[int]]:
    """The file's band names and the 1-based indexes of ``model_bands`` among them, in model order.

    Args:
        raster: the GeoTIFF.
        model_bands: band names the model was trained on (a checkpoint's ``backbone.bands``).
        file_bands: names of all the file's bands; default its band descriptions, else ``training_bands``
            when the file lacks descriptions and has as many bands, else ``B1..Bn``.
        training_bands: names of all the bands of the file the model was trained on, when the recipe named
            them (a checkpoint's ``preprocessing.file_bands``).

    Raises:
        GeoExploraError: naming both lists when ``file_bands`` has the wrong length or lacks a model band.
    """
    info = inspect_raster(raster, georeferenced=False)  # the CRS is check_raster's (--allow-no-crs)
    count = info.count
    if file_bands is None and training_bands is not None and not all(info.descriptions) \
            and count == len(training_bands):
        logger.info("%s: no band descriptions; using the training file's band names %s", raster, training_bands)
        file_bands = training_bands
    names = tuple(file_bands) if file_bands is not None else file_band_names(info)
    if len(names) != count:
        raise GeoExploraError(f"{raster}: {len(names)} band names given ({', '.join(names)}) for a file with "
                              f"{count} bands")
    missing = [b for b in model_bands if b not in names]
    if missing:
        raise GeoExploraError(
            f"{raster}: the model needs bands {', '.join(model_bands)} but the file has {', '.join(names)} "
            f"(missing {', '.join(missing)}; name the file's bands to map them)"
        )
    return names, [names.index(b) + 1 for b in model_bands]
