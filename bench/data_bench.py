"""Windows/s the training data modules deliver per DataLoader worker, against raw rasterio reads of the
same windows; and how many workers would feed a ViT-B/14 DINOv2 step on an H100 at 40% MFU.

For each source -- the real Landsat 7 NC scene (with its land-cover map), the 5 Sentinel-2 Slovenia scenes
(with their LULC mask) and a synthetic folder of 20 adjacent 1024 px 4-band uint16 tiles (DEFLATE, 256 px
blocks, with one label raster over all of them) -- and each data module:

* ``pretrain``: :class:`~geoexplora.tasks.pretrain_data.UnlabelledRasterDataModule` (random windows, TorchGeo
  dataset, ``stack_samples``);
* ``finetune``: :class:`~geoexplora.tasks.finetune_data.LabelledRasterDataModule` (windows in the train
  blocks of the spatial split, image & label datasets, normalised, default collate),

``train_dataloader()`` runs with 0, 1 and 2 workers; one epoch starts the (persistent) workers, the next is
timed. "raw" reads the same windows -- the sampler's own queries -- with rasterio from handles opened once,
on one thread: each file's pixel window of the query (and the label raster's, in its CRS), nothing else.
The goal is windows/s per worker >= 0.5 x raw.

The last section counts the FLOPs of one ViT-B/14 ExPLoRA DINOv2 step (2 x 224 + 8 x 98 crops, 65,536
prototypes) per image with ``bench/gpu.py``'s Lightning run on the CPU, and divides 40% of the H100's dense
bf16 peak by it.

    python bench/data_bench.py                          # writes bench/data_bench.md
    python bench/data_bench.py --before before.json     # adds the windows/s of another run (older code)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioIOError
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from geoexplora.tasks.finetune_data import LabelledRasterDataModule  # noqa: E402
from geoexplora.tasks.pretrain_data import UnlabelledRasterDataModule  # noqa: E402

WORKERS = (0, 1, 2)
H100_PEAK_TFLOPS = 989.4  # dense bf16, H100 SXM (bench/gpu.py's PEAK_BF16_TFLOPS)
TARGET_MFU = 0.40
SYNTHETIC_TILES = (5, 4)  # columns, rows of 1024 px tiles
TILE = 1024


@dataclass(frozen=True)
class Case:
    """One data module over one source: the module's arguments and the rasters raw reads take."""

    module: str  # pretrain | finetune
    source: str
    window: int
    windows: int  # per timed epoch
    batch_size: int
    args: dict[str, Any]
    labels: str | None = None  # the label raster (finetune)


@dataclass
class Result:
    module: str
    source: str
    window: int
    workers: int
    windows_s: float
    raw_windows_s: float
    error: str | None = None  # the read error that stopped the epoch

    @property
    def per_worker(self) -> float:
        return self.windows_s / max(self.workers, 1)

    @property
    def ratio(self) -> float:
        return self.per_worker / self.raw_windows_s


