"""Spectral, group-channel and temporal patch embeddings, injected into timm's ViT as ``embed_layer``.

Three embeddings, one contract (timm's :class:`~timm.layers.PatchEmbed`: ``img_size``, ``patch_size``,
``grid_size``, ``num_patches`` (spatial patches per token set), ``feat_ratio()``, ``dynamic_feat_size()``):

- :class:`SpectralPatchEmbed`: timm's PatchEmbed over any number of named bands, input (B, C, H, W),
  tokens = patches. The ViT keeps its own ``pos_embed``.
- :class:`GroupPatchEmbed` (SatMAE style): bands in G groups, one projection per group, a learned group
  encoding; input (B, C, H, W), tokens = G x patches, group-major.
- :class:`TemporalPatchEmbed`: one spectral projection shared by T dates, a SatMAE-style date encoding
  (year, day of year); input (B, T, C, H, W), tokens = T x patches, date-major.

Group and temporal tokens outnumber timm's ``pos_embed``, so those ViTs are built with
``pos_embed='none'`` and the embedding adds the spatial position itself (one (1, N, D) table on the
model's grid, resampled to the input grid, tiled over the token sets) plus its set encoding. The
pretrained cls position is folded into ``cls_token`` when the source weights are carried over
(:mod:`geoexplora.models.backbone`), so a single group or date computes exactly the source model. Both
return flat (B, G*N, D) tokens whatever ``output_fmt`` timm asks for; ``forward_intermediates`` with
``output_fmt='NCHW'`` is therefore only meaningful for :class:`SpectralPatchEmbed`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed, trunc_normal_
from torch import nn

from geoexplora.bands import RGB_ROLES, rgb_role
from geoexplora.errors import GeoExploraError
from geoexplora.models.date_encoding import DateEncoding, DateEncodingConfig


def band_roles(band_names: Sequence[str], sensor: str | None = None) -> tuple[str | None, ...]:
    """The RGB role (``"red"``/``"green"``/``"blue"``/``None``) of each band, in order."""
    return tuple(rgb_role(b, sensor) for b in band_names)


def carry_rgb_kernel(weight: torch.Tensor, band_names: Sequence[str], sensor: str | None = None) -> torch.Tensor:
    """Carry an RGB patch-embedding kernel over to named bands.

    Args:
        weight: RGB kernel, shape (D, 3, p, p), input channels in R, G, B order.
        band_names: the C target bands; ``rgb_role`` decides which are red, green, blue.
        sensor: sensor for band names that need one (Landsat ``B3``).

    Returns:
        Kernel of shape (D, C, p, p). Bands whose role is red/green/blue get that kernel, every other band
        the mean of the three. Then, per output channel d, all kernels are multiplied by
        ``sqrt(sum_rgb ||W_d,c||^2 / sum_new ||W_d,c||^2)``: for bands that are independent, zero-mean,
        unit-variance inputs the variance of output d equals the RGB embedding's on such RGB input (timm's
        ``adapt_input_conv`` uses the coarser 3/C, which preserves outputs for identical channels instead).
        Exactly red, green, blue in that order returns the kernel unchanged.
    """
    roles = band_roles(band_names, sensor)
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise GeoExploraError(f"patch-embedding kernel has shape {tuple(weight.shape)}; expected (D, 3, p, p)")
    if roles == RGB_ROLES:
        return weight.clone()
    mean = weight.mean(dim=1)
    new = torch.stack([weight[:, RGB_ROLES.index(r)] if r else mean for r in roles], dim=1)
    energy_rgb = weight.pow(2).sum(dim=(1, 2, 3))
    energy_new = new.pow(2).sum(dim=(1, 2, 3)).clamp_min(torch.finfo(weight.dtype).tiny)
    return new * (energy_rgb / energy_new).sqrt().view(-1, 1, 1, 1)


class SpectralPatchEmbed(PatchEmbed):
    """timm PatchEmbed over named bands: input (B, C, H, W) with C = len(band_names), output as timm asks.

    Args:
        band_names: the C bands, in input channel order.
        sensor: sensor for band names that need one to resolve their RGB role.
        **kwargs: timm PatchEmbed arguments (img_size, patch_size, embed_dim, bias, ...). ``in_chans``, if
            timm passes it, must equal len(band_names).
    """

    def __init__(self, band_names: Sequence[str], sensor: str | None = None, in_chans: int | None = None, **kwargs):
        if in_chans is not None and in_chans != len(band_names):
            raise GeoExploraError(f"in_chans={in_chans} but {len(band_names)} band names given: {list(band_names)}")
        super().__init__(in_chans=len(band_names), **kwargs)
        self.band_names = tuple(band_names)
        self.sensor = sensor

    # Set by the backbone when it loads a source over named bands other than RGB (TorchGeo's EO weights):
    # whether the kernel it carried is the source's own.
    source_match: bool | None = None

    @property
    def matches_source(self) -> bool:
        """True when the carried embedding is the source one: the bands are exactly red, green, blue (or
        exactly the named source's bands, ``source_match``)."""
        if self.source_match is not None:
            return self.source_match
        return band_roles(self.band_names, self.sensor) == RGB_ROLES

    @torch.no_grad()
    def load_source(self, weight: torch.Tensor, bias: torch.Tensor | None, pos_embed: torch.Tensor | None = None) -> None:
        """Load an RGB source embedding: kernel (D, 3, p, p) carried by band name, bias (D,) copied.

        ``pos_embed`` (1, N, D) of spatial positions is not used here (the ViT holds it).
        """
        self.proj.weight.copy_(carry_rgb_kernel(weight, self.band_names, self.sensor))
        if bias is not None and self.proj.bias is not None:
            self.proj.bias.copy_(bias)


class _TiledPositions(nn.Module):
    """Spatial position table (1, N, D) on the model's grid, resampled to the input grid and tiled."""

    def __init__(self, grid_size: tuple[int, int], embed_dim: int):
        super().__init__()
        self.grid_size = grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size[0] * grid_size[1], embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor, set_encoding: torch.Tensor) -> torch.Tensor:
        """x: (B, S, H, W, D) token sets on an H x W grid; set_encoding: (S, D) or per sample (B, S, D).
        Returns (B, S*H*W, D)."""
        b, s, h, w, d = x.shape
        pos = resample_abs_pos_embed(self.pos_embed, new_size=(h, w), old_size=self.grid_size, num_prefix_tokens=0)
        x = x.reshape(b, s, h * w, d) + pos.unsqueeze(1) + set_encoding.reshape(-1, s, 1, d)
        return x.reshape(b, s * h * w, d)


