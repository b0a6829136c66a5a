"""KoLeo regulariser: spreads features by penalising small nearest-neighbour distances."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimator, negated: ``-mean(log(d_nn))`` of L2-normalised features."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Features (B, D), B >= 2 -> scalar; larger when points are clustered."""
        x = F.normalize(features.float(), dim=-1, eps=self.eps)
        with torch.no_grad():
            dots = x @ x.t()
            dots.fill_diagonal_(-2.0)
            nearest = dots.argmax(dim=1)
        distances = F.pairwise_distance(x, x[nearest], eps=self.eps)
        return -torch.log(distances + self.eps).mean()
