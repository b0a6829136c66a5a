"""What every command prints around its work: the ``--quiet``/``--no-progress`` switches and the closing line.

Light on purpose (no torch import), so ``geoexplora --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta


def add_terminal_options(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--no-progress``, the same on every command."""
    parser.add_argument("--quiet", action="store_true",
                        help="no progress, no informational lines, no closing summary (results and errors only)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars or lines (as TQDM_DISABLE=1 does)")


def progress_disabled() -> bool:
    """True when ``TQDM_DISABLE`` is set to a true value (tqdm's own switch, honoured by every command)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


@contextmanager
def progress_off(off: bool) -> Iterator[None]:
    """Every tqdm bar disabled for the call when ``off`` or ``TQDM_DISABLE`` is set, restored afterwards.

    tqdm reads ``TQDM_DISABLE`` when it is imported, so a bar created with an explicit ``disable=False``
    would still show: the call's bars are created with ``disable=True`` instead.
    """
    if not (off or progress_disabled()):
        yield
        return
    from tqdm import std

    original = std.tqdm.__init__

    def disabled(self: std.tqdm, *args: object, **kwargs: object) -> None:
        original(self, *args, **{**kwargs, "disable": True})

    std.tqdm.__init__ = disabled
    try:
        yield
    finally:
        std.tqdm.__init__ = original


def format_duration(seconds: float) -> str:
    """``0:01:02`` for 62.4 s (whole seconds)."""
    return str(timedelta(seconds=round(seconds)))


def peak_memory() -> str:
    """This process's peak resident memory, plus the CUDA allocator's peak when CUDA was used: ``1.45 GB RSS``."""
    # ru_maxrss is in KiB on Linux.
    text = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9:.2f} GB RSS"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        text += f", {torch.cuda.max_memory_allocated() / 1e9:.2f} GB CUDA"
    return text


def closing_line(command: str, seconds: float) -> str:
    """``geoexplora predict: done in 0:00:12, peak memory 1.20 GB RSS``."""
    return f"geoexplora {command}: done in {format_duration(seconds)}, peak memory {peak_memory()}"