def _nhwc_kwargs(kwargs: dict) -> dict:
    """timm's embed arguments with the output forced to NHWC (the sets need the grid to place positions)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("output_fmt", "flatten")}
    return {**kwargs, "output_fmt": "NHWC"}


class GroupPatchEmbed(nn.Module):
    """Group-channel embedding (SatMAE): one projection per band group, a learned group encoding.

    Input (B, C, H, W) in ``band_names`` order; output (B, G*N, D), group-major, each token
    ``proj_g(patch) + pos(patch) + group_embed[g]``. ``group_embed`` starts at zero, so one group holding
    the RGB bands computes exactly the source model.

    Args:
        band_names: the C input bands, in channel order.
        band_groups: G lists of band names; every band in exactly one group.
        sensor: sensor for band names that need one.
        **kwargs: timm PatchEmbed arguments.
    """

    def __init__(
        self,
        band_names: Sequence[str],
        band_groups: Sequence[Sequence[str]],
        sensor: str | None = None,
        in_chans: int | None = None,
        **kwargs,
    ):
        super().__init__()
        flat = [b for g in band_groups for b in g]
        if sorted(flat) != sorted(band_names):
            raise GeoExploraError(
                f"band_groups {[list(g) for g in band_groups]} must hold each of {list(band_names)} exactly once"
            )
        self.band_names = tuple(band_names)
        self.groups = nn.ModuleList(
            SpectralPatchEmbed(g, sensor=sensor, **_nhwc_kwargs(kwargs)) for g in band_groups
        )
        for i, g in enumerate(band_groups):
            self.register_buffer(f"index_{i}", torch.tensor([self.band_names.index(b) for b in g]), persistent=False)
        first = self.groups[0]
        self.img_size, self.patch_size, self.grid_size = first.img_size, first.patch_size, first.grid_size
        self.num_patches = first.num_patches
        self.positions = _TiledPositions(self.grid_size, first.proj.out_channels)
        self.group_embed = nn.Parameter(torch.zeros(len(band_groups), first.proj.out_channels))

    @property
    def matches_source(self) -> bool:
        """Always False: the group encoding is new and must be learned."""
        return False

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return self.groups[0].feat_ratio(as_scalar)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return self.groups[0].dynamic_feat_size(img_size)

    @torch.no_grad()
    def load_source(self, weight: torch.Tensor, bias: torch.Tensor | None, pos_embed: torch.Tensor | None = None) -> None:
        """Carry an RGB kernel (D, 3, p, p) into every group by band name; pos_embed: (1, N, D) spatial."""
        for group in self.groups:
            group.load_source(weight, bias)
        if pos_embed is not None:
            self.positions.pos_embed.copy_(pos_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, G*N, D)."""
        sets = [g(x.index_select(1, getattr(self, f"index_{i}"))) for i, g in enumerate(self.groups)]
        return self.positions(torch.stack(sets, dim=1), self.group_embed)


