"""The DINO / iBOT projection head: (standardise) -> MLP -> bottleneck -> weight-normalised prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """Project features onto ``num_prototypes`` weight-normalised prototypes.

    As facebookresearch/dinov2 ``layers/dino_head.py``: an MLP (truncated-normal std 0.02, zero biases,
    GELU) to an L2-normalised bottleneck, then a weight-normalised Linear without bias whose gain
    (``weight_g``, here ``prototype_gain``) starts at 1 and trains. The published recipe uses 65,536
    prototypes; a few dozen to a few thousand suit the small batches of continued pre-training.

    Two additions, both off until :meth:`fit_input` / :meth:`init_prototypes` are called (the DINOv2
    objective calls them once, before the first step, with the *start* backbone's features; see
    :meth:`geoexplora.models.ssl.DINOv2Objective.initialise_heads`):

    - **Input standardisation** (``input_shift``, ``input_scale``: fixed buffers, identity by default).
      A pretrained ViT's class tokens of one satellite scene share one direction (measured on the Landsat 7
      NC scene with DINOv2 ViT-S/14: 86% of their energy is the batch-mean direction), so a fresh head
      maps every window to almost the same bottleneck vector. Per-dimension standardisation with
      statistics of the start model removes that shared part, as a frozen BatchNorm would, without
      making the output depend on the batch (the EMA teacher sees the same fixed affine map).
    - **Prototypes from data**: random prototypes in a b-dimensional bottleneck give cosine logits
      with a spread of only about ``1 / sqrt(b)`` across images (0.024 measured at b = 256), which a
      centred teacher turns into near-uniform targets. Prototypes set to the bottleneck vectors of
      real windows start the teacher sharp and meaningful (each prototype is a window the data holds).

    Args:
        in_dim: Feature size of the backbone tokens (D).
        num_prototypes: Number of prototypes K (output logits per token).
        hidden_dim: Width of the hidden MLP layers.
        bottleneck_dim: Size of the L2-normalised bottleneck that is compared with the prototypes.
        num_layers: Number of Linear layers in the MLP (>= 1).
    """

    input_shift: torch.Tensor
    input_scale: torch.Tensor

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
        self.register_buffer("input_shift", torch.zeros(in_dim))
        self.register_buffer("input_scale", torch.ones(in_dim))
        self.reset_parameters()

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    def reset_parameters(self) -> None:
        """Truncated-normal MLP weights (std 0.02), zero biases, unit-gain prototypes, identity input map."""
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        nn.init.ones_(self.prototype_gain)
        self.input_shift.zero_()
        self.input_scale.fill_(1.0)

    @torch.no_grad()
    def fit_input(self, features: torch.Tensor, eps: float = 1e-6) -> None:
        """Set the input standardisation to the per-dimension mean and std of ``features`` (N, D), N >= 2."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"fit_input needs features (N >= 2, D), got shape {tuple(features.shape)}")
        self.input_shift.copy_(features.float().mean(dim=0))
        self.input_scale.copy_(features.float().std(dim=0).clamp_min(eps))

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (..., D) -> unit bottleneck vectors (..., b)."""
        x = (x - self.input_shift.to(x.dtype)) / self.input_scale.to(x.dtype)
        return F.normalize(self.mlp(x), dim=-1, eps=1e-6)

    @torch.no_grad()
    def init_prototypes(self, features: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the K prototypes to the bottleneck vectors of K distinct rows of ``features`` (N >= K, D).

        Rows are drawn by farthest-point sampling in the bottleneck (start at a random row, then always
        the row least similar to those already taken), so near-duplicate windows do not take several
        prototypes.
        """
        k = self.num_prototypes
        if features.shape[0] < k:
            raise ValueError(f"init_prototypes needs at least K={k} feature rows, got {features.shape[0]}")
        z = self.bottleneck(features.float())
        first = int(torch.randint(z.shape[0], (1,), generator=generator))
        chosen = [first]
        closest = z @ z[first]
        for _ in range(k - 1):
            closest[chosen] = float("inf")
            nxt = int(closest.argmin())
            chosen.append(nxt)
            closest = torch.maximum(closest, z @ z[nxt])
        self.prototypes.copy_(z[chosen].to(self.prototypes.dtype))
        self.prototype_gain.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map tokens (..., D) to prototype logits (..., K): cosines in [-1, 1] times the prototype gains."""
        weight = self.prototype_gain * F.normalize(self.prototypes, dim=-1)
        return F.linear(self.bottleneck(x), weight)
