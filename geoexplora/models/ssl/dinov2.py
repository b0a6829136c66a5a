"""The DINOv2 objective (DINO class-token loss + iBOT masked-patch loss + KoLeo) with an EMA teacher."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.ssl.dino_clstoken_loss import Centering, DINOClsTokenLoss
from geoexplora.models.ssl.dino_head import DINOHead
from geoexplora.models.ssl.ibot_patch_loss import IBOTPatchLoss
from geoexplora.models.ssl.koleo_loss import KoLeoLoss
from geoexplora.models.ssl.masking import ibot_masks
from geoexplora.models.ssl.teacher import EMATeacher, cosine_momentum


def forward_tokens(
    vit: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a timm ViT, optionally replacing masked patch embeddings by ``mask_token``.

    Order: ``patch_embed -> mask -> _pos_embed -> patch_drop -> norm_pre -> blocks -> norm``.

    Args:
        vit: A timm ``VisionTransformer`` with a class token.
        x: (B, C, H, W) images.
        mask: Optional (B, N) bool, True where a patch embedding is replaced; N patches per image.
        mask_token: (D,) or (1, D) learned embedding used where ``mask`` is True.

    Returns:
        cls: (B, D) normalised class token.
        patches: (B, N, D) normalised patch tokens (register tokens skipped).
    """
    tokens = vit.patch_embed(x)
    if mask is not None:
        if mask.numel() != tokens[..., 0].numel():
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not match {tokens[..., 0].numel()} patch tokens")
        tokens = torch.where(mask.reshape(*tokens.shape[:-1], 1), mask_token.reshape(-1).to(tokens.dtype), tokens)
    tokens = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(vit._pos_embed(tokens)))))
    return tokens[:, 0], tokens[:, vit.num_prefix_tokens :]


def teacher_temperature(step: int, total_steps: int, start: float, end: float, warmup: float) -> float:
    """Linear warm-up from ``start`` to ``end`` over the first ``warmup`` share of training, then ``end``."""
    warmup_steps = warmup * total_steps
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


