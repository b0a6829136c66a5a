"""Backbone factory: a timm VisionTransformer over named bands, with source weights carried over.

:func:`create_backbone` builds timm's own ``VisionTransformer`` (``num_classes=0``,
``dynamic_img_size=True``) with a spectral, group or temporal patch embedding injected as
``embed_layer``. Source weights are loaded against a reference copy of the *source* architecture (3 RGB
channels, timm's pos_embed, built on the meta device): timm's ``checkpoint_filter_fn`` for the family
converts and resamples them, a strict key/shape check rejects other architectures, then the RGB kernel is
carried over by band name and the spatial positions go wherever the embedding keeps them.

TorchGeo's Earth-observation weights (``weights: torchgeo:<Enum>.<MEMBER>``, see
:mod:`geoexplora.models.torchgeo_weights`) fix the architecture and come with their own bands: the source
reference then has the member's channels, and :func:`carry_band_kernel` carries its kernel by band name.
"""

from __future__ import annotations

import difflib
import functools
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import VisionTransformer
from timm.models import model_entrypoint, split_model_name_tag

from geoexplora.bands import RGB_ROLES, get_sensor, rgb_role
from geoexplora.errors import GeoExploraError
from geoexplora.models import torchgeo_weights
from geoexplora.models.date_encoding import DateEncodingConfig
from geoexplora.models.hub import timm_pretrained_state_dict
from geoexplora.models.patch_embed import GroupPatchEmbed, SpectralPatchEmbed, TemporalPatchEmbed, carry_rgb_kernel

