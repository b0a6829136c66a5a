"""GPU bench, one command: predict throughput of ViT segmenters, pre-training images/s and MFU, the null-model
ceiling of the predict pipeline.

    python bench/gpu.py            # a CUDA GPU (under 8 minutes on an H100-class GPU): writes bench/gpu.md
    python bench/gpu.py --smoke    # every row, tiny, on the CPU in seconds (tests/bench/test_gpu_smoke.py)

``bench/gpu.md`` is written only by a run on a GPU (``--smoke`` prints its table, or writes ``--out``). No GPU
was available when this bench was written, so the repository holds no ``bench/gpu.md`` yet; the table it
writes has the header below (``--smoke`` prints the same rows with tiny models).

| part | model | torch.compile | precision | Mpx/s end to end | Mpx/s model only | images/s | TFLOP/step | MFU | peak GPU memory (GiB) | trainable params |

Rows, each through geoexplora's public API:

* **predict**: :func:`geoexplora.inference.predict_raster` (windowed reads, normalisation on the device,
  Hann blending, argmax, COG writing) over a synthetic 4-band uint16 DEFLATE raster
  (``predict_bench.make_raster``), tile 224, overlap 32, with ViT-S/14 and ViT-B/14 segmenters built as
  fine-tuned checkpoints are (:func:`~geoexplora.models.build_task_model`: LoRA r8 backbone, the default
  ``progressive`` head, random init: speed does not depend on the values), eager or ``torch.compile``
  (default mode), fp32 or bf16 autocast. "Model only" is the same wrapped model on random batches already on
  the device, as many windows as the raster's grid: the gap to it is what the CPU side costs. Compilation
  happens in a warm-up before the clock starts; batches are padded to ``--batch-size`` so one graph serves.
* **null model**: ``x[:, :K] * 0`` through ``predict_raster``: the pipeline's ceiling on this host; beside it
  the raw rasterio windowed-read rate of the same windows on one thread.
* **pretrain**: :class:`~geoexplora.tasks.pretrain.PretrainTask` under a Lightning ``Trainer`` (bf16-mixed on
  a GPU), ViT-B/14 with the published DINOv2 recipe's objective (2 x 224 + 8 x 98 crops, 65,536 prototypes,
  random heads, centring, gradient clip 3), batch ``--pretrain-batch`` (32), ``explora`` vs ``full``. The
  windows are read once by the real data module and served again each step, so the step is the model's.
  images/s = batch / mean step time over the timed steps; peak GPU memory =
  ``torch.cuda.max_memory_allocated`` over them (peak RSS on the CPU). FLOPs per step are counted on one
  step by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; forward and
  backward of student, teacher and heads: what executes, so ExPLoRA's frozen weights cost no weight-gradient
  FLOPs). MFU = FLOPs/step x steps/s / peak, the peak being the device's dense bf16 tensor-core rate from
  :data:`PEAK_BF16_TFLOPS` (keyed by ``torch.cuda.get_device_name``; ``--peak-tflops`` overrides).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import rasterio
import torch
from rasterio.windows import Window
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from predict_bench import BANDS, make_raster, normalize  # noqa: E402

from geoexplora.cli.lightning_runner import silence_lightning  # noqa: E402
from geoexplora.inference import predict_raster  # noqa: E402
from geoexplora.models import (  # noqa: E402
    BackboneConfig,
    build_task_model,
    create_backbone,
    create_strategy,
    parameter_report,
)
from geoexplora.models.checkpoint import TaskConfig  # noqa: E402
from geoexplora.models.ssl import DINOv2Options  # noqa: E402
from geoexplora.tasks.pretrain import PretrainTask  # noqa: E402
from geoexplora.tasks.pretrain_data import UnlabelledRasterDataModule  # noqa: E402

#: Dense bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets; the first name contained in
#: ``torch.cuda.get_device_name()`` wins (so the PCIe/NVL H100s come before the SXM "H100").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
)
SEGMENTERS = (("ViT-S/14", "vit_small_patch14_dinov2"), ("ViT-B/14", "vit_base_patch14_dinov2"))
PRETRAIN_MODEL = ("ViT-B/14", "vit_base_patch14_dinov2")
CLASSES = 4  # <= BANDS: the null model returns the first K input bands times 0
HEADER = ("| part | model | torch.compile | precision | Mpx/s end to end | Mpx/s model only | images/s | "
          "TFLOP/step | MFU | peak GPU memory (GiB) | trainable params |")


@dataclass(frozen=True)
class Setup:
    """Sizes of one bench run: the real ones on a GPU, tiny ones for ``--smoke`` on the CPU."""

    device: str
    raster_side: int  # px of the synthetic predict raster
    tile: int
    overlap: int
    batch_size: int  # predict windows per forward
    pretrain_batch: int
    crops: tuple[int, int, int]  # global side, local side, local crops per window
    prototypes: int
    warmup_steps: int  # pre-training steps before the FLOP-counted one
    timed_steps: int
    arch: dict[str, int]  # backbone overrides (tiny models for --smoke)
    explora_options: dict[str, int]  # ExPLoRA's strategy options (the published r64 on a GPU)
    compile_backend: str  # "inductor"; "eager" under --smoke (dynamo traces, no code generation)


def gpu_setup(args: argparse.Namespace) -> Setup:
    return Setup("cuda", args.raster_side, 224, 32, args.batch_size, args.pretrain_batch, (224, 98, 8), 65536,
                 3, args.timed_steps, {}, {}, "inductor")


def smoke_setup() -> Setup:
    return Setup("cpu", 160, 56, 8, 4, 2, (28, 14, 2), 16, 1, 2,
                 dict(embed_dim=32, depth=4, num_heads=2), {"lora_rank": 4}, "eager")


@dataclass
class Row:
    """One line of the table; a measurement that does not apply to the part is ``None``."""

    part: str
    model: str
    compiled: bool | None = None
    precision: str | None = None
    mpx_s: float | None = None
    model_mpx_s: float | None = None
    images_s: float | None = None
    tflop_step: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    trainable: str | None = None

    def markdown(self) -> str:
        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.3g}"

        compiled = "-" if self.compiled is None else ("yes" if self.compiled else "no")
        cells = [self.part, self.model, compiled, self.precision or "-", num(self.mpx_s), num(self.model_mpx_s),
                 num(self.images_s), num(self.tflop_step), "-" if self.mfu is None else f"{100 * self.mfu:.3g}%",
                 num(self.peak_gib), self.trainable or "-"]
        return "| " + " | ".join(cells) + " |"


def peak_tflops(device: str, override: float | None) -> tuple[float | None, str]:
    """The dense bf16 peak (TFLOP/s) and the name it was looked up by; ``None`` when unknown."""
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    if override is not None:
        return override, f"{name} (--peak-tflops)"
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None), name


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --- predict -------------------------------------------------------------------------------------------------

class NullModel(nn.Module):
    """(B, C, H, W) -> (B, K, H, W) zeros: the pipeline without a model."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :CLASSES] * 0