class TemporalPatchEmbed(SpectralPatchEmbed):
    """T dates of the same place: one spectral projection shared by all dates plus a date encoding.

    Input (B, T, C, H, W) with 1 <= T <= ``num_frames``; output (B, T*N, D), date-major, each token
    ``proj(patch) + pos(patch) + date_encoding(date)`` (:class:`~geoexplora.models.date_encoding.DateEncoding`:
    year and day of year, zero at the start). The dates (B, T) int64 days since 1970-01-01 are set for
    the forward pass with :func:`~geoexplora.models.date_encoding.stack_dates`; calling without them is
    an error.

    Args:
        band_names: the C bands of every date.
        num_frames: the most dates per sample the model takes (the T it was trained with).
        sensor: sensor for band names that need one.
        date_encoding: the date encoding's parameters.
        **kwargs: timm PatchEmbed arguments.
    """

    def __init__(self, band_names: Sequence[str], num_frames: int, sensor: str | None = None,
                 date_encoding: DateEncodingConfig | None = None, **kwargs):
        super().__init__(band_names, sensor=sensor, **_nhwc_kwargs(kwargs))
        self.num_frames = num_frames
        self.positions = _TiledPositions(self.grid_size, self.proj.out_channels)
        self.date_encoding = DateEncoding(self.proj.out_channels, date_encoding)
        self.dates: torch.Tensor | None = None

    @property
    def matches_source(self) -> bool:
        """Always False: the date encoding is new and must be learned."""
        return False

    @torch.no_grad()
    def load_source(self, weight: torch.Tensor, bias: torch.Tensor | None, pos_embed: torch.Tensor | None = None) -> None:
        """Carry an RGB kernel (D, 3, p, p) by band name; pos_embed: (1, N, D) spatial positions."""
        super().load_source(weight, bias)
        if pos_embed is not None:
            self.positions.pos_embed.copy_(pos_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C, H, W) -> (B, T*N, D), with the dates set by ``stack_dates``."""
        if x.ndim != 5 or not 1 <= x.shape[1] <= self.num_frames:
            raise GeoExploraError(f"temporal input has shape {tuple(x.shape)}; expected (B, T, C, H, W) with "
                                  f"1 <= T <= {self.num_frames} (the dates the model was trained with)")
        b, t = x.shape[:2]
        days = self.dates
        if days is None:
            raise GeoExploraError("a temporal backbone needs the dates of its input (geoexplora.models.stack_dates)")
        if days.shape[-1] != t or b % days.shape[0]:
            raise GeoExploraError(f"dates of shape {tuple(days.shape)} do not fit an input of {b} samples x {t} dates")
        encoding = self.date_encoding(days.to(x.device)).repeat(b // days.shape[0], 1, 1)  # (B, T, D)
        tokens = super().forward(x.flatten(0, 1)).unflatten(0, (b, t))  # (B, T, h, w, D)
        return self.positions(tokens, encoding)
