"""Segmentation losses against hand-computed cases: weighted cross-entropy, soft Dice, frequency weights."""

from __future__ import annotations

import math

import pytest
import torch

from geoexplora.errors import GeoExploraError
from geoexplora.tasks.segmentation_loss import SegmentationLoss, frequency_class_weights, soft_dice_loss

IGNORE = 255


def case() -> tuple[torch.Tensor, torch.Tensor]:
    """Three pixels: A logits (0, 0) class 0; B (ln 3, 0) class 1; C ignored. A third class never occurs
    and has probability 0 (logit -1e4), so it changes neither softmax nor Dice.

    p_A = (1/2, 1/2), p_B = (3/4, 1/4): CE_A = ln 2, CE_B = ln 4.
    Dice class 0: 2 * 1/2 / (5/4 + 1) = 4/9; class 1: 2 * 1/4 / (3/4 + 1) = 2/7.
    """
    logits = torch.tensor([[0.0, math.log(3.0), 5.0], [0.0, 0.0, -5.0], [-1e4, -1e4, 9.0]]).reshape(1, 3, 1, 3)
    target = torch.tensor([[[0, 1, IGNORE]]])
    return logits, target


def test_cross_entropy_plain_and_class_weighted() -> None:
    logits, target = case()
    ln2 = math.log(2.0)
    assert SegmentationLoss("ce", ignore_index=IGNORE)(logits, target).item() == pytest.approx(1.5 * ln2, rel=1e-6)
    # weighted mean: (1 * ln 2 + 3 * ln 4) / (1 + 3) = 7/4 ln 2
    weighted = SegmentationLoss("ce", [1.0, 3.0, 0.5], ignore_index=IGNORE)(logits, target)
    assert weighted.item() == pytest.approx(1.75 * ln2, rel=1e-6)


def test_dice_and_dice_ce() -> None:
    logits, target = case()
    dice = 1 - (4 / 9 + 2 / 7) / 2
    assert soft_dice_loss(logits, target, IGNORE).item() == pytest.approx(dice, rel=1e-6)
    total = SegmentationLoss("dice_ce", [1.0, 3.0, 0.5], ignore_index=IGNORE)(logits, target)
    assert total.item() == pytest.approx(1.75 * math.log(2.0) + dice, rel=1e-6)
    perfect = torch.tensor([[20.0, -20.0], [-20.0, 20.0]]).reshape(1, 2, 1, 2)
    assert soft_dice_loss(perfect, torch.tensor([[[0, 1]]]), IGNORE).item() == pytest.approx(0.0, abs=1e-6)


def test_all_ignored_or_zero_weight_gives_zero_with_a_graph() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    for loss, target in ((SegmentationLoss("dice_ce", ignore_index=IGNORE), torch.full((1, 2, 2), IGNORE)),
                         (SegmentationLoss("ce", [0.0, 1.0, 1.0], ignore_index=IGNORE), torch.zeros(1, 2, 2).long())):
        value = loss(logits, target)
        assert value.item() == 0.0 and value.requires_grad


def test_frequency_weights_by_hand() -> None:
    # present counts 100, 25, 400: median 100 -> sqrt(1), sqrt(4), sqrt(1/4); absent class 0
    weights = frequency_class_weights(torch.tensor([100, 25, 0, 400]))
    assert weights.tolist() == pytest.approx([1.0, 2.0, 0.0, 0.5])
    with pytest.raises(GeoExploraError, match="no labelled pixel"):
        frequency_class_weights(torch.zeros(3, dtype=torch.long))


def test_bad_options() -> None:
    with pytest.raises(GeoExploraError, match="loss must be one of"):
        SegmentationLoss("focal")
    with pytest.raises(GeoExploraError, match="finite non-negative"):
        SegmentationLoss("ce", [1.0, -2.0])
    with pytest.raises(GeoExploraError, match="2 class weights for 3 classes"):
        SegmentationLoss("ce", [1.0, 2.0])(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2).long())
