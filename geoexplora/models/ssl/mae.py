"""The MAE objective on a timm ViT: mask 75% of patches, reconstruct their normalised pixels.

Stacks (N, T, C, H, W) with a temporal backbone: the encoder sees the T x L date-major tokens (dates set
from ``days`` (N, T)), masking is ``independent`` (any of the T*L tokens) or ``consistent`` (the same
patches hidden at every date, SatMAE's ``same_mask``: the model cannot copy a patch from another date),
and the decoder adds the spatial sine-cosine table tiled over the dates plus fixed sine-cosine features
of each date (year, day of year; SatMAE adds its timestamps to the decoder the same way).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Mapping, Sequence

import numpy as np
import torch
from timm.models.vision_transformer import Block
from torch import nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.date_encoding import date_features, stack_dates
from geoexplora.models.ssl.masking import consistent_masking, random_masking

TIME_MASKING = ("independent", "consistent")


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (h * w, dim), laid out as in MAE's ``get_2d_sincos_pos_embed``.

    The first half of the channels encodes the column index, the second half the row index.
    """
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


class MAEObjective(nn.Module):
    """Masked autoencoding with a timm ViT encoder and a freshly initialised MAE decoder.

    Decoder attribute names follow the original MAE checkpoint (``decoder_embed``, ``mask_token``,
    ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``) so its weights load by name.

    Args:
        backbone: timm ``VisionTransformer`` (may hold LoRA layers and frozen parameters).
        decoder_dim: Decoder width (512 in MAE).
        decoder_depth: Decoder blocks (8 in MAE).
        decoder_heads: Decoder attention heads (16 in MAE).
        mask_ratio: Share of patches hidden from the encoder.
        norm_pix_loss: Reconstruct per-patch normalised pixels.
        in_chans: Bands C; defaults to the input channels of ``backbone.patch_embed.proj``.
        time_masking: for stacks, ``independent`` or ``consistent`` masking across the dates.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        in_chans: int | None = None,
        time_masking: str = "independent",
    ) -> None:
        super().__init__()
        if time_masking not in TIME_MASKING:
            raise GeoExploraError(f"time_masking must be one of {TIME_MASKING}, got {time_masking!r}")
        self.time_masking = time_masking
        self.backbone = backbone
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.in_chans = in_chans or backbone.patch_embed.proj.in_channels
        self.patch_size: tuple[int, int] = tuple(backbone.patch_embed.patch_size)
        patch_pixels = self.patch_size[0] * self.patch_size[1] * self.in_chans
        self.decoder_embed = nn.Linear(backbone.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_pixels)
        self.reset_decoder()

    def decoder_modules(self) -> list[nn.Module]:
        """The decoder's modules (everything but the backbone)."""
        return [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]

    def reset_decoder(self) -> None:
        """MAE initialisation: Xavier-uniform Linear weights, zero biases, unit LayerNorms, N(0, 0.02) mask token."""
        nn.init.normal_(self.mask_token, std=0.02)
        for root in self.decoder_modules():
            for m in root.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def load_decoder_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
        """Load ``decoder_*`` and ``mask_token`` tensors of an original MAE checkpoint.

        ``decoder_pos_embed`` is skipped (the fixed sine-cosine table is recomputed for each grid).
        Tensors whose shape differs only because of the band count or patch size (``decoder_pred``)
        keep their fresh initialisation.

        Returns:
            The decoder keys left at their fresh initialisation.

        Raises:
            GeoExploraError: if the checkpoint has no decoder or another decoder architecture.
        """
        own = {k: v for k, v in self.state_dict().items() if k.startswith("decoder_") or k == "mask_token"}
        given = {k: v for k, v in state_dict.items() if k in own}
        if not given:
            raise GeoExploraError("the checkpoint has no MAE decoder (no 'decoder_*' or 'mask_token' keys)")
        unexpected = sorted(k for k in state_dict if k.startswith("decoder_") and k not in own and k != "decoder_pos_embed")
        if unexpected:
            raise GeoExploraError(f"the checkpoint's MAE decoder does not match this decoder: unexpected key {unexpected[0]!r}")
        loadable = {}
        for key, value in given.items():
            if value.shape == own[key].shape:
                loadable[key] = value
            elif not key.startswith("decoder_pred."):
                raise GeoExploraError(
                    f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, this decoder needs {tuple(own[key].shape)}"
                )
        self.load_state_dict(loadable, strict=False)
        return sorted(set(own) - set(loadable))

    def grid(self, imgs: torch.Tensor) -> tuple[int, int]:
        """Patch grid (h, w) of images (N, C, H, W); H and W must be multiples of the patch size."""
        (h, w), (ph, pw) = imgs.shape[-2:], self.patch_size
        if h % ph or w % pw:
            raise GeoExploraError(f"image size {h}x{w} is not a multiple of the patch size {ph}x{pw}")
        return h // ph, w // pw

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W) -> patches (N, L, ph * pw * C), pixel order (row, col, band) as in MAE."""
        n, c = imgs.shape[:2]
        (gh, gw), (ph, pw) = self.grid(imgs), self.patch_size
        x = imgs.reshape(n, c, gh, ph, gw, pw)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, gh * gw, ph * pw * c)

    def unpatchify(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """patches: (N, L, ph * pw * C) with L = grid[0] * grid[1] -> imgs (N, C, H, W)."""
        n = patches.shape[0]
        ph, pw = self.patch_size
        c = patches.shape[-1] // (ph * pw)
        x = patches.reshape(n, grid[0], grid[1], ph, pw, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, grid[0] * ph, grid[1] * pw)

    def random_masking(self, x: torch.Tensor, frames: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (N, L, D) -> kept (N, L_keep, D), mask (N, L) with 1 = removed, ids_restore (N, L).

        ``frames`` T > 1: x holds T date-major sets of L/T patches, masked as ``time_masking`` says.
        """
        if frames > 1 and self.time_masking == "consistent":
            return consistent_masking(x, self.mask_ratio, frames)
        return random_masking(x, self.mask_ratio)

    def forward_encoder(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: (N, C, H, W) or stacks (N, T, C, H, W) -> latent (N, P + L_keep, D), mask (N, L),
        ids_restore (N, L); L counts the patches of all dates (T x grid).

        Position embeddings (and the P prefix tokens) are added by timm's ``_pos_embed`` before the
        patch tokens are dropped; timm's ``patch_drop`` is not used (the MAE masking replaces it).
        """
        vit = self.backbone
        x = vit._pos_embed(vit.patch_embed(imgs))
        prefix = vit.num_prefix_tokens
        kept, mask, ids_restore = self.random_masking(x[:, prefix:], imgs.shape[1] if imgs.ndim == 5 else 1)
        x = torch.cat([x[:, :prefix], kept], dim=1)
        return vit.norm(vit.blocks(vit.norm_pre(x))), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int],
                        days: torch.Tensor | None = None) -> torch.Tensor:
        """latent: (N, P + L_keep, D), ids_restore: (N, L) -> predicted patches (N, L, ph * pw * C).

        ``days`` (N, T) for stacks: L = T x grid patches, date-major.
        """
        prefix = self.backbone.num_prefix_tokens
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        masked = self.mask_token.expand(n, length + prefix - x.shape[1], -1)
        patches = torch.cat([x[:, prefix:], masked], dim=1)
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        positions = sincos_pos_embed(x.shape[-1], grid).to(x)
        if days is not None:
            when = date_features(days, x.shape[-1]).to(x)  # (N, T, D')
            positions = (positions.unsqueeze(0).unsqueeze(0) + when.unsqueeze(2)).flatten(1, 2)
        patches = patches + positions
        x = torch.cat([x[:, :prefix], patches], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, prefix:]

    def _target_stats(self, target: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch mean and unbiased variance (N, L, 1) over the pixels where ``weight`` is 1."""
        count = weight.sum(dim=-1, keepdim=True)
        mean = (target * weight).sum(dim=-1, keepdim=True) / count.clamp(min=1)
        var = (((target - mean) * weight) ** 2).sum(dim=-1, keepdim=True) / (count - 1).clamp(min=1)
        return mean, var

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean squared error on the masked patches, counting only valid pixels.

        Args:
            imgs: (N, C, H, W) input (invalid pixels may hold anything, NaN included).
            pred: (N, L, ph * pw * C) predictions.
            mask: (N, L), 1 where a patch was hidden from the encoder.
            valid: Optional (N, H, W) bool, False at nodata pixels.

        Returns:
            Scalar loss in squared (normalised, if ``norm_pix_loss``) pixel units.
        """
        if valid is None:
            valid = torch.ones(imgs.shape[0], *imgs.shape[2:], dtype=torch.bool, device=imgs.device)
        weight = self.patchify(valid.unsqueeze(1).expand_as(imgs).to(pred.dtype))
        target = self.patchify(torch.where(valid.unsqueeze(1), imgs, torch.zeros((), dtype=imgs.dtype, device=imgs.device)))
        if self.norm_pix_loss:
            mean, var = self._target_stats(target, weight)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2 * weight).sum(dim=-1) / weight.sum(dim=-1).clamp(min=1)
        counted = mask * (weight.sum(dim=-1) > 0)
        return (per_patch * counted).sum() / counted.sum().clamp(min=1)

    def forward(self, imgs: torch.Tensor, valid: torch.Tensor | None = None,
                days: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """imgs: (N, C, H, W), valid: optional (N, H, W) bool -> ``loss``, ``pred`` (N, L, ph*pw*C), ``mask`` (N, L).

        Stacks: imgs (N, T, C, H, W), valid (N, T, H, W), ``days`` (N, T) int64 days since 1970-01-01;
        ``pred`` (N, T*L, ph*pw*C) and ``mask`` (N, T*L), date-major. Invalid (nodata) pixels are set to 0
        before the encoder and left out of the loss, so their values do not matter.
        """
        if imgs.shape[-3] != self.in_chans:
            raise GeoExploraError(f"the MAE decoder predicts {self.in_chans} bands, the input has {imgs.shape[-3]}")
        if (imgs.ndim == 5) != (days is not None):
            raise GeoExploraError(f"MAE input of shape {tuple(imgs.shape)}: stacks (N, T, C, H, W) need their days, "
                                  "single images none")
        grid = self.grid(imgs)
        if valid is not None:
            imgs = torch.where(valid.unsqueeze(-3), imgs, torch.zeros((), dtype=imgs.dtype, device=imgs.device))
        with stack_dates(self.backbone, days):
            latent, mask, ids_restore = self.forward_encoder(imgs)
        pred = self.forward_decoder(latent, ids_restore, grid, days)
        if imgs.ndim == 4:
            return {"loss": self.forward_loss(imgs, pred, mask, valid), "pred": pred, "mask": mask}
        n, t = imgs.shape[:2]
        loss = self.forward_loss(imgs.flatten(0, 1), pred.reshape(n * t, -1, pred.shape[-1]), mask.reshape(n * t, -1),
                                 None if valid is None else valid.flatten(0, 1))
        return {"loss": loss, "pred": pred, "mask": mask}

    @torch.no_grad()
    def reconstruction_preview(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, rgb_indices: Sequence[int]
    ) -> np.ndarray:
        """A PNG-ready strip for the first image: original | masked input | reconstruction.

        The reconstruction shows the visible patches of the original and the predicted ones elsewhere
        (un-normalised with each patch's own statistics when ``norm_pix_loss``). Each of the three
        bands is stretched between its 2nd and 98th percentile in the original.

        Args:
            imgs: (N, C, H, W) input; pred: (N, L, ph*pw*C); mask: (N, L); rgb_indices: 3 band indices.

        Returns:
            (H, 3 * W, 3) uint8.
        """
        target = self.patchify(imgs[:1].float())
        patches = pred[:1].float()
        if self.norm_pix_loss:
            mean, var = self._target_stats(target, torch.ones_like(target))
            patches = patches * (var + 1e-6).sqrt() + mean
        hidden = mask[:1].unsqueeze(-1).bool()
        grid = self.grid(imgs)
        panels = [target, target.masked_fill(hidden, math.nan), torch.where(hidden, patches, target)]
        rgb = [self.unpatchify(p, grid)[0, list(rgb_indices)] for p in panels]  # 3 x (3, H, W)
        flat = rgb[0].flatten(1)
        low = flat.nanquantile(0.02, dim=1).view(3, 1, 1)
        high = flat.nanquantile(0.98, dim=1).view(3, 1, 1)
        strip = torch.cat(rgb, dim=2)
        scaled = ((strip - low) / (high - low).clamp(min=1e-6)).clamp(0, 1).nan_to_num(0.0)
        return (scaled * 255).round().byte().permute(1, 2, 0).cpu().numpy()
