"""A PNG of an exported HTML map, taken by headless Chromium with the network shut off.

For pictures of :func:`geoexplora.explore_map.embeddings_map` pages (reports, documentation) and for
checking that such a page draws without a network: every host name resolves to nothing
(``--host-resolver-rules``), so a page that still links a CDN renders as it would offline.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from geoexplora.errors import GeoExploraError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Headless, no sandbox (root in CI), software drawing, and nothing Chromium would fetch on its own.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",
)


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable on ``PATH``, or None."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def screenshot(html: str | Path, png: str | Path, size: tuple[int, int] = (1000, 700),
               wait_ms: int = 3000, timeout_s: float = 120.0) -> Path:
    """Open ``html`` offline in headless Chromium and save the viewport as ``png``.

    Args:
        html: a local HTML file.
        png: where the screenshot goes (parent folders are created).
        size: viewport (width, height) in CSS pixels.
        wait_ms: virtual time the page runs before the shot (scripts, layout, image decoding).
        timeout_s: wall-clock limit for Chromium.

    Returns:
        ``png``.

    Raises:
        GeoExploraError: no Chromium on ``PATH``, a missing ``html``, or Chromium failing to write the PNG.
    """
    html, png = Path(html).resolve(), Path(png).resolve()
    chromium = find_chromium()
    if chromium is None:
        raise GeoExploraError("no Chromium found (install it, e.g. apt-get install chromium)")
    if not html.is_file():
        raise GeoExploraError(f"{html}: no such HTML file")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="geoexplora-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", html.as_uri()]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise GeoExploraError(f"chromium took more than {timeout_s:g} s on {html}") from None
    if not png.is_file():
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise GeoExploraError(f"chromium wrote no screenshot of {html}: {last}")
    return png
