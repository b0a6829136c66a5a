"""Why fresh DINO heads see no difference between windows: the start model's class tokens on real scenes.

Real DINOv2 ViT-S/14 (``../shared/weights``) under ExPLoRA, 64 random windows (>= 95% valid) of the real
Landsat 7 NC scene (5 bands, or its B3/B2/B1 as RGB) and of ``landsat_rgb``, each band standardised over
the scene. For the class tokens: the mean cosine similarity between different windows, the share of their
energy in the batch-mean direction, and RankMe of the centred tokens; then the spread across windows of a
fresh DINO head's logits (1024 prototypes, 256-d bottleneck), on the raw and on standardised tokens.

    python bench/dinov2_features.py        # about a minute on 2 CPU cores; writes dinov2_features.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

from geoexplora.models import BackboneConfig, create_backbone, create_strategy
from geoexplora.models.ssl import DINOHead, rankme

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
WEIGHTS = SHARED / "weights" / "vit_small_patch14_dinov2.safetensors"
NC = SHARED / "data" / "landsat7_nc" / "landsat_multiband.tif"
RGB = SHARED / "data" / "landsat_rgb" / "RGB.byte.tif"


def windows(path: Path, bands: list[int], size: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` random windows (count, C, size, size) of ``bands`` (0-based), standardised per band."""
    with rasterio.open(path) as src:
        image = src.read().astype(np.float32)[bands]
        valid = src.read_masks(1).astype(bool) & ~np.isnan(image).any(0)
    mean, std = image[:, valid].mean(1)[:, None, None], image[:, valid].std(1)[:, None, None]
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < count:
        r, c = rng.integers(0, image.shape[1] - size), rng.integers(0, image.shape[2] - size)
        if valid[r:r + size, c:c + size].mean() > 0.95:
            out.append(image[:, r:r + size, c:c + size])
    return torch.nan_to_num((torch.tensor(np.stack(out)) - torch.tensor(mean)) / torch.tensor(std))


def head_spread(tokens: torch.Tensor) -> float:
    torch.manual_seed(0)
    return DINOHead(tokens.shape[1], 1024)(tokens).std(dim=0).mean().item()


def row(name: str, cls: torch.Tensor) -> str:
    unit = F.normalize(cls, dim=-1)
    n = len(cls)
    cosine = ((unit @ unit.T).sum() - n) / (n * n - n)
    mean_share = cls.mean(0).pow(2).sum() / cls.pow(2).sum(1).mean()
    standardised = (cls - cls.mean(0)) / cls.std(0)
    return (f"| {name} | {cosine:.3f} | {mean_share:.3f} | {rankme(cls - cls.mean(0)):.1f} | "
            f"{head_spread(cls):.4f} | {head_spread(standardised):.4f} |")


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    args = parser.parse_args()
    if not (WEIGHTS.is_file() and NC.is_file() and RGB.is_file()):
        sys.exit(f"needs {WEIGHTS}, {NC} and {RGB} (the shared folder beside the repository)")
    cases = [("NC 5 bands, 56 px", NC, [0, 1, 2, 3, 4], ["B1", "B2", "B3", "B4", "B5"], "landsat7", 56),
             ("NC 5 bands, 112 px", NC, [0, 1, 2, 3, 4], ["B1", "B2", "B3", "B4", "B5"], "landsat7", 112),
             ("NC B3/B2/B1 as RGB, 56 px", NC, [2, 1, 0], ["B3", "B2", "B1"], "landsat7", 56),
             ("landsat_rgb, 112 px", RGB, [0, 1, 2], ["red", "green", "blue"], None, 112)]
    lines = ["# The start model's class tokens on real scenes, and what a fresh DINO head makes of them", "",
             "DINOv2 ViT-S/14 (real weights) under ExPLoRA, eval mode, 64 random windows per row, bands standardised "
             "over the scene. Command: `python bench/dinov2_features.py`.", "",
             "| windows | mean cosine between windows | energy in the mean direction | RankMe (centred) | "
             "fresh head: logit spread | same, standardised tokens |", "|---|---:|---:|---:|---:|---:|"]
    for name, path, bands, names, sensor, size in cases:
        config = BackboneConfig("vit_small_patch14_dinov2", weights=str(WEIGHTS), bands=names, sensor=sensor,
                                img_size=size)
        model = create_strategy("explora").apply(create_backbone(config)).eval()
        lines.append(row(name, model.forward_features(windows(path, bands, size, 64))[:, 0]))
    lines += ["", "A random 256-d prototype's cosine with a unit vector has a spread of about 1/sqrt(256) = 0.0625, "
              "the most a fresh head can show; the shared direction of the tokens takes most of it away. "
              "`dinov2.head_init: data` standardises the head's input with the start model's statistics and "
              "takes the prototypes from real windows (bench/dinov2_regime.md shows what that does to learning)."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
