"""Checks of a ``pretrain``/``finetune`` command line that need no model: the recipes parse, the run folder
``--out`` may be written, and an existing run is neither replaced nor resumed by accident.

* every ``--config`` file must be YAML (one line naming the file and the line otherwise);
* ``--out`` (else the recipe's ``out``, else ``runs/<command>``) must lie in a writable folder, and no
  other running process may be writing it: the run holds ``<out>.lock`` (:class:`~geoexplora.outputs.OutputLock`)
  from these checks to its end;
* an existing run folder needs ``--resume`` (continue it from its own ``lightning/last.ckpt``) or
  ``--overwrite`` (its ``checkpoint/``, ``lightning/``, ``logs/`` and ``config.yaml`` are removed first);
  ``--resume`` needs that last checkpoint;
* ``trainer.accelerator`` ``cuda``/``gpu`` needs a CUDA device; ``data.mask`` must overlap ``data.image``;
  ``weights: timm`` needs the weights cached or the Hub in reach;
* LightningCLI's own parse errors (an unknown key, a bad value) become one line instead of the usage.

Processes a launcher started for the other ranks of a distributed run (Lightning's DDP children,
``torchrun``, SLURM) skip the checks and the lock: rank 0 made them and holds it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoexplora.errors import GeoExploraError
from geoexplora.outputs import OutputLock

RUN_PARTS = ("checkpoint", "lightning", "logs", "config.yaml")
LAST_CHECKPOINT = Path("lightning") / "last.ckpt"


@dataclass(frozen=True)
class RunRequest:
    """What a Lightning command line asks of its run folder.

    Attributes:
        argv: the command line for LightningCLI (``--overwrite`` removed; ``--resume`` kept).
        out: the run folder.
        resume, overwrite: the flags.
    """

    argv: list[str]
    out: Path
    resume: bool
    overwrite: bool


def _flag_values(argv: Sequence[str], flag: str) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file as a dict; GeoExploraError naming the file (and the line) when it is missing or not YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GeoExploraError(f"{path}: no such recipe file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise GeoExploraError(f"{path}: not valid YAML{where} ({problem}); fix the recipe's syntax") from None
    except UnicodeDecodeError:
        raise GeoExploraError(f"{path}: not a text file; a recipe is YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GeoExploraError(f"{path}: a recipe is a YAML mapping of keys (model, data, trainer, ...)")
    return data


def _setting(argv: Sequence[str], recipes: list[dict[str, Any]], dotted: str) -> Any:
    """The value of a dotted key: the last command-line flag, else the last recipe that sets it."""
    given = _flag_values(argv, f"--{dotted}")
    if given:
        return given[-1]
    value = None
    for recipe in recipes:
        node: Any = recipe
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            value = node
    return value


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse ``what`` when the nearest existing folder at or above ``folder`` cannot be written (tried, not
    guessed from permission bits: root, read-only mounts and immutable folders differ)."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise GeoExploraError(f"{what}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".geoexplora-probe-"):
            pass
    except OSError:
        raise GeoExploraError(f"{what}: folder {existing} is not writable; choose another --out") from None


def _check_inputs(argv: Sequence[str], recipes: list[dict[str, Any]]) -> None:
    """What the data and the weights need that a look at the files tells: labels over the image, timm's
    pretrained weights in the cache or the Hub in reach, and TorchGeo weights that exist."""
    image, mask = _setting(argv, recipes, "data.image"), _setting(argv, recipes, "data.mask")
    if isinstance(image, str) and mask and Path(image).is_file() and Path(mask).is_file():
        from geoexplora.data.raster import check_overlap, inspect_raster

        inspect_raster(Path(image)), inspect_raster(Path(mask))
        check_overlap(Path(image), Path(mask))
    weights = _setting(argv, recipes, "model.backbone.weights")
    if weights == "timm":
        from geoexplora.models.hub import check_timm_weights

        check_timm_weights(str(_setting(argv, recipes, "model.backbone.model")))
    from geoexplora.models.torchgeo_weights import is_torchgeo, resolve

    if is_torchgeo(weights):
        resolve(str(weights))  # an unknown enum or member: one line with close names, before anything is built


def launched_rank() -> int:
    """This process's global rank when a launcher started it, else 0: the environment variables Lightning
    reads for it (``RANK`` from torchrun, ``LOCAL_RANK`` from its own DDP launcher, ``SLURM_PROCID``)."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


@contextlib.contextmanager
def prepared_run(command: str, argv: Sequence[str]) -> Iterator[RunRequest]:
    """Check the command line (see the module docstring), lock the run folder, clear it when
    ``--overwrite``, and hold the lock while the caller runs."""
    argv = list(argv)
    overwrite = "--overwrite" in argv
    argv = [a for a in argv if a != "--overwrite"]
    resume = "--resume" in argv
    if resume and overwrite:
        raise GeoExploraError("--resume continues a run and --overwrite replaces it; give one of them")
    recipes = [read_recipe(p) for p in _flag_values(argv, "--config")]
    out = Path(_setting(argv, recipes, "out") or f"runs/{command}")
    request = RunRequest(argv, out, resume, overwrite)
    if launched_rank() != 0:
        yield request
        return
    accelerator = str(_setting(argv, recipes, "trainer.accelerator") or "auto").lower()
    if accelerator in ("cuda", "gpu"):
        import torch

        if not torch.cuda.is_available():
            raise GeoExploraError(f"trainer.accelerator {accelerator}: this machine has no CUDA GPU; "
                                  "use --trainer.accelerator cpu (or auto)")
    check_writable_folder(out, f"--out {out}")
    _check_inputs(argv, recipes)
    out.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock([out]):
        _check_run_folder(out, resume, overwrite)
        yield request


def _check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """``--resume`` needs the last checkpoint; an existing run needs ``--resume`` or ``--overwrite`` (which
    removes its parts)."""
    last = out / LAST_CHECKPOINT
    if resume and not last.is_file():
        raise GeoExploraError(f"{last}: nothing to resume (no last checkpoint in this run folder); "
                              "run without --resume to start it")
    existing = [p for p in RUN_PARTS if (out / p).exists()]
    if existing and not (resume or overwrite):
        raise GeoExploraError(f"--out {out}: already holds a run ({', '.join(existing)}); pass --resume to "
                              "continue it or --overwrite to replace it")
    if overwrite:
        for part in existing:
            path = out / part
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


@contextlib.contextmanager
def one_line_parse_errors(command: str) -> Iterator[None]:
    """LightningCLI's parse errors as one line (``geoexplora COMMAND: error: ...``, exit 2), without the
    usage text (the key list of every task argument) jsonargparse prints before it."""
    from jsonargparse import ArgumentParser

    original = ArgumentParser.error

    def error(self: ArgumentParser, message: str, ex: Exception | None = None) -> None:
        if not self.exit_on_error:
            original(self, message, ex)
        sys.stderr.write(f"geoexplora {command}: error: {_one_line(message)} "
                         f"(geoexplora {command} --help lists the keys)\n")
        sys.exit(2)

    ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        ArgumentParser.error = original  # type: ignore[method-assign]
