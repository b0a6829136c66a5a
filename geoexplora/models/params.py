"""Parameter report: how many parameters a model has, how many train, and which groups train."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from torch import nn

from geoexplora.models.strategies.base import norm_parameter_names

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_LORA = re.compile(r"^blocks\.(\d+)\..*\.(\w+)\.lora_[AB]\.")


def _ranges(indices: set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5"."""
    out, run = [], []
    for i in sorted(indices):
        if run and i != run[-1] + 1:
            out.append(run)
            run = []
        run.append(i)
    out.append(run)
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in out if r)


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else str(n)


@dataclass
class ParamReport:
    """Parameter counts of a model.

    Attributes:
        total_params: every parameter in the model, adapters included.
        adapter_params: LoRA parameters (included in ``total_params``); ``total - adapter`` is the base model.
        trainable_params: parameters with ``requires_grad``.
        trainable_share: trainable / total.
        groups: trainable parameter count per human-readable group, e.g. ``"blocks.11 (unfrozen)"``,
            ``"lora q,v on blocks 0-10"``, ``"norms"``, ``"cls_token"``, ``"patch_embed"``, ``"head"``.
    """

    total_params: int
    adapter_params: int
    trainable_params: int
    trainable_share: float
    groups: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"trainable {_millions(self.trainable_params)} of {_millions(self.total_params)} "
                 f"({100 * self.trainable_share:.2f}%)"]
        lines += [f"  {name}: {_millions(n)}" for name, n in self.groups.items()]
        return "\n".join(lines)


def parameter_report(model: nn.Module) -> ParamReport:
    """Count ``model``'s parameters (works on the meta device) and group the trainable ones for humans."""
    named = dict(model.named_parameters())
    norms = norm_parameter_names(model)
    total = sum(p.numel() for p in named.values())
    adapters = sum(p.numel() for n, p in named.items() if ".lora_" in n)
    trainable = {n: p.numel() for n, p in named.items() if p.requires_grad}
    unfrozen = {int(m.group(1)) for n in named if (m := _BLOCK.match(n)) and ".lora_" not in n}
    unfrozen = {i for i in unfrozen if all(named[n].requires_grad for n in named
                                           if n.startswith(f"blocks.{i}.") and ".lora_" not in n)}
    lora_blocks = {int(m.group(1)) for n in trainable if (m := _LORA.match(n))}
    lora_targets = sorted({m.group(2) for n in trainable if (m := _LORA.match(n))})
    groups: dict[str, int] = {}
    for name, count in trainable.items():
        block = _BLOCK.match(name)
        if _LORA.match(name):
            bucket = f"lora {','.join(lora_targets)} on blocks {_ranges(lora_blocks)}"
        elif block is not None and int(block.group(1)) in unfrozen:
            bucket = f"blocks.{block.group(1)} (unfrozen)"
        elif name in norms:
            bucket = "norms"
        else:
            bucket = name.split(".")[0]
        groups[bucket] = groups.get(bucket, 0) + count
    groups = dict(sorted(groups.items(), key=lambda item: -item[1]))
    n_trainable = sum(trainable.values())
    return ParamReport(total, adapters, n_trainable, n_trainable / total if total else 0.0, groups)
