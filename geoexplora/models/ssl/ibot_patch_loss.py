"""iBOT loss: masked student patch tokens predict the teacher's view of the same patches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geoexplora.models.ssl.dino_clstoken_loss import TeacherTargets


class IBOTPatchLoss(TeacherTargets):
    """Cross-entropy over masked patches only, averaged per image, then over images.

    Args: as :class:`TeacherTargets` (K of the iBOT head).
    """

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Loss of the masked patches.

        Args:
            student_logits: (M, K) logits of the masked patches, in ``masks[masks]`` order.
            teacher_probs: (M, K) teacher targets of the same patches.
            masks: (B, N) bool, True where a patch was masked; M = masks.sum().

        Returns:
            Scalar loss in nats; images without masked patches contribute zero.
        """
        per_patch = -(teacher_probs * F.log_softmax(student_logits.float() / self.student_temp, dim=-1)).sum(dim=-1)
        per_image_count = masks.sum(dim=-1, keepdim=True).clamp(min=1).expand_as(masks)[masks]
        return (per_patch / per_image_count).sum() / masks.shape[0]
