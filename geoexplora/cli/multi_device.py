"""``predict --devices N`` and ``embed --devices N``: spread many rasters over N worker processes, one per GPU
(or N CPU processes).

The parent checks every input and output first (as a single-process run does), then deals the rasters
to the workers, largest first to the least-loaded one, and starts them with the ``spawn`` method (CUDA
cannot be forked). Each worker loads the model once onto its device (``cuda:i``; on a CPU machine each
gets ``cores // N`` threads) and predicts its rasters one after another; each output is written,
locked and resumable on its own, exactly as in one process, so the outputs are the same bytes.

A worker that dies (killed, out of memory) does not stop the others: when all have ended, every raster
whose output is not complete is named, and ``--resume`` completes them.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoexplora.cli.threads import available_cores, set_threads
from geoexplora.errors import GeoExploraError


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker does: ``items`` (one per raster, the caller's plan tuples) on ``device``.

    Attributes:
        device: ``cuda:i`` or ``cpu``.
        threads: torch threads for a CPU worker (None: torch's default, for a GPU worker).
        items: the caller's per-raster plans, predicted in this order.
    """

    device: str
    threads: int | None
    items: list[Any]


def worker_devices(count: int, device: str) -> tuple[list[str], int | None]:
    """The devices of ``count`` workers and each CPU worker's threads, for ``--device`` (auto, cpu, cuda).

    Raises:
        GeoExploraError: when the machine has fewer GPUs (or cores) than ``count``, or ``device`` names one GPU.
    """
    import torch

    if count < 1:
        raise GeoExploraError(f"--devices {count}: must be at least 1")
    if device.startswith("cuda:"):
        raise GeoExploraError(f"--device {device} with --devices {count}: name no single GPU; --device cuda "
                              "(or auto) uses the first N GPUs")
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if device == "cuda" and gpus == 0:
        raise GeoExploraError("--device cuda: CUDA is not available on this machine")
    if gpus:
        if count > gpus:
            raise GeoExploraError(f"--devices {count}: this machine has {gpus} GPU(s); give at most {gpus}")
        return [f"cuda:{i}" for i in range(count)], None
    cores = available_cores()
    if count > cores:
        raise GeoExploraError(f"--devices {count}: no GPU here, and this process may use {cores} CPU core(s); "
                              f"give at most {cores} CPU worker processes")
    return ["cpu"] * count, max(1, cores // count)


def deal(items: Sequence[Any], sizes: Sequence[int], bins: int) -> list[list[Any]]:
    """``items`` dealt to ``bins`` lists, largest ``sizes`` first, each to the list with the least so far
    (each list keeps the items' original order)."""
    loads, chosen = [0] * bins, [[] for _ in range(bins)]
    for index in sorted(range(len(items)), key=lambda i: -sizes[i]):
        target = loads.index(min(loads))
        loads[target] += sizes[index]
        chosen[target].append(index)
    return [[items[i] for i in sorted(indexes)] for indexes in chosen]


def _work(run: Callable[[Any, list[Any], str], None], shared: Any, plan: WorkerPlan) -> None:
    """A worker's body: its threads, then ``run`` over its items on its device."""
    set_threads(plan.threads)
    try:
        run(shared, plan.items, plan.device)
    except GeoExploraError as error:
        print(f"geoexplora: error: {error}", file=sys.stderr)
        sys.exit(2)


def run_workers(run: Callable[[Any, list[Any], str], None], shared: Any, plans: list[WorkerPlan]) -> list[int]:
    """Start one spawned process per plan with ``run(shared, plan.items, plan.device)``; wait for all; return
    their exit codes (negative: killed by that signal).

    ``shared`` (pickled to every worker) is what all items need: ``predict``'s parsed arguments, ``embed``'s
    checked job and encoder; ``run`` must be a module-level function."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_work, args=(run, shared, plan), name=f"geoexplora-{plan.device}-{i}")
                 for i, plan in enumerate(plans) if plan.items]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return [int(process.exitcode) for process in processes]


def unfinished(outputs: Sequence[tuple[Path, list[Path]]], is_finished: Callable[[list[Path]], bool]) -> list[Path]:
    """The rasters of ``outputs`` ((raster, its output paths)) whose outputs are not complete."""
    return [raster for raster, paths in outputs if not is_finished(paths)]


def report_unfinished(failed: Sequence[Path], codes: Sequence[int], done: str) -> int:
    """One stderr line per ``failed`` raster (not ``done``, how many workers failed, the fix); the exit status."""
    died = sum(code != 0 for code in codes)
    for raster in failed:
        print(f"geoexplora: error: {raster}: not {done} ({died} of {len(codes)} worker processes failed); "
              "rerun the same command with --resume to complete it", file=sys.stderr)
    return 1 if failed else 0
