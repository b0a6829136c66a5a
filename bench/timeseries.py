"""Does the time series help? LULC segmentation of the 5-date Sentinel-2 Slovenia stack, three ways.

* ``temporal (T=5)``: the temporal backbone over the whole stack (tokens of all dates attend to each other,
  averaged over the dates before the head);
* ``single date``: the ordinary backbone on one date; each of the 5 dates is run with the first seed and
  the **best** is the one with the highest validation mIoU (picked on val), which then runs every seed and
  is scored on test;
* ``dates averaged``: the ordinary backbone on the per-pixel mean of the 5 dates.

Everything else is the same: the real DINOv2 ViT-S/14 (``../shared/weights``) carried over to the 13 bands,
LoRA r8 on Q and V (patch embedding frozen, so the date encoding stays at its zero start: the temporal
model sees its dates as an unordered set), the progressive head, cross-entropy with frequency class weights
(one class covers most pixels), 28-pixel windows in 28-pixel blocks dealt
60/20/20 to train/val/test, standardised bands. Seed s sets the split, the training windows and the head's
initialisation, and is shared by the three ways, so per-seed differences compare like with like.

    python bench/timeseries.py                      # 3 seeds, 13 runs: about 15 minutes on 2 busy CPU cores
    python bench/timeseries.py --epochs 2 --seeds 1 # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import rasterio
import yaml

from geoexplora.models import BackboneConfig
from geoexplora.tasks.finetune import FinetuneTask
from geoexplora.tasks.finetune_data import LabelledRasterDataModule

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
WEIGHTS = SHARED / "weights" / "vit_small_patch14_dinov2.safetensors"
RECIPE = ROOT / "recipes" / "finetune-segmentation-sentinel2-timeseries.yaml"


def recipe_data() -> dict:
    """The stack, its dates, bands and mask from the recipe (paths made absolute)."""
    data = yaml.safe_load(RECIPE.read_text())["data"]
    data["image"] = [str((ROOT / p).resolve()) for p in data["image"]]
    data["mask"] = str((ROOT / data["mask"]).resolve())
    data["dates"] = [str(d) for d in data["dates"]]
    return data


def write_mean(files: list[str], out: Path) -> Path:
    """The per-pixel mean of the dates, with the first file's profile."""
    with rasterio.open(files[0]) as src:
        profile = src.profile
    stack = []
    for f in files:
        with rasterio.open(f) as src:
            stack.append(src.read().astype(np.float64))
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.mean(stack, axis=0).astype(profile["dtype"]))
    return out


def run(image: str | list[str], temporal: bool, seed: int, args: argparse.Namespace, base: dict) -> dict[str, float]:
    """Fine-tune once; validation and test mIoU."""
    L.seed_everything(seed, verbose=False)
    data = LabelledRasterDataModule(
        image=image, mask=base["mask"], temporal=temporal, dates=base["dates"] if temporal else None,
        band_names=base["band_names"], window_size=28, block_size=28, split_fractions=(0.6, 0.2, 0.2), seed=seed,
        windows_per_epoch=args.windows, batch_size=8,
    )
    backbone = BackboneConfig(model="vit_small_patch14_dinov2", weights=str(WEIGHTS), sensor="sentinel2",
                              bands=list(base["band_names"]), img_size=28, embed="temporal" if temporal else "spectral",
                              num_frames=len(base["dates"]) if temporal else 1)
    task = FinetuneTask("segmentation", backbone, strategy="lora", strategy_options={"lora_rank": 8, "lora_alpha": 8.0},
                        segmentation_head="progressive", decoder_channels=64, class_weights="frequency", lr=args.lr)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=data)
    val = trainer.validate(task, datamodule=data, verbose=False)[0]["val/mIoU"]
    test = trainer.test(task, datamodule=data, verbose=False)[0]["test/mIoU"]
    return {"val": float(val), "test": float(test)}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--windows", type=int, default=96, help="training windows per epoch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    args = parser.parse_args(argv)
    if not WEIGHTS.is_file():
        print(f"needs {WEIGHTS} and ../shared/data/sentinel2_slovenia", file=sys.stderr)
        return 1
    base = recipe_data()
    seeds = list(range(args.seeds))
    started = time.monotonic()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        mean_file = str(write_mean(base["image"], Path(tmp) / "mean.tif"))
        for name, (image, temporal) in {"temporal (T=5)": (base["image"], True),
                                        "dates averaged": (mean_file, False)}.items():
            results[name] = [run(image, temporal, s, args, base) for s in seeds]
            print(f"{name}: test mIoU {mean_std([r['test'] for r in results[name]])}", flush=True)
        singles = {f"single date {d}": [run(f, False, seeds[0], args, base)]
                   for f, d in zip(base["image"], base["dates"], strict=True)}
        best = max(singles, key=lambda k: singles[k][0]["val"])
        file = base["image"][base["dates"].index(best[12:])]
        singles[best] += [run(file, False, s, args, base) for s in seeds[1:]]
    rows = [("temporal (T=5)", results["temporal (T=5)"]), (f"best single date ({best[12:]}, picked on val)", singles[best]),
            ("dates averaged", results["dates averaged"])]
    lines = [
        "# Time series vs single date: LULC segmentation of the Sentinel-2 Slovenia stack", "",
        f"`python bench/timeseries.py --seeds {args.seeds} --epochs {args.epochs} --windows {args.windows}` "
        f"({time.monotonic() - started:.0f} s on this machine's CPU). Test mIoU over the 6 LULC classes "
        "present, mean ± standard deviation over the seeds (split, windows and initialisation per seed); "
        "see the script's docstring for the setup.", "",
        "| input | test mIoU | val mIoU | per seed (test) |", "|---|---|---|---|",
    ]
    for name, runs in rows:
        lines.append(f"| {name} | {mean_std([r['test'] for r in runs])} | {mean_std([r['val'] for r in runs])} | "
                     f"{', '.join(f'{r['test']:.3f}' for r in runs)} |")
    lines += ["", f"Every single date: seed {seeds[0]} (std 0), except the best on val, whose row holds every seed:", "",
              "| date | test mIoU | val mIoU |", "|---|---|---|"]
    lines += [f"| {k[12:]} | {mean_std([r['test'] for r in v])} | {mean_std([r['val'] for r in v])} |"
              for k, v in singles.items()]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
