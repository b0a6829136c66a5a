"""Batched, device-side augmentations for multi-spectral imagery."""

from geoexplora.transforms.multicrop import BandJitter, MAEAugmentation, MultiCropAugmentation

__all__ = ["BandJitter", "MAEAugmentation", "MultiCropAugmentation"]
