"""``geoexplora export``: one self-contained checkpoint folder (merged full weights), and optionally ONNX.

:func:`export_checkpoint` loads a checkpoint with everything it refers to (source weights, parent), folds
the adapters into plain weights (LoRA and RLRR merged, q/k/v fused back, a pre-training parent already
folded in, Block Expansion's inserted blocks kept as ordinary blocks) and writes every tensor
(``lineage.stored: full``) with strategy ``linear``: the folder loads with no other file. Its lineage still
names the source weights and, as ``parent``, the checkpoint it was exported from (path and sha256).

:func:`export_onnx` writes the whole model, normalisation included, as an ONNX graph: input ``image``
float32 (B, C, S, S) in the raster's units with NaN at nodata pixels (S the training window size, B
dynamic), output ``logits`` (B, K) or (B, K, S, S), or the pooled feature (B, D) of a ``pretrain``
checkpoint. :func:`onnx_parity` runs it with onnxruntime against PyTorch.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from geoexplora.errors import GeoExploraError
from geoexplora.models.checkpoint import save_checkpoint
from geoexplora.models.lineage import CONFIG_NAME, FileRef, Lineage, SearchDirs
from geoexplora.models.geomodel import GeoModel, fold_backbone, load_model
from geoexplora.models.heads import SupervisedModel
from geoexplora.models.strategies import create_strategy

# Strategies whose adapted model folds into a plain timm ViT (see fold_backbone).
FOLDABLE_STRATEGIES = ("block-expansion", "explora", "full", "linear", "lora", "rlrr")
ONNX_OPSET = 17


def check_export_target(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that exists (unless ``overwrite``) or whose parent folder is missing."""
    if not out.parent.is_dir():
        raise GeoExploraError(f"{out}: parent folder {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise GeoExploraError(f"{out}: already exists; pass --overwrite to replace it")


def check_foldable(geomodel: GeoModel) -> None:
    """Refuse a checkpoint whose strategy has no merged form, naming its config and the strategy."""
    name = geomodel.config.strategy.name
    if name not in FOLDABLE_STRATEGIES:
        raise GeoExploraError(f"{geomodel.directory / CONFIG_NAME}: strategy {name!r} cannot be folded into plain "
                              f"weights (export supports {', '.join(FOLDABLE_STRATEGIES)}); use the checkpoint as it is")


def merged_model(geomodel: GeoModel) -> GeoModel:
    """``geomodel`` with its adapters folded into plain weights (strategy ``linear``); ``geomodel`` is used up."""
    check_foldable(geomodel)
    config = geomodel.config
    plain, plain_config = fold_backbone(geomodel.backbone, config.backbone)
    strategy = create_strategy("linear")
    strategy.apply(plain)
    model = plain
    if isinstance(geomodel.model, SupervisedModel):
        model = SupervisedModel(plain, geomodel.model.head, geomodel.model.feature_blocks)
    source = config.lineage.source_weights
    if source is not None and not Path(source.path).is_absolute():
        source = replace(source, path=str(geomodel.directory / source.path))
    lineage = Lineage(source, FileRef(str(geomodel.directory.resolve()), geomodel.sha256), "full")
    merged = replace(config, backbone=plain_config, strategy=strategy, lineage=lineage)
    return GeoModel(model.eval(), merged, geomodel.directory, geomodel.sha256)


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, *, weights_dir: SearchDirs = None, allow_download: bool = False,
    overwrite: bool = False,
) -> GeoModel:
    """Write ``checkpoint`` as a self-contained folder ``out`` (merged full weights); returns the merged model.

    ``out`` is written as ``.<name>.partial`` beside it and renamed when complete.

    Raises:
        GeoExploraError: before anything is written, for an existing ``out`` (without ``overwrite``), a
            missing parent folder, a checkpoint that does not load, or a strategy that does not fold.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    check_export_target(out, overwrite)
    if out.resolve() == checkpoint.resolve():
        raise GeoExploraError(f"{out}: is the checkpoint itself; export into another folder")
    merged = merged_model(load_model(checkpoint, weights_dir=weights_dir, allow_download=allow_download))
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_checkpoint(partial, merged.model, merged.config, full=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return replace(merged, directory=out)


class DeployedModel(nn.Module):
    """Normalisation + model: raw image (B, C, S, S) with NaN at nodata -> logits (what the ONNX graph holds)."""

    def __init__(self, geomodel: GeoModel) -> None:
        super().__init__()
        self.normalizer = geomodel.preprocessing.normalizer()
        self.model = geomodel.model

    def forward(self, image: Tensor) -> Tensor:
        return self.model(self.normalizer(image))


def export_onnx(geomodel: GeoModel, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``geomodel`` (normalisation included) as ONNX to ``path``: see the module docstring.

    Raises:
        GeoExploraError: for a temporal backbone (5-D input), a checkpoint without band statistics, an
            existing ``path`` (without ``overwrite``), or when the ``onnx`` extra is not installed.
    """
    path = Path(path)
    if geomodel.config.backbone.embed == "temporal":
        raise GeoExploraError(f"{geomodel.directory / CONFIG_NAME}: temporal backbones have no ONNX export; "
                              "export one date per model instead")
    check_export_target(path, overwrite)
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise GeoExploraError("ONNX export needs the onnx extra: pip install 'geoexplora[onnx]'") from None
    deployed = DeployedModel(geomodel).cpu().eval()
    size = geomodel.preprocessing.window_size
    example = torch.zeros(1, len(geomodel.preprocessing.model_bands), size, size)
    partial = path.with_name(f".{path.name}.partial")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notices about the TorchScript exporter
        torch.onnx.export(deployed, (example,), str(partial), dynamo=False, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=ONNX_OPSET)
    os.replace(partial, path)
    return path


def onnx_parity(geomodel: GeoModel, path: str | Path, image: np.ndarray) -> float:
    """Max abs difference between onnxruntime on ``path`` and PyTorch on ``image`` float32 (B, C, S, S)."""
    try:
        import onnxruntime
    except ImportError:
        raise GeoExploraError("checking ONNX needs the onnx extra: pip install 'geoexplora[onnx]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"image": image.astype(np.float32)})[0]
    with torch.no_grad():
        reference = DeployedModel(geomodel).cpu().eval()(torch.from_numpy(image.astype(np.float32))).numpy()
    return float(np.abs(ours - reference).max())
