"""``bench/explora_eval.py --quick``: every row kind on central crops of the shared rasters, a tiny random ViT.

Runs the evaluation end to end in-process (pre-training with PretrainTask, probes, fine-tunes with
FinetuneTask, statistics, report) and checks the markdown holds every row of every labelled set with
finite numbers, and the PNGs it links to exist.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def explora_eval():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("explora_eval")
    finally:
        sys.path.remove(str(BENCH))


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The body rows (cells) of the table under ``## heading``."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_quick_run_reports_every_row_with_finite_numbers(explora_eval, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.md"
    status = explora_eval.main(["--quick", "--data", str(shared_data), "--work", str(tmp_path / "work"),
                                "--out", str(out)])
    assert status == 0
    text = out.read_text()
    profile = explora_eval.quick_profile()
    titles = [row.title for row in explora_eval.ROWS]
    assert len(titles) == 10
    for spec in profile.datasets.values():
        rows = table_rows(text, spec.title)
        assert [r[0] for r in rows] == titles
        for cells in rows:
            params, headline, second, per_seed = cells[1:5]
            assert re.fullmatch(r"[\d,]+( \+ [\d,]+)?", params), cells
            for value in re.findall(r"-?\d+\.\d+|nan", f"{headline} {second} {per_seed}"):
                assert math.isfinite(float(value)), cells
            assert len(per_seed.split(", ")) == profile.seeds
            assert cells[6], cells  # the "what the spread allows" sentence
    standard_errors = table_rows(text, "Labelled sets and the standard error of one seed")
    assert [r[0] for r in standard_errors] == [s.title for s in profile.datasets.values()]
    for link in re.findall(r"\]\(([^)]+\.png)\)", text):
        assert (out.parent / link).is_file(), link
    assert "`python bench/explora_eval.py --quick" in text


def test_a_missing_data_folder_is_one_clear_line(explora_eval, tmp_path: Path, capsys) -> None:
    assert explora_eval.main(["--quick", "--data", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'absent'}: the shared data folder is not there (give --data)"
