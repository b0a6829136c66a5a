"""Scores from per-block confusion matrices, their standard errors, and paired comparisons over seeds.

Every row is evaluated the same way: its test predictions become one confusion matrix per spatial test
block, (n_blocks, K, K) with rows = truth and columns = prediction. Scores are in points (percent):

* ``accuracy``: correct / labelled samples (pixels, or windows);
* ``miou``: mean over classes with a non-empty union (truth or prediction) of TP / (TP + FP + FN);
* ``macro_f1``: mean over the same classes of 2 TP / (2 TP + FP + FN).

Standard errors of one seed's score: ``binomial`` (accuracy only, samples taken as independent) and a
block bootstrap (test blocks resampled with replacement), which keeps the spatial correlation of the
pixels or windows inside a block and is the honest one for rasters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

METRICS = ("accuracy", "miou", "macro_f1")
# Two-sided 95% Student t quantiles by degrees of freedom (paired differences over n seeds: n - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def block_confusions(pairs: Iterable[tuple[Tensor, Tensor]], num_classes: int, windows_per_block: int,
                     ignore_index: int = 255) -> np.ndarray:
    """Confusion matrices (n_blocks, K, K) from (logits, target) batches visited block by block.

    Args:
        pairs: (logits (B, K) or (B, K, H, W), target (B,) or (B, H, W)) in the test sampler's order.
        num_classes: K.
        windows_per_block: consecutive windows that share a block.
        ignore_index: target value that is not scored.
    """
    blocks: list[np.ndarray] = []
    window = 0
    for logits, target in pairs:
        predicted = logits.argmax(dim=1)
        for p, t in zip(predicted, target, strict=True):
            if window % windows_per_block == 0:
                blocks.append(np.zeros((num_classes, num_classes), dtype=np.int64))
            keep = t != ignore_index
            index = t[keep].flatten() * num_classes + p[keep].flatten()
            blocks[-1] += torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes).numpy()
            window += 1
    return np.stack(blocks)


def scores(confusion: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``miou``, ``macro_f1`` (points) of one confusion matrix (K, K); nan when it is empty."""
    total = confusion.sum()
    if total == 0:
        return dict.fromkeys(METRICS, float("nan"))
    tp = np.diag(confusion).astype(float)
    fp, fn = confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    return {
        "accuracy": 100 * tp.sum() / total,
        "miou": 100 * float(np.mean(tp[present] / (tp + fp + fn)[present])),
        "macro_f1": 100 * float(np.mean(2 * tp[present] / (2 * tp + fp + fn)[present])),
    }


def binomial_se(confusion: np.ndarray) -> float:
    """Standard error (points) of the accuracy of ``confusion`` (K, K) if its samples were independent."""
    n = confusion.sum()
    p = np.trace(confusion) / n
    return 100 * math.sqrt(p * (1 - p) / n)


def bootstrap_se(blocks: np.ndarray, metric: str, reps: int = 400, seed: int = 0) -> float:
    """Standard error (points) of ``metric`` over block-bootstrap resamples of ``blocks`` (n_blocks, K, K)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(blocks), size=(reps, len(blocks)))
    values = [scores(blocks[d].sum(axis=0))[metric] for d in draws]
    return float(np.nanstd(values, ddof=1))


def paired_difference(values: list[float], reference: list[float]) -> tuple[float, float, float | None]:
    """Mean and std over seeds of ``values - reference`` (same seed = same split) and the 95% t threshold.

    The threshold (None for one seed) is the smallest mean difference that a paired t-test over these seeds
    calls different from zero at 95%: ``t95(n - 1) * std / sqrt(n)``.
    """
    diff = np.asarray(values) - np.asarray(reference)
    if len(diff) < 2:
        return float(diff.mean()), float("nan"), None
    sd = float(diff.std(ddof=1))
    return float(diff.mean()), sd, T95[len(diff) - 1] * sd / math.sqrt(len(diff))


def spread_sentence(values: list[float], reference: list[float] | None, reference_name: str,
                    majority: float | None = None) -> str:
    """The "what the spread allows" sentence of one row (scores in points, one per seed)."""
    n = len(values)
    if reference is None:
        base = f"reference row; seeds (each its own split) spread {np.std(values, ddof=1):.1f} points" if n > 1 \
            else "reference row; one seed, no spread"
        if majority is not None:
            base += f"; the most frequent test class alone scores {majority:.1f} accuracy points"
        return base
    mean, sd, threshold = paired_difference(values, reference)
    if threshold is None:
        return f"{mean:+.1f} vs {reference_name} from one seed: no spread to judge it by"
    verdict = "resolved" if abs(mean) > threshold else "not resolved"
    return (f"{mean:+.1f} ± {sd:.1f} vs {reference_name} (paired over {n} seeds); {verdict}: "
            f"a paired t-test at 95% needs a difference beyond ±{threshold:.1f} here")
