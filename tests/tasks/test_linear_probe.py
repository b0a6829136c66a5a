"""Linear probe: logistic regression on standardised features, L2 strength chosen by the validation callback."""

from __future__ import annotations

import pytest
import torch

from geoexplora.errors import GeoExploraError
from geoexplora.tasks.linear_probe import fit_linear_probe, fit_logistic_regression


def clusters(n: int, seed: int, noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian clusters in 6-D, offset and scaled per dimension (so standardisation matters)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat(n // 3)
    centres = torch.eye(3, 6) * 2.0
    x = centres[labels] + noise * torch.randn(len(labels), 6, generator=g)
    return x * torch.tensor([1.0, 100.0, 0.01, 1.0, 1.0, 1.0]) + 50.0, labels


def accuracy(probe, x, y) -> float:
    return float((probe.logits(x).argmax(dim=1) == y).float().mean())


def test_probe_separates_clusters_and_keeps_the_best_validation_strength() -> None:
    x, y = clusters(90, seed=0)
    vx, vy = clusters(60, seed=1)
    seen: list[float] = []

    def validate(probe) -> float:
        seen.append(probe.weight_decay)
        return accuracy(probe, vx, vy) - probe.weight_decay  # ties broken towards weaker decay

    probe = fit_linear_probe(x, y, 3, validate, weight_decays=(1e-3, 1e-1, 10.0))
    assert seen == [1e-3, 1e-1, 10.0]
    assert probe.weight_decay == 1e-3 and probe.val_score == pytest.approx(1.0 - 1e-3)
    tx, ty = clusters(60, seed=2)
    assert accuracy(probe, tx, ty) == 1.0
    assert probe.num_params == 6 * 3 + 3
    assert probe.logits(tx.reshape(4, 15, 6)).shape == (4, 15, 3)  # any leading shape


def test_strong_decay_shrinks_the_weights() -> None:
    x, y = clusters(90, seed=0)
    weak = fit_logistic_regression(x, y, 3, weight_decay=1e-4)
    strong = fit_logistic_regression(x, y, 3, weight_decay=10.0)
    assert strong.weight.norm() < 0.2 * weak.weight.norm()


def test_bad_shapes_are_one_clear_error() -> None:
    with pytest.raises(GeoExploraError, match=r"features \(N, D\) and labels \(N,\)"):
        fit_linear_probe(torch.zeros(4, 2), torch.zeros(3), 2, lambda p: 0.0)
    with pytest.raises(GeoExploraError, match="at least one training sample"):
        fit_linear_probe(torch.zeros(0, 2), torch.zeros(0), 2, lambda p: 0.0)
