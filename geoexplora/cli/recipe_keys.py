"""Recipe keys that moved: an old recipe gets one line naming the new key, not a parser dump.

The pre-training recipe nests the backbone under ``model.backbone``, the strategy's options under
``model.strategy_options`` and the objective's under ``model.dinov2`` / ``model.mae`` (as fine-tuning
does), and both data modules count ``windows_per_epoch``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from geoexplora.errors import GeoExploraError


def _moved(prefix: str, names: str) -> dict[str, str]:
    return {f"model.{name}": f"model.{prefix}.{name}" for name in names.split()}


RENAMED_KEYS: dict[str, dict[str, str]] = {
    "pretrain": {
        **_moved("backbone", "model weights sensor img_size embed band_groups embed_dim depth num_heads patch_size"),
        **_moved("strategy_options", "unfreeze_blocks lora_rank lora_alpha lora_dropout train_patch_embed"),
        **_moved("dinov2", "num_prototypes head_hidden_dim head_bottleneck_dim global_crop_size local_crop_size "
                           "num_local_crops teacher_temp teacher_temp_warmup momentum koleo_weight"),
        **_moved("mae", "crop_size mask_ratio decoder_dim decoder_depth decoder_heads decoder_weights "
                        "decoder_lora_rank norm_pix_loss preview_every_n_steps"),
        "data.samples_per_epoch": "data.windows_per_epoch",
    },
}


def _flat_keys(tree: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        yield f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flat_keys(value, f"{prefix}{key}.")


def _config_files(argv: Sequence[str]) -> list[Path]:
    return [Path(argv[i + 1]) for i, arg in enumerate(argv[:-1]) if arg == "--config"]


def check_renamed_keys(command: str, argv: Sequence[str]) -> None:
    """Raise a one-line GeoExploraError if a recipe (``--config``) or a flag of ``argv`` uses a moved key."""
    renamed = RENAMED_KEYS.get(command, {})
    if not renamed:
        return
    for path in _config_files(argv):
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # LightningCLI reports unreadable recipes itself
        for key in _flat_keys(tree) if isinstance(tree, Mapping) else ():
            if key in renamed:
                raise GeoExploraError(f"{path}: recipe key {key} is now {renamed[key]}: move it there")
    for arg in argv:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if key in renamed:
            raise GeoExploraError(f"--{key} is now --{renamed[key]}")