class Runner(nn.Module):
    """A segmenter as ``predict_raster`` calls it: optionally compiled and under bf16 autocast, float32 logits
    out; a short last batch is padded to ``batch_size`` so a compiled graph is traced once."""

    def __init__(self, model: nn.Module, batch_size: int, device: str, compiled: bool, bf16: bool,
                 backend: str) -> None:
        super().__init__()
        self.model, self.batch_size, self.device_type, self.bf16 = model, batch_size, device, bf16
        self.forward_fn: Callable[[Tensor], Tensor] = torch.compile(model, backend=backend) if compiled else model

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if n < self.batch_size:
            x = torch.cat([x, x.new_zeros((self.batch_size - n, *x.shape[1:]))])
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.forward_fn(x)[:n].float()


def segmenter(model: str, setup: Setup) -> nn.Module:
    """A fine-tuned segmentation checkpoint's module (LoRA r8, progressive head), random init, on the device."""
    torch.manual_seed(0)
    config = BackboneConfig(model, bands=[f"B{i}" for i in range(1, BANDS + 1)], img_size=setup.tile, **setup.arch)
    backbone = create_strategy("lora", lora_rank=8, lora_alpha=8.0).apply(create_backbone(config))
    return build_task_model(backbone, TaskConfig("segmentation"), CLASSES).to(setup.device).eval()


def grid_windows(side: int, tile: int, overlap: int) -> list[Window]:
    """The predict grid's windows over a ``side`` x ``side`` raster (clipped at the edges)."""
    starts = range(0, max(side - overlap, 1), tile - overlap)
    return [Window(c, r, min(tile, side - c), min(tile, side - r)) for r in starts for c in starts]


