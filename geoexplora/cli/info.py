"""``geoexplora info``: what a backbone + strategy trains, or what a checkpoint holds.

Without ``--weights`` the ViT is built on the meta device (no memory, no download): counting parameters
needs no weights. A checkpoint is described from its ``config.json`` sections and the shapes stored in
``model.safetensors``; its source weights and parent are not loaded.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoexplora.cli.options import add_model_bands_option, add_renamed_bands_flag, add_sensor_option
from geoexplora.errors import GeoExploraError

if TYPE_CHECKING:
    from geoexplora.models import BackboneConfig

STRATEGIES = ("block-expansion", "explora", "full", "linear", "lora", "rlrr")  # the built-in ones, for --help


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="parameter counts of a backbone + adaptation strategy, or the contents of a checkpoint",
        description="Print total and trainable parameters, the trainable share and the trainable groups.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--backbone", help="timm ViT name, e.g. vit_base_patch14_dinov2")
    source.add_argument("--checkpoint", help="a geoexplora checkpoint folder (model.safetensors + config.json)")
    parser.add_argument("--weights", help="source weights: .safetensors/.pth file, or 'timm' for the HF cache")
    bands = parser.add_mutually_exclusive_group()
    add_model_bands_option(bands, "the bands the model reads, e.g. B02,B03,B04,B08 (default red,green,blue)")
    bands.add_argument("--in-chans", type=int, help="number of bands, named B1..Bn")
    add_sensor_option(parser)
    add_renamed_bands_flag(parser, "--model-bands")
    parser.add_argument("--img-size", type=int, help="input side in pixels (default: the model's pretrained size)")
    parser.add_argument("--strategy", default="explora", help=f"adaptation strategy ({', '.join(STRATEGIES)}, ...)")
    parser.add_argument("--unfreeze-blocks", type=_int_list, help="blocks trained in full, e.g. -1 or 10,11")
    parser.add_argument("--lora-rank", type=int, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=float, help="LoRA alpha (update scaled by alpha/rank)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other strategy option (JSON value), e.g. --option num_expanded=3")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _strategy_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {k: v for k, v in (("unfreeze_blocks", args.unfreeze_blocks), ("lora_rank", args.lora_rank),
                                 ("lora_alpha", args.lora_alpha)) if v is not None}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise GeoExploraError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _backbone_config(args: argparse.Namespace) -> BackboneConfig:
    import timm

    from geoexplora.bands import default_band_names
    from geoexplora.models import BackboneConfig

    if args.model_bands:
        bands = args.model_bands
    elif args.in_chans:
        bands = list(default_band_names(args.in_chans))
    else:
        bands = ["red", "green", "blue"]
    img_size = args.img_size
    if img_size is None:
        pretrained = timm.get_pretrained_cfg(args.backbone) if timm.is_model(args.backbone.split(".")[0]) else None
        img_size = pretrained.input_size[-1] if pretrained else 224
    return BackboneConfig(model=args.backbone, weights=args.weights, bands=bands, sensor=args.sensor,
                          img_size=img_size)


def _stored_shapes(directory: Path) -> dict[str, list[int]]:
    """Tensor name -> shape in ``model.safetensors``, read from its header."""
    from safetensors import SafetensorError, safe_open

    from geoexplora.models.lineage import WEIGHTS_NAME

    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise GeoExploraError(f"{path}: checkpoint weights not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise GeoExploraError(f"{path}: not a safetensors file ({e})") from None


def _describe_checkpoint(directory: str) -> dict[str, Any]:
    import torch

    from geoexplora.models import create_backbone, parameter_report, read_checkpoint
    from geoexplora.models.geomodel import build_task_model
    from geoexplora.models.heads import SupervisedModel

    config = read_checkpoint(directory)
    backbone, strategy = config.backbone, config.strategy
    # Counting needs no weights: rebuild on the meta device from the config alone.
    with torch.device("meta"):
        model = build_task_model(strategy.apply(create_backbone(replace(backbone, weights=None))),
                                 config.task, len(config.classes))
    stored = _stored_shapes(Path(directory))
    sections = config.to_dict()
    statistics = sections["preprocessing"].pop("statistics")
    return {
        "checkpoint": str(directory),
        **{k: v for k, v in sections.items() if k not in ("backbone", "strategy")},
        "backbone": backbone.to_dict(),
        "strategy": strategy.to_dict(),
        "band_statistics": sorted((statistics or {}).get("bands", {})),
        "stored_tensors": len(stored),
        "stored_params": sum(int(torch.Size(s).numel()) for s in stored.values()),
        **parameter_report(model.backbone if isinstance(model, SupervisedModel) else model).to_dict(),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from geoexplora.models import create_backbone, create_strategy, parameter_report

    if args.checkpoint:
        info = _describe_checkpoint(args.checkpoint)
    else:
        cfg = _backbone_config(args)
        strategy = create_strategy(args.strategy, **_strategy_options(args))
        device = "cpu" if args.weights else "meta"
        with torch.device(device):
            model = strategy.apply(create_backbone(cfg))
        info = {"backbone": cfg.to_dict(), "strategy": strategy.to_dict(), **parameter_report(model).to_dict()}
    info["base_params"] = info["total_params"] - info["adapter_params"]
    if args.json:
        print(json.dumps(info))
        return 0
    _print_human(info)
    return 0


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f} M"


def _print_human(info: dict[str, Any]) -> None:
    backbone, strategy = info["backbone"], info["strategy"]
    if "checkpoint" in info:
        print(f"checkpoint      {info['checkpoint']}")
        print(f"stored          {info['stored_tensors']} tensors ({info['lineage']['stored']}), "
              f"{_millions(info['stored_params'])} parameters")
        task, pre, lineage = info["task"], info["preprocessing"], info["lineage"]
        print(f"format          {info['format_version']} (geoexplora {info['geoexplora_version'] or 'unknown'})")
        print(f"task            {task['kind']}" + "".join(f", {k} {v}" for k, v in task.items()
                                                          if k != "kind" and v not in (None, {})))
        print(f"preprocessing   {pre['normalization']}, {pre['window_size']} px windows")
        if info["classes"]:
            print("classes         " + ", ".join(f"{c['value']}={c['name']}" for c in info["classes"]))
        for key in ("source_weights", "parent"):
            if lineage[key] is not None:
                print(f"{key.replace('_', ' '):<15} {lineage[key]['path']} (sha256 {str(lineage[key]['sha256'])[:12]})")
        if info["band_statistics"]:
            print(f"band statistics {', '.join(info['band_statistics'])}")
    print(f"backbone        {backbone['model']} (weights: {backbone['weights'] or 'random init'})")
    print(f"bands           {', '.join(backbone['bands'])} ({backbone['img_size']} px)")
    options = ", ".join(f"{k}={v}" for k, v in strategy.items() if k != "name")
    print(f"strategy        {strategy['name']} ({options or 'no options'})")
    print(f"total params    {_millions(info['total_params'])} "
          f"(base model {_millions(info['base_params'])} + adapters {_millions(info['adapter_params'])})")
    print(f"trainable       {_millions(info['trainable_params'])} "
          f"({100 * info['trainable_share']:.2f}% of total, "
          f"{100 * info['trainable_params'] / info['base_params']:.2f}% of the base model)")
    for group, count in info["groups"].items():
        print(f"  {group:<32} {count:>12,}")
