"""Typed checkpoints, format version 2: ``config.json`` (typed sections) + ``model.safetensors``.

``config.json`` holds one section per concern::

    format_version      2 (format 1, with a free ``extra`` dict, still loads: see :func:`read_checkpoint`)
    geoexplora_version  the version that wrote it
    backbone            BackboneConfig.to_dict(); ``weights`` repeats lineage.source_weights.path
                        (null when every tensor is stored)
    strategy            StrategyConfig.to_dict()
    task                kind (pretrain, classification, multilabel, segmentation), head options,
                        ignore_index, pre-training objective and steps
    preprocessing       file and model band names, per-band statistics, normalisation mode, window size,
                        and for TorchGeo start weights their own bands and mean/std (``source``)
    classes             [{value (label value in the source raster), name, color [r, g, b]}]
    lineage             source_weights {path, sha256, size}, parent {path, sha256 of its model.safetensors},
                        stored ("trained" or "full")

``model.safetensors`` holds the trained tensors only (``stored: trained``, adapter-only) when the frozen
base can be rebuilt from a file (the source weights, or the parent checkpoint); otherwise (a random
initialisation, or an exported checkpoint) every tensor of the model (``stored: full``), so that every
load gives the same network. How ``lineage`` paths are written and found again: :mod:`geoexplora.models.lineage`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from geoexplora.data.stats import BandStatistics, Normalizer
from geoexplora.errors import GeoExploraError
from geoexplora.models.backbone import BackboneConfig
from geoexplora.models.lineage import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    FileRef,
    Lineage,
    Stored,
    make_lineage,
    relative_path,
)
from geoexplora.models.strategies import StrategyConfig, strategy_from_dict
from geoexplora.models.torchgeo_weights import SourceNormalization, is_torchgeo

FORMAT_VERSION = 2
TASK_KINDS = ("pretrain", "classification", "multilabel", "segmentation")
SECTIONS = ("backbone", "strategy", "task", "preprocessing", "classes", "lineage")
# Default class colours (matplotlib's tab20 order, as 8-bit RGB): class i gets PALETTE[i % 20].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
)


@dataclass(frozen=True)
class ClassInfo:
    """One output class.

    Attributes:
        value: the class's label value in the source label raster (its index for vector or tile labels);
            class maps store this value.
        name: display name.
        color: 8-bit RGB.
    """

    value: int
    name: str
    color: tuple[int, int, int]


def parse_color(color: str | Sequence[int]) -> tuple[int, int, int]:
    """``"#rrggbb"`` or ``[r, g, b]`` (0..255 each) as an RGB tuple."""
    if isinstance(color, str):
        text = color.lstrip("#")
        if len(text) == 6:
            try:
                return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
            except ValueError:
                pass
    elif len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color):
        return (int(color[0]), int(color[1]), int(color[2]))
    raise GeoExploraError(f"class colour {color!r}: use '#rrggbb' or [r, g, b] with values 0..255")


def make_classes(
    names: Sequence[str], values: Sequence[int] | None = None, colors: Sequence[str | Sequence[int]] | None = None
) -> tuple[ClassInfo, ...]:
    """Classes from names, label values (default 0..K-1) and colours (default :data:`PALETTE`)."""
    values = list(range(len(names))) if values is None else [int(v) for v in values]
    if colors is not None and len(colors) != len(names):
        raise GeoExploraError(f"{len(colors)} class colours for {len(names)} classes {list(names)}")
    if len(values) != len(names) or len(set(values)) != len(values) or min(values, default=0) < 0:
        raise GeoExploraError(f"class values {values} must be {len(names)} distinct non-negative integers")
    rgb = [parse_color(c) for c in colors] if colors is not None else [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    return tuple(ClassInfo(v, str(n), c) for v, n, c in zip(values, names, rgb, strict=True))


@dataclass(frozen=True)
class Preprocessing:
    """What an input window must go through before the model sees it.

    Attributes:
        model_bands: band names in the model's channel order.
        statistics: per-band statistics in the raster's units (None: none recorded).
        normalization: ``"standardize"`` or ``"percentile"``.
        window_size: side in pixels of the windows the model was trained on.
        file_bands: names of all the training file's bands, in file order, when they were given
            (used for files without band descriptions that have as many bands).
        source: the TorchGeo start weights' bands and normalisation, when the backbone started from them.
    """

    model_bands: tuple[str, ...]
    statistics: BandStatistics | None
    normalization: str = "standardize"
    window_size: int = 224
    file_bands: tuple[str, ...] | None = None
    source: SourceNormalization | None = None

    def normalizer(self) -> Normalizer:
        """The one normaliser of this model: (..., C, H, W) in raster units -> model input.

        Without recorded statistics, a model over its TorchGeo start weights' own bands is normalised as
        those weights were trained (``source``, ``standardize``). It is an ``nn.Module``; move it with the
        model (``.to(device)``) so it runs where the batch is.
        """
        statistics = self.statistics
        if statistics is None and self.source is not None and self.normalization == "standardize":
            statistics = self.source.statistics(self.model_bands)
        if statistics is None:
            raise GeoExploraError("the checkpoint records no band statistics; compute them with geoexplora stats")
        return Normalizer(statistics, self.model_bands, self.normalization)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_bands": list(self.model_bands),
            "file_bands": None if self.file_bands is None else list(self.file_bands),
            "statistics": None if self.statistics is None else self.statistics.to_dict(),
            "normalization": self.normalization,
            "window_size": self.window_size,
            "source": None if self.source is None else self.source.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        stats = data["statistics"]
        return cls(tuple(data["model_bands"]), None if stats is None else BandStatistics.from_dict(stats),
                   str(data["normalization"]), int(data["window_size"]),
                   None if data.get("file_bands") is None else tuple(data["file_bands"]),
                   None if data.get("source") is None else SourceNormalization.from_dict(data["source"]))


@dataclass(frozen=True)
class TaskConfig:
    """What the checkpoint's model does.

    Attributes:
        kind: ``pretrain`` (a backbone), ``classification``, ``multilabel`` or ``segmentation``.
        head: the head's options (``pool``, ``segmentation_head``, ``feature_blocks``, ``decoder_channels``,
            ...), as the fine-tuning task took them.
        ignore_index: target value that was not scored.
        objective: pre-training objective (``dinov2``, ``mae``), for ``pretrain``.
        steps: optimiser steps trained, when known.
        objective_options: the objective's options as trained (``DINOv2Options`` / ``MAEOptions`` as a
            dict, plus ``export``: ``teacher`` or ``student``, which network the tensors are), for ``pretrain``.
    """

    kind: str
    head: dict[str, Any] = field(default_factory=dict)
    ignore_index: int = 255
    objective: str | None = None
    steps: int | None = None
    objective_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise GeoExploraError(f"task kind {self.kind!r}: use one of {', '.join(TASK_KINDS)}")


@dataclass(frozen=True)
class CheckpointConfig:
    """Every section of ``config.json``, typed."""

    backbone: BackboneConfig
    strategy: StrategyConfig
    task: TaskConfig
    preprocessing: Preprocessing
    classes: tuple[ClassInfo, ...] = ()
    lineage: Lineage = Lineage()
    format_version: int = FORMAT_VERSION
    geoexplora_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def ref(r: FileRef | None) -> dict[str, Any] | None:
            return None if r is None else {"path": r.path, "sha256": r.sha256, "size": r.size}

        return {
            "format_version": self.format_version,
            "geoexplora_version": self.geoexplora_version,
            "backbone": self.backbone.to_dict(),
            "strategy": self.strategy.to_dict(),
            "task": {"kind": self.task.kind, "head": self.task.head, "ignore_index": self.task.ignore_index,
                     "objective": self.task.objective, "steps": self.task.steps,
                     "objective_options": self.task.objective_options},
            "preprocessing": self.preprocessing.to_dict(),
            "classes": [{"value": c.value, "name": c.name, "color": list(c.color)} for c in self.classes],
            "lineage": {"source_weights": ref(self.lineage.source_weights), "parent": ref(self.lineage.parent),
                        "stored": self.lineage.stored},
        }


# --- writing ---------------------------------------------------------------------------------------------


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that train: every parameter with ``requires_grad`` (adapters, unfrozen parts, head)."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``model`` (parameters and persistent buffers), contiguous, on the CPU."""
    return {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}


