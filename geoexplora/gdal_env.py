"""GDAL's names for remote files (``/vsicurl/``, ``/vsis3/``...) and its reading options for cloud-optimised
rasters, set for one call.

Light (no GDAL import): the ``geoexplora`` command wraps every sub-command in :func:`cloud_gdal_env`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

URL_TO_VSI = {"http://": "/vsicurl/", "https://": "/vsicurl/", "s3://": "/vsis3/", "gs://": "/vsigs/",
              "az://": "/vsiaz/"}
REMOTE_PREFIXES = ("/vsi", *URL_TO_VSI)
# GDAL's advice for cloud-optimised GeoTIFFs over HTTP/S3 (https://gdal.org/user/configoptions.html).
CLOUD_GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing, no sidecar probing (remote only)
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2TLS",  # HTTP/2 over TLS, HTTP/1.1 for plain http
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "VSI_CACHE": "TRUE",
}


def is_gdal_path(text: str) -> bool:
    """True for a GDAL virtual path (``/vsi...``) or a URL GDAL reads (``http(s)://``, ``s3://``, ...)."""
    return text.startswith(REMOTE_PREFIXES)


def to_gdal_path(text: str) -> str:
    """``https://host/a.tif`` -> ``/vsicurl/https://host/a.tif``, ``s3://b/k`` -> ``/vsis3/b/k``; others unchanged."""
    for prefix, vsi in URL_TO_VSI.items():
        if text.startswith(prefix):
            return vsi + (text if vsi == "/vsicurl/" else text[len(prefix):])
    return text


def names_remote(arguments: list[str]) -> bool:
    """True when a command-line argument is a GDAL virtual path or a URL."""
    return any(is_gdal_path(a) for a in arguments)


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
