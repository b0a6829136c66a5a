"""Run many ``geoexplora`` command lines, each in its own forked process, after importing the stack once.

Reads a JSON list of ``{"argv": [...], "cwd": "...", "env": {...}}`` on stdin and writes a JSON list of
``{"exit": int, "stderr": str, "seconds": float}`` on stdout, in the same order. Each command line runs in
a child forked from this interpreter (so its exit status and stderr are its own, as in a fresh
``geoexplora`` process) but torch, Lightning, timm, TorchGeo and rasterio are imported once, here, before
any fork: on two shared cores a cold import costs 10-20 s, the command itself often well under one.

    python tests/cli/cli_forks.py --jobs 2 < runs.json > results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PRELOAD = ("torch", "timm", "lightning", "torchgeo", "rasterio", "geopandas", "geoexplora.models",
           "geoexplora.inference", "geoexplora.cli.lightning_runner")


def _child(run: dict, stderr_path: str) -> None:
    """In the forked child: the command line's cwd, env and stderr, then ``geoexplora.cli.main``; never returns."""
    code = 70
    try:
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        sys.stderr = open(2, "w", closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        os.chdir(run["cwd"])
        os.environ.update(run.get("env", {}))
        from geoexplora.cli import main

        sys.argv = ["geoexplora", *run["argv"]]
        code = main(run["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # an uncaught error: what Python prints for it, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)


def run_all(runs: list[dict], jobs: int) -> list[dict]:
    """Fork each run (at most ``jobs`` at a time) and collect exit status, stderr and wall time."""
    for name in PRELOAD:
        __import__(name)
    results: list[dict | None] = [None] * len(runs)
    running: dict[int, tuple[int, str, float]] = {}
    pending = list(enumerate(runs))
    with tempfile.TemporaryDirectory() as tmp:
        while pending or running:
            while pending and len(running) < jobs:
                index, run = pending.pop(0)
                stderr_path = str(Path(tmp) / f"{index}.err")
                pid = os.fork()
                if pid == 0:
                    _child(run, stderr_path)
                running[pid] = (index, stderr_path, time.perf_counter())
            pid, status = os.wait()
            index, stderr_path, started = running.pop(pid)
            results[index] = {"exit": os.waitstatus_to_exitcode(status),
                              "stderr": Path(stderr_path).read_text(errors="replace"),
                              "seconds": time.perf_counter() - started}
    return results  # type: ignore[return-value]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    jobs = parser.parse_args().jobs
    json.dump(run_all(json.load(sys.stdin), jobs), sys.stdout)
