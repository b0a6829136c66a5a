"""TorchGeo's pretrained ViT weights (``weights: torchgeo:<Enum>.<MEMBER>``) as backbone starting points.

TorchGeo (0.10) publishes Earth-observation ViTs as torchvision ``WeightsEnum`` members in
``torchgeo.models.vit``: ``ViTSmall16_Weights`` (SSL4EO-S12 DINO/MoCo/MAE/FG-MAE on 13 Sentinel-2 bands,
SSL4EO-L MoCo/SimCLR on Landsat, Sentinel-1), ``ViTBase16_Weights``, ``ViTLarge16_Weights``,
``ViTHuge14_Weights``, and SoftCon's DINOv2 ``ViTSmall14_DINOv2_Weights`` / ``ViTBase14_DINOv2_Weights``.
Each member's ``meta`` names the timm architecture (``model``), the input channels (``in_chans``) and
their bands (``bands``); its ``transforms`` hold the normalisation the model was trained with.

:func:`resolve` reads a member into a :class:`TorchGeoSource` (no network: meta only);
:class:`SourceNormalization` is what a checkpoint records of it;
:func:`download_state_dict` fetches the tensors with TorchGeo's own ``get_state_dict`` (torch hub cache,
``$TORCH_HOME/hub/checkpoints``), and :func:`fit_state_dict` puts them in the keys timm's model has.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from geoexplora.bands import from_torchgeo_name
from geoexplora.errors import GeoExploraError

if TYPE_CHECKING:
    from geoexplora.data.stats import BandStatistics
logger = logging.getLogger(__name__)

PREFIX = "torchgeo:"
VIT_MODULE = "torchgeo.models.vit"
# Keys TorchGeo itself lets a checkpoint lack or add (torchgeo.models.vit.KEYS): the classifier and the final
# norm. The backbone has no classifier; a missing final norm is the identity LayerNorm (weight 1, bias 0),
# which is what timm's init gives TorchGeo's own model, loaded with strict=False.
OPTIONAL_NORM = ("norm.weight", "norm.bias")
# The band table of each member, by the member's name prefix (Sentinel-1 SAR has none: names kept as given).
SENSOR_PREFIXES = (("SENTINEL2_", "sentinel2"), ("LANDSAT_TM_", "landsat7"), ("LANDSAT_ETM_", "landsat7"),
                   ("LANDSAT_OLI_", "landsat8"), ("SENTINEL1_", None))


@dataclass(frozen=True)
class TorchGeoSource:
    """One TorchGeo ViT weights member, read from its ``meta`` and ``transforms``.

    Attributes:
        spec: ``torchgeo:<Enum>.<MEMBER>``.
        model: timm architecture (``vit_small_patch16_224``).
        in_chans: input channels of the pretrained patch embedding.
        sensor: geoexplora sensor table of its bands (``sentinel2``, ``landsat7``, ``landsat8``), or None.
        bands: its input bands in geoexplora's names (:func:`~geoexplora.bands.from_torchgeo_name`), in
            channel order.
        mean, std: per band, in the raster units the model was trained on: its input was ``(x - mean) / std``
            (TorchGeo's ``Normalize`` transforms composed; 0 and 1 when it has none).
        ssl_method: the self-supervised method (``dino``, ``mae``, ``softcon``...), when given.
        url: where TorchGeo downloads it from.
    """

    spec: str
    model: str
    in_chans: int
    sensor: str | None
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ssl_method: str | None
    url: str


def is_torchgeo(weights: str | None) -> bool:
    """Whether a backbone ``weights`` value names TorchGeo weights."""
    return isinstance(weights, str) and weights.startswith(PREFIX)


@functools.cache
def vit_enums() -> dict[str, Any]:
    """TorchGeo's ViT weights enums by class name (those defined in ``torchgeo.models.vit``)."""
    import importlib

    from torchvision.models._api import WeightsEnum

    module = importlib.import_module(VIT_MODULE)
    return {name: obj for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, WeightsEnum) and obj.__module__ == VIT_MODULE}


def _close(name: str, names: list[str]) -> str:
    """Up to five of ``names`` like ``name``: those containing it, then difflib's closest."""
    containing = [n for n in names if name and name.lower() in n.lower()]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    return ", ".join(list(dict.fromkeys(containing + close))[:5]) or "none"


def weights_member(spec: str) -> Any:
    """The ``WeightsEnum`` member ``spec`` (``torchgeo:<Enum>.<MEMBER>``) names.

    Raises:
        GeoExploraError: one line with close names for an unknown enum or member.
    """
    enum_name, _, member = spec.removeprefix(PREFIX).partition(".")
    enums = vit_enums()
    if enum_name not in enums or not member:
        full = [f"{e}.{m}" for e, cls in enums.items() for m in cls.__members__]
        raise GeoExploraError(f"weights {spec!r}: not a TorchGeo ViT weights name <Enum>.<MEMBER>; close names: "
                              f"{_close(spec.removeprefix(PREFIX), full)}")
    members = enums[enum_name].__members__
    if member not in members:
        raise GeoExploraError(f"weights {spec!r}: {enum_name} has no {member}; close names: "
                              f"{_close(member, list(members))}")
    return members[member]


