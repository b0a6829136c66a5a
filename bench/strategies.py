"""Benchmark of adaptation strategies on the real North Carolina Landsat 7 scene with the real ViT-S/14.

Rows: linear, lora (r8), explora->lora (needs --pretrain-checkpoint, else skipped with a note),
block-expansion (p=3), rlrr, full. Columns: trainable parameters, test mIoU (segmentation with the strata
map) or top-1 accuracy (``--task classification``: majority class per window), wall time per epoch;
mean and spread (std) over the seeds. The spatial split (blocks) changes with the seed too.

    .venv/bin/python bench/strategies.py [--pretrain-checkpoint runs/explora-dinov2-landsat/checkpoint]
    .venv/bin/python bench/strategies.py --epochs 1 --seeds 1 --windows 8 --strategies linear rlrr  # smoke

Writes the table to bench/strategies.md (or --out) and prints it.
"""

from __future__ import annotations

import argparse
import sys
import statistics
import time
from pathlib import Path

import lightning as L

from geoexplora.models import BackboneConfig, parameter_report
from geoexplora.tasks.finetune import FinetuneTask
from geoexplora.tasks.finetune_data import LabelledRasterDataModule

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "landsat7_nc"
WEIGHTS = ROOT / ".." / "shared" / "weights" / "vit_small_patch14_dinov2.safetensors"
BANDS = ["B1", "B2", "B3", "B4", "B5"]
STRATEGIES = {
    "linear": ("linear", {}),
    "lora": ("lora", {"lora_rank": 8, "lora_alpha": 8.0}),
    "explora->lora": ("lora", {"lora_rank": 8, "lora_alpha": 8.0}),
    "block-expansion": ("block-expansion", {"num_expanded": 3}),
    "rlrr": ("rlrr", {}),
    "full": ("full", {}),
}


class EpochTimer(L.Callback):
    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.times = [*getattr(self, "times", []), time.perf_counter() - self.start]


def run_one(row: str, seed: int, args: argparse.Namespace) -> tuple[int, float, float]:
    L.seed_everything(seed, verbose=False)
    name, options = STRATEGIES[row]
    task_name = args.task
    backbone = BackboneConfig(model="vit_small_patch14_dinov2", weights=str(WEIGHTS), sensor="landsat7", bands=BANDS,
                              img_size=args.window)
    init = str(args.pretrain_checkpoint) if row == "explora->lora" else None
    task = FinetuneTask(task=task_name, backbone=None if init else backbone, init_checkpoint=init, strategy=name,
                        strategy_options=options, segmentation_head="progressive", decoder_channels=64,
                        lr=args.lr if name != "full" else args.lr / 10)
    data = LabelledRasterDataModule(
        image=str(DATA / "landsat_multiband.tif"), band_names=BANDS, mask=str(DATA / "strata.tif"),
        class_values=[1, 2, 3, 4, 5, 6, 7], label_mode="mask" if task_name == "segmentation" else "majority",
        window_size=args.window, block_size=args.window, windows_per_epoch=args.windows, batch_size=args.batch_size,
        seed=seed,
    )
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, datamodule=data)
    metric = "test/mIoU" if task_name == "segmentation" else "test/accuracy"
    score = trainer.test(task, datamodule=data, verbose=False)[0][metric]
    trainable = parameter_report(task.model).trainable_params
    return trainable, float(score), statistics.mean(timer.times)


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("segmentation", "classification"), default="segmentation")
    parser.add_argument("--pretrain-checkpoint", type=Path, help="ExPLoRA pre-training checkpoint folder")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--windows", type=int, default=64, help="training windows per epoch")
    parser.add_argument("--window", type=int, default=112, help="window side in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "strategies.md")
    args = parser.parse_args()
    metric = "test mIoU" if args.task == "segmentation" else "test top-1"
    lines = [
        f"# Strategies on landsat7_nc ({args.task}), ViT-S/14 DINOv2, {args.window} px windows",
        "",
        f"{args.seeds} seeds x {args.epochs} epochs x {args.windows} windows; mean ± std over seeds; CPU.",
        f"Command: `python bench/strategies.py {' '.join(sys.argv[1:])}`",
        "",
        f"| strategy | trainable params | {metric} | s / epoch |",
        "|---|---:|---:|---:|",
    ]
    notes = []
    for row in args.strategies:
        if row == "explora->lora" and args.pretrain_checkpoint is None:
            notes.append("explora->lora skipped: no --pretrain-checkpoint given.")
            continue
        runs = [run_one(row, seed, args) for seed in range(args.seeds)]
        lines.append(f"| {row} | {runs[0][0]:,} | {spread([r[1] for r in runs])} | {spread([r[2] for r in runs])} |")
    text = "\n".join(lines + [""] + notes) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
