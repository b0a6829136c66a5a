"""ExPLoRA evaluation protocol: probes and fine-tunes of the real DINOv2 ViT-S/14 on real labelled rasters.

    python bench/explora_eval.py            # the full protocol (about 40 min on 2 idle CPU cores; it prints a plan)
    python bench/explora_eval.py --quick    # every row kind on tiny crops with a tiny ViT (the test suite runs it)

Labelled sets (``../shared/data``): Landsat 7 North Carolina with ``strata.tif`` as pixel segmentation and as
window classification (majority label of a window), and Sentinel-2 Slovenia (one date) with its LULC mask.
Each set is split by the project's spatial blocks (``LabelledRasterDataModule``), a new split per seed.
ExPLoRA pre-training (``PretrainTask`` + ``UnlabelledRasterDataModule``) runs once per domain and
variant and is shared by the seeds; seeds vary the split, the training windows and the fine-tune / probe.
Hyper-parameters are chosen on the validation split only: the probes' L2 strength on every seed's
validation split, the fine-tunes' learning rate on seed 0's (then kept for the other seeds). Writes the
table to ``bench/explora_eval.md`` (``--out``) with the pre-training curves and a score plot as PNGs beside it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import rasterio
import torch

from evalkit.datasets import ImageSpec, LabelledSpec, labelled_data, prepare_domain, prepare_files
from evalkit.pretraining import PretrainResult, first_last, plot_curves, pretrain, read_curves
from evalkit.report import LABELS, RowReport, dataset_table, plot_scores, standard_errors
from evalkit.rows import RunResult, finetune_run, probe_run
from geoexplora.errors import GeoExploraError
from geoexplora.models import BackboneConfig, create_backbone, create_strategy
from geoexplora.models.checkpoint import read_checkpoint
from geoexplora.models.geomodel import load_merged_backbone
from geoexplora.tasks.finetune import FinetuneTask

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"

# --- PretrainTask keyword arguments, passed through unchanged (update them when the DINOv2 fix lands) ------
PRETRAIN = {
    "common": dict(model="vit_small_patch14_dinov2", strategy="explora", unfreeze_blocks=[-1], lora_rank=64,
                   lora_alpha=64.0, warmup_steps=15),
    # The other DINOv2 options (data-initialised heads, teacher temperature, momentum...) are DINOv2Options'
    # defaults; 64 prototypes for the 32-40 teacher crops a step here.
    "dinov2": dict(objective="dinov2", num_prototypes=64, num_local_crops=4, lr=1e-4, weight_decay=0.04,
                   weight_decay_end=0.2),
    "mae": dict(objective="mae", mask_ratio=0.75, decoder_dim=256, decoder_depth=2, decoder_heads=8,
                norm_pix_loss=True, lr=1.5e-4, weight_decay=0.05, weight_decay_end=None),
}
# Lightning Trainer arguments of the pre-training runs.
PRETRAIN_TRAINER = dict(gradient_clip_val=3.0, precision="32-true")
# The pre-trainings the rows need: objective + what differs (train_patch_embed None: trained, new bands).
PRETRAIN_VARIANTS = {
    "dinov2": dict(objective="dinov2"),
    "dinov2-pe-frozen": dict(objective="dinov2", train_patch_embed=False),
    "mae": dict(objective="mae"),
}
FINETUNE_TRAINER = dict(precision="32-true")

LORA8 = {"lora_rank": 8, "lora_alpha": 8.0}
ADAPTER_LRS, BLOCK_LRS, FULL_LRS = (1e-3, 3e-3), (3e-4, 1e-3), (3e-5, 1e-4)


@dataclass(frozen=True)
class Row:
    """A table row: a probe (``strategy`` None) or a fine-tune, from the source DINOv2 or a pre-training.

    Attributes:
        key: short name.
        title: what the table prints.
        pretrained: the :data:`PRETRAIN_VARIANTS` key it starts from, or None for the source DINOv2.
        strategy: the FinetuneTask strategy, or None for a linear probe on frozen features.
        options: the strategy's options.
        reference: the row it is compared with in "what the spread allows".
        lrs: the fine-tune learning rates tried on seed 0's validation split.
    """

    key: str
    title: str
    pretrained: str | None
    strategy: str | None
    options: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    lrs: tuple[float, ...] = ()


ROWS = (
    Row("frozen", "frozen DINOv2 -> linear probe", None, None),
    Row("explora-dinov2", "ExPLoRA (DINOv2 objective) -> linear probe", "dinov2", None, reference="frozen"),
    Row("explora-mae", "ExPLoRA (MAE objective) -> linear probe", "mae", None, reference="frozen"),
    Row("lora", "LoRA r8 fine-tune", None, "lora", LORA8, "frozen", ADAPTER_LRS),
    Row("explora-lora", "ExPLoRA (DINOv2) -> LoRA r8", "dinov2", "lora", LORA8, "lora", ADAPTER_LRS),
    Row("block-expansion", "Block Expansion (p=3)", None, "block-expansion", {"num_expanded": 3}, "lora", BLOCK_LRS),
    Row("rlrr", "RLRR", None, "rlrr", {}, "lora", ADAPTER_LRS),
    Row("full", "full fine-tune", None, "full", {}, "lora", FULL_LRS),
    Row("explora-pe-frozen", "control: ExPLoRA (DINOv2), patch embedding frozen -> linear probe",
        "dinov2-pe-frozen", None, reference="explora-dinov2"),
    Row("lora-pe", "control: LoRA r8 + trainable patch embedding", None, "lora", LORA8 | {"train_patch_embed": True},
        "lora", ADAPTER_LRS),
)

NC_BANDS = ("B1", "B2", "B3", "B4", "B5")
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
NC_CLASSES = ("developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment")
S2_SCENES = tuple(f"sentinel2_slovenia/s2_l1c_scene{i}.tif" for i in range(5))
# Placeholder dates (order only), as in recipes/explora-dinov2-sentinel2.yaml: the five scenes as one place.
S2_DATES = tuple(f"2017-01-0{i + 1}" for i in range(5))


@dataclass
class Profile:
    """Everything a run depends on besides the code: backbone, data sizes, run lengths, seeds."""

    name: str
    backbone: dict[str, Any]
    domains: dict[str, ImageSpec]
    datasets: dict[str, LabelledSpec]
    pretrain_steps: int
    pretrain_input: int
    pretrain_overrides: dict[str, Any]
    seeds: int
    crop: int | None = None
    # FinetuneTask head options. Linear (per patch token, bilinear upsampling) like the probes, so the fine-tune
    # rows differ from the probe rows in what trains in the backbone, not in the decoder.
    head: dict[str, Any] = field(default_factory=lambda: {"segmentation_head": "linear"})
    weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)


def full_profile(weights: Path) -> Profile:
    """The protocol as committed: real ViT-S/14, whole rasters, 3 seeds."""
    domains = {
        "nc": ImageSpec("nc", ("landsat7_nc/landsat_multiband.tif",), NC_BANDS, "landsat7", window=40, batch_size=16),
        "s2": ImageSpec("s2", S2_SCENES, S2_BANDS, "sentinel2", window=20, batch_size=4, dates=S2_DATES),
    }
    nc = dict(image="landsat7_nc/landsat_multiband.tif", mask="landsat7_nc/strata.tif", domain="nc",
              class_values=tuple(range(1, 8)), class_names=NC_CLASSES)
    datasets = {
        "nc-seg": LabelledSpec("nc-seg", "Landsat 7 NC, strata segmentation", task="segmentation", window=28,
                               block=56, input_size=56, windows_per_epoch=128, epochs=6, **nc),
        "nc-cls": LabelledSpec("nc-cls", "Landsat 7 NC, window classification (majority strata class)",
                               task="classification", window=10, block=20, input_size=42, windows_per_epoch=256,
                               epochs=4, **nc),
        "s2-seg": LabelledSpec("s2-seg", "Sentinel-2 Slovenia (scene 4), LULC segmentation",
                               image=S2_SCENES[4], mask="sentinel2_slovenia/lulc_mask.tif", domain="s2",
                               task="segmentation", class_values=(1, 2, 3, 4, 8),
                               class_names=("cultivated", "forest", "grassland", "shrubland", "artificial"),
                               window=14, block=14, input_size=56, windows_per_epoch=96, epochs=8, mask_nodata=0),
    }
    backbone = {"model": "vit_small_patch14_dinov2", "weights": str(weights)}
    return Profile("full", backbone, domains, datasets, pretrain_steps=150, pretrain_input=56,
                   pretrain_overrides={}, seeds=3)


def quick_profile() -> Profile:
    """Every row kind in about a minute: a tiny random ViT on central crops of the same rasters, 2 seeds."""
    full = full_profile(Path("unused"))
    tiny = dict(embed_dim=48, depth=3, num_heads=3, patch_size=7)
    domains = {"nc": replace(full.domains["nc"], window=28, batch_size=4),
               "s2": replace(full.domains["s2"], window=14, batch_size=2)}
    datasets = {
        "nc-seg": replace(full.datasets["nc-seg"], window=14, block=28, input_size=28, windows_per_epoch=16,
                          epochs=1, batch_size=8, pixels_per_window=8),
        "nc-cls": replace(full.datasets["nc-cls"], input_size=28, windows_per_epoch=16, epochs=1, batch_size=8),
        "s2-seg": replace(full.datasets["s2-seg"], input_size=28, windows_per_epoch=8, epochs=1, batch_size=8,
                          pixels_per_window=8),
    }
    overrides = dict(num_prototypes=64, head_hidden_dim=64, head_bottleneck_dim=32, num_local_crops=2,
                     decoder_dim=32, decoder_depth=1, decoder_heads=2, warmup_steps=1)
    return Profile("quick", {"model": "vit_small_patch14_dinov2", "weights": None, **tiny}, domains, datasets,
                   pretrain_steps=3, pretrain_input=28, pretrain_overrides=overrides | tiny, seeds=2, crop=84,
                   weight_decays=(1e-3, 1e-1))


# --- time plan -----------------------------------------------------------------------------------------------
# Cost of a step relative to a LoRA step (measured on 2 CPU cores): per strategy, and the DINOv2 objective's heads
# (DINO + iBOT prototypes on cls and masked patch tokens) on top of its backbone passes. Seconds per run spent
# outside the steps (building the model, reading the windows, Lightning's setup).
STRATEGY_COST = {"lora": 1.0, "block-expansion": 1.0, "rlrr": 1.6, "full": 1.7}
DINOV2_HEAD_COST, RUN_OVERHEAD_S = 1.5, 2.0


class Plan:
    """Estimated seconds per stage from a measured LoRA step on this machine, then actual ones and the time left.

    :meth:`calibrate` times a LoRA training step and a forward pass of the profile's backbone (batch 16 at the
    pre-training input size); every estimate is a token count times those costs.
    """

    def __init__(self, profile: Profile) -> None:
        self.patch = profile.backbone.get("patch_size", 14)
        self.train_s_per_token = self.forward_s_per_token = 0.0
        self.stages: dict[str, float] = {}
        self.done: dict[str, float] = {}

    def calibrate(self, config: BackboneConfig) -> None:
        """Time a LoRA training step and a forward pass of ``config``'s backbone (batch 16), per image-token."""
        model = create_strategy("lora").apply(create_backbone(config))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        x = torch.randn(16, len(config.bands), config.img_size, config.img_size)
        tokens = 16 * self.tokens(config.img_size)

        def step() -> None:
            model.forward_features(x).mean().backward()
            optimizer.step()
            optimizer.zero_grad()

        step()
        started = time.perf_counter()
        step(), step()
        self.train_s_per_token = (time.perf_counter() - started) / 2 / tokens
        with torch.no_grad():
            started = time.perf_counter()
            model.forward_features(x), model.forward_features(x)
        self.forward_s_per_token = (time.perf_counter() - started) / 2 / tokens

    def tokens(self, size: int) -> int:
        return (size // self.patch) ** 2 + 1

    def train(self, images: float, size: int, cost: float = 1.0) -> float:
        return images * self.tokens(size) * self.train_s_per_token * cost

    def forward(self, images: float, size: int) -> float:
        return images * self.tokens(size) * self.forward_s_per_token

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = seconds

    def start(self, stage: str) -> float:
        print(f"[explora_eval] {stage}: estimated {self.stages[stage]:.0f} s", flush=True)
        return time.perf_counter()

    def finish(self, stage: str, started: float) -> None:
        self.done[stage] = time.perf_counter() - started
        estimated = sum(self.stages[s] for s in self.done)
        ratio = sum(self.done.values()) / max(estimated, 1e-9)
        left = ratio * sum(v for s, v in self.stages.items() if s not in self.done)
        print(f"[explora_eval] {stage}: took {self.done[stage]:.0f} s; this machine runs at {ratio:.2f}x the "
              f"estimate; about {left / 60:.1f} min left", flush=True)


def eval_windows(spec: LabelledSpec, image: Path) -> float:
    """Validation + test windows of a set, roughly: the share of blocks times the windows that fit."""
    with rasterio.open(image) as src:
        windows = (src.width // spec.block) * (src.height // spec.block) * (spec.block // spec.window) ** 2
    return windows * (spec.split_fractions[1] + spec.split_fractions[2])


def plan_stages(profile: Profile, rows: list[Row], files: dict[str, tuple[Path, Path]], plan: Plan) -> None:
    """Fill ``plan`` with one pre-training stage per domain and one stage per labelled set."""
    variants = sorted({r.pretrained for r in rows if r.pretrained})
    g, steps = profile.pretrain_input, profile.pretrain_steps
    local = (PRETRAIN["dinov2"] | profile.pretrain_overrides)["num_local_crops"]
    for key in sorted({s.domain for s in profile.datasets.values()} if variants else ()):
        domain = profile.domains[key]
        images = steps * domain.batch_size * (len(domain.dates) if domain.dates else 1)
        dino = DINOV2_HEAD_COST * (plan.forward(2 * images, g) + plan.train(2 * images, g) + plan.train(local * images, g // 2))
        mae = 0.6 * plan.train(images, g)
        plan.add(f"pre-train {key}", sum(RUN_OVERHEAD_S + (mae if PRETRAIN_VARIANTS[v]["objective"] == "mae" else dino)
                                         for v in variants))
    for spec in profile.datasets.values():
        s, n_eval = spec.input_size, eval_windows(spec, files[spec.key][0])
        total = 0.0
        for row in rows:
            if row.strategy is None:
                total += profile.seeds * (plan.forward(spec.windows_per_epoch + n_eval, s) + 1.0)
                continue
            runs = len(row.lrs) + profile.seeds - 1
            per_run = plan.train(spec.epochs * spec.windows_per_epoch, s, STRATEGY_COST[row.strategy])
            total += runs * (per_run + plan.forward(n_eval, s) + RUN_OVERHEAD_S)
        plan.add(f"rows {spec.key}", total)


# --- stages --------------------------------------------------------------------------------------------------


def pretrain_options(profile: Profile, domain: ImageSpec, variant: str) -> dict[str, Any]:
    """The PretrainTask keyword arguments of one pre-training: the dicts above, merged, plus sizes and bands."""
    objective = PRETRAIN_VARIANTS[variant]["objective"]
    g = profile.pretrain_input
    sizes = dict(img_size=g, global_crop_size=g, local_crop_size=g // 2, crop_size=g)
    base = PRETRAIN["common"] | PRETRAIN[objective] | PRETRAIN_VARIANTS[variant]
    options = base | sizes | {"weights": profile.backbone["weights"], "sensor": domain.sensor}
    return options | profile.pretrain_overrides


def run_pretraining(profile: Profile, rows: list[Row], data_root: Path, work: Path, out: Path,
                    plan: Plan) -> tuple[dict[str, dict[str, PretrainResult]], dict[str, Path]]:
    """Every pre-training the rows need, per domain; the curves of each domain as one PNG."""
    variants = sorted({r.pretrained for r in rows if r.pretrained})
    results: dict[str, dict[str, PretrainResult]] = {}
    pngs: dict[str, Path] = {}
    for key in sorted({s.domain for s in profile.datasets.values()} if variants else ()):
        domain = profile.domains[key]
        started = plan.start(f"pre-train {key}")
        paths = prepare_domain(domain, data_root, work, profile.crop)
        results[key] = {v: pretrain(domain, paths, pretrain_options(profile, domain, v), PRETRAIN_TRAINER,
                                    profile.pretrain_steps, work / "pretrain" / f"{key}-{v}") for v in variants}
        pngs[key] = plot_curves(results[key], f"ExPLoRA pre-training on {key}: logged values per step",
                                out.with_name(f"{out.stem}_pretrain_{key}.png"))
        plan.finish(f"pre-train {key}", started)
    return results, pngs


def backbone_config(profile: Profile, domain: ImageSpec, size: int) -> BackboneConfig:
    return BackboneConfig(bands=list(domain.band_names), sensor=domain.sensor, img_size=size, **profile.backbone)


def run_rows(profile: Profile, spec: LabelledSpec, rows: list[Row], files: tuple[Path, Path],
             pretrained: dict[str, PretrainResult]) -> dict[str, list[RunResult]]:
    """Every row of one labelled set over the seeds."""
    domain = profile.domains[spec.domain]
    k, metric, seg = len(spec.class_values), spec.headline, spec.task == "segmentation"
    # The pre-training's position-table size for every row, so all rows resample positions the same way.
    config = backbone_config(profile, domain, profile.pretrain_input)
    out: dict[str, list[RunResult]] = {}
    own: dict[int, dict[str, Any]] = {}
    reads: dict[Any, Any] = {}

    for row in rows:
        checkpoint = pretrained[row.pretrained].checkpoint if row.pretrained else None
        statistics = read_checkpoint(checkpoint).preprocessing.statistics.to_dict() if checkpoint else None

        def data(seed: int, statistics: dict[str, Any] | None = statistics):
            """This seed's split, normalised with the pre-training's statistics, else the set's own (computed once)."""
            if statistics is None and seed not in own:
                own[seed] = labelled_data(spec, domain, *files, seed, None, reads).band_statistics.to_dict()
            return labelled_data(spec, domain, *files, seed, statistics or own[seed], reads)

        if row.strategy is None:
            runs = []
            for seed in range(profile.seeds):
                L.seed_everything(seed, verbose=False)
                backbone = create_backbone(config) if checkpoint is None else load_merged_backbone(checkpoint)[0]
                runs.append(probe_run(backbone, data(seed), k, seg, spec.pixels_per_window, profile.weight_decays,
                                      seed, metric))
        else:
            runs = finetune_row(row, spec, config, checkpoint, data, profile, k, metric)
        out[row.key] = runs
        print(f"[explora_eval]   {spec.key} {row.key}: " + ", ".join(
            f"{r.choice} val {r.val_score:.1f}" for r in runs), flush=True)
    return out


def finetune_row(row: Row, spec: LabelledSpec, config: BackboneConfig, checkpoint: Path | None,
                 data: Callable[[int], Any], profile: Profile, k: int, metric: str) -> list[RunResult]:
    """Seed 0 with each learning rate, the best on validation kept; the other seeds with that rate."""

    def make_task(lr: float) -> FinetuneTask:
        return FinetuneTask(task=spec.task, backbone=None if checkpoint else config,
                            init_checkpoint=str(checkpoint) if checkpoint else None, strategy=row.strategy,
                            strategy_options=row.options, lr=lr, **profile.head)

    def fit(seed: int, lr: float):
        L.seed_everything(seed, verbose=False)
        return finetune_run(make_task, data(seed), lr, spec.epochs, k, metric, FINETUNE_TRAINER)

    candidates = [fit(0, lr) for lr in row.lrs]
    best = max(candidates, key=lambda run: run.val_score)
    results = [best.result(k)]
    results[0].choice += f" (of {', '.join(f'{c.lr:g}: {c.val_score:.1f}' for c in candidates)})"
    for seed in range(1, profile.seeds):
        results.append(fit(seed, best.lr).result(k))
    return results


# --- report --------------------------------------------------------------------------------------------------


def write_markdown(out: Path, argv: list[str], profile: Profile, rows: list[Row],
                   results: dict[str, dict[str, list[RunResult]]], pretrained: dict[str, dict[str, PretrainResult]],
                   pngs: dict[str, Path], scores_png: Path, minutes: float) -> str:
    """The report: command, settings, pre-training monitors, SE per set, one table per set, notes."""
    cmd = " ".join(["python", "bench/explora_eval.py", *argv])
    lines = [
        "# ExPLoRA evaluation protocol: DINOv2 ViT-S/14 on real labelled rasters",
        "",
        f"Command: `{cmd}` ({profile.name} profile, {minutes:.1f} min here, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC).",
        "",
        f"Backbone: `{profile.backbone['model']}` from `{profile.backbone['weights']}`"
        + (f", architecture overrides {({k: v for k, v in profile.backbone.items() if k not in ('model', 'weights')})}"
           if len(profile.backbone) > 2 else "") + ".",
        f"Seeds: {profile.seeds}; each seed deals the spatial blocks (`LabelledRasterDataModule`, split fractions "
        "train/val/test below) anew, draws new training windows and re-initialises the probe or fine-tune. "
        "Pre-training runs once per domain and variant and is shared by the seeds.",
        "Hyper-parameters are chosen on validation data only: the linear probes' L2 strength "
        f"({', '.join(f'{w:g}' for w in profile.weight_decays)}) on every seed's validation split, the fine-tunes' "
        "learning rate on seed 0's validation split (grids in the table), then kept for the other seeds. "
        "The test split is scored once per row and seed.",
        "",
        "## Pre-training (ExPLoRA: last block + LoRA r64 on Q,V + norms + cls token; patch embedding trained "
        "unless frozen)",
        "",
        "PretrainTask keyword arguments (from the `PRETRAIN` dicts at the top of the script, merged with the "
        "per-run sizes below):",
        "",
    ]
    for key, per_variant in pretrained.items():
        domain = profile.domains[key]
        for variant, result in per_variant.items():
            options = pretrain_options(profile, domain, variant)
            curves = read_curves(result.metrics_csv)
            terms = ", ".join(f"{name} {a:.3f} -> {b:.3f}" for name in sorted(curves)
                              if name not in ("lr", "momentum", "teacher_temp")
                              for a, b in [first_last(curves, name)])
            lines += [
                f"- **{key} / {variant}**: {result.steps} steps x {result.images_per_step} images "
                f"({domain.batch_size} windows of {domain.window} px" + (f" x {len(domain.dates)} dates" if domain.dates
                                                                        else "") +
                f"), {result.trainable:,} trainable, {result.seconds / 60:.1f} min. Mean of the first vs last 10 logged "
                f"steps: {terms}.",
                f"  `{options}`",
            ]
    lines += ["", f"Trainer: `{PRETRAIN_TRAINER}`. Curves (every logged value per step): "
              + ", ".join(f"[{p.name}]({p.name})" for p in pngs.values()) + ".", ""]
    lines += ["## Labelled sets and the standard error of one seed", "",
              "| set | bands | window -> model input | split block | train/val/test | test samples per seed | "
              "test blocks | SE of accuracy, binomial (max) | SE of accuracy, block bootstrap (median) | "
              "SE of the headline metric, block bootstrap (median) |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for key, spec in profile.datasets.items():
        if key not in results:
            continue
        se = standard_errors(report_rows(rows, results[key], pretrained.get(spec.domain, {})), spec.headline)
        unit = "pixels" if spec.task == "segmentation" else "windows"
        lines.append(f"| {spec.title} | {len(profile.domains[spec.domain].band_names)} | {spec.window} -> "
                     f"{spec.input_size} px | {spec.block} px | {'/'.join(f'{f:g}' for f in spec.split_fractions)} | "
                     f"{se['samples']} {unit} | {se['blocks']} | {se['binomial']} | {se['bootstrap_accuracy']} | {se['bootstrap']} "
                     f"({LABELS[spec.headline]}) |")
    lines += ["", "Standard errors of one seed's score, in points, over every row and seed of the set. The binomial SE "
              "treats every test pixel or window as independent; the block bootstrap (400 resamples of the test "
              "blocks) keeps their spatial correlation, so it is the one to trust. Pixels are counted at the "
              "raster's own resolution (logits area-averaged from the model input back to the window).", ""]
    tables: dict[str, tuple[str, list[RowReport]]] = {}
    for key, spec in profile.datasets.items():
        if key not in results:
            continue
        reports = report_rows(rows, results[key], pretrained.get(spec.domain, {}))
        tables[spec.title] = (spec.headline, reports)
        second = "accuracy" if spec.headline == "miou" else "macro_f1"
        lines += [f"## {spec.title}", "",
                  f"Classes: {', '.join(f'{v} {n}' for v, n in zip(spec.class_values, spec.class_names))}. "
                  f"Fine-tunes: {spec.epochs} epochs x {spec.windows_per_epoch} windows, batch {spec.batch_size}, "
                  f"head `{profile.head}`" + ("" if spec.task == "segmentation" else " (cls-token linear head)") + ".",
                  "", *dataset_table(reports, spec.headline, second), ""]
    plot_scores(tables, scores_png)
    lines += [f"Scores per seed: [{scores_png.name}]({scores_png.name}).", "", *NOTES, ""]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def report_rows(rows: list[Row], results: dict[str, list[RunResult]],
                pretrained: dict[str, PretrainResult]) -> list[RowReport]:
    return [RowReport(r.key, r.title, results[r.key],
                      pretrained[r.pretrained].trainable if r.pretrained else None,
                      r.reference if r.reference in results else None) for r in rows]


NOTES = [
    "## Notes",
    "",
    "- Linear probes: classification on the DINOv2 linear-eval feature (cls token concatenated with the mean patch "
    "token, last block, normed); segmentation per patch token: the last block's patch tokens bilinearly upsampled "
    "to pixels, logistic regression fitted on labelled pixels sampled from the training windows, scored on every "
    "test pixel. Probe and ExPLoRA -> LoRA rows start from the backbone `PretrainTask.export_model()` exports, "
    "adapters merged: for DINOv2 the EMA teacher, which DINOv2 and the ExPLoRA linear-probe config evaluate.",
    "- ExPLoRA pre-training sees the unlabelled pixels of the whole domain, test blocks included (no labels); "
    "that is the setting ExPLoRA targets (unlabelled imagery of the target domain) and it favours the ExPLoRA rows "
    "over a protocol that pre-trains on other scenes.",
    "- BigEarthNet tiny (11 patches, 9 labels, one multi-label set per patch) is not in the table: a patch split "
    "leaves about 3 test patches, so a multi-label score would rest on ~3 samples (SE far above 2.5 points) and "
    "its patches cannot be cut into windows without inventing labels for them.",
    "- Sentinel-2: one date (scene 4, the least hazy: lowest mean B02) is labelled; LULC value 0 (eo-learn's "
    "'no data') is written as nodata and ignored. Pre-training reads all five scenes as dates of one place.",
    "- 'what the spread allows': the paired difference to the reference row over seeds (same seed = same split) "
    "and the smallest mean difference a two-sided paired t-test at 95% would call real with these seeds.",
]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny ViT on central crops, 2 seeds, a few steps")
    parser.add_argument("--out", type=Path, help="markdown table (default bench/explora_eval.md; quick: under --work)")
    parser.add_argument("--work", type=Path, help="run folder (default runs/explora_eval or runs/explora_eval_quick)")
    parser.add_argument("--data", type=Path, default=SHARED / "data", help="the shared data folder")
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "vit_small_patch14_dinov2.safetensors")
    parser.add_argument("--seeds", type=int, help="seeds (default 3; quick 2)")
    parser.add_argument("--pretrain-steps", type=int, help="pre-training steps per run")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs of every set")
    parser.add_argument("--datasets", nargs="+", help="labelled sets to run (default all)")
    parser.add_argument("--rows", nargs="+", help=f"rows to run (default all: {', '.join(r.key for r in ROWS)})")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> tuple[Profile, list[Row], Path, Path]:
    """The profile with the command-line overrides, the rows, the markdown path and the run folder."""
    profile = quick_profile() if args.quick else full_profile(args.weights)
    if not args.data.is_dir():
        raise GeoExploraError(f"{args.data}: the shared data folder is not there (give --data)")
    if not args.quick and not args.weights.is_file():
        raise GeoExploraError(f"{args.weights}: the DINOv2 ViT-S/14 weights are not there (give --weights)")
    unknown = set(args.datasets or []) - set(profile.datasets)
    if unknown:
        raise GeoExploraError(f"unknown datasets {sorted(unknown)}; known: {', '.join(profile.datasets)}")
    if args.datasets:
        profile.datasets = {k: v for k, v in profile.datasets.items() if k in args.datasets}
    unknown = set(args.rows or []) - {r.key for r in ROWS}
    if unknown:
        raise GeoExploraError(f"unknown rows {sorted(unknown)}; known: {', '.join(r.key for r in ROWS)}")
    rows = [r for r in ROWS if not args.rows or r.key in args.rows]
    if args.seeds is not None:
        profile.seeds = args.seeds
    if args.pretrain_steps is not None:
        profile.pretrain_steps = args.pretrain_steps
    if args.epochs is not None:
        profile.datasets = {k: replace(v, epochs=args.epochs) for k, v in profile.datasets.items()}
    if profile.seeds < 1 or profile.pretrain_steps < 1:
        raise GeoExploraError("--seeds and --pretrain-steps must be positive")
    work = args.work or ROOT / "runs" / ("explora_eval_quick" if args.quick else "explora_eval")
    out = args.out or (work / "explora_eval.md" if args.quick else ROOT / "bench" / "explora_eval.md")
    return profile, rows, out, work


def quiet() -> None:
    """Lightning's and the libraries' per-run chatter off; geoexplora's warnings stay."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet()
    try:
        args = parse(argv)
        profile, rows, out, work = configure(args)
    except GeoExploraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    files = {key: prepare_files(spec, args.data, work, profile.crop) for key, spec in profile.datasets.items()}
    plan = Plan(profile)
    plan.calibrate(backbone_config(profile, next(iter(profile.domains.values())), profile.pretrain_input))
    plan_stages(profile, rows, files, plan)
    print(f"[explora_eval] plan ({profile.name}): " + ", ".join(f"{s} {v / 60:.1f} min" for s, v in plan.stages.items())
          + f"; total about {sum(plan.stages.values()) / 60:.0f} min at this machine's measured speed "
          f"({1e3 * plan.train_s_per_token:.2f} ms per image-token of a LoRA step)", flush=True)
    pretrained, pngs = run_pretraining(profile, rows, args.data, work, out, plan)
    results: dict[str, dict[str, list[RunResult]]] = {}
    for key, spec in profile.datasets.items():
        started = plan.start(f"rows {key}")
        results[key] = run_rows(profile, spec, rows, files[key], pretrained.get(spec.domain, {}))
        plan.finish(f"rows {key}", started)
    text = write_markdown(out, argv, profile, rows, results, pretrained, pngs, out.with_name(f"{out.stem}_scores.png"),
                          (time.perf_counter() - start) / 60)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