EMBEDS = ("spectral", "group", "temporal")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass
class BackboneConfig:
    """Everything needed to rebuild a backbone; round-trips through JSON (:meth:`to_dict`, :meth:`from_dict`).

    Attributes:
        model: timm ViT name, optionally with a weights tag (``vit_base_patch14_dinov2``,
            ``vit_base_patch16_224.mae``).
        weights: ``None`` for random init; ``"timm"`` to load by name through timm's pretrained machinery
            (Hugging Face cache); ``"torchgeo:<Enum>.<MEMBER>"`` for TorchGeo's EO weights (torch hub cache;
            ``model`` becomes the member's architecture); or a local ``.safetensors`` / ``.pth`` / ``.pt``
            state-dict path in timm or the family's original key names.
        bands: input band names, in channel order; their RGB roles decide how the RGB kernel is carried.
        sensor: sensor table that resolves band roles (``sentinel2``, ``landsat7``, ...), or ``None``.
        img_size: input side in pixels; the position table is resampled to this grid (other sizes still
            work at run time via ``dynamic_img_size``).
        embed: ``"spectral"`` (bands -> one token per patch), ``"group"`` (one token per band group and
            patch) or ``"temporal"`` (one token per date and patch; input (B, T, C, H, W)).
        band_groups: for ``embed="group"``: lists of band names, each band in exactly one list.
        num_frames: for ``embed="temporal"``: the most dates per sample (pre-training records the T it saw).
        date_encoding: for ``embed="temporal"``: the date encoding's parameters
            (:class:`~geoexplora.models.date_encoding.DateEncodingConfig` as a dict; default its defaults).
        embed_dim, depth, num_heads, patch_size: overrides of the architecture (tiny test models); a
            weights file must then match the overridden shapes.
    """

    model: str = "vit_small_patch14_dinov2"
    weights: str | None = None
    bands: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    sensor: str | None = None
    img_size: int = 224
    embed: str = "spectral"
    band_groups: list[list[str]] | None = None
    num_frames: int = 1
    date_encoding: dict[str, int] | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None

    def __post_init__(self) -> None:
        self.bands = list(self.bands)
        if not self.bands or len(set(self.bands)) != len(self.bands):
            raise GeoExploraError(f"bands must be non-empty and unique, got {self.bands!r}")
        if self.sensor is not None:
            get_sensor(self.sensor)
        if self.embed not in EMBEDS:
            raise GeoExploraError(f"embed must be one of {EMBEDS}, got {self.embed!r}")
        if (self.band_groups is not None) != (self.embed == "group"):
            raise GeoExploraError(
                f"band_groups is required for embed='group' and only then, got {self.band_groups!r}"
            )
        if self.band_groups is not None:
            self.band_groups = [list(g) for g in self.band_groups]
            if sorted(b for g in self.band_groups for b in g) != sorted(self.bands):
                raise GeoExploraError(f"band_groups {self.band_groups!r} must hold each of {self.bands!r} exactly once")
        if self.num_frames < 1 or (self.num_frames != 1 and self.embed != "temporal"):
            raise GeoExploraError(
                f"num_frames must be >= 1 and only differ from 1 for embed='temporal', got {self.num_frames!r}"
            )
        if self.date_encoding is not None and self.embed != "temporal":
            raise GeoExploraError(f"date_encoding is only for embed='temporal', got {self.date_encoding!r}")
        if self.embed == "temporal":
            self.date_encoding = DateEncodingConfig.from_dict(self.date_encoding).to_dict()
        for name in ("img_size", "embed_dim", "depth", "num_heads", "patch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise GeoExploraError(f"{name} must be a positive integer, got {value!r}")
        if torchgeo_weights.is_torchgeo(self.weights):
            self.model = self._torchgeo_model()
        elif self.weights not in (None, "timm") and not self.weights.endswith(WEIGHT_SUFFIXES):
            raise GeoExploraError(f"weights must be None, 'timm', 'torchgeo:<Enum>.<MEMBER>' or a "
                                  f"{'/'.join(WEIGHT_SUFFIXES)} file, got {self.weights!r}")

    def _torchgeo_model(self) -> str:
        """The TorchGeo member's architecture; the model given must be it (or the default, left as it was)."""
        source = torchgeo_weights.resolve(self.weights)
        given = split_model_name_tag(self.model)[0]
        if given not in (source.model, BackboneConfig.model):
            raise GeoExploraError(f"model {self.model!r} does not fit weights {self.weights} (a {source.model}); "
                                  f"drop model or set it to {source.model}")
        return source.model if given != source.model else self.model

    @property
    def downloads(self) -> bool:
        """Whether building the backbone may download its weights (``timm`` or TorchGeo weights)."""
        return self.weights == "timm" or torchgeo_weights.is_torchgeo(self.weights)

    @property
    def weights_file(self) -> str | None:
        """The local weights file, or None (random init, ``timm`` or TorchGeo weights)."""
        return None if self.weights is None or self.downloads else self.weights

    @property
    def patch_pixels(self) -> int:
        """Patch side in pixels: the ``patch_size`` override, else the one in the timm name (``patch14``)."""
        if self.patch_size:
            return self.patch_size
        found = re.search(r"patch(\d+)", self.model)
        return int(found.group(1)) if found else 16

    @property
    def source_objective(self) -> str | None:
        """The self-supervised objective the source weights were trained with: ``"dinov2"``, ``"mae"`` or None."""
        if torchgeo_weights.is_torchgeo(self.weights):  # SoftCon is DINOv2-shaped but trained contrastively
            return "mae" if torchgeo_weights.resolve(self.weights).ssl_method == "mae" else None
        if "dinov2" in self.model:
            return "dinov2"
        if self.model.endswith(".mae"):
            return "mae"
        return None

    @property
    def architecture_overrides(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("embed_dim", "depth", "num_heads", "patch_size") if getattr(self, k)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise GeoExploraError(f"unknown backbone config keys {sorted(unknown)}")
        return cls(**data)


def _check_model_name(name: str) -> str:
    """The architecture part of ``name``; GeoExploraError with close names if timm does not know it."""
    arch, _ = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models("*vit*"), n=5, cutoff=0.5)
        raise GeoExploraError(f"unknown timm model {name!r}; close names: {', '.join(close) or 'none'}")
    return arch


def _source_kwargs(cfg: BackboneConfig) -> dict[str, Any]:
    return dict(num_classes=0, img_size=cfg.img_size, **cfg.architecture_overrides)


def _embed_layer(cfg: BackboneConfig):
    if cfg.embed == "group":
        return functools.partial(GroupPatchEmbed, band_names=cfg.bands, band_groups=cfg.band_groups, sensor=cfg.sensor)
    if cfg.embed == "temporal":
        return functools.partial(TemporalPatchEmbed, band_names=cfg.bands, num_frames=cfg.num_frames, sensor=cfg.sensor,
                                 date_encoding=DateEncodingConfig.from_dict(cfg.date_encoding))
    return functools.partial(SpectralPatchEmbed, band_names=cfg.bands, sensor=cfg.sensor)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain tensor state dict from ``.safetensors`` or ``.pth``/``.pt`` (``weights_only`` unpickling only).

    A ``{"model": sd}`` or ``{"state_dict": sd}`` wrapper is unwrapped. Anything else is a GeoExploraError.
    """
    path = Path(path)
    if not path.is_file():
        raise GeoExploraError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise GeoExploraError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for non state dicts
        raise GeoExploraError(f"{path}: not a plain state dict ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise GeoExploraError(f"{path}: not a plain state dict of tensors")
    return obj


def _check_keys(path: str, state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in reference.items()
                  if k in state and state[k].shape != v.shape]
    problems = [f"{label} {items[:3]}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if items]
    if problems:
        raise GeoExploraError(f"{path}: weights do not fit the architecture: {'; '.join(problems)}")


def source_bands(cfg: BackboneConfig) -> tuple[tuple[str, ...], str | None]:
    """The source patch embedding's bands and their sensor: TorchGeo's member's, else red, green, blue."""
    if torchgeo_weights.is_torchgeo(cfg.weights):
        source = torchgeo_weights.resolve(cfg.weights)
        return source.bands, source.sensor
    return RGB_ROLES, None


def load_source_state_dict(cfg: BackboneConfig) -> dict[str, torch.Tensor] | None:
    """Source weights in the keys and shapes of the source architecture at ``cfg.img_size``, or None.

    The source architecture is timm's model as named (3 channels, or the TorchGeo member's channels; its
    own pos_embed), with the overrides. Classifier ``head.*`` tensors are dropped (backbones have
    ``num_classes=0``). The keys and shapes must then be exactly the reference's.
    """
    if cfg.weights is None:
        return None
    if cfg.weights == "timm":
        return timm_pretrained_state_dict(cfg.model, **_source_kwargs(cfg))
    arch = _check_model_name(cfg.model)
    in_chans = len(source_bands(cfg)[0])
    with torch.device("meta"):
        reference = timm.create_model(arch, in_chans=in_chans, **_source_kwargs(cfg))
    filter_fn = sys.modules[model_entrypoint(arch).__module__].checkpoint_filter_fn
    if torchgeo_weights.is_torchgeo(cfg.weights):
        state = torchgeo_weights.fit_state_dict(torchgeo_weights.download_state_dict(cfg.weights),
                                                reference.state_dict())
    else:
        state = read_state_dict(cfg.weights)
    state = {k: v for k, v in filter_fn(state, reference).items() if not k.startswith("head.")}
    _check_keys(cfg.weights, state, reference.state_dict())
    return state


def is_source(sources: tuple[str, ...], source_sensor: str | None, band_names: tuple[str, ...],
              sensor: str | None) -> bool:
    """Whether ``band_names`` (of ``sensor``; None: the source's) are exactly the source's bands, in order."""
    return (sensor is None or sensor == source_sensor) and tuple(b.lower() for b in band_names) == tuple(
        b.lower() for b in sources)


def carry_band_kernel(weight: torch.Tensor, sources: tuple[str, ...], source_sensor: str | None,
                      band_names: tuple[str, ...], sensor: str | None) -> torch.Tensor:
    """Carry a patch-embedding kernel over named source bands to named bands.

    Args:
        weight: kernel (D, S, p, p) over the S ``sources`` bands (of ``source_sensor``).
        band_names: the C target bands (of ``sensor``).

    Returns:
        Kernel (D, C, p, p). A target band that is a source band (same name, and the same sensor or none
        given) takes that band's kernel; every other band follows :func:`carry_rgb_kernel`'s rule over the
        source's red, green and blue kernels (its RGB role's kernel, else their mean; the mean of all
        kernels when the source has no RGB band). Then each output channel d is scaled by
        ``sqrt(sum_source ||W_d,s||^2 / sum_new ||W_d,c||^2)``, as :func:`carry_rgb_kernel` does. The
        source bands themselves, in order, return the kernel unchanged.
    """
    if sources == RGB_ROLES:
        return carry_rgb_kernel(weight, band_names, sensor)
    if weight.ndim != 4 or weight.shape[1] != len(sources):
        raise GeoExploraError(f"patch-embedding kernel has shape {tuple(weight.shape)}; expected (D, {len(sources)}, p, p)")
    if is_source(sources, source_sensor, band_names, sensor):
        return weight.clone()
    same_sensor = sensor is None or sensor == source_sensor
    index = {name.lower(): i for i, name in enumerate(sources)}
    roles = {role: i for i, b in enumerate(sources) if (role := rgb_role(b, source_sensor))}
    rgb = [weight[:, roles[r]] for r in RGB_ROLES if r in roles] or list(weight.unbind(1))
    mean = torch.stack(rgb).mean(dim=0)

    def kernel(band: str) -> torch.Tensor:
        if same_sensor and band.lower() in index:
            return weight[:, index[band.lower()]]
        role = rgb_role(band, sensor)
        return weight[:, roles[role]] if role in roles else mean

    new = torch.stack([kernel(b) for b in band_names], dim=1)
    energy = weight.pow(2).sum(dim=(1, 2, 3)) / new.pow(2).sum(dim=(1, 2, 3)).clamp_min(torch.finfo(weight.dtype).tiny)
    return new * energy.sqrt().view(-1, 1, 1, 1)


@torch.no_grad()
def _load_band_kernels(embed: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor | None,
                       sources: tuple[str, ...], source_sensor: str | None, positions: torch.Tensor | None) -> None:
    """Load a kernel (D, S, p, p) over named source bands into every projection of ``embed`` by band name
    (:func:`carry_band_kernel`), the bias (D,) as it is, and the spatial positions (1, N, D) when given."""
    for module in embed.modules():
        if isinstance(module, SpectralPatchEmbed):
            module.proj.weight.copy_(carry_band_kernel(weight, sources, source_sensor, module.band_names, module.sensor))
            module.source_match = is_source(sources, source_sensor, module.band_names, module.sensor)
            if bias is not None and module.proj.bias is not None:
                module.proj.bias.copy_(bias)
    if positions is not None:
        embed.positions.pos_embed.copy_(positions)


@torch.no_grad()
def _load_source(model: VisionTransformer, state: dict[str, torch.Tensor], sources: tuple[str, ...] = RGB_ROLES,
                 source_sensor: str | None = None) -> None:
    """Load source weights over ``sources`` bands into ``model``: kernel by band name, positions where the
    embedding keeps them."""
    state = dict(state)
    weight, bias = state.pop("patch_embed.proj.weight"), state.pop("patch_embed.proj.bias", None)
    pos = state.pop("pos_embed", None)
    spatial = None
    if model.pos_embed is None and pos is not None:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        if prefix and model.cls_token is not None:
            state["cls_token"] = state["cls_token"] + pos[:, :1]
        spatial = pos[:, prefix:]
    elif pos is not None:
        state["pos_embed"] = pos
    if sources == RGB_ROLES:
        model.patch_embed.load_source(weight, bias, spatial)
    else:
        _load_band_kernels(model.patch_embed, weight, bias, sources, source_sensor, spatial)
    missing, unexpected = model.load_state_dict(state, strict=False)
    loose = [k for k in missing if not k.startswith("patch_embed.")] + list(unexpected)
    if loose:
        raise GeoExploraError(f"source weights do not fit the backbone: {loose[:3]}")


def create_backbone(cfg: BackboneConfig) -> VisionTransformer:
    """timm VisionTransformer over ``cfg.bands`` (``num_classes=0``, ``dynamic_img_size=True``).

    Input (B, C, H, W), or (B, T, C, H, W) for ``embed="temporal"``; ``forward`` returns the pooled
    feature (B, D), ``forward_features`` the tokens (B, prefix + tokens, D). Create it under
    ``torch.device("meta")`` to count parameters without allocating them.
    """
    arch = _check_model_name(cfg.model)
    model = timm.create_model(
        arch,
        in_chans=len(cfg.bands),
        embed_layer=_embed_layer(cfg),
        dynamic_img_size=True,
        **({} if cfg.embed == "spectral" else {"pos_embed": "none"}),
        **_source_kwargs(cfg),
    )
    if not isinstance(model, VisionTransformer):
        raise GeoExploraError(f"{cfg.model!r} is a {type(model).__name__}, not a timm VisionTransformer")
    state = load_source_state_dict(cfg)
    if state is not None:
        _load_source(model, state, *source_bands(cfg))
    return model
