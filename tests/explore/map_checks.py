"""Checks on an exported map page: the URLs it would fetch, and whether a screenshot of it is blank.

``map_variance`` is the grey-level variance of a screenshot's map area (rows ``MAP_ROWS`` of a ``VIEWPORT``
viewport: below folium's zoom and layer controls, above the scale bar and attribution). Measured here
(Chromium 156, Debian 12): an empty page, a stock folium map offline (CDN links: ``L is not defined``) and
Leaflet loaded with no layer all give 0.0; the offline embeddings map gives 1,730 on the 16 windows of
test_explore_map.py (1,031 without the scene underneath), 3,275 for notebook 02's map of the real Landsat 7
scene and 3,057 for its synthetic fallback. ``BLANK_VARIANCE`` sits far from both sides.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

VIEWPORT = (800, 600)
MAP_ROWS = slice(140, 540)
BLANK_VARIANCE = 100.0  # grey levels squared (a standard deviation of 10 levels out of 255)


class _Resources(HTMLParser):
    """Every URL an HTML page would fetch by itself: script/img/iframe src, link href, CSS url(...)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "img": "src", "iframe": "src", "link": "href"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]
        self._style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._style = False

    def handle_data(self, data: str) -> None:
        if self._style:
            self.urls += [u.strip("'\" ") for u in data.split("url(")[1:] for u in [u.split(")")[0]]]


def fetched_urls(html: str) -> list[str]:
    parser = _Resources()
    parser.feed(html)
    return parser.urls


def map_variance(png: Path) -> float:
    """Grey-level variance (0..255 levels, squared) over the map area of a ``VIEWPORT`` screenshot."""
    grey = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert grey.shape == (VIEWPORT[1], VIEWPORT[0])
    return float(grey[MAP_ROWS].var())
