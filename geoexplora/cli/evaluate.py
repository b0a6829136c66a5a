"""``geoexplora evaluate --checkpoint DIR --config RECIPE``: metrics of a fine-tuned checkpoint.

Reads the recipe's ``data`` section (the data module's arguments; band statistics and normalisation
come from the checkpoint, loaded with :func:`geoexplora.models.load_model`), scores one split, prints a table (or one JSON object with ``--json``) and,
with ``--out DIR``, writes ``confusion_matrix.png`` / ``per_class_iou.png``. ``--retention SOURCE`` runs
the forgetting check: k-NN accuracy (DINOv2 protocol) of the source backbone and of the adapted one on a
labelled source-domain set (a tiles folder / CSV, or a recipe YAML whose ``data`` section describes it).
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoexplora.cli.options import add_checkpoint_options
from geoexplora.cli.run_folder import check_writable_folder
from geoexplora.errors import GeoExploraError

if TYPE_CHECKING:
    from geoexplora.models import GeoModel, Preprocessing
    from geoexplora.models.lineage import SearchDirs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="score a fine-tuned checkpoint on a recipe's data")
    parser.add_argument("--checkpoint", required=True, help="fine-tuned geoexplora checkpoint folder")
    parser.add_argument("--config", required=True, help="recipe YAML whose data section gives the labelled data")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to score")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--out", help="folder for confusion-matrix / per-class IoU plots and metrics.json")
    parser.add_argument("--retention", metavar="SOURCE_DATA",
                        help="k-NN accuracy on a source-domain labelled set before and after adaptation")
    add_checkpoint_options(parser)
    parser.set_defaults(run=run)


def read_data_section(path: str | Path) -> dict[str, Any]:
    from geoexplora.cli.run_folder import read_recipe

    path = Path(path)
    recipe = read_recipe(path)
    if not isinstance(recipe.get("data"), dict):
        raise GeoExploraError(f"{path}: recipe has no data section")
    return dict(recipe["data"])


def data_module(data: dict[str, Any], preprocessing: Preprocessing | None, source: str | Path = "recipe"):
    from geoexplora.tasks.finetune_data import LabelledRasterDataModule

    if preprocessing is not None:
        stats = preprocessing.statistics
        data.update(band_statistics=None if stats is None else stats.to_dict(), normalization=preprocessing.normalization)
    unknown = sorted(set(data) - set(inspect.signature(LabelledRasterDataModule).parameters))
    if unknown:
        raise GeoExploraError(f"{source}: unknown data key {unknown[0]!r}; the keys are "
                              f"{', '.join(inspect.signature(LabelledRasterDataModule).parameters)}")
    module = LabelledRasterDataModule(**data)
    module.setup()
    return module


def score(model: GeoModel, loader) -> dict[str, Any]:
    """Metrics of ``model`` (a fine-tuned checkpoint) over ``loader``'s normalised batches."""
    import torch

    from geoexplora.models import stack_dates
    from geoexplora.tasks.finetune import task_metrics

    kind = model.task.kind
    metrics = task_metrics(kind, len(model.classes), model.task.ignore_index)
    with torch.no_grad():
        for batch in loader:
            with stack_dates(model.backbone, batch.get("dates")):
                logits = model.model(batch["image"])
            target = batch["mask"] if kind == "segmentation" else batch["label"]
            metrics.update(logits.sigmoid() if kind == "multilabel" else logits,
                           target.long() if kind == "multilabel" else target)
    return {k: v.tolist() for k, v in metrics.compute().items()}


def retention(model: GeoModel, source: str, weights_dir: SearchDirs = None) -> dict[str, float]:
    """k-NN accuracy on ``source`` with the source backbone (before) and the adapted one (after)."""
    from geoexplora.models import create_backbone
    from geoexplora.models.geomodel import source_backbone
    from geoexplora.tasks.knn import extract_features, knn_accuracy

    data = read_data_section(source) if source.endswith((".yaml", ".yml")) else {"tiles": source}
    data.setdefault("label_mode", "majority")
    module = data_module(data, None)
    before = create_backbone(source_backbone(model.directory, model.config, weights_dir))
    out = {}
    for name, backbone in (("before", before), ("after", model.backbone)):
        train = extract_features(backbone, module.train_dataloader())
        test = extract_features(backbone, module.test_dataloader())
        out[name] = knn_accuracy(*train, *test, len(module.classes), ignore_index=model.task.ignore_index)
    out["drop"] = out["before"] - out["after"]
    return out


def plot(results: dict[str, Any], classes: list[str], out: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) stays as it is

    out.mkdir(parents=True, exist_ok=True)
    if "confusion_matrix" in results:
        fig = Figure(figsize=(1 + 0.5 * len(classes), 1 + 0.5 * len(classes)))
        ax = fig.subplots()
        ax.imshow(results["confusion_matrix"], cmap="Blues")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true")
        ax.set_xticklabels(classes, rotation=90)
        ax.set_yticklabels(classes)
        fig.tight_layout()
        fig.savefig(out / "confusion_matrix.png", dpi=100)
    if "per_class_iou" in results:
        fig = Figure(figsize=(2 + 0.5 * len(classes), 3))
        ax = fig.subplots()
        ax.bar(classes, results["per_class_iou"])
        ax.set(ylabel="IoU", ylim=(0, 1))
        ax.tick_params(axis="x", rotation=90)
        fig.tight_layout()
        fig.savefig(out / "per_class_iou.png", dpi=100)


def table(results: dict[str, Any], classes: list[str]) -> str:
    lines = [f"{'metric':<24}{'value':>10}"]
    lines += [f"{name:<24}{value:>10.4f}" for name, value in results.items() if isinstance(value, float)]
    for name, value in results.items():
        if name == "per_class_iou":
            lines += [f"{'IoU ' + c:<24}{v:>10.4f}" for c, v in zip(classes, value, strict=True)]
        elif isinstance(value, dict):
            lines += [f"{name + ' ' + k:<24}{v:>10.4f}" for k, v in value.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from geoexplora.models import load_model

    data = read_data_section(args.config)
    if args.out:
        check_writable_folder(Path(args.out), f"--out {args.out}")
    model = load_model(args.checkpoint, weights_dir=args.weights_dir, allow_download=args.allow_download)
    if model.task.kind == "pretrain":
        raise GeoExploraError(f"{args.checkpoint}: a pre-training checkpoint has no head to score; "
                              "evaluate one from geoexplora finetune")
    classes = [c.name for c in model.classes]
    module = data_module(data, model.preprocessing, args.config)
    if tuple(module.band_names) != tuple(model.preprocessing.model_bands):
        raise GeoExploraError(f"{args.config}: data bands {list(module.band_names)} differ from the checkpoint's "
                              f"{list(model.preprocessing.model_bands)}")
    if list(module.classes) != classes:
        raise GeoExploraError(f"{args.config}: data classes {module.classes} differ from the checkpoint's {classes}")
    loader = {"train": module.train_dataloader, "val": module.val_dataloader, "test": module.test_dataloader}
    results = score(model, loader[args.split]())
    if args.retention:
        results["knn_retention"] = retention(model, args.retention, args.weights_dir)
    if args.out:
        plot(results, classes, Path(args.out))
        (Path(args.out) / "metrics.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({"split": args.split, "classes": classes, **results}) if args.json else table(results, classes))
    return 0
