"""Batched multi-crop augmentation on the input's device (kornia), valid for any number of bands.

Only band-agnostic operations are used: resized crops, flips, 90-degree rotations, per-band
brightness/contrast jitter and Gaussian blur. RGB-only colour operations (hue, saturation, grayscale)
are deliberately absent.

Stacks (B, T, C, H, W) are augmented with their dates folded into the channels, so every date of a
sample gets the same crop, flip and rotation (the jitter stays per band and date).
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


class BandJitter(nn.Module):
    """Independent brightness and contrast jitter for every band of every image.

    Band b of image i becomes ``(x - m) * c + m + s * sd`` with m, sd the band's mean and standard
    deviation, c ~ U(1 - contrast, 1 + contrast) and s ~ U(-brightness, brightness): shifts are in units
    of the band's own spread, so reflectances and standardised values are treated alike.

    Args:
        brightness: Largest shift, in band standard deviations.
        contrast: Largest relative change of the band's spread.
        p: Probability that an image is jittered.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, p: float = 0.8) -> None:
        super().__init__()
        self.brightness = brightness
        self.contrast = contrast
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c = x.shape[:2]
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True)
        scale = 1 + self.contrast * (2 * torch.rand(b, c, 1, 1, device=x.device, dtype=x.dtype) - 1)
        shift = self.brightness * (2 * torch.rand(b, c, 1, 1, device=x.device, dtype=x.dtype) - 1)
        jittered = (x - mean) * scale + mean + shift * std
        apply = torch.rand(b, 1, 1, 1, device=x.device) < self.p
        return torch.where(apply, jittered, x)


def _geometric(size: int, scale: tuple[float, float]) -> list[nn.Module]:
    return [
        K.RandomResizedCrop((size, size), scale=scale),
        K.RandomHorizontalFlip(p=0.5),
        K.RandomVerticalFlip(p=0.5),
        # times sampled in [-2, 2] and rounded: each of the four rotations has probability 1/4
        K.RandomRotation90(times=(-2, 2), resample="nearest", p=1.0),
    ]


class MultiCropAugmentation(nn.Module):
    """DINOv2 multi-crop for multi-spectral batches: 2 global and ``num_local`` local views per image.

    Args:
        global_size: Side of the global crops in pixels.
        local_size: Side of the local crops in pixels.
        num_local: Number of local crops.
        global_scale: Area range of global crops, as a share of the input.
        local_scale: Area range of local crops, as a share of the input.
        brightness: See :class:`BandJitter`.
        contrast: See :class:`BandJitter`.
        jitter_p: See :class:`BandJitter`.
        blur: Add Gaussian blur with DINOv2's probabilities (first global 1.0, second 0.1, local 0.5).
        blur_sigma: Blur standard deviation range in pixels.
    """

    def __init__(
        self,
        global_size: int,
        local_size: int,
        num_local: int,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        brightness: float = 0.4,
        contrast: float = 0.4,
        jitter_p: float = 0.8,
        blur: bool = True,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        super().__init__()
        self.num_local = num_local

        def pipeline(size: int, scale: tuple[float, float], blur_p: float) -> nn.Sequential:
            steps = _geometric(size, scale) + [BandJitter(brightness, contrast, jitter_p)]
            if blur:
                kernel = min(9, size - 1 - size % 2)
                steps.append(K.RandomGaussianBlur(kernel, blur_sigma, p=blur_p))
            return nn.Sequential(*steps)

        self.global_views = nn.ModuleList([pipeline(global_size, global_scale, 1.0), pipeline(global_size, global_scale, 0.1)])
        self.local_view = pipeline(local_size, local_scale, 0.5)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """x: (B, C, H, W) float -> ([2 x (B, C, g, g)], [num_local x (B, C, l, l)]), on x's device;
        x: (B, T, C, H, W) -> crops (B, T, C, s, s), one spatial crop for all T dates of a sample."""
        folded = x.flatten(1, 2) if x.ndim == 5 else x
        unfold = (lambda y: y.unflatten(1, x.shape[1:3])) if x.ndim == 5 else (lambda y: y)
        global_crops = [unfold(view(folded)) for view in self.global_views]
        local_crops = [unfold(self.local_view(folded)) for _ in range(self.num_local)]
        return global_crops, local_crops


class MAEAugmentation(nn.Module):
    """MAE's light augmentation: random resized crop and flips, applied alike to a nodata mask.

    Args:
        size: Output side in pixels.
        scale: Crop area range, as a share of the input.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0)) -> None:
        super().__init__()
        self.transform = nn.Sequential(
            K.RandomResizedCrop((size, size), scale=scale),
            K.RandomHorizontalFlip(p=0.5),
            K.RandomVerticalFlip(p=0.5),
        )

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, C, H, W), valid: optional (B, H, W) bool -> (B, C, s, s) and (B, s, s) bool or None.

        Stacks: x (B, T, C, H, W), valid (B, T, H, W) -> (B, T, C, s, s), (B, T, s, s), one crop for all
        dates. An output pixel is valid only if every input pixel it was interpolated from was valid;
        invalid input pixels are zeroed first so they cannot leak into valid ones.
        """
        if x.ndim == 5:
            t, c = x.shape[1:3]
            if valid is None:
                return self.transform(x.flatten(1, 2)).unflatten(1, (t, c)), None
            x = torch.where(valid.unsqueeze(2), x, torch.zeros((), dtype=x.dtype, device=x.device))
            out = self.transform(torch.cat([x.flatten(1, 2), valid.to(x.dtype)], dim=1))
            return out[:, : t * c].unflatten(1, (t, c)), out[:, t * c :] > 0.999
        if valid is None:
            return self.transform(x), None
        x = torch.where(valid.unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        out = self.transform(torch.cat([x, valid.unsqueeze(1).to(x.dtype)], dim=1))
        return out[:, :-1], out[:, -1] > 0.999
