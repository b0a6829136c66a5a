"""Date encoding of temporal tokens (SatMAE style): sine-cosine features of year and day of year.

SatMAE (Cong et al. 2022, ``models_mae_temporal.py``) encodes each date's year, month and hour with the
1-D transformer sine-cosine table (frequencies ``10000^(-2i/F)``) and concatenates them with the spatial
positions of a model trained from scratch. geoexplora adapts pretrained ViTs, so the features are *added*
through a learned projection that starts at zero: before training, every date computes exactly the
source model, and the projection learns wherever the patch embedding trains. Day of year replaces
SatMAE's month (finer, and Sentinel-2 revisits every 5 days); hour is dropped (sun-synchronous orbits
pass at one local time).

Dates travel as int64 days since 1970-01-01, shape (B, T). A timm ViT calls its patch embedding with the
image alone, so the dates of a batch are set on the embedding for the duration of a forward pass with
:func:`stack_dates`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from geoexplora.errors import GeoExploraError

#: Days from 1970-01-01 to 0001-01-01 in the proleptic Gregorian calendar (``date.toordinal`` offset).
_EPOCH_ORDINAL = 719163


def year_and_day(days: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Calendar year and day of year (1..366) of int64 days since 1970-01-01, any shape, on any device.

    Uses the civil-from-days algorithm (H. Hinnant), exact for the proleptic Gregorian calendar.
    """
    z = days.long() + 719468
    era = torch.div(z, 146097, rounding_mode="floor")
    doe = z - era * 146097
    yoe = torch.div(doe - doe // 1460 + doe // 36524 - doe // 146096, 365, rounding_mode="floor")
    doy_march = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of the year starting 1 March, 0-based
    month_index = (5 * doy_march + 2) // 153  # 0 = March
    year = yoe + era * 400 + (month_index >= 10).long()
    jan1 = _days_from_civil(year)
    return year, days.long() - jan1 + 1


def _days_from_civil(year: torch.Tensor) -> torch.Tensor:
    """Days since 1970-01-01 of 1 January of ``year``."""
    y = year - 1  # January counts in the previous March-based year
    era = torch.div(y, 400, rounding_mode="floor")
    yoe = y - era * 400
    doe = 365 * yoe + yoe // 4 - yoe // 100 + 306  # 306: days from 1 March to 1 January
    return era * 146097 + doe - 719468


def sincos(values: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D transformer sine-cosine table of ``values`` (...,) -> (..., dim), frequencies ``10000^(-2i/dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    angles = values.float().unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def date_features(days: torch.Tensor, width: int, reference_year: int = 2000) -> torch.Tensor:
    """Fixed features (..., width) of int days since 1970-01-01: ``[sincos(year - reference_year),
    sincos(day of year)]``, width/2 each (width a multiple of 4)."""
    year, doy = year_and_day(days)
    return torch.cat([sincos(year - reference_year, width // 2), sincos(doy, width // 2)], dim=-1)


@dataclass
class DateEncodingConfig:
    """Parameters of the date encoding, saved in the checkpoint with the backbone.

    Attributes:
        features: width F of the fixed features: F/2 for the year, F/2 for the day of year (even halves).
        reference_year: the year encoded as 0 (years are encoded relative to it, as small numbers).
    """

    features: int = 128
    reference_year: int = 2000

    def __post_init__(self) -> None:
        if not isinstance(self.features, int) or self.features < 4 or self.features % 4:
            raise GeoExploraError(f"date_encoding.features must be a positive multiple of 4, got {self.features!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DateEncodingConfig:
        """Inverse of :meth:`to_dict` (None: the defaults); an unknown key is an error naming it."""
        unknown = sorted(set(data or {}) - set(cls.__dataclass_fields__))
        if unknown:
            raise GeoExploraError(f"unknown date_encoding keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**(data or {}))


class DateEncoding(nn.Module):
    """Dates (B, T) in days since 1970-01-01 -> encodings (B, T, D): ``proj([sincos(year), sincos(doy)])``.

    ``weight`` (D, F) is a bias-free projection initialised to zero, so the encoding starts at zero (a
    plain parameter, not an ``nn.Linear``: timm re-initialises every Linear of a new ViT).

    Args:
        embed_dim: D, the token width.
        config: the fixed features' width and reference year.
    """

    def __init__(self, embed_dim: int, config: DateEncodingConfig | None = None) -> None:
        super().__init__()
        self.config = config or DateEncodingConfig()
        self.weight = nn.Parameter(torch.zeros(embed_dim, self.config.features))

    def features(self, days: torch.Tensor) -> torch.Tensor:
        """(B, T) int days -> (B, T, F) fixed sine-cosine features of year and day of year."""
        return date_features(days, self.config.features, self.config.reference_year)

    def forward(self, days: torch.Tensor) -> torch.Tensor:
        """(B, T) int days -> (B, T, D)."""
        return nn.functional.linear(self.features(days).to(self.weight.dtype), self.weight)


@contextmanager
def stack_dates(vit: nn.Module, days: torch.Tensor | None) -> Iterator[None]:
    """Set the dates (B, T) int64 of the next forward passes on ``vit``'s temporal patch embedding.

    Inputs of a multiple k*B samples (crops of the same batch concatenated view after view) reuse the
    dates repeated k times. ``days=None`` or a non-temporal backbone: nothing is set.
    """
    embed = getattr(vit, "patch_embed", None)
    if days is None or not hasattr(embed, "dates"):
        yield
        return
    previous, embed.dates = embed.dates, days
    try:
        yield
    finally:
        embed.dates = previous
