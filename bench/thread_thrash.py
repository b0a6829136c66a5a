"""A predict on a machine whose cores are busy: torch's default threading against the CLI's (issue 10 item 7).

Two sibling processes spin on the CPU the whole time (on a 2-core machine: both cores taken). The same
predict (a tiny 2-block ViT checkpoint over a 4-band 256 x 256 raster, 32-pixel tiles, 121 windows) runs
three times, each in a fresh process, all in one invocation so they see the same load:

* ``before``: the engine called as the CLI did before issue 10 (torch's default thread count, no OpenMP
  wait policy: idle workers spin);
* ``after``: ``geoexplora predict`` as it is now (``OMP_WAIT_POLICY=PASSIVE`` by default, torch threads
  from the cores in the affinity mask);
* ``after --threads 1``.

Prints one Markdown table row per run (the prediction's own time from its summary line, and the process's)
and the before/after ratio of the prediction times, and appends them to ``--out``.

    python bench/thread_thrash.py --out bench/predict_bench.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BANDS = ["red", "green", "blue", "nir"]
TINY = dict(embed_dim=64, depth=2, num_heads=4, patch_size=8, img_size=32)
BEFORE = """
import sys
from geoexplora.inference.model_predict import predict_with_model
from geoexplora.models import load_model
model = load_model(sys.argv[1])
print(predict_with_model(model, sys.argv[2], sys.argv[3], tile=32, overlap=8, progress=False))
"""


def make_inputs(folder: Path) -> tuple[Path, Path]:
    """The raster and the tiny fine-tuned checkpoint (weights saved beside it)."""
    sys.path.insert(0, str(REPO / "tests"))
    import fake_rasters
    import timm
    import torch
    from safetensors.torch import save_file

    from geoexplora.data import GeoRasterDataset, compute_band_statistics
    from geoexplora.models import BackboneConfig, save_checkpoint
    from geoexplora.tasks.finetune import FinetuneTask

    raster = fake_rasters.write_raster(folder / "scene.tif", width=256, height=256, count=4, descriptions=BANDS)
    torch.manual_seed(0)
    weights = folder / "vit.safetensors"
    save_file(timm.create_model("vit_base_patch16_224", num_classes=0, **TINY).state_dict(), weights)
    task = FinetuneTask(task="segmentation", backbone=BackboneConfig(model="vit_base_patch16_224",
                        weights=str(weights), bands=BANDS, **TINY), classes=["a", "b"], segmentation_head="linear")
    task.band_statistics = compute_band_statistics(GeoRasterDataset(raster), num_windows=4, window_size=32).to_dict()
    return raster, save_checkpoint(folder / "ckpt", task.export_model(), task.export_config())


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds of the process, seconds of the prediction itself as its summary reports them)."""
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - started
    return wall, float(re.search(r"windows in ([0-9.]+) s", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Markdown file to append the rows to")
    parser.add_argument("--spinners", type=int, default=2, help="busy sibling processes (default 2)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        raster, ckpt = make_inputs(folder)
        cli = [sys.executable, "-m", "geoexplora", "predict", "--raster", str(raster), "--checkpoint", str(ckpt),
               "--tile", "32", "--overlap", "8", "--no-preview", "--overwrite"]
        runs = {
            "before (torch default threads, no wait policy)": [sys.executable, "-c", BEFORE, str(ckpt), str(raster),
                                                               str(folder / "before.tif")],
            "after (geoexplora predict defaults)": [*cli, "--out", str(folder / "after.tif")],
            "after, --threads 1": [*cli, "--out", str(folder / "one.tif"), "--threads", "1"],
        }
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.spinners)]
        try:
            seconds = {name: timed(argv, env) for name, argv in runs.items()}
        finally:
            for spinner in spinners:
                spinner.kill()
    names = list(runs)
    ratio = seconds[names[0]][1] / seconds[names[1]][1]
    rows = [f"| {name} | {p:.2f} | {w:.1f} |" for name, (w, p) in seconds.items()]
    text = "\n".join([
        "",
        f"## (d) predict beside {args.spinners} busy sibling processes (CPU thread thrash, issue 10)",
        "",
        f"121-window predict of a tiny 2-block ViT, 256 x 256 x 4 raster; {os.cpu_count()} cores, "
        f"{len(os.sched_getaffinity(0))} in the affinity mask, other users' load on top; each run a fresh "
        "process. predict s: the prediction itself (its summary line); process s: with start-up and imports.",
        "",
        "| run | predict s | process s |",
        "|---|---|---|",
        *rows,
        "",
        f"before / after (predict s): {ratio:.2f}",
        "",
        f"Command: `python bench/thread_thrash.py --out bench/predict_bench.md` ({datetime.date.today()})",
        "",
    ])
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
