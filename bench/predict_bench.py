"""Benchmark of geoexplora's streaming tiled inference against two common in-memory approaches.

Prints a Markdown table and writes it to ``--out`` (default ``bench/predict_bench.md``, committed):

(a) end-to-end ``predict_raster`` throughput against the model's forward alone on the same number of
    windows (what reading, blending and writing cost on top of the model);
(b) peak RSS of ``predict_raster`` on synthetic 4-band rasters of each ``--rss-sizes`` side;
(c) on the ``--size`` raster: this engine vs a full-scene accumulator (float64 ``sum``/``weight``
    arrays over the whole scene, as geoai's ``predict_geotiff``) vs torchgeo's GridGeoSampler +
    DataLoader loop stitched in memory: wall time and peak RSS, and their ratios to the engine;
(e) the pipeline's ceiling: ``predict_raster`` with a null model (``x[:, :K] * 0``) end to end on the
    ``--ceiling-size`` raster against plain single-thread rasterio reads of the same windows, with 1 and 2
    reader threads (``--repeats`` interleaved rounds, median);
(f) peak RSS of ``predict_raster`` on each ``--flat-sizes`` raster (``WxH``), with the null model and with
    ``--model``, beside the RSS of a process that only imported torch and geoexplora.

Every measurement runs in its own subprocess (``--worker``) so peak RSS is that run's alone. The machine may
be shared: ratios are measured in one run and the load average is printed with each table.

    python bench/predict_bench.py --size 2000 --rss-sizes 1000,2000 --skip e,f   # quick check
    python bench/predict_bench.py --size 10000 --rss-sizes 10000,40000 --skip e,f  # (a)-(c)
    python bench/predict_bench.py --skip a,b,c,f                                   # the ceiling, ~2 min
    python bench/predict_bench.py --skip a,b,c,e --flat-models null                # flat memory, null model

``--model small-conv`` (default) is a 3-layer convolution net; ``--model vit-s`` is geoexplora's ViT-S/14
segmentation model (random init: speed and memory do not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geoexplora.data.stats import BandStat, BandStatistics, Normalizer  # noqa: E402
from geoexplora.inference import predict_raster  # noqa: E402
from geoexplora.inference.blending import hann_weights  # noqa: E402
from geoexplora.inference.windows import WindowGrid, pad_window  # noqa: E402

BANDS = 4
SCALE = 10_000.0  # synthetic reflectance scale (uint16)


def small_conv(in_channels: int, num_classes: int) -> nn.Module:
    """A seeded 3-layer conv net: (B, C, H, W) float32 -> (B, K, H, W) logits."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, num_classes, 1),
    ).eval()


def vit_small_segmenter(in_channels: int, num_classes: int, tile: int) -> nn.Module:
    """geoexplora's ViT-S/14 (random init, LoRA strategy) with the linear segmentation head:
    (B, C, tile, tile) float32 -> (B, K, tile, tile) logits. Speed and memory do not depend on the weights."""
    from geoexplora.models import BackboneConfig, create_backbone, create_strategy
    from geoexplora.models.heads import SupervisedModel, create_head

    torch.manual_seed(0)
    bands = [f"B{i}" for i in range(1, in_channels + 1)]
    backbone = create_strategy("lora").apply(create_backbone(BackboneConfig(bands=bands, img_size=tile)))
    head = create_head("segmentation", backbone.embed_dim, num_classes, backbone.num_prefix_tokens,
                       segmentation_head="linear", num_levels=1)
    return SupervisedModel(backbone, head, [-1]).eval()


