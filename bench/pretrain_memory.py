"""Peak memory and step time of one DINOv2-objective optimiser step: ExPLoRA vs full fine-tuning.

ViT-B/14 (``vit_base_patch14_dinov2``, random init: memory and time do not depend on the values), 3 bands,
the same DINOv2 objective (2 global crops of ``--size`` px, ``--num-local`` local crops of 98 px), AdamW.
Each configuration runs in its own subprocess so peak memory is its own: ``torch.cuda.max_memory_allocated``
on a GPU (bf16 autocast), peak RSS (``ru_maxrss``) on the CPU (fp32). One warm-up step, then ``--steps``
timed steps. Writes ``bench/pretrain_memory.md``.

    python bench/pretrain_memory.py                    # GPU: batch 32; CPU: pass a smaller --batch
    python bench/pretrain_memory.py --batch 2 --steps 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def one_config(strategy: str, batch: int, size: int, num_local: int, steps: int, prototypes: int) -> dict:
    from geoexplora.models import BackboneConfig, create_backbone, create_strategy, parameter_report
    from geoexplora.models.ssl import DINOv2Objective, DINOv2Options
    from geoexplora.transforms import MultiCropAugmentation

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cfg = BackboneConfig(model="vit_base_patch14_dinov2", bands=["red", "green", "blue"], img_size=size)
    backbone = create_strategy(strategy).apply(create_backbone(cfg))
    report = parameter_report(backbone)
    objective = DINOv2Objective(backbone, DINOv2Options(num_prototypes=prototypes)).to(device)
    augment = MultiCropAugmentation(size, 98, num_local)
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(batch, 3, size + 32, size + 32, device=device)

    def step(i: int) -> None:
        global_crops, local_crops = augment(images)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = objective(global_crops, local_crops, i, 100)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        objective.update_teacher(out["momentum"])

    step(0)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"strategy": strategy, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "trainable": report.trainable_params, "total": report.total_params,
            "peak_bytes": peak, "step_s": seconds, "images_per_s": batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--num-local", type=int, default=8)
    parser.add_argument("--prototypes", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=["explora", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_config(args.child, args.batch, args.size, args.num_local, args.steps, args.prototypes)))
        return
    results = {}
    for strategy in ("explora", "full"):
        cmd = [sys.executable, __file__, "--child", strategy, "--batch", str(args.batch), "--size", str(args.size),
               "--num-local", str(args.num_local), "--steps", str(args.steps), "--prototypes", str(args.prototypes)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[strategy] = json.loads(done.stdout.strip().splitlines()[-1])
    e, f = results["explora"], results["full"]
    memory = "torch.cuda.max_memory_allocated, bf16 autocast" if e["device"] != "cpu" else "peak RSS of the process, fp32"
    lines = [
        "# Pre-training memory and step time: ExPLoRA vs full (DINOv2 objective)",
        "",
        f"ViT-B/14 at {args.size} px, batch {args.batch}{'' if args.batch == 32 else ' (smaller than the target 32)'}, "
        f"2 global + {args.num_local} local crops (98 px), {args.prototypes} prototypes, AdamW, device {e['device']}; "
        f"memory: {memory}; time: mean of {args.steps} step(s) after one warm-up step.",
        "Command: `python bench/pretrain_memory.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| strategy | trainable params | peak memory (GiB) | step time (s) | images/s |",
        "|---|---|---|---|---|",
    ]
    for r in (e, f):
        lines.append(f"| {r['strategy']} | {r['trainable'] / 1e6:.1f} M of {r['total'] / 1e6:.1f} M | "
                     f"{r['peak_bytes'] / 2**30:.2f} | {r['step_s']:.2f} | {r['images_per_s']:.2f} |")
    lines += ["", f"Ratios explora / full: memory {e['peak_bytes'] / f['peak_bytes']:.2f}x, "
              f"time {e['step_s'] / f['step_s']:.2f}x (targets: <= 0.6x memory, <= 0.8x time).", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
