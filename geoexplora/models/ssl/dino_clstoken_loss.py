"""DINO loss on the class token: student crops against the teacher's centred, sharpened global crops."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Centering = Literal["centering", "sinkhorn_knopp"]


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the processes of a running ``torch.distributed`` group (in place), as DINOv2 does."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Balanced teacher targets: logits (M, K) -> probabilities (M, K), each row summing to 1.

    Alternately normalises prototypes (columns) to equal mass and samples (rows) to unit mass, as
    facebookresearch/dinov2 ``sinkhorn_knopp_teacher``: under DDP the total and the per-prototype sums
    are all-reduced, so the M rows of every process are balanced together (M x world size samples).
    The logits are shifted by their maximum (over all processes) before ``exp``: the result is the same,
    without overflow at low temperatures.
    """
    shift = logits.float().max().detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = torch.exp((logits.float() - shift) / temperature).t()  # (K, M)
    num_prototypes, num_samples = q.shape[0], q.shape[1] * _world_size()
    q /= _all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= _all_reduce_sum(q.sum(dim=1, keepdim=True)) * num_prototypes
        q /= q.sum(dim=0, keepdim=True) * num_samples
    return (q * num_samples).t()


class TeacherTargets(nn.Module):
    """Base of the DINO and iBOT losses: teacher logits (M, K) into targets, by EMA centring (DINO) or
    Sinkhorn-Knopp, and the student temperature the subclasses' cross-entropy uses.

    Args:
        num_prototypes: K.
        student_temp: Student softmax temperature (0.1 published).
        centering: ``"centering"`` (softmax of logits minus an EMA centre) or ``"sinkhorn_knopp"``.
        center_momentum: EMA momentum of the centre; it is updated only in training mode, after use, with
            the mean of the logits of every process (all-reduced under DDP, as in DINOv2).
    """

    def __init__(
        self,
        num_prototypes: int,
        student_temp: float = 0.1,
        centering: Centering = "centering",
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.centering = centering
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    @torch.no_grad()
    def teacher_probs(self, logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Teacher logits (M, K) -> target probabilities (M, K) at temperature ``teacher_temp``."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, teacher_temp)
        probs = F.softmax((logits.float() - self.center) / teacher_temp, dim=-1)
        if self.training:
            # DINOv2's update_center: the batch mean over every process (sum all-reduced, / M x world size).
            rows = torch.tensor(float(logits.shape[0]), device=logits.device)
            total = _all_reduce_sum(torch.cat([logits.float().sum(dim=0), rows.view(1)]))
            if total[-1] > 0:
                batch_center = (total[:-1] / total[-1]).view(1, -1)
                self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
        return probs


class DINOClsTokenLoss(TeacherTargets):
    """Cross-entropy between teacher targets and student class-token logits, averaged over crop pairs.

    Args: as :class:`TeacherTargets`.
    """

    def forward(self, student_logits: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over every (student crop, teacher crop) pair of different views.

        Args:
            student_logits: One (B, K) tensor per student crop; crop ``i < len(teacher_probs)`` is the
                same view as teacher crop ``i`` and is not paired with it.
            teacher_probs: One (B, K) target tensor per teacher (global) crop.

        Returns:
            Scalar loss in nats.
        """
        total = student_logits[0].new_zeros(())
        pairs = 0
        for i, logits in enumerate(student_logits):
            log_probs = F.log_softmax(logits.float() / self.student_temp, dim=-1)
            for j, probs in enumerate(teacher_probs):
                if i == j:
                    continue
                total = total - (probs * log_probs).sum(dim=-1).mean()
                pairs += 1
        return total / max(pairs, 1)