def time_predict(raster: Path, out: Path, model: nn.Module, setup: Setup) -> float:
    """Seconds of one ``predict_raster`` call."""
    start = time.perf_counter()
    predict_raster(raster, out, model, num_classes=CLASSES, tile=setup.tile, overlap=setup.overlap,
                   batch_size=setup.batch_size, device=setup.device, normalize=normalize, overwrite=True,
                   progress=False)
    synchronize(setup.device)
    return time.perf_counter() - start


@torch.inference_mode()
def time_model_only(model: nn.Module, windows: int, setup: Setup) -> float:
    """Seconds for ``model`` to run ``windows`` windows as random batches already on the device (one warm-up
    batch first: compilation and autotuning are not timed)."""
    x = torch.rand(setup.batch_size, BANDS, setup.tile, setup.tile, device=setup.device)
    model(x)
    synchronize(setup.device)
    start = time.perf_counter()
    for _ in range(math.ceil(windows / setup.batch_size)):
        model(x).argmax(1)
    synchronize(setup.device)
    return time.perf_counter() - start


def predict_rows(setup: Setup, workdir: Path) -> list[Row]:
    raster = make_raster(workdir / f"synthetic_{setup.raster_side}.tif", setup.raster_side)
    mpx = setup.raster_side**2 / 1e6
    windows = grid_windows(setup.raster_side, setup.tile, setup.overlap)
    rows = []
    for label, name in SEGMENTERS:
        base = segmenter(name, setup)
        for compiled in (False, True):
            for bf16 in (False, True):
                runner = Runner(base, setup.batch_size, setup.device, compiled, bf16, setup.compile_backend)
                model_s = time_model_only(runner, len(windows), setup)  # also the compile warm-up
                seconds = time_predict(raster, workdir / "pred.tif", runner, setup)
                rows.append(Row("predict", label, compiled, "bf16" if bf16 else "fp32", mpx / seconds, mpx / model_s))
        del base
    seconds = time_predict(raster, workdir / "null.tif", NullModel(), setup)
    rows.append(Row("predict ceiling", "null model x[:, :K] * 0", mpx_s=mpx / seconds))
    start = time.perf_counter()
    with rasterio.open(raster) as src:
        for window in windows:
            src.read(window=window)
    rows.append(Row("raw windowed read", "rasterio, 1 thread, same windows", mpx_s=mpx / (time.perf_counter() - start)))
    return rows


# --- pre-training --------------------------------------------------------------------------------------------

