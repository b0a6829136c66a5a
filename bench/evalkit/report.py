"""The evaluation's markdown table and its score plot."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evalkit.rows import RunResult  # noqa: E402
from evalkit.stats import binomial_se, bootstrap_se, scores, spread_sentence  # noqa: E402

LABELS = {"accuracy": "accuracy", "miou": "mIoU", "macro_f1": "macro-F1"}


@dataclass
class RowReport:
    """One table row of one labelled set: its runs over seeds and what it is compared with."""

    key: str
    title: str
    runs: list[RunResult]
    pretrain_trainable: int | None
    reference: str | None

    def values(self, metric: str) -> list[float]:
        return [scores(r.test_blocks.sum(axis=0))[metric] for r in self.runs]


def mean_std(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def _params(row: RowReport) -> str:
    task = f"{row.runs[0].trainable:,}"
    return task if row.pretrain_trainable is None else f"{row.pretrain_trainable:,} + {task}"


def dataset_table(rows: list[RowReport], headline: str, second: str) -> list[str]:
    """Markdown lines: one row per method, headline and second metric (mean ± std), spread sentence."""
    by_key = {r.key: r for r in rows}
    frozen = rows[0].runs
    majority = float(np.mean([100 * b.sum(axis=0).sum(axis=1).max() / b.sum() for b in (r.test_blocks for r in frozen)]))
    lines = [
        f"| row | trainable params (pre-train + task) | test {LABELS[headline]} | test {LABELS[second]} | "
        f"per seed ({LABELS[headline]}) | chosen on val | what the spread allows |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        values = row.values(headline)
        reference = by_key.get(row.reference) if row.reference else None
        sentence = spread_sentence(values, reference.values(headline) if reference else None,
                                   reference.title if reference else "", majority if reference is None else None)
        lines.append(
            f"| {row.title} | {_params(row)} | {mean_std(values)} | {mean_std(row.values(second))} | "
            f"{', '.join(f'{v:.1f}' for v in values)} | {'; '.join(r.choice for r in row.runs)} | {sentence} |"
        )
    return lines


def standard_errors(rows: list[RowReport], headline: str) -> dict[str, str]:
    """Test samples and blocks per seed; SE of one seed's accuracy (binomial, block bootstrap) and headline metric."""
    runs = [r for row in rows for r in row.runs]
    samples = [int(r.test_blocks.sum()) for r in rows[0].runs]
    blocks = [len(r.test_blocks) for r in rows[0].runs]
    binomial = [binomial_se(r.test_blocks.sum(axis=0)) for r in runs]

    def boot(metric: str) -> str:
        values = [bootstrap_se(r.test_blocks, metric) for r in runs]
        return f"{np.median(values):.2f} (max {max(values):.2f})"

    return {
        "samples": f"{min(samples):,}-{max(samples):,}" if min(samples) != max(samples) else f"{samples[0]:,}",
        "blocks": f"{min(blocks)}-{max(blocks)}" if min(blocks) != max(blocks) else str(blocks[0]),
        "binomial": f"{max(binomial):.2f}",
        "bootstrap_accuracy": boot("accuracy"),
        "bootstrap": boot(headline),
    }


def plot_scores(tables: dict[str, tuple[str, list[RowReport]]], png: Path) -> Path:
    """One panel per labelled set: each row's seeds as dots and their mean as a bar (headline metric)."""
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 0.45 * max(len(t[1]) for t in tables.values()) + 1.6),
                             squeeze=False)
    for ax, (name, (metric, rows)) in zip(axes[0], tables.items()):
        titles = [r.title for r in rows][::-1]
        for y, row in enumerate(rows[::-1]):
            values = row.values(metric)
            ax.barh(y, np.mean(values), color="#c9d6e8")
            ax.plot(values, [y] * len(values), "o", color="#1f4e8c", markersize=4)
        ax.set_yticks(range(len(titles)), titles, fontsize=7)
        ax.set_xlabel(f"test {LABELS[metric]} (points)", fontsize=8)
        ax.set_title(textwrap.fill(name, 40), fontsize=9)
        finite = [v for row in rows for v in row.values(metric) if math.isfinite(v)]
        if finite:
            ax.set_xlim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 5))
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
