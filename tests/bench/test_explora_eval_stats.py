"""The evaluation's statistics on hand-computed cases: scores, per-block confusions, SEs, paired comparisons."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from evalkit.stats import (  # noqa: E402
    binomial_se,
    block_confusions,
    bootstrap_se,
    paired_difference,
    scores,
    spread_sentence,
)

sys.path.pop(0)


def test_scores_of_a_hand_confusion_matrix() -> None:
    # truth rows, prediction columns; class 2 never occurs nor is predicted and is left out of the means
    cm = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    s = scores(cm)
    assert s["accuracy"] == pytest.approx(100 * 7 / 10)
    assert s["miou"] == pytest.approx(100 * (3 / 6 + 4 / 7) / 2)
    assert s["macro_f1"] == pytest.approx(100 * (6 / 9 + 8 / 11) / 2)
    assert all(math.isnan(v) for v in scores(np.zeros((2, 2), dtype=int)).values())
    assert binomial_se(cm) == pytest.approx(100 * math.sqrt(0.7 * 0.3 / 10))


def test_block_confusions_group_consecutive_windows_and_skip_ignored_pixels() -> None:
    logits = torch.zeros(3, 2, 1, 2)
    logits[:, 1] = torch.tensor([[[1.0, -1.0]], [[1.0, 1.0]], [[-1.0, -1.0]]])  # predictions 1,0 / 1,1 / 0,0
    target = torch.tensor([[[1, 255]], [[0, 1]], [[0, 0]]])
    blocks = block_confusions([(logits[:2], target[:2]), (logits[2:], target[2:])], 2, windows_per_block=2)
    assert blocks.shape == (2, 2, 2)
    np.testing.assert_array_equal(blocks[0], [[0, 1], [0, 2]])  # window 0: 1->1; window 1: 0->1, 1->1
    np.testing.assert_array_equal(blocks[1], [[2, 0], [0, 0]])


def test_block_bootstrap_se_is_zero_for_identical_blocks_and_grows_with_their_spread() -> None:
    same = np.stack([np.array([[5, 1], [1, 5]])] * 8)
    assert bootstrap_se(same, "accuracy") == pytest.approx(0.0)
    mixed = np.stack([np.array([[6, 0], [0, 6]]), np.array([[0, 6], [6, 0]])] * 4)
    assert 10 < bootstrap_se(mixed, "accuracy") < 30  # blocks at 100% and 0%: SE of a mean of 8 = 50/sqrt(8)


def test_paired_difference_and_its_t_threshold() -> None:
    mean, sd, threshold = paired_difference([52.0, 55.0, 50.0], [50.0, 52.0, 49.0])
    assert (mean, sd) == (pytest.approx(2.0), pytest.approx(1.0))
    assert threshold == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert "; not resolved:" in spread_sentence([52.0, 55.0, 50.0], [50.0, 52.0, 49.0], "ref")  # 2.0 < 2.48
    assert "; resolved:" in spread_sentence([53.0, 55.5, 51.5], [50.0, 52.0, 49.0], "ref")  # 3.0 > 1.24
    assert paired_difference([1.0], [0.0])[2] is None