def _normalisation(transforms: Any, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) equal to the ``Normalize`` steps of ``transforms`` applied in order."""
    from torchvision.transforms import v2

    mean, std = torch.zeros(channels, dtype=torch.float64), torch.ones(channels, dtype=torch.float64)
    steps = transforms.modules() if isinstance(transforms, torch.nn.Module) else ()
    for step in steps:
        if isinstance(step, v2.Normalize):
            m = torch.as_tensor(step.mean, dtype=torch.float64).expand(channels)
            s = torch.as_tensor(step.std, dtype=torch.float64).expand(channels)
            mean, std = mean + m * std, std * s  # ((x - mean) / std - m) / s
    return tuple(mean.tolist()), tuple(std.tolist())


@functools.cache
def resolve(spec: str) -> TorchGeoSource:
    """What ``spec`` (``torchgeo:<Enum>.<MEMBER>``) is: architecture, bands, normalisation. No network."""
    import timm

    weights = weights_member(spec)
    meta = weights.meta
    if not timm.is_model(meta["model"]):
        raise GeoExploraError(f"weights {spec!r}: its architecture {meta['model']!r} is not a timm model")
    sensor = next((s for prefix, s in SENSOR_PREFIXES if weights.name.startswith(prefix)), None)
    bands = tuple(from_torchgeo_name(b, sensor) for b in meta["bands"])
    if len(bands) != meta["in_chans"]:
        raise GeoExploraError(f"weights {spec!r}: TorchGeo lists {len(bands)} bands for {meta['in_chans']} channels")
    mean, std = _normalisation(weights.transforms, len(bands))
    return TorchGeoSource(spec, meta["model"], int(meta["in_chans"]), sensor, bands, mean, std,
                          meta.get("ssl_method"), weights.url)


@dataclass(frozen=True)
class SourceNormalization:
    """The input the start model (TorchGeo EO weights) was trained on: ``(x - mean) / std`` per band.

    Attributes:
        weights: ``torchgeo:<Enum>.<MEMBER>``.
        sensor: geoexplora sensor table of ``bands``, or None (Sentinel-1).
        bands: its bands in geoexplora's names, in its channel order.
        mean, std: per band, in raster units (TorchGeo's ``Normalize`` transforms).
    """

    weights: str
    sensor: str | None
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, weights: str) -> SourceNormalization:
        """The TorchGeo member's bands and normalisation (its ``meta`` and ``transforms``; no download)."""
        source = resolve(weights)
        return cls(weights, source.sensor, source.bands, source.mean, source.std)

    def statistics(self, bands: Sequence[str]) -> BandStatistics | None:
        """Statistics for ``standardize`` over ``bands`` (percentiles unknown: NaN), None unless all are source
        bands."""
        from geoexplora.data.stats import BandStat, BandStatistics  # the data layer, only when normalising

        index = {b.lower(): i for i, b in enumerate(self.bands)}
        if not all(b.lower() in index for b in bands):
            return None
        nan = float("nan")
        return BandStatistics({b: BandStat(self.mean[index[b.lower()]], self.std[index[b.lower()]], nan, nan)
                               for b in bands})

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "sensor": self.sensor, "bands": list(self.bands),
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceNormalization:
        return cls(str(data["weights"]), data["sensor"], tuple(data["bands"]),
                   tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))


def download_state_dict(spec: str) -> dict[str, torch.Tensor]:
    """The member's tensors, from the torch hub cache or downloaded by TorchGeo's ``get_state_dict``.

    Raises:
        GeoExploraError: one line when they are neither cached nor downloadable.
    """
    weights = weights_member(spec)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError; a bad file a RuntimeError
        raise GeoExploraError(
            f"weights {spec}: not in the torch hub cache and the download of {weights.url} failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}); fetch it once with "
            "network access, or give a local .safetensors file as weights"
        ) from None


def fit_state_dict(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TorchGeo's tensors in the keys of timm's model ``reference`` (its state dict, meta tensors will do).

    TorchGeo stores timm key names; the two differences it allows itself are the classifier ``head.*``
    (dropped: backbones have none) and a missing final ``norm`` (the identity LayerNorm, as TorchGeo's model
    has it). Everything else must match exactly: the caller checks keys and shapes strictly.
    """
    fitted = {k: v for k, v in state.items() if not k.startswith("head.")}
    absent = [k for k in OPTIONAL_NORM if k not in fitted and k in reference]
    for key in absent:
        fill = torch.ones if key.endswith("weight") else torch.zeros
        fitted[key] = fill(reference[key].shape, dtype=torch.float32)
    if absent:
        logger.info("TorchGeo weights have no %s: the final norm starts as the identity, as in TorchGeo's model",
                    ", ".join(absent))
    return fitted
