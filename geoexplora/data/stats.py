"""Per-band statistics from random windows, and the normaliser built from them.

Statistics are keyed by band name so a checkpoint can store them (``to_dict()``, JSON-safe) and
inference can check that the input has the bands the model was trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torchgeo.datasets import GeoDataset

from geoexplora.data.samplers import random_sampler
from geoexplora.errors import GeoExploraError

logger = logging.getLogger(__name__)

NormalizationMode = Literal["standardize", "percentile"]


@dataclass(frozen=True)
class BandStat:
    """Statistics of one band's valid pixels, in the raster's units."""

    mean: float
    std: float  # population standard deviation (ddof=0)
    p2: float  # 2nd percentile (linear interpolation)
    p98: float  # 98th percentile


@dataclass(frozen=True)
class BandStatistics:
    """Per-band statistics keyed by band name, plus how they were obtained.

    Attributes:
        bands: band name -> :class:`BandStat`, in channel order.
        num_pixels: valid pixels used per band.
        num_windows: windows that had at least one valid pixel.
        skipped_windows: windows skipped because no pixel was valid.
    """

    bands: dict[str, BandStat]
    num_pixels: int = 0
    num_windows: int = 0
    skipped_windows: int = 0

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(self.bands)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain floats and ints) that :meth:`from_dict` reads back."""
        return {
            "bands": {name: asdict(stat) for name, stat in self.bands.items()},
            "num_pixels": self.num_pixels,
            "num_windows": self.num_windows,
            "skipped_windows": self.skipped_windows,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BandStatistics:
        """The statistics :meth:`to_dict` wrote."""
        try:
            bands = {str(name): BandStat(**{k: float(v) for k, v in stat.items()}) for name, stat in data["bands"].items()}
            return cls(bands, int(data["num_pixels"]), int(data["num_windows"]), int(data["skipped_windows"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise GeoExploraError(f"band statistics: malformed dict ({type(err).__name__}: {err})") from None


def band_statistics_from_pixels(band_names: Sequence[str], pixels: np.ndarray, **counts: int) -> BandStatistics:
    """Statistics of ``pixels`` (C, N), one row per band of ``band_names``, computed in float64."""
    values = pixels.astype(np.float64)
    p2, p98 = np.percentile(values, [2, 98], axis=1)
    stats = {
        name: BandStat(float(m), float(s), float(lo), float(hi))
        for name, m, s, lo, hi in zip(band_names, values.mean(axis=1), values.std(axis=1), p2, p98, strict=True)
    }
    return BandStatistics(stats, num_pixels=values.shape[1], **counts)


def compute_band_statistics(
    dataset: GeoDataset,
    num_windows: int = 64,
    window_size: int = 64,
    seed: int = 0,
    band_names: Sequence[str] | None = None,
    windows: Iterable[Any] | None = None,
) -> BandStatistics:
    """Per-band mean, std, 2nd and 98th percentiles over the valid pixels of random windows.

    Windows (``window_size`` pixels square, ``num_windows`` of them) come from
    :func:`~geoexplora.data.samplers.random_sampler` with ``seed``. A pixel counts when the sample's
    ``valid`` is True (every band neither nodata nor NaN); time-series samples pool all dates. A window
    with no valid pixel is skipped and counted in ``skipped_windows``. Memory: all valid pixels are held,
    about ``num_windows * window_size**2 * C * 4`` bytes.

    Args:
        dataset: a GeoDataset whose samples have ``image`` (..., C, H, W) and ``valid`` (..., H, W),
            e.g. :class:`~geoexplora.data.raster.GeoRasterDataset`, or a
            :class:`~geoexplora.data.multistack.MultiStackDataset` with its ``windows``.
        band_names: names for the C channels (default: ``dataset.band_names``).
        windows: the ``num_windows`` queries of ``dataset`` to read instead (e.g. a
            :class:`~geoexplora.data.multistack.MultiStackSampler`'s, over several stacks).

    Raises:
        GeoExploraError: when every window is invalid.
    """
    names = tuple(band_names if band_names is not None else dataset.band_names)
    chunks: list[np.ndarray] = []
    skipped = 0
    for window in windows if windows is not None else random_sampler(dataset, window_size, num_windows, seed):
        sample = dataset[window]
        image, valid = sample["image"], sample["valid"]
        channels = image.movedim(-3, 0).reshape(image.shape[-3], -1)
        keep = valid.reshape(-1)
        if not keep.any():
            skipped += 1
            continue
        chunks.append(channels[:, keep].numpy())
    if not chunks:
        listed = dataset.index.get("filepath", ["(dataset)"]) if hasattr(dataset, "index") else dataset.files
        files = ", ".join(dict.fromkeys(str(f) for f in listed))
        raise GeoExploraError(f"{files}: all {num_windows} sampled windows hold only nodata/NaN pixels")
    if skipped:
        logger.info("band statistics: skipped %d of %d windows with no valid pixel", skipped, num_windows)
    return band_statistics_from_pixels(
        names, np.concatenate(chunks, axis=1), num_windows=len(chunks), skipped_windows=skipped
    )


class Normalizer(nn.Module):
    """Normalise (..., C, H, W) images band by band with :class:`BandStatistics`.

    ``"standardize"``: ``(x - mean) / std``; ``"percentile"``: ``(x - p2) / (p98 - p2)`` (values outside
    [p2, p98] fall outside [0, 1]; nothing is clipped). Denominators below ``eps`` are raised to ``eps``.
    After normalising, pixels that are invalid (``valid`` False, or NaN in ``x``) are set to 0.

    Args:
        stats: statistics holding at least ``band_names``.
        band_names: the input's bands, in channel order.
        mode: ``"standardize"`` or ``"percentile"``.

    Raises:
        GeoExploraError: when ``stats`` lacks a band of ``band_names``, or for an unknown mode.
    """

    shift: Tensor
    scale: Tensor

    def __init__(
        self, stats: BandStatistics, band_names: Sequence[str], mode: NormalizationMode = "standardize", eps: float = 1e-6
    ) -> None:
        super().__init__()
        missing = [b for b in band_names if b not in stats.bands]
        if missing:
            raise GeoExploraError(
                f"band statistics have no {', '.join(missing)}; they cover {', '.join(stats.band_names)}"
            )
        selected = [stats.bands[b] for b in band_names]
        if mode == "standardize":
            shift = [s.mean for s in selected]
            scale = [s.std for s in selected]
        elif mode == "percentile":
            shift = [s.p2 for s in selected]
            scale = [s.p98 - s.p2 for s in selected]
        else:
            raise GeoExploraError(f"normalisation mode {mode!r}: use 'standardize' or 'percentile'")
        self.band_names = tuple(band_names)
        self.mode = mode
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).clamp_min(eps).view(-1, 1, 1))

    def forward(self, image: Tensor, valid: Tensor | None = None) -> Tensor:
        """Normalised float32 ``image`` (..., C, H, W); ``valid`` is bool (..., H, W) or None."""
        out = (image.float() - self.shift) / self.scale
        invalid = torch.isnan(out)
        if valid is not None:
            invalid |= ~valid.unsqueeze(-3)
        return out.masked_fill(invalid, 0.0)

    def normalize_(self, image: Tensor) -> Tensor:
        """``image`` float32 (..., C, H, W) normalised in place, the same values as :meth:`forward`'s, except
        that NaN stays NaN (the caller zeroes it); returns ``image``."""
        return image.sub_(self.shift).div_(self.scale)
