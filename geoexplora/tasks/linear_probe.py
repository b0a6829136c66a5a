"""Linear probe on frozen features: multinomial logistic regression, L2 strength chosen on validation data.

Features are standardised with the training mean and std, then a linear classifier is fitted full-batch
with L-BFGS on cross-entropy + ``weight_decay / 2 * ||W||^2`` (the bias is not decayed). Each value of
``weight_decays`` is fitted and the probe whose ``validate`` score is highest is kept: the caller's
``validate`` sees validation data only, so nothing here can be tuned on a test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoexplora.errors import GeoExploraError

DEFAULT_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearProbe:
    """A fitted probe: ``logits(x) = linear((x - mean) / std)``.

    Attributes:
        linear: the classifier on standardised features, (D) -> (K).
        mean: (D,) training feature mean.
        std: (D,) training feature std (floored at 1e-6).
        weight_decay: the L2 strength that was kept.
        val_score: its validation score (``nan`` when only one strength was fitted without validation).
    """

    linear: nn.Linear
    mean: Tensor
    std: Tensor
    weight_decay: float
    val_score: float

    @torch.no_grad()
    def logits(self, features: Tensor) -> Tensor:
        """Features (..., D) -> logits (..., K)."""
        return self.linear((features - self.mean) / self.std)

    @property
    def num_params(self) -> int:
        """Trainable parameters of the probe (weights and biases)."""
        return sum(p.numel() for p in self.linear.parameters())


def fit_logistic_regression(
    features: Tensor, labels: Tensor, num_classes: int, weight_decay: float, max_iter: int = 200
) -> nn.Linear:
    """Multinomial logistic regression on ``features`` (N, D) and ``labels`` (N,) in 0..K-1, full-batch L-BFGS."""
    torch.manual_seed(0)
    linear = nn.Linear(features.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(features), labels) + 0.5 * weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return linear.requires_grad_(False)


def fit_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    validate: Callable[[LinearProbe], float],
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
) -> LinearProbe:
    """Fit one probe per L2 strength on ``features`` (N, D) / ``labels`` (N,); keep the best by ``validate``.

    Args:
        features: training features (N, D), float.
        labels: class indices (N,) in 0..K-1 (filter out unlabelled samples first).
        num_classes: K.
        validate: probe -> score on validation data (higher is better).
        weight_decays: L2 strengths to try.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise GeoExploraError(f"linear probe needs features (N, D) and labels (N,), got {tuple(features.shape)} "
                              f"and {tuple(labels.shape)}")
    if len(features) == 0 or not weight_decays:
        raise GeoExploraError("linear probe needs at least one training sample and one weight decay")
    features = features.float()
    mean, std = features.mean(dim=0), features.std(dim=0).clamp_min(1e-6)
    standardised = (features - mean) / std
    best: LinearProbe | None = None
    for weight_decay in weight_decays:
        linear = fit_logistic_regression(standardised, labels.long(), num_classes, weight_decay)
        probe = LinearProbe(linear, mean, std, float(weight_decay), float("nan"))
        probe.val_score = float(validate(probe))
        if best is None or probe.val_score > best.val_score:
            best = probe
    return best
