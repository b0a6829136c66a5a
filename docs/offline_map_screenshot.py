"""Write docs/offline-map.png: notebooks/02_explore_embeddings.ipynb's map.html, shot offline by Chromium.

Run notebook 02 first (it uses the real Landsat 7 scene when this machine has it and prints which), then::

    python docs/offline_map_screenshot.py notebooks/embeddings-output/map.html docs/offline-map.png

The PNG is reduced to 256 colours so that it stays small in the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from geoexplora.explore_screenshot import screenshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the exported map (map.html)")
    parser.add_argument("png", type=Path, help="the screenshot to write")
    parser.add_argument("--size", type=int, nargs=2, default=(840, 520), metavar=("WIDTH", "HEIGHT"))
    args = parser.parse_args()
    screenshot(args.html, args.png, size=tuple(args.size))
    Image.open(args.png).convert("RGB").quantize(256).save(args.png, optimize=True)
    print(f"{args.png}: {args.png.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
