"""The DINO / iBOT projection head: MLP -> bottleneck -> weight-normalised prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """Project features onto ``num_prototypes`` weight-normalised prototypes.

    The published DINOv2 recipe uses 65,536 prototypes; a few thousand suit small unlabelled sets.
    The head is freshly initialised: public DINOv2 backbones ship without it.

    Args:
        in_dim: Feature size of the backbone tokens (D).
        num_prototypes: Number of prototypes K (output logits per token).
        hidden_dim: Width of the hidden MLP layers.
        bottleneck_dim: Size of the L2-normalised bottleneck that is compared with the prototypes.
        num_layers: Number of Linear layers in the MLP (>= 1).
    """

    def __init__(
        self,
        in_dim: int,
        num_prototypes: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, bottleneck_dim))
        self.prototype_gain = nn.Parameter(torch.ones(num_prototypes, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal MLP weights (std 0.02), zero biases, unit-gain prototypes."""
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        nn.init.ones_(self.prototype_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map tokens (..., D) to prototype logits (..., K)."""
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        weight = self.prototype_gain * F.normalize(self.prototypes, dim=-1)
        return F.linear(z, weight)
