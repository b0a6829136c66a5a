"""The DINOv2 objective (DINO class-token loss + iBOT masked-patch loss + KoLeo) with an EMA teacher."""

from __future__ import annotations

from typing import Sequence

import torch
from timm.layers import DropPath
from torch import nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.ssl.dino_clstoken_loss import DINOClsTokenLoss
from geoexplora.models.ssl.dino_head import DINOHead
from geoexplora.models.ssl.ibot_patch_loss import IBOTPatchLoss
from geoexplora.models.ssl.koleo_loss import KoLeoLoss
from geoexplora.models.ssl.masking import ibot_masks
from geoexplora.models.ssl.monitors import distillation_monitors
from geoexplora.models.ssl.options import DINOv2Options
from geoexplora.models.ssl.teacher import EMATeacher, cosine_momentum, eval_mode


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


def set_drop_path(vit: nn.Module, rate: float) -> None:
    """Stochastic depth on the residual branches of ``vit.blocks``, rising linearly from 0 to ``rate``
    (timm's and DINOv2's schedule); a module in eval mode (the teacher) runs without it."""
    depth = len(vit.blocks)
    for i, block in enumerate(vit.blocks):
        block_rate = rate * i / max(depth - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(block, name):
                setattr(block, name, DropPath(block_rate) if block_rate > 0 else nn.Identity())


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

    Built as facebookresearch/dinov2 ``train/ssl_meta_arch.py`` (student and EMA teacher, DINO head on the
    class token, iBOT head on masked patches, KoLeo on the student's global class tokens, masks on the
    student's global crops only, losses averaged over the crop pairs of different views), with these
    deviations, each for a reason:

    - The teacher holds EMA copies of the trainable tensors only (:class:`EMATeacher`): in ExPLoRA the
      teacher is the EMA of everything that trains (LoRA, the unfrozen block, norms, heads), and the
      frozen weights are shared instead of copied.
    - ``head_init="data"`` (default): the heads standardise their input and take their prototypes from
      real windows before the first step (:meth:`initialise_heads`, :class:`DINOHead`); fresh random
      heads on an almost frozen backbone give near-uniform targets at small batch.
    - ``centering="auto"``: Sinkhorn-Knopp only when a step has at least K teacher crops
      (:meth:`DINOv2Options.resolve_centering`).
    - The mask token starts at zero, DINOv2's own initialisation: timm's DINOv2 weights do not carry
      the trained one.
    - Student drop-path defaults to 0 (:class:`DINOv2Options`).

    Args:
        backbone: timm ``VisionTransformer`` with a class token, adapters injected and frozen parameters
            already set (the teacher tracks the parameters trainable at construction).
        options: the objective's options.
        teacher_crops_per_step: global crops x batch x devices, to resolve ``centering="auto"`` (None:
            centring).
    """

    def __init__(self, backbone: nn.Module, options: DINOv2Options | None = None,
                 teacher_crops_per_step: int | None = None) -> None:
        super().__init__()
        if getattr(backbone, "cls_token", None) is None:
            raise GeoExploraError("the DINOv2 objective needs a backbone with a class token; this one has none")
        o = self.options = options or DINOv2Options()
        set_drop_path(backbone, o.drop_path_rate)
        dim = backbone.embed_dim
        head_args = dict(hidden_dim=o.head_hidden_dim, bottleneck_dim=o.head_bottleneck_dim, num_layers=o.head_layers)
        dino_head = DINOHead(dim, o.num_prototypes, **head_args)
        ibot_head = DINOHead(dim, o.ibot_prototypes, **head_args) if o.ibot_separate_head else None
        self.student = DINOv2Network(backbone, dino_head, ibot_head)
        self.teacher = EMATeacher(self.student)
        self.centering = o.resolve_centering(teacher_crops_per_step or 0)
        self.dino_loss = DINOClsTokenLoss(o.num_prototypes, o.student_temp, self.centering)
        self.ibot_loss = IBOTPatchLoss(o.ibot_prototypes, o.student_temp, self.centering)
        self.koleo_loss = KoLeoLoss()
        self.weights = {"dino": o.dino_weight, "ibot": o.ibot_weight, "koleo": o.koleo_weight}

    def _masks(self, crops: torch.Tensor) -> torch.Tensor:
        """iBOT masks (B, N) bool for global crops (B, C, H, W), on their device; stacks (B, T, C, H, W)
        get one mask per date, (B, T*N) date-major."""
        ph, pw = self.student.backbone.patch_embed.patch_size
        grid = (crops.shape[-2] // ph, crops.shape[-1] // pw)
        frames = crops.shape[1] if crops.ndim == 5 else 1
        masks = ibot_masks(crops.shape[0] * frames, grid, self.options.mask_ratio, self.options.mask_probability)
        return masks.reshape(crops.shape[0], -1).to(crops.device)

    def prototype_parameters(self) -> list[nn.Parameter]:
        """The heads' last layers (prototypes and their gains): frozen for ``freeze_prototypes_steps``."""
        heads = [self.student.dino_head] + ([self.student.ibot_head] if self.student.ibot_head is not None else [])
        return [p for head in heads for p in (head.prototypes, head.prototype_gain)]

    @torch.no_grad()
    def initialise_heads(self, global_crops: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> None:
        """Fit both heads to the start backbone before the first step (see :class:`DINOHead`).

        Args:
            global_crops: (B, C, G, G) batches of global crops of real windows, together at least K images
                (and K masked-out patch tokens for the iBOT head).
        """
        network = self.student
        cls_list, patch_list = [], []
        with eval_mode(network):
            for crops in global_crops:
                cls, patches = forward_tokens(network.backbone, crops)
                cls_list.append(cls)
                patch_list.append(patches.flatten(0, 1))
        cls, patches = torch.cat(cls_list), torch.cat(patch_list)
        network.dino_head.fit_input(cls)
        network.dino_head.init_prototypes(cls, generator)
        if network.ibot_head is not None:
            network.ibot_head.fit_input(patches)
            network.ibot_head.init_prototypes(patches, generator)
        self.teacher.update(network, momentum=0.0)

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
            (tensors), ``monitors`` (the learning signals of
            :func:`~geoexplora.models.ssl.monitors.distillation_monitors`, scalar tensors) and
            ``teacher_temp``, ``momentum`` (floats: the momentum to pass to :meth:`update_teacher` after
            this step's optimiser update).
        """
        n_global = len(global_crops)
        if n_global < 2:
            raise GeoExploraError(f"DINOv2 needs at least 2 global crops per image, got {n_global}")
        o = self.options
        temp = teacher_temperature(step, total_steps, *o.teacher_temp, o.teacher_temp_warmup)
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
        monitors = distillation_monitors(teacher_cls_logits, torch.cat(teacher_cls), dino, cls_tokens)
        return {
            "loss": loss,
            "monitors": monitors,
            "dino_loss": dino.detach(),
            "ibot_loss": ibot.detach(),
            "koleo_loss": koleo.detach(),
            "teacher_temp": temp,
            "momentum": cosine_momentum(step, total_steps, *o.momentum),
        }
