"""CPU threads for the machine: as many torch threads as cores this process may use, waiting passively.

torch's OpenMP workers spin while they wait for work (``OMP_WAIT_POLICY=ACTIVE`` behaviour); on a machine
shared with other busy processes that spinning steals the cores the work needs (issue 10: a 441-window
predict took 38.8 s instead of 0.6 s at load 3.5 on 2 cores). The CLI therefore sets
``OMP_WAIT_POLICY=PASSIVE`` unless the user set it, before torch is imported, and sets torch's thread count
to the cores in this process's affinity mask (``os.sched_getaffinity``, which a container or ``taskset``
limits), or to ``--threads N``; a user's ``OMP_NUM_THREADS`` is left to torch.
"""

from __future__ import annotations

import argparse
import os

from geoexplora.errors import GeoExploraError

THREADS_FLAG = "--threads"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def passive_wait_policy() -> None:
    """Idle OpenMP workers sleep instead of spinning (unless ``OMP_WAIT_POLICY`` is set); before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(THREADS_FLAG, type=str, metavar="N",
                        help="CPU threads for torch (default: the cores this process may use)")


def parse_threads(text: str | None) -> int | None:
    """``--threads`` as a positive int; without it :func:`available_cores`, or None (torch's own setting)
    when the user set ``OMP_NUM_THREADS``."""
    if text is None:
        return None if os.environ.get("OMP_NUM_THREADS") else available_cores()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise GeoExploraError(f"{THREADS_FLAG} {text}: give a positive number of threads "
                              f"(this process may use {available_cores()} cores)")
    return value


def pop_threads(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--threads N`` / ``--threads=N``, and N (the last one given), for LightningCLI commands."""
    rest, value, args = [], None, iter(argv)
    for arg in args:
        if arg == THREADS_FLAG:
            value = next(args, "")
        elif arg.startswith(THREADS_FLAG + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, value


def set_threads(count: int | None) -> None:
    """torch's intra-op threads (imports torch); None leaves torch's (``OMP_NUM_THREADS``)."""
    if count is None:
        return
    import torch

    torch.set_num_threads(count)
