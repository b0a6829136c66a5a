"""A loaded checkpoint (:class:`~geoexplora.models.GeoModel`) over a whole raster: what ``predict`` and
``GeoModel.predict_raster`` run.

The checkpoint says everything the engine (:func:`~geoexplora.inference.predict.predict_raster`) needs: the
bands to read (by name), the normaliser (built once from its preprocessing, on the model's device), the
window size, the classes (label values, names, colours) and the provenance tags of the outputs.
"""

from __future__ import annotations

from functools import partial
from collections.abc import Sequence
from pathlib import Path

import torch

from geoexplora.data.sources import as_input_path
from geoexplora.data.stack import RasterStack
from geoexplora.errors import GeoExploraError
from geoexplora.inference.bands import model_band_indexes
from geoexplora.inference.predict import PredictSummary, predict_raster
from geoexplora.inference.stack_reader import StackModel, StackSource
from geoexplora.models import BackboneConfig, CheckpointConfig, GeoModel, Preprocessing

PREDICT_TASKS = ("segmentation", "classification", "multilabel")


def check_predictable(config: CheckpointConfig, directory: Path) -> None:
    """Refuse a checkpoint that has no head to predict with (a pre-training checkpoint)."""
    if config.task.kind not in PREDICT_TASKS:
        raise GeoExploraError(f"{directory}: not a fine-tuned checkpoint (task {config.task.kind!r}); "
                              "predict needs one from geoexplora finetune")


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GeoExploraError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GeoExploraError(f"--device {name}: use auto, cpu, cuda or cuda:N") from None


def band_indexes(preprocessing: Preprocessing, raster: Path, band_names: Sequence[str] | None = None) -> list[int]:
    """1-based indexes of the model's bands in ``raster``: by ``band_names``, the file's band descriptions,
    or (for a file without descriptions and as many bands) the training file's band names."""
    return model_band_indexes(raster, preprocessing.model_bands, band_names, preprocessing.file_bands)[1]


def predict_with_model(
    model: GeoModel,
    raster: Path,
    out: Path,
    *,
    probabilities: bool | Path = False,
    bands: Sequence[str] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    overwrite: bool = False,
    resume: bool = False,
    allow_no_crs: bool = False,
    progress: bool = True,
    reader_threads: int = 1,
    stack: RasterStack | None = None,
) -> PredictSummary:
    """Predict ``raster`` into the class map ``out`` (COG) with ``model``; see :func:`predict_raster`.

    Args:
        model: a fine-tuned checkpoint; moved to ``device``.
        probabilities: True writes ``<out stem>.probabilities.tif`` beside ``out``; a path writes there.
        bands: names of all the file's bands when its descriptions differ from the checkpoint's band names.
        tile: window side (default: the window size the model was trained on); overlap: default
            ``min(32, tile // 4)``.
        reader_threads: threads reading windows (outputs do not depend on it).
        stack: for a temporal checkpoint, the dated rasters of one place (``raster`` is ignored: the
            outputs take the stack's first date's grid); each window holds every date.

    The class map stores the classes' label values with a colour table and class names; every output is
    tagged with the checkpoint's sha256, the geoexplora version, the tile and the overlap.
    """
    check_predictable(model.config, model.directory)
    check_stack_input(model.config.backbone, model.directory, stack is not None, None if stack is None else len(stack))
    raster = stack.paths[0] if stack is not None else as_input_path(raster)
    out = Path(out)
    indexes = band_indexes(model.preprocessing, raster, bands)
    device = resolve_device(device)
    model.to(device)
    tile = tile or model.preprocessing.window_size
    overlap = overlap if overlap is not None else min(32, tile // 4)
    probs = out.with_name(f"{out.stem}.probabilities.tif") if probabilities is True else probabilities or None
    network, normalize, source, tags = model.model, model.normalizer(), None, {"checkpoint_sha256": model.sha256}
    if stack is not None:
        network = StackModel(model.model, model.backbone, normalize, stack.days).to(device)
        source, normalize = partial(StackSource, stack), None
        tags["stack_dates"] = ",".join(d.isoformat() for d in stack.dates)
    return predict_raster(
        raster, out, network, num_classes=len(model.classes), tile=tile,
        overlap=overlap, batch_size=batch_size, device=device,
        normalize=normalize, bands=indexes,
        mode="segmentation" if model.task.kind == "segmentation" else "classification",
        probabilities=None if probs is None else Path(probs), overwrite=overwrite, resume=resume,
        progress=progress, allow_no_crs=allow_no_crs, classes=model.classes,
        tags=tags, reader_threads=reader_threads, window_source=source,
    )


def check_stack_input(backbone: BackboneConfig, where: Path | str, stacked: bool, dates: int | None = None) -> None:
    """A temporal backbone reads stacks (``stacked``) of at most its ``num_frames`` ``dates``; any other
    backbone, single rasters. ``where`` (the checkpoint) is named in the error; ``dates`` None: not counted
    yet (the stack is not read)."""
    temporal = backbone.embed == "temporal"
    if temporal and not stacked:
        raise GeoExploraError(f"{where}: a temporal checkpoint reads a stack of dated rasters; pass --stack")
    if stacked and not temporal:
        raise GeoExploraError(f"{where}: --stack needs a temporal checkpoint (model.backbone.embed: temporal); "
                              "this one reads each raster on its own")
    if dates is not None and backbone.num_frames is not None and dates > backbone.num_frames:
        raise GeoExploraError(f"{where}: a stack of {dates} dates, more than the {backbone.num_frames} the "
                              "checkpoint's date encoding was trained with")