def save_checkpoint(directory: str | Path, model: nn.Module, config: CheckpointConfig, *, full: bool = False) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (format 2) into ``directory``.

    Args:
        directory: created if needed; files are written under temporary names and renamed when complete.
        model: the module the config describes: the adapted backbone (``pretrain``) or backbone + head.
        config: its sections; lineage paths may be absolute (they are written relative to ``directory``);
            a local ``backbone.weights`` file is hashed into ``lineage.source_weights`` when that is unset;
            TorchGeo weights' bands and normalisation go into ``preprocessing.source`` when that is unset.
        full: store every tensor (an exported, self-contained checkpoint). Every tensor is stored anyway
            when the base is a random initialisation with no parent: nothing else could rebuild it.
    """
    from geoexplora import __version__

    if not isinstance(config, CheckpointConfig):
        raise GeoExploraError(f"save_checkpoint needs a CheckpointConfig, got {type(config).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lineage = config.lineage
    if lineage.source_weights is None and config.backbone.weights_file is not None:
        lineage = replace(lineage, source_weights=make_lineage(config.backbone).source_weights)
    if config.preprocessing.source is None and is_torchgeo(config.backbone.weights):
        config = replace(config, preprocessing=replace(config.preprocessing,
                                                       source=SourceNormalization.of(config.backbone.weights)))
    random_base = config.backbone.weights is None and lineage.parent is None
    stored: Stored = "full" if full or random_base else "trained"

    def rel(ref: FileRef | None) -> FileRef | None:
        return None if ref is None else replace(ref, path=relative_path(ref.path, directory))

    source = rel(lineage.source_weights)
    if stored == "full":
        backbone = replace(config.backbone, weights=None)  # the base is in model.safetensors
    else:
        backbone = replace(config.backbone, weights=source.path if source is not None else config.backbone.weights)
    config = replace(config, backbone=backbone, lineage=Lineage(source, rel(lineage.parent), stored),
                     format_version=FORMAT_VERSION, geoexplora_version=__version__)
    tensors = full_state_dict(model) if stored == "full" else trainable_state_dict(model)
    weights_tmp, config_tmp = directory / f".{WEIGHTS_NAME}.tmp", directory / f".{CONFIG_NAME}.tmp"
    save_file(tensors, weights_tmp)
    config_tmp.write_text(json.dumps(config.to_dict(), indent=2))
    os.replace(weights_tmp, directory / WEIGHTS_NAME)
    os.replace(config_tmp, directory / CONFIG_NAME)
    return directory


# --- reading ---------------------------------------------------------------------------------------------


def read_checkpoint(directory: str | Path) -> CheckpointConfig:
    """``config.json`` parsed and checked, format 2 or format 1 (read into the same sections).

    Format 1 (``backbone``, ``strategy``, ``extra``): classes take their index as label value and the
    default palette; the source weights and ``init_checkpoint`` are looked up like format-2 paths, without
    a hash to check.

    Raises:
        GeoExploraError: one line naming ``config.json`` for a missing file, bad JSON, a missing section,
            a format from a newer geoexplora.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise GeoExploraError(f"{path}: checkpoint config not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GeoExploraError(f"{path}: not a geoexplora checkpoint config ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise GeoExploraError(f"{path}: not a geoexplora checkpoint config (a JSON object is expected)")
    version = data.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise GeoExploraError(f"{path}: checkpoint format {version!r} is newer than this geoexplora reads "
                              f"({FORMAT_VERSION}); upgrade geoexplora")
    try:
        if version == 1:
            return _from_format1(data)
        missing = [s for s in SECTIONS if s not in data]
        if missing:
            raise GeoExploraError(f"missing section {missing[0]!r}; restore the file as the checkpoint wrote it")
        return _from_format2(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, GeoExploraError):
            raise GeoExploraError(f"{path}: {e}") from None
        raise GeoExploraError(f"{path}: not a geoexplora checkpoint config ({type(e).__name__}: {e})") from None


def _ref(data: Mapping[str, Any] | None) -> FileRef | None:
    return None if data is None else FileRef(str(data["path"]), data.get("sha256"), data.get("size"))


def _from_format2(data: Mapping[str, Any]) -> CheckpointConfig:
    task, lineage = data["task"], data["lineage"]
    if lineage["stored"] not in ("trained", "full"):
        raise GeoExploraError(f"lineage.stored {lineage['stored']!r}: use 'trained' or 'full'")
    return CheckpointConfig(
        backbone=BackboneConfig.from_dict(data["backbone"]),
        strategy=strategy_from_dict(data["strategy"]),
        task=TaskConfig(task["kind"], dict(task.get("head") or {}), int(task.get("ignore_index", 255)),
                        task.get("objective"), task.get("steps"), dict(task.get("objective_options") or {})),
        preprocessing=Preprocessing.from_dict(data["preprocessing"]),
        classes=tuple(ClassInfo(int(c["value"]), str(c["name"]), parse_color(c["color"])) for c in data["classes"]),
        lineage=Lineage(_ref(lineage["source_weights"]), _ref(lineage["parent"]), lineage["stored"]),
        format_version=int(data["format_version"]),
        geoexplora_version=data.get("geoexplora_version"),
    )


def _from_format1(data: Mapping[str, Any]) -> CheckpointConfig:
    backbone = BackboneConfig.from_dict(data["backbone"])
    extra = data.get("extra") or {}
    stats = extra.get("band_statistics")
    weights = backbone.weights
    parent = extra.get("init_checkpoint")
    return CheckpointConfig(
        backbone=backbone,
        strategy=strategy_from_dict(data["strategy"]),
        task=TaskConfig(extra.get("task") or "pretrain", dict(extra.get("head") or {}),
                        int(extra.get("ignore_index", 255)), extra.get("objective"), extra.get("steps")),
        preprocessing=Preprocessing(tuple(backbone.bands), None if stats is None else BandStatistics.from_dict(stats),
                                    extra.get("normalization") or "standardize", backbone.img_size),
        classes=make_classes(extra["classes"]) if extra.get("classes") else (),
        lineage=Lineage(None if backbone.weights_file is None else FileRef(weights),
                        None if parent is None else FileRef(str(parent))),
        format_version=1,
    )


def load_tensors(directory: str | Path, model: nn.Module, stored: Stored) -> nn.Module:
    """Load ``model.safetensors`` into ``model`` (rebuilt from the config) strictly.

    ``stored="trained"``: exactly the trainable parameters; ``"full"``: exactly ``model.state_dict()``.
    Shapes must match.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise GeoExploraError(f"{path}: checkpoint weights not found")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise GeoExploraError(f"{path}: not a safetensors file ({e})") from None
    if stored == "full":
        expected = dict(model.state_dict())
    else:
        expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [n for n in set(expected) & set(tensors) if expected[n].shape != tensors[n].shape]
    if missing or unexpected or mismatched:
        raise GeoExploraError(
            f"{path}: does not fit the model its config describes "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatch {mismatched[:3]})"
        )
    model.load_state_dict(tensors, strict=stored == "full")
    return model
