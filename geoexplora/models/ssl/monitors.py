"""Learning signals of self-distillation, computed from one step's tensors (no gradients).

A DINOv2 run can lower nothing and still look busy: these numbers say whether the teacher's targets carry
information. All are cheap enough to compute every step.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the rows of ``probs`` (M, K); ln K for uniform rows."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1).mean()


@torch.no_grad()
def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RankMe effective rank (Garrido et al., 2023) of embeddings (N, D): exp of the entropy of the
    normalised singular values, between 1 (collapsed) and min(N, D)."""
    s = torch.linalg.svdvals(embeddings.float())
    p = s / s.sum().clamp_min(eps) + eps
    return torch.exp(-(p * p.log()).sum())


@torch.no_grad()
def distillation_monitors(
    teacher_logits: torch.Tensor, teacher_probs: torch.Tensor, dino_loss: torch.Tensor, embeddings: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The DINO term's learning signals for one step.

    Args:
        teacher_logits: (M, K) raw teacher head logits of the global crops (before centring).
        teacher_probs: (M, K) the teacher targets made from them.
        dino_loss: the DINO cross-entropy, averaged over (student crop, teacher crop) pairs; every teacher
            crop is in the same number of pairs, so ``dino_loss - entropy(teacher_probs)`` is the mean
            student-teacher KL divergence.
        embeddings: (N, D) class tokens whose effective rank is reported.

    Returns:
        ``teacher_entropy`` (nats), ``teacher_entropy_share`` (of ln K; 1 = uniform targets),
        ``student_teacher_kl`` (nats), ``logit_spread`` (std of each prototype's logit across crops,
        averaged over prototypes: how much the head tells images apart), ``prototypes_used`` (share of
        the K prototypes that are the arg-max target of at least one crop; at most M / K) and
        ``rankme`` of ``embeddings``.
    """
    num_prototypes = teacher_probs.shape[-1]
    h = entropy(teacher_probs.float())
    used = teacher_probs.argmax(dim=-1).unique().numel() / num_prototypes
    return {
        "teacher_entropy": h,
        "teacher_entropy_share": h / math.log(num_prototypes),
        "student_teacher_kl": dino_loss.detach().float() - h,
        "logit_spread": teacher_logits.float().std(dim=0).mean(),
        "prototypes_used": torch.tensor(float(used)),
        "rankme": rankme(embeddings),
    }
