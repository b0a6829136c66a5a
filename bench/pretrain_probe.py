"""k-NN probe of frozen cls features before and after a short ExPLoRA run with the DINOv2 objective.

Real DINOv2 ViT-S/14 (``../shared/weights``) on the real Landsat 7 North Carolina scene
(``../shared/data/landsat7_nc``, bands B1-B5). Pre-training uses the production path
(:class:`PretrainTask` + :class:`UnlabelledRasterDataModule`, explora, no labels). The probe cuts the scene
into non-overlapping ``--probe-window`` pixel windows, labels each with the majority class of ``strata.tif``
(same 489x443 grid), resizes it to ``--probe-size`` px, and classifies the right third of the scene from the
left two thirds (a spatial split) with cosine k-NN (k = ``--k``, majority vote) on the frozen backbone's cls
feature. Nothing is tuned on the probe labels. Writes ``bench/pretrain_probe.md``.

    python bench/pretrain_probe.py              # about 5-10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import rasterio
import torch
import torch.nn.functional as F

from geoexplora.tasks.pretrain import PretrainTask
from geoexplora.tasks.pretrain_data import UnlabelledRasterDataModule

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "landsat7_nc"
WEIGHTS = ROOT / ".." / "shared" / "weights" / "vit_small_patch14_dinov2.safetensors"
BANDS = ["B1", "B2", "B3", "B4", "B5"]


class LossCurve(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.losses.append(float(trainer.callback_metrics["loss"]))


def probe_windows(window: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (N, 5, size, size) in file units, valid (N, size, size), majority labels (N,), window column (N,)."""
    with rasterio.open(DATA / "landsat_multiband.tif") as src:
        image, nodata = src.read().astype(np.float32), src.nodata
    with rasterio.open(DATA / "strata.tif") as src:
        labels = src.read(1)
    images, valids, classes, columns = [], [], [], []
    for r in range(0, image.shape[1] - window + 1, window):
        for c in range(0, image.shape[2] - window + 1, window):
            tile = image[:, r:r + window, c:c + window]
            valid = ~((tile == nodata) | np.isnan(tile)).any(0)
            lab = labels[r:r + window, c:c + window][valid]
            lab = lab[lab > 0]
            if valid.mean() < 0.9 or lab.size == 0:
                continue
            images.append(np.nan_to_num(tile))
            valids.append(valid)
            classes.append(np.bincount(lab.astype(int)).argmax())
            columns.append(c)
    x = F.interpolate(torch.from_numpy(np.stack(images)), size=(size, size), mode="bilinear", align_corners=False)
    v = F.interpolate(torch.from_numpy(np.stack(valids)).float()[:, None], size=(size, size))[:, 0] > 0.5
    return x, v, torch.tensor(classes), torch.tensor(columns)


@torch.no_grad()
def knn_accuracy(task: PretrainTask, images: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor,
                 train: torch.Tensor, k: int) -> float:
    backbone = task.backbone.eval()
    feats = torch.cat([backbone(task.normalizer(images[i:i + 32], valid[i:i + 32])) for i in range(0, len(images), 32)])
    feats = F.normalize(feats, dim=1)
    sims = feats[~train] @ feats[train].T
    neighbours = labels[train][sims.topk(k, dim=1).indices]
    predicted = torch.mode(neighbours, dim=1).values
    backbone.train()
    return float((predicted == labels[~train]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--window", type=int, default=112, help="pre-training window and global crop (px)")
    parser.add_argument("--probe-window", type=int, default=32)
    parser.add_argument("--probe-size", type=int, default=112)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    data = UnlabelledRasterDataModule(paths=[str(DATA / "landsat_multiband.tif")], band_names=BANDS,
                                      window_size=args.window, samples_per_epoch=args.steps * args.batch,
                                      batch_size=args.batch, statistics_windows=64)
    task = PretrainTask(model="vit_small_patch14_dinov2", weights=str(WEIGHTS), sensor="landsat7", img_size=args.window,
                        global_crop_size=args.window, local_crop_size=args.window // 2, num_local_crops=4,
                        num_prototypes=4096, lr=args.lr, warmup_steps=args.steps // 10)
    data.setup("fit")
    task.build(data.band_names, data.statistics, data.normalization)
    images, valid, labels, columns = probe_windows(args.probe_window, args.probe_size)
    train = columns < (columns.max() + args.probe_window) * 2 // 3
    before = knn_accuracy(task, images, valid, labels, train, args.k)

    curve = LossCurve()
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, precision="32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=3.0, callbacks=[curve], default_root_dir="/tmp/pretrain_probe")
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    minutes = (time.perf_counter() - start) / 60
    after = knn_accuracy(task, images, valid, labels, train, args.k)

    head, tail = np.mean(curve.losses[:10]), np.mean(curve.losses[-10:])
    # The teacher temperature warms up 0.04 -> 0.07 over the first 30% of steps, which raises the DINO loss
    # by itself; compare at the final temperature too: the 10 steps after warm-up against the last 10.
    warm = int(0.3 * args.steps)
    after_warmup = np.mean(curve.losses[warm : warm + 10])
    curve_path = args.out.with_name(f"{args.out.stem}_loss.csv")
    curve_path.write_text("step,loss\n" + "".join(f"{i},{v:.5f}\n" for i, v in enumerate(curve.losses)))
    majority = float((labels[~train] == torch.mode(labels[train]).values).float().mean())
    lines = [
        "# ExPLoRA pre-training (DINOv2 objective) on Landsat 7 NC: loss and k-NN probe",
        "",
        f"Backbone: DINOv2 ViT-S/14 (`../shared/weights`), explora (last block + LoRA r64 on Q,V), 5 bands B1-B5. "
        f"Pre-training: {args.steps} steps, batch {args.batch}, {args.window}-px windows and global crops, 4 local crops "
        f"of {args.window // 2} px, lr {args.lr} (warm-up {args.steps // 10}), CPU fp32, {minutes:.1f} min.",
        f"Probe: {len(labels)} non-overlapping {args.probe_window}-px windows resized to {args.probe_size} px, majority "
        f"`strata.tif` class; train = left two thirds ({int(train.sum())}), test = right third ({int((~train).sum())}); "
        f"cosine {args.k}-NN on the cls feature. Command: `python bench/pretrain_probe.py {' '.join(sys.argv[1:])}`.",
        "",
        "| | value |",
        "|---|---|",
        f"| loss, mean of first 10 steps | {head:.3f} |",
        f"| loss, mean of last 10 steps | {tail:.3f} |",
        f"| loss, mean of the 10 steps after teacher-temperature warm-up (from step {warm}) | {after_warmup:.3f} |",
        f"| k-NN accuracy before | {100 * before:.1f} % |",
        f"| k-NN accuracy after | {100 * after:.1f} % |",
        f"| majority-class baseline (test) | {100 * majority:.1f} % |",
        "",
        f"Loss per step: `{curve_path.name}`.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