class DINOv2Network(nn.Module):
    """Backbone + DINO head + iBOT head + mask token: the module the student trains and the teacher averages.

    Args:
        backbone: timm ``VisionTransformer`` (may hold LoRA layers and frozen parameters).
        dino_head: Class-token head.
        ibot_head: Patch head, or None to share ``dino_head``.
    """

    def __init__(self, backbone: nn.Module, dino_head: DINOHead, ibot_head: DINOHead | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head
        self.mask_token = nn.Parameter(torch.zeros(1, backbone.embed_dim))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_input: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images (B, C, H, W) -> cls tokens (B, D), cls logits (B, K), masked-patch logits (M, K) or None.

        ``mask`` (B, N) bool selects the patches whose logits are returned (M = mask.sum()); with
        ``mask_input`` those patches are also replaced by the mask token at the input (student side).
        """
        cls, patches = forward_tokens(self.backbone, x, mask if mask_input else None, self.mask_token)
        patch_logits = None
        if mask is not None:
            patch_head = self.ibot_head if self.ibot_head is not None else self.dino_head
            patch_logits = patch_head(patches[mask])
        return cls, self.dino_head(cls), patch_logits


class DINOv2Objective(nn.Module):
    """Continue DINOv2 self-distillation on new imagery, training only the backbone's trainable parameters.

    Args:
        backbone: timm ``VisionTransformer`` with a class token, adapters injected and frozen parameters
            already set (the teacher tracks the parameters trainable at construction).
        num_prototypes: Prototypes of the DINO head (65,536 published; smaller for small data).
        ibot_num_prototypes: Prototypes of a separate iBOT head (defaults to ``num_prototypes``).
        ibot_separate_head: Separate iBOT head (True) or the DINO head shared for patches.
        head_hidden_dim: Hidden width of the heads.
        head_bottleneck_dim: Bottleneck size of the heads.
        head_layers: Linear layers in the head MLP.
        centering: Teacher target rule, ``"centering"`` or ``"sinkhorn_knopp"``.
        student_temp: Student temperature.
        teacher_temp: (start, end) teacher temperature.
        teacher_temp_warmup: Share of training over which the teacher temperature warms up.
        momentum: (start, end) teacher EMA momentum, cosine over training.
        dino_weight: Weight of the DINO class-token loss.
        ibot_weight: Weight of the iBOT patch loss.
        koleo_weight: Weight of the KoLeo regulariser.
        mask_ratio: Range of iBOT mask ratios.
        mask_probability: Share of global crops that are masked.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_prototypes: int = 4096,
        ibot_num_prototypes: int | None = None,
        ibot_separate_head: bool = True,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_layers: int = 3,
        centering: Centering = "centering",
        student_temp: float = 0.1,
        teacher_temp: tuple[float, float] = (0.04, 0.07),
        teacher_temp_warmup: float = 0.3,
        momentum: tuple[float, float] = (0.992, 1.0),
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
    ) -> None:
        super().__init__()
        if getattr(backbone, "cls_token", None) is None:
            raise GeoExploraError("the DINOv2 objective needs a backbone with a class token; this one has none")
        dim = backbone.embed_dim
        ibot_k = (ibot_num_prototypes or num_prototypes) if ibot_separate_head else num_prototypes
        head_args = dict(hidden_dim=head_hidden_dim, bottleneck_dim=head_bottleneck_dim, num_layers=head_layers)
        dino_head = DINOHead(dim, num_prototypes, **head_args)
        ibot_head = DINOHead(dim, ibot_k, **head_args) if ibot_separate_head else None
        self.student = DINOv2Network(backbone, dino_head, ibot_head)
        self.teacher = EMATeacher(self.student)
        self.dino_loss = DINOClsTokenLoss(num_prototypes, student_temp, centering)
        self.ibot_loss = IBOTPatchLoss(ibot_k, student_temp, centering)
        self.koleo_loss = KoLeoLoss()
        self.teacher_temp = teacher_temp
        self.teacher_temp_warmup = teacher_temp_warmup
        self.momentum = momentum
        self.weights = {"dino": dino_weight, "ibot": ibot_weight, "koleo": koleo_weight}
        self.mask_ratio = mask_ratio
        self.mask_probability = mask_probability

    def _masks(self, crops: torch.Tensor) -> torch.Tensor:
        """iBOT masks (B, N) bool for global crops (B, C, H, W), on their device."""
        ph, pw = self.student.backbone.patch_embed.patch_size
        grid = (crops.shape[-2] // ph, crops.shape[-1] // pw)
        masks = ibot_masks(crops.shape[0], grid, self.mask_ratio, self.mask_probability)
        return masks.to(crops.device)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """Move the teacher towards the student; call after each ``optimizer.step()``."""
        self.teacher.update(self.student, momentum)

    def forward(
        self,
        global_crops: Sequence[torch.Tensor],
        local_crops: Sequence[torch.Tensor],
        step: int,
        total_steps: int,
    ) -> dict[str, torch.Tensor | float]:
        """One training step's losses.

        Args:
            global_crops: n_g >= 2 tensors (B, C, G, G); the teacher sees these, unmasked.
            local_crops: n_l >= 0 tensors (B, C, L, L), seen by the student only.
            step: Current optimisation step (0-based), for the schedules and error messages.
            total_steps: Total optimisation steps of the run.

        Returns:
            ``loss`` (weighted sum, to backpropagate), ``dino_loss``, ``ibot_loss``, ``koleo_loss``
            (tensors) and ``teacher_temp``, ``momentum`` (floats: the momentum to pass to
            :meth:`update_teacher` after this step's optimiser update).
        """
        n_global = len(global_crops)
        if n_global < 2:
            raise GeoExploraError(f"DINOv2 needs at least 2 global crops per image, got {n_global}")
        temp = teacher_temperature(step, total_steps, *self.teacher_temp, self.teacher_temp_warmup)
        globals_ = torch.cat(list(global_crops))
        masks = self._masks(globals_)

        _, teacher_cls_logits, teacher_patch_logits = self.teacher(self.student, globals_, masks, mask_input=False)
        teacher_cls = self.dino_loss.teacher_probs(teacher_cls_logits, temp).chunk(n_global)
        teacher_patches = self.ibot_loss.teacher_probs(teacher_patch_logits, temp)

        cls_tokens, student_cls_logits, student_patch_logits = self.student(globals_, masks)
        student_logits = list(student_cls_logits.chunk(n_global))
        if local_crops:
            _, local_logits, _ = self.student(torch.cat(list(local_crops)))
            student_logits += list(local_logits.chunk(len(local_crops)))

        dino = self.dino_loss(student_logits, teacher_cls)
        ibot = self.ibot_loss(student_patch_logits, teacher_patches, masks)
        koleo = sum(self.koleo_loss(c) for c in cls_tokens.chunk(n_global))
        loss = self.weights["dino"] * dino + self.weights["ibot"] * ibot + self.weights["koleo"] * koleo
        if not torch.isfinite(loss):
            raise GeoExploraError(
                f"DINOv2 loss is {loss.item()} at step {step} (dino {dino.item()}, ibot {ibot.item()}, "
                f"koleo {koleo.item()}); lower the learning rate or check the input for NaN/inf pixels"
            )
        return {
            "loss": loss,
            "dino_loss": dino.detach(),
            "ibot_loss": ibot.detach(),
            "koleo_loss": koleo.detach(),
            "teacher_temp": temp,
            "momentum": cosine_momentum(step, total_steps, *self.momentum),
        }