class RepeatedBatch(Dataset):
    """One collated batch, served ``steps`` times (``batch_size=None`` loader)."""

    def __init__(self, batch: dict[str, Tensor], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.batch


class ReadOnceWindows(UnlabelledRasterDataModule):
    """The pre-training data module whose windows are read once: the bench times the model's step."""

    def __init__(self, steps: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = steps

    def train_dataloader(self) -> DataLoader:
        batch = self.sample_batch(self.batch_size, self.seed)
        return DataLoader(RepeatedBatch(batch, self.steps), batch_size=None, pin_memory=torch.cuda.is_available())


def _cpu_attention(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


#: FlopCounterMode knows the CUDA attention kernels, not the CPU one the smoke run takes (arguments as shapes).
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


class StepClock(L.Callback):
    """Counts the FLOPs of step ``counted`` and times the steps after it (peak memory over those)."""

    def __init__(self, counted: int, device: str) -> None:
        self.counted, self.device = counted, device
        self.counter: FlopCounterMode | None = None
        self.flops = 0
        self.start = 0.0
        self.seconds = 0.0
        self.timed = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.counted:
            self.counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
            self.counter.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        batch_idx = args[-1]
        if batch_idx < self.counted:
            return
        synchronize(self.device)
        if batch_idx == self.counted:
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.get_total_flops()
            if self.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
        else:
            self.seconds += time.perf_counter() - self.start
            self.timed += 1
        self.start = time.perf_counter()


def pretrain_row(strategy: str, raster: Path, setup: Setup, peak: float | None, workdir: Path) -> Row:
    label, name = PRETRAIN_MODEL
    global_side, local_side, local_crops = setup.crops
    steps = setup.warmup_steps + 1 + setup.timed_steps
    data = ReadOnceWindows(steps, paths=[str(raster)], window_size=global_side + 32, batch_size=setup.pretrain_batch,
                           windows_per_epoch=steps * setup.pretrain_batch, statistics_windows=8)
    options = DINOv2Options(num_prototypes=setup.prototypes, head_init="random", centering="centering",
                            global_crop_size=global_side, local_crop_size=local_side, num_local_crops=local_crops,
                            freeze_prototypes_steps=0)
    torch.manual_seed(0)
    task = PretrainTask(BackboneConfig(name, img_size=global_side, **setup.arch), strategy=strategy,
                        strategy_options=setup.explora_options if strategy == "explora" else None, dinov2=options, lr=1e-4)
    clock = StepClock(setup.warmup_steps, setup.device)
    trainer = L.Trainer(accelerator=setup.device, devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=3.0,
                        precision="bf16-mixed" if setup.device == "cuda" else "32-true", callbacks=[clock],
                        default_root_dir=workdir / f"pretrain-{strategy}")
    trainer.fit(task, datamodule=data)
    step_s = clock.seconds / clock.timed
    report = parameter_report(task.backbone)
    memory = (torch.cuda.max_memory_allocated() if setup.device == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    del task, trainer
    if setup.device == "cuda":
        torch.cuda.empty_cache()
    return Row(f"pretrain {strategy}", label, False, "bf16-mixed" if setup.device == "cuda" else "fp32",
               images_s=setup.pretrain_batch / step_s, tflop_step=clock.flops / 1e12,
               mfu=None if peak is None else clock.flops / step_s / (peak * 1e12), peak_gib=memory / 2**30,
               trainable=f"{report.trainable_params / 1e6:.2f} M of {report.total_params / 1e6:.2f} M")


# --- the table -----------------------------------------------------------------------------------------------

def run(setup: Setup, workdir: Path, peak_override: float | None = None) -> tuple[list[Row], str]:
    """Every row, and the device line under the table (device name and the peak used)."""
    workdir.mkdir(parents=True, exist_ok=True)
    peak, device_name = peak_tflops(setup.device, peak_override)
    rows = predict_rows(setup, workdir)
    raster = make_raster(workdir / f"synthetic_{setup.raster_side}.tif", setup.raster_side)
    rows += [pretrain_row(strategy, raster, setup, peak, workdir) for strategy in ("explora", "full")]
    peak_text = f"{peak:.4g} TFLOP/s" if peak is not None else "unknown (MFU not given; pass --peak-tflops)"
    memory = "torch.cuda.max_memory_allocated" if setup.device == "cuda" else "the process's peak RSS (CPU)"
    return rows, f"device {device_name}; peak used for MFU: {peak_text}; memory column: {memory}"


def render(rows: list[Row], setup: Setup, device_line: str, command: str, seconds: float) -> str:
    g, l, n = setup.crops
    lines = [
        "# GPU bench: predict throughput, pre-training images/s and MFU, the predict pipeline's ceiling", "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {seconds:.0f} s in all); {device_line}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads.", "",
        f"Predict: {setup.raster_side} x {setup.raster_side} 4-band uint16 raster, tile {setup.tile}, overlap "
        f"{setup.overlap}, batch {setup.batch_size}, {CLASSES} classes, torch.compile backend {setup.compile_backend}. "
        f"Pre-training: batch {setup.pretrain_batch}, 2 x {g} + {n} x {l} crops, {setup.prototypes} prototypes, "
        f"{setup.timed_steps} timed steps after {setup.warmup_steps} warm-up and 1 FLOP-counted step.", "",
        HEADER, "|" + "---|" * (HEADER.count("|") - 1),
        *(row.markdown() for row in rows), "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every row with tiny models on the CPU, in seconds")
    parser.add_argument("--out", type=Path, help="table file (default on a GPU: bench/gpu.md; --smoke: print only)")
    parser.add_argument("--raster-side", type=int, default=8192, help="side (px) of the predict raster")
    parser.add_argument("--batch-size", type=int, default=64, help="predict windows per forward")
    parser.add_argument("--pretrain-batch", type=int, default=32)
    parser.add_argument("--timed-steps", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="peak FLOP/s for MFU (default: PEAK_BF16_TFLOPS)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "geoexplora-gpu-bench")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU here; bench/gpu.md is written only on a GPU (--smoke runs it tiny on the CPU)",
              file=sys.stderr)
        return 2
    setup = smoke_setup() if args.smoke else gpu_setup(args)
    silence_lightning()
    start = time.perf_counter()
    rows, device_line = run(setup, args.workdir, args.peak_tflops)
    command = "python bench/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = render(rows, setup, device_line, command.strip(), time.perf_counter() - start)
    print(table)
    out = args.out or (None if args.smoke else BENCH / "gpu.md")
    if out is not None:
        out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