class NullModel(nn.Module):
    """The pipeline's ceiling: logits ``x[:, :K] * 0`` (all classes equal), no compute to speak of."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return x[:, : self.num_classes] * 0


def build_model(spec: str, device: str, num_classes: int, tile: int) -> tuple[nn.Module, int, int]:
    if spec == "null":
        return NullModel(num_classes), num_classes, tile
    if spec == "small-conv":
        return small_conv(BANDS, num_classes).to(device), num_classes, tile
    if spec == "vit-s":
        return vit_small_segmenter(BANDS, num_classes, tile).to(device), num_classes, tile
    raise SystemExit(f"--model {spec}: use small-conv, vit-s or null")


#: What ``geoexplora predict`` normalises with: a checkpoint's per-band statistics (here mean 0, std SCALE).
normalize = Normalizer(BandStatistics({f"B{b + 1}": BandStat(0.0, SCALE, 0.0, SCALE) for b in range(BANDS)}),
                       [f"B{b + 1}" for b in range(BANDS)])


def raster_profile(width: int, height: int, bigtiff: str) -> dict:
    """The bench rasters' profile: 4-band uint16 (nodata 0), UTM 33N at 10 m, 512 px DEFLATE tiles."""
    return {
        "driver": "GTiff", "width": width, "height": height, "count": BANDS, "dtype": "uint16", "nodata": 0,
        "crs": "EPSG:32633", "transform": from_origin(500_000, 5_100_000, 10, 10), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "bigtiff": bigtiff,
    }


def make_raster(path: Path, size: int) -> Path:
    """A size x size 4-band uint16 tiled DEFLATE GeoTIFF of smooth fields plus noise, written in strips."""
    if path.exists():
        return path
    profile = raster_profile(size, size, bigtiff="if_safer")
    rng = np.random.default_rng(0)
    cols = np.arange(size, dtype=np.float32)
    partial = path.with_suffix(".partial.tif")
    with rasterio.open(partial, "w", **profile) as dst:
        for top in range(0, size, 512):
            rows = np.arange(top, min(top + 512, size), dtype=np.float32)[:, None]
            for b in range(BANDS):
                field = np.sin(cols / (300 + 50 * b)) * np.cos(rows / (400 + 30 * b))
                values = 3000 + 2000 * field + rng.normal(0, 200, field.shape)
                dst.write(np.clip(values, 1, 65535).astype(np.uint16), b + 1,
                          window=Window(0, top, size, rows.shape[0]))
    partial.rename(path)
    return path