def synthetic_folder(root: Path) -> tuple[Path, Path]:
    """20 adjacent 4-band uint16 tiles (EPSG:32633, 10 m) in ``root/tiles`` and one uint8 label raster over
    all of them; written once."""
    tiles, labels = root / "tiles", root / "labels.tif"
    if labels.exists():
        return tiles, labels
    tiles.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cols, rows = SYNTHETIC_TILES
    profile = {"driver": "GTiff", "count": 4, "dtype": "uint16", "nodata": 0, "crs": "EPSG:32633", "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate", "width": TILE, "height": TILE}
    for r in range(rows):
        for c in range(cols):
            transform = from_origin(500_000 + c * TILE * 10, 5_100_000 - r * TILE * 10, 10, 10)
            data = rng.integers(1, 10_000, (4, TILE, TILE), dtype=np.uint16)
            with rasterio.open(tiles / f"tile_{r}_{c}.tif", "w", transform=transform, **profile) as dst:
                dst.write(data)
    label_profile = {**profile, "count": 1, "dtype": "uint8", "nodata": 255, "width": cols * TILE,
                     "height": rows * TILE, "transform": from_origin(500_000, 5_100_000, 10, 10)}
    with rasterio.open(labels, "w", **label_profile) as dst:
        for r in range(rows):
            block = (np.arange(cols * TILE)[None, :] // 300 % 4 + np.zeros((TILE, 1), dtype=int)).astype(np.uint8)
            dst.write(block, 1, window=Window(0, r * TILE, cols * TILE, TILE))
    return tiles, labels


def cases(shared: Path, synthetic: tuple[Path, Path], scale: float) -> list[Case]:
    nc, s2 = shared / "landsat7_nc", shared / "sentinel2_slovenia"
    scenes = [str(p) for p in sorted(s2.glob("s2_l1c_scene*.tif"))]
    tiles, labels = synthetic
    n = lambda count: max(16, int(count * scale))  # noqa: E731
    pre = dict(statistics_windows=16)
    return [
        Case("pretrain", "Landsat 7 NC", 224, n(512), 32, dict(paths=[str(nc / "landsat_multiband.tif")], **pre)),
        Case("pretrain", "Sentinel-2 x 5 dates", 96, n(1024), 32, dict(paths=scenes, **pre)),
        Case("pretrain", "synthetic 20 tiles", 224, n(512), 32, dict(paths=[str(tiles)], **pre)),
        Case("finetune", "Landsat 7 NC", 112, n(512), 8,
             dict(image=str(nc / "landsat_multiband.tif"), mask=str(nc / "strata.tif"), block_size=112),
             labels=str(nc / "strata.tif")),
        Case("finetune", "Sentinel-2 scene 0", 32, n(1024), 32,
             dict(image=scenes[0], mask=str(s2 / "lulc_mask.tif"), block_size=32), labels=str(s2 / "lulc_mask.tif")),
        Case("finetune", "synthetic 20 tiles", 224, n(512), 32,
             dict(image=str(tiles), mask=str(labels), block_size=448), labels=str(labels)),
    ]


def data_module(case: Case, workers: int) -> Any:
    common = dict(window_size=case.window, windows_per_epoch=case.windows, batch_size=case.batch_size,
                  num_workers=workers)
    cls = UnlabelledRasterDataModule if case.module == "pretrain" else LabelledRasterDataModule
    module = cls(**case.args, **common)
    module.setup("fit")
    return module


def queries(module: Any, case: Case) -> list[tuple[slice, slice]]:
    """The (x, y) slices of one epoch of the module's training sampler."""
    sampler = module.train_dataloader().sampler
    return [(q[0], q[1]) for q in sampler]


def timed_epoch(module: Any) -> float:
    """Seconds of the second epoch of ``train_dataloader()`` (the first starts persistent workers)."""
    loader = module.train_dataloader()
    for _ in loader:
        pass
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    assert count == len(loader)
    return time.perf_counter() - start


def raw_reader(paths: list[str], labels: str | None) -> Callable[[slice, slice], None]:
    """A function reading, with rasterio from handles opened once, each image file's window of a query and
    the label raster's (its CRS)."""
    images = [rasterio.open(p) for p in paths]
    mask = rasterio.open(labels) if labels else None
    crs = images[0].crs

    def read(x: slice, y: slice) -> None:
        for src in images:
            left, bottom, right, top = src.bounds
            if x.start < right and x.stop > left and y.start < top and y.stop > bottom:
                window = from_bounds(max(x.start, left), max(y.start, bottom), min(x.stop, right), min(y.stop, top),
                                     src.transform).round_offsets().round_lengths()
                src.read(window=window)
        if mask is not None:
            bounds = transform_bounds(crs, mask.crs, x.start, y.start, x.stop, y.stop)
            mask.read(1, window=from_bounds(*bounds, mask.transform).round_offsets().round_lengths(), boundless=False)

    return read


def raster_paths(module: Any) -> list[str]:
    dataset = module.dataset if hasattr(module, "dataset") else module.datasets["train"].dataset.datasets[0]
    return list(dict.fromkeys(str(p) for p in dataset.index.filepath))


def raw_rate(case: Case) -> float:
    """Raw windows/s of one epoch of the case's queries (the module with 0 workers draws them)."""
    module = data_module(case, 0)
    window_queries = queries(module, case)
    read = raw_reader(raster_paths(module), case.labels)
    for x, y in window_queries[:8]:
        read(x, y)  # GDAL's block cache warm, as the modules' second epoch is
    start = time.perf_counter()
    for x, y in window_queries:
        read(x, y)
    return len(window_queries) / (time.perf_counter() - start)


def measure(case: Case, raw: float) -> list[Result]:
    results = []
    for workers in WORKERS:
        try:
            rate, error = case.windows / timed_epoch(data_module(case, workers)), None
        except RasterioIOError as err:  # e.g. workers reading through handles their parent opened
            rate, error = math.nan, str(err).splitlines()[0]
        results.append(Result(case.module, case.source, case.window, workers, rate, raw, error))
    return results


def step_flops_per_image() -> float:
    """FLOPs of one ViT-B/14 ExPLoRA DINOv2 step per image, counted on the CPU by bench/gpu.py's run."""
    import gpu

    gpu.silence_lightning()
    setup = replace(gpu.smoke_setup(), pretrain_batch=1, crops=(224, 98, 8), prototypes=65536, warmup_steps=0,
                    timed_steps=1, arch={}, explora_options={})
    with tempfile.TemporaryDirectory() as workdir:
        raster = gpu.make_raster(Path(workdir) / "r.tif", 512)
        row = gpu.pretrain_row("explora", raster, setup, None, Path(workdir))
    return row.tflop_step * 1e12


def goal_line(results: list[Result]) -> str:
    """Which rows reach the goal of 0.5 x the raw read rate per worker."""
    met = [r for r in results if r.ratio >= 0.5]
    where = ", ".join(f"{r.module} {r.source} ({r.workers} workers: {r.ratio:.2f})" for r in met) or "none"
    return f"Goal per worker >= 0.5 x raw: met in {len(met)} of {len(results)} rows: {where}."


def render(results: list[Result], before: dict[tuple, str], flops: float, command: str) -> str:
    lines = ["# Training data path: windows/s per DataLoader worker vs raw rasterio reads", "",
             f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} torch threads; 2 CPU "
             "cores shared with other work: absolute rates move with the load, ratios are measured back to back).",
             "", "| module | source | window px | workers | windows/s | per worker | raw windows/s (1 thread) | "
             "per worker / raw | before: windows/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        old = before.get((r.module, r.source, r.workers))
        rate = f"failed: {r.error}" if r.error else f"{r.windows_s:.0f}"
        lines.append(f"| {r.module} | {r.source} | {r.window} | {r.workers} | {rate} | {r.per_worker:.0f} | "
                     f"{r.raw_windows_s:.0f} | {r.ratio:.2f} | {'-' if old is None else old} |")
    lines += ["", goal_line(results)]
    needed = TARGET_MFU * H100_PEAK_TFLOPS * 1e12 / flops
    landsat = next(r for r in results if r.module == "pretrain" and r.source == "Landsat 7 NC" and r.workers == 1)
    lines += ["", "## Workers to feed a ViT-B/14 DINOv2 step on an H100 at 40% MFU", "",
              f"* One ExPLoRA step (2 x 224 + 8 x 98 crops, 65,536 prototypes, student forward and backward, "
              f"teacher forward) costs {flops / 1e9:.0f} GFLOP per image (FlopCounterMode, bench/gpu.py's "
              "pre-training run on the CPU at batch 1).",
              f"* 40% of {H100_PEAK_TFLOPS} TFLOP/s (H100 SXM dense bf16) = {TARGET_MFU * H100_PEAK_TFLOPS:.1f} "
              f"TFLOP/s, so {TARGET_MFU * H100_PEAK_TFLOPS:.1f}e12 / {flops / 1e9:.0f}e9 = **{needed:.0f} images/s** "
              "(one 224 px window per image).",
              f"* One worker delivers {landsat.per_worker:.0f} windows/s of the Landsat scene here (pre-training module), "
              f"so {needed:.0f} / {landsat.per_worker:.0f} = **{math.ceil(needed / landsat.per_worker)} workers** "
              "(cores of this machine's speed), plus the GPU-side augmentation the task runs on the device.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=BENCH.parent.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "geoexplora-data-bench")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the windows per timed epoch")
    parser.add_argument("--before", type=Path, help="JSON of a run on older code (--json of that run)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (the workers section)")
    parser.add_argument("--out", type=Path, default=BENCH / "data_bench.md")
    args = parser.parse_args(argv)
    all_cases = cases(args.shared, synthetic_folder(args.workdir), args.scale)
    # Every raw rate first, in a process no DataLoader worker has run in yet: measured after another case's
    # workers, the 5-date Sentinel-2 reference read 32 windows/s instead of about 560.
    raws = [raw_rate(case) for case in all_cases]
    results = [r for case, raw in zip(all_cases, raws, strict=True) for r in measure(case, raw)]
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    if args.no_flops:
        print("\n".join(f"{r.module} {r.source} w{r.workers}: {r.windows_s:.0f}/s, raw {r.raw_windows_s:.0f}/s, "
                        f"ratio {r.ratio:.2f}" for r in results))
        return
    before = {}
    if args.before:
        before = {(r["module"], r["source"], r["workers"]): f"failed: {r['error']}" if r["error"] else f"{r['windows_s']:.0f}"
                  for r in json.loads(args.before.read_text())}
    command = "python bench/data_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = render(results, before, step_flops_per_image(), command.strip())
    if args.before:
        table += f"\n'before' is the windows/s of the same script on older code, from {args.before}.\n"
    print(table)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
