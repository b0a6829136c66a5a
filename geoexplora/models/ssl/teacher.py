"""An EMA teacher that stores only the student's trainable parameters.

ExPLoRA trains a few parameters of a large frozen ViT. A deep-copied teacher would duplicate the frozen
weights; here the teacher keeps an EMA copy of the trainable tensors only and runs the student's own
module with those tensors swapped in (``torch.func.functional_call``). Frozen parameters and buffers are
read from the student, so they are shared.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.func import functional_call


def cosine_momentum(step: int, total_steps: int, base: float = 0.992, final: float = 1.0) -> float:
    """EMA momentum at ``step``: cosine from ``base`` (step 0) to ``final`` (step ``total_steps``)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def _buffer_name(parameter_name: str) -> str:
    return parameter_name.replace(".", "__")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode (no dropout / drop-path), then restore each submodule's mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class EMATeacher(nn.Module):
    """EMA of a student's trainable parameters, held as buffers (never trained, never in ``parameters()``).

    The set of tracked tensors is fixed at construction: build the student completely (adapters injected,
    parameters frozen) before creating the teacher.

    Args:
        student: The module whose trainable parameters are tracked. It is not stored; pass it to
            :meth:`update` and :meth:`forward`.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.parameter_names = [name for name, p in student.named_parameters() if p.requires_grad]
        for name, p in student.named_parameters():
            if p.requires_grad:
                self.register_buffer(_buffer_name(name), p.detach().clone())

    def ema_tensors(self) -> dict[str, torch.Tensor]:
        """The teacher's tensors keyed by the student's parameter names."""
        return {name: getattr(self, _buffer_name(name)) for name in self.parameter_names}

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, for every tracked tensor."""
        params = dict(student.named_parameters())
        teacher = list(self.ema_tensors().values())
        current = [params[name].detach().to(t.dtype) for name, t in zip(self.parameter_names, teacher)]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, current, alpha=1 - momentum)

    @torch.no_grad()
    def forward(self, student: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Call ``student(*args, **kwargs)`` in eval mode with the EMA tensors in place of its trainable ones."""
        with eval_mode(student):
            return functional_call(student, self.ema_tensors(), args, kwargs)
