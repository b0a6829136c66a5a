"""``bench/gpu.py --smoke``: every row of the GPU bench, tiny, on the CPU, with finite positive numbers."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def gpu_bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("gpu")
    finally:
        sys.path.remove(str(BENCH))


def number(cell: str) -> float:
    return float(cell.rstrip("%"))


def test_smoke_table_has_every_row_with_sane_numbers(gpu_bench, tmp_path: Path):
    out = tmp_path / "gpu.md"
    assert gpu_bench.main(["--smoke", "--peak-tflops", "1.0", "--out", str(out), "--workdir", str(tmp_path / "w")]) == 0
    text = out.read_text()
    assert gpu_bench.HEADER in gpu_bench.__doc__  # the docstring shows the table bench/gpu.md will hold
    assert gpu_bench.HEADER in text and "peak used for MFU: 1 TFLOP/s" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and line != gpu_bench.HEADER]
    keys = [tuple(r[:4]) for r in rows]
    expected = [("predict", model, compiled, precision) for model in ("ViT-S/14", "ViT-B/14")
                for compiled in ("no", "yes") for precision in ("fp32", "bf16")]
    assert keys[:8] == expected
    assert [r[0] for r in rows[8:]] == ["predict ceiling", "raw windowed read", "pretrain explora", "pretrain full"]
    for row in rows[:10]:  # predict rows and the ceilings: Mpx/s
        measured = [number(c) for c in row[4:6] if c != "-"]
        assert measured and all(math.isfinite(v) and v > 0 for v in measured), row
    explora, full = rows[10], rows[11]
    for row in (explora, full):
        images_s, tflop, mfu, memory = (number(c) for c in row[6:10])
        assert images_s > 0 and tflop > 0 and memory > 0, row
        assert 0 < mfu < 100, row  # percent of the 1 TFLOP/s given
    # frozen weights get no weight gradients: fewer FLOPs and fewer trainable parameters than full
    assert number(explora[7]) < number(full[7])
    trainable = [float(r[10].split(" M of ")[0]) for r in (explora, full)]
    assert trainable[0] < trainable[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_full_run_without_a_gpu_is_one_line_and_writes_nothing(gpu_bench, tmp_path: Path, capsys):
    out = tmp_path / "gpu.md"
    assert gpu_bench.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written only on a GPU" in err and not out.exists()
