"""GDAL's reading options for cloud-optimised rasters over HTTP and object stores, set for one call.

Light (no GDAL import): the ``geoexplora`` command wraps every sub-command in :func:`cloud_gdal_env`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

REMOTE_PREFIXES = ("/vsi", "http://", "https://", "s3://", "gs://", "az://")
# GDAL's advice for cloud-optimised GeoTIFFs over HTTP/S3 (https://gdal.org/user/configoptions.html).
CLOUD_GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing, no sidecar probing (remote only)
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "VSI_CACHE": "TRUE",
    "CPL_VSIL_CURL_USE_HEAD": "NO",
}


def names_remote(arguments: list[str]) -> bool:
    """True when a command-line argument is a GDAL virtual path or a URL."""
    return any(a.startswith(REMOTE_PREFIXES) for a in arguments)


@contextmanager
def cloud_gdal_env(remote: bool = True) -> Iterator[None]:
    """:data:`CLOUD_GDAL_OPTIONS` as environment variables for the call (GDAL reads them in every thread and
    worker process); a variable the user already set keeps its value; all restored afterwards.

    Without ``remote`` inputs GDAL still skips directory listings but finds local sidecar files
    (``.aux.xml``, ``.ovr``, ``.msk``): ``GDAL_DISABLE_READDIR_ON_OPEN=TRUE`` instead of ``EMPTY_DIR``.
    """
    options = {**CLOUD_GDAL_OPTIONS, **({} if remote else {"GDAL_DISABLE_READDIR_ON_OPEN": "TRUE"})}
    added = {k: v for k, v in options.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
