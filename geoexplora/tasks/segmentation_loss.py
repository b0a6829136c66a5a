"""Segmentation losses for imbalanced land cover: (class-weighted) cross-entropy, optionally plus soft Dice.

* ``ce``: pixel cross-entropy, pixels at ``ignore_index`` skipped. With class weights w it is PyTorch's
  weighted mean, sum_i w[y_i] * CE_i / sum_i w[y_i], so a weight multiplies a class's share of the loss.
* ``dice_ce``: that cross-entropy plus ``dice_weight`` x the soft Dice loss (Milletari et al. 2016, in its
  multi-class form as in segmentation_models_pytorch / MONAI): per class c, over the batch's valid pixels,
  ``dice_c = 2 sum(p_c y_c) / (sum p_c + sum y_c)`` with softmax probabilities p and one-hot targets y;
  the loss is 1 - the mean of dice_c over the classes present in the batch's targets (a class absent
  there has no defined overlap; cross-entropy still pushes its probability down). Dice scores each class
  by overlap, whatever its pixel count, which is what mIoU rewards.

Class weights are given, or computed from the training masks' pixel counts as the square root of
median-frequency balancing (Eigen & Fergus 2015): ``w_c = sqrt(median_f / f_c)`` over the classes present,
so the median class weighs 1 and rarer ones more; a class with no training pixel gets weight 0 (it never
occurs as a target). The square root is a deliberate softening: on the Landsat 7 NC strata map the
rarest class has 194 of 216,626 pixels, and plain median-frequency would weigh it 75 times the median
class, handing the loss to a few hundred pixels; its square root weighs it 8.7.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoexplora.errors import GeoExploraError

LOSSES = ("ce", "dice_ce")


def frequency_class_weights(counts: Tensor) -> Tensor:
    """Per-class pixel counts (K,) -> weights (K,) float32: sqrt(median count / count), 0 where absent.

    The median is over the present classes (``torch.median``: the lower middle value for an even number).
    """
    counts = counts.double()
    present = counts > 0
    if not present.any():
        raise GeoExploraError("class weights from frequencies: the training masks hold no labelled pixel")
    weights = torch.zeros_like(counts)
    weights[present] = (counts[present].median() / counts[present]).sqrt()
    return weights.float()


def soft_dice_loss(logits: Tensor, target: Tensor, ignore_index: int, eps: float = 1e-6) -> Tensor:
    """Multi-class soft Dice loss: logits (B, K, H, W), target (B, H, W) int64 -> scalar in [0, 1].

    Pixels at ``ignore_index`` are left out; classes absent from the valid targets are not averaged.
    """
    num_classes = logits.shape[1]
    valid = target != ignore_index
    probs = logits.softmax(dim=1).movedim(1, -1)[valid]  # (N, K)
    onehot = F.one_hot(target[valid], num_classes).to(probs.dtype)  # (N, K)
    intersection = (probs * onehot).sum(dim=0)
    denominator = probs.sum(dim=0) + onehot.sum(dim=0)
    present = onehot.sum(dim=0) > 0
    dice = 2 * intersection[present] / denominator[present].clamp_min(eps)
    return 1 - dice.mean()


class SegmentationLoss(nn.Module):
    """logits (B, K, H, W), target (B, H, W) int64 -> scalar loss (``ce`` or ``dice_ce``, see the module).

    Args:
        loss: ``ce`` or ``dice_ce``.
        class_weights: K cross-entropy weights, or None for unweighted.
        ignore_index: target value that is not scored.
        dice_weight: factor of the Dice term in ``dice_ce``.
    """

    def __init__(
        self, loss: str = "ce", class_weights: Sequence[float] | Tensor | None = None, ignore_index: int = 255,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise GeoExploraError(f"loss must be one of {LOSSES}, got {loss!r}")
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if weights is not None and (weights.ndim != 1 or (weights < 0).any() or not torch.isfinite(weights).all()):
            raise GeoExploraError(f"class_weights must be finite non-negative numbers, one per class, "
                                  f"got {class_weights}")
        self.loss, self.ignore_index, self.dice_weight = loss, ignore_index, dice_weight
        # Not persistent: the weights come from the recipe or the data at setup, never from a checkpoint.
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.class_weights is not None and len(self.class_weights) != logits.shape[1]:
            raise GeoExploraError(f"{len(self.class_weights)} class weights for {logits.shape[1]} classes")
        valid = target != self.ignore_index
        if not valid.any():
            return logits.sum() * 0.0
        if self.class_weights is not None and self.class_weights[target[valid]].sum() == 0:
            ce = logits.sum() * 0.0  # only zero-weight classes here: nothing for cross-entropy to score
        else:
            ce = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        if self.loss == "ce":
            return ce
        return ce + self.dice_weight * soft_dice_loss(logits, target, self.ignore_index)