def make_flat_raster(path: Path, width: int, height: int) -> Path:
    """A width x height 4-band uint16 DEFLATE GeoTIFF in 512 px tiles, each tile one value per band (never nodata):
    it compresses and decodes fast, so the 1.6 Gpx raster of the memory table is written in well under a minute."""
    if path.exists():
        return path
    profile = raster_profile(width, height, bigtiff="yes")
    partial = path.with_suffix(".partial.tif")
    block = np.empty((BANDS, 512, 512), dtype=np.uint16)
    with rasterio.open(partial, "w", **profile) as dst:
        for top in range(0, height, 512):
            for left in range(0, width, 512):
                h, w = min(512, height - top), min(512, width - left)
                for b in range(BANDS):
                    block[b] = 1000 + (top // 512 * 7 + left // 512 * 13 + 100 * b) % 5000
                dst.write(block[:, :h, :w], window=Window(left, top, w, h))
    partial.rename(path)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engine(args: argparse.Namespace, raster: Path, out: Path) -> dict:
    model, k, tile = build_model(args.model, args.device, args.classes, args.tile)
    start = time.perf_counter()
    summary = predict_raster(raster, out, model, num_classes=k, tile=tile, overlap=args.overlap,
                             batch_size=args.batch_size, device=args.device, normalize=normalize,
                             overwrite=True, progress=False, reader_threads=args.reader_threads)
    return {"seconds": time.perf_counter() - start, "windows": summary.total_windows,
            "buffer_mb": summary.buffer_bytes / 2**20}


def run_raw_read(args: argparse.Namespace, raster: Path, out: Path) -> dict:
    """Plain rasterio reads of the grid's windows (all bands, native dtype), one thread, one handle."""
    with rasterio.open(raster) as src:
        grid = WindowGrid(src.width, src.height, args.tile, args.overlap)
        start = time.perf_counter()
        for window in grid.windows():
            src.read(window=window.read_window)
    return {"seconds": time.perf_counter() - start, "windows": len(grid)}


def run_imports(args: argparse.Namespace, raster: Path, out: Path) -> dict:
    """Nothing but the imports every worker has (torch, rasterio, geoexplora.inference): the RSS floor."""
    return {"seconds": 0.0, "windows": 0}


def run_model_only(args: argparse.Namespace, raster: Path, out: Path) -> dict:
    model, k, tile = build_model(args.model, args.device, args.classes, args.tile)
    with rasterio.open(raster) as src:
        windows = len(WindowGrid(src.width, src.height, tile, args.overlap))
    x = torch.rand(args.batch_size, BANDS, tile, tile, device=args.device)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(math.ceil(windows / args.batch_size)):
            torch.softmax(model(x), dim=1).cpu()
    return {"seconds": time.perf_counter() - start, "windows": windows}


def run_accumulator(args: argparse.Namespace, raster: Path, out: Path) -> dict:
    """Full-scene float64 sum/weight accumulators (the geoai ``predict_geotiff`` approach)."""
    model, k, tile = build_model(args.model, args.device, args.classes, args.tile)
    start = time.perf_counter()
    with rasterio.open(raster) as src:
        grid = WindowGrid(src.width, src.height, tile, args.overlap)
        total = np.zeros((k, src.height, src.width), dtype=np.float64)
        weight = np.zeros((src.height, src.width), dtype=np.float64)
        w = hann_weights(tile, args.overlap).astype(np.float64)
        profile = src.profile
        windows = list(grid.windows())
        with torch.inference_mode():
            for first in range(0, len(windows), args.batch_size):
                chunk = windows[first : first + args.batch_size]
                x = np.stack([pad_window(src.read(window=t.read_window).astype(np.float32), tile) for t in chunk])
                probs = torch.softmax(model(normalize(torch.from_numpy(x)).to(args.device)), 1).cpu().numpy()
                for t, p in zip(chunk, probs, strict=True):
                    rows, cols = slice(t.y, t.y + t.height), slice(t.x, t.x + t.width)
                    total[:, rows, cols] += p[:, : t.height, : t.width] * w[: t.height, : t.width]
                    weight[rows, cols] += w[: t.height, : t.width]
    classes = (total / np.maximum(weight, 1e-12)).argmax(0).astype(np.uint8)
    write_class_map(out, profile, classes)
    return {"seconds": time.perf_counter() - start, "windows": len(windows)}


def run_torchgeo(args: argparse.Namespace, raster: Path, out: Path) -> dict:
    """torchgeo RasterDataset + GridGeoSampler + DataLoader, stitched into full-scene float32 arrays."""
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    model, k, tile = build_model(args.model, args.device, args.classes, args.tile)
    start = time.perf_counter()
    warnings.simplefilter("ignore", DeprecationWarning)  # GridGeoSampler is the documented loop's sampler
    dataset = RasterDataset(paths=[str(raster)])
    sampler = GridGeoSampler(dataset, size=tile, stride=tile - args.overlap)
    loader = DataLoader(dataset, sampler=sampler, batch_size=args.batch_size, collate_fn=stack_samples)
    with rasterio.open(raster) as src:
        profile, left, top, res = src.profile, src.bounds.left, src.bounds.top, src.res[0]
        height, width = src.height, src.width
    total = np.zeros((k, height, width), dtype=np.float32)
    weight = np.zeros((height, width), dtype=np.float32)
    w = hann_weights(tile, args.overlap)
    windows = 0
    with torch.inference_mode():
        for batch in loader:
            image = batch["image"].float()[..., :tile, :tile]
            probs = torch.softmax(model(normalize(image).to(args.device)), 1).cpu().numpy()
            for bounds, p in zip(batch["bounds"], probs, strict=True):
                # chips may overhang the raster (torchgeo pads them): clip to the scene
                col, row = round((float(bounds[0]) - left) / res), round((top - float(bounds[4])) / res)
                r0, r1, c0, c1 = max(row, 0), min(row + tile, height), max(col, 0), min(col + tile, width)
                patch = np.s_[r0 - row : r1 - row, c0 - col : c1 - col]
                total[:, r0:r1, c0:c1] += p[(slice(None), *patch)] * w[patch]
                weight[r0:r1, c0:c1] += w[patch]
                windows += 1
    classes = (total / np.maximum(weight, 1e-12)).argmax(0).astype(np.uint8)
    write_class_map(out, profile, classes)
    return {"seconds": time.perf_counter() - start, "windows": windows}


def write_class_map(out: Path, profile: dict, classes: np.ndarray) -> None:
    profile = {**profile, "count": 1, "dtype": "uint8", "nodata": 255}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(classes, 1)


WORKERS = {"engine": run_engine, "model": run_model_only, "accumulator": run_accumulator, "torchgeo": run_torchgeo,
           "raw": run_raw_read, "imports": run_imports}


def measure(args: argparse.Namespace, worker: str, raster: Path, model: str | None = None, threads: int = 1) -> dict:
    """Run ``worker`` on ``raster`` in a fresh interpreter; returns its JSON (seconds, windows, peak_rss_mb)."""
    command = [sys.executable, __file__, "--worker", worker, "--raster", str(raster), "--model", model or args.model,
               "--device", args.device, "--tile", str(args.tile), "--overlap", str(args.overlap),
               "--batch-size", str(args.batch_size), "--classes", str(args.classes), "--workdir", str(args.workdir),
               "--reader-threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {worker} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="side (px) of the raster for (a) and (c)")
    parser.add_argument("--rss-sizes", default="10000,40000", help="comma-separated sides (px) for (b)")
    parser.add_argument("--model", default="small-conv", help="small-conv or vit-s")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "geoexplora-bench",
                        help="synthetic rasters and outputs (outside the repo)")
    parser.add_argument("--ceiling-size", type=int, default=4000, help="side (px) of the raster for (e)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of (e); the median is reported")
    parser.add_argument("--flat-sizes", default="10000x10000,40000x40000,100000x2000",
                        help="comma-separated WxH rasters for (f)")
    parser.add_argument("--flat-models", default="null,small-conv", help="models for (f)")
    parser.add_argument("--reader-threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c,e,f")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "predict_bench.md", help="result table file")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--raster", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    if args.worker:
        result = WORKERS[args.worker](args, args.raster, args.workdir / f"out_{args.worker}.tif")
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return

    skip = set(args.skip.split(","))
    lines = [f"# predict bench ({args.model}, device {args.device}, tile {args.tile}, overlap {args.overlap}, "
             f"batch {args.batch_size}, {args.classes} classes, {BANDS}-band uint16 synthetic rasters)", "",
             f"Command: `python bench/{Path(__file__).name} {' '.join(sys.argv[1:] if argv is None else argv)}` "
             f"({torch.get_num_threads()} torch threads, {time.strftime('%Y-%m-%d')})", ""]
    raster = None if {"a", "c"} <= skip else make_raster(args.workdir / f"synthetic_{args.size}.tif", args.size)
    mpx = args.size**2 / 1e6
    if "a" not in skip:
        engine, model_only = measure(args, "engine", raster), measure(args, "model", raster)
        lines += ["## (a) throughput", "", "| run | windows | s | windows/s | Mpx/s |", "|---|---|---|---|---|"]
        for name, r in (("predict_raster end to end", engine), ("model forward only", model_only)):
            lines.append(f"| {name} | {r['windows']} | {r['seconds']:.1f} | {r['windows'] / r['seconds']:.1f} "
                         f"| {mpx / r['seconds']:.2f} |")
        lines += ["", f"end-to-end / model-only throughput: {model_only['seconds'] / engine['seconds']:.2f}", ""]
    if "b" not in skip:
        lines += ["## (b) peak RSS of predict_raster", "", "| raster | Mpx | s | peak RSS MiB |", "|---|---|---|---|"]
        for size in (int(s) for s in args.rss_sizes.split(",")):
            r = measure(args, "engine", make_raster(args.workdir / f"synthetic_{size}.tif", size))
            lines.append(f"| {size} x {size} | {size**2 / 1e6:.0f} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
        lines.append("")
    if "c" not in skip:
        lines += [f"## (c) approaches on {args.size} x {args.size}", "",
                  "| approach | s | peak RSS MiB | time / engine | RSS / engine |", "|---|---|---|---|---|"]
        results = {name: measure(args, name, raster) for name in ("engine", "accumulator", "torchgeo")}
        base = results["engine"]
        labels = {"engine": "geoexplora streaming engine", "accumulator": "full-scene float64 accumulator",
                  "torchgeo": "torchgeo GridGeoSampler + DataLoader"}
        for name, r in results.items():
            lines.append(f"| {labels[name]} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['seconds'] / base['seconds']:.2f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")
        lines.append("")
    if "e" not in skip:
        lines += ceiling_table(args)
    if "f" not in skip:
        lines += flat_memory_table(args)
    table = "\n".join(lines)
    print(table)
    args.out.write_text(table + "\n")


def load() -> str:
    """The 1-minute load average and the cores: how busy the machine was."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def ceiling_table(args: argparse.Namespace) -> list[str]:
    """(e): null-model predict_raster with 1 and 2 reader threads against single-thread raw reads, interleaved."""
    size = args.ceiling_size
    raster = make_raster(args.workdir / f"synthetic_{size}.tif", size)
    runs = {"raw": [], "engine1": [], "engine2": []}
    before = load()
    for _ in range(args.repeats):
        runs["raw"].append(measure(args, "raw", raster)["seconds"])
        runs["engine1"].append(measure(args, "engine", raster, model="null", threads=1)["seconds"])
        runs["engine2"].append(measure(args, "engine", raster, model="null", threads=2)["seconds"])
    mpx = size**2 / 1e6
    raw = mpx / statistics.median(runs["raw"])
    lines = [f"## (e) pipeline ceiling: null model on {size} x {size} x {BANDS} uint16 DEFLATE (512 px tiles)", "",
             f"{load()} at the end ({before} at the start); median of {args.repeats} interleaved rounds, each run "
             "a fresh process; predict_raster's time includes its checks and the COG copy.", "",
             "| run | s (median) | Mpx/s | / raw read |", "|---|---|---|---|"]
    labels = {"raw": "rasterio windowed read, 1 thread", "engine1": "predict_raster, null model, 1 reader thread",
              "engine2": "predict_raster, null model, 2 reader threads"}
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        lines.append(f"| {labels[name]} | {median:.2f} | {mpx / median:.1f} | {mpx / median / raw:.2f} |")
    return [*lines, ""]


def flat_memory_table(args: argparse.Namespace) -> list[str]:
    """(f): peak RSS per raster shape and model, beside the imports-only RSS."""
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.flat_sizes.split(",")]
    models = args.flat_models.split(",")
    before = load()
    floor = measure(args, "imports", Path(os.devnull))["peak_rss_mb"]
    lines = [f"## (f) peak RSS of predict_raster by raster shape ({args.device})", "",
             f"Imports only (torch, rasterio, geoexplora.inference): **{floor:.0f} MiB**. {before} at the start.", "",
             "| raster | Mpx | model | s | blend buffer MiB | peak RSS MiB | / first row |",
             "|---|---|---|---|---|---|---|"]
    for model in models:
        first = None
        for width, height in sizes:
            raster = make_flat_raster(args.workdir / f"flat_{width}x{height}.tif", width, height)
            r = measure(args, "engine", raster, model=model)
            first = first or r["peak_rss_mb"]
            lines.append(f"| {width} x {height} | {width * height / 1e6:.0f} | {model} | {r['seconds']:.1f} | "
                         f"{r['buffer_mb']:.1f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / first:.2f} |")
    return [*lines, "", f"{load()} at the end.", ""]


if __name__ == "__main__":
    main()
