"""Where a checkpoint's frozen base comes from: files referred to by path and sha256, found again anywhere.

A checkpoint names its source weights and its parent checkpoint (:class:`Lineage`) by a path relative to
its own folder when possible, with the sha256 of the file (of the parent's ``model.safetensors``).
:func:`resolve_ref` looks such a path up in the checkpoint folder, then the working directory, then the
search path (``--weights-dir`` folders, then ``$GEOEXPLORA_WEIGHTS``), and refuses a file whose sha256
differs from the recorded one. A file outside the checkpoint folder, the working directory and the
search path (reached by an absolute or ``..`` path) is used only when the checkpoint records its sha256
and the file matches it: a ``config.json`` can refer to the file it was trained from, never make
geoexplora read (or hash into an error message) any other file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from geoexplora.errors import GeoExploraError
from geoexplora.models.backbone import BackboneConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
WEIGHTS_PATH_ENV = "GEOEXPLORA_WEIGHTS"
Stored = Literal["trained", "full"]
SearchDirs = str | Path | Sequence[str | Path] | None  # --weights-dir folder(s)


@dataclass(frozen=True)
class FileRef:
    """A file the checkpoint was built from.

    Attributes:
        path: relative to the checkpoint folder when possible (POSIX separators), else absolute; for a
            parent checkpoint, its folder.
        sha256: hex digest of the file (of the parent's ``model.safetensors``); None when unknown (format 1).
        size: bytes of the file, when recorded.
    """

    path: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Lineage:
    """Where the checkpoint's frozen base comes from, and what ``model.safetensors`` holds.

    Attributes:
        source_weights: the backbone's source weights file (None: random init or ``timm``).
        parent: the checkpoint fine-tuning started from (its adapters were merged into the base).
        stored: ``"trained"`` (trainable tensors; the base is rebuilt from ``source_weights``/``parent``)
            or ``"full"`` (every tensor; nothing else is needed to load).
    """

    source_weights: FileRef | None = None
    parent: FileRef | None = None
    stored: Stored = "trained"


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; cached per (path, size, mtime) for this process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def checkpoint_sha256(directory: str | Path) -> str:
    """sha256 of a checkpoint's ``model.safetensors`` (what a child's lineage records for its parent)."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise GeoExploraError(f"{path}: checkpoint weights not found")
    return file_sha256(path)


def make_lineage(backbone: BackboneConfig, parent: str | Path | None = None) -> Lineage:
    """The lineage of a model built from ``backbone`` (its local weights file, hashed) and ``parent``.

    Paths are absolute here; :func:`save_checkpoint` writes them relative to the checkpoint folder.
    """
    source = None
    if backbone.weights_file is not None:
        path = Path(backbone.weights_file)
        if not path.is_file():
            raise GeoExploraError(f"{path}: weights file not found")
        source = FileRef(str(path.resolve()), file_sha256(path), path.stat().st_size)
    ref = None if parent is None else FileRef(str(Path(parent).resolve()), checkpoint_sha256(parent))
    return Lineage(source, ref)


def relative_path(path: str, directory: Path) -> str:
    """``path`` relative to ``directory`` when both are on one drive, POSIX separators; else absolute."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), directory.resolve())).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def search_path(weights_dir: SearchDirs = None) -> list[Path]:
    """Folders searched after the checkpoint folder and the working directory: ``weights_dir``, then
    ``$GEOEXPLORA_WEIGHTS`` (``os.pathsep``-separated)."""
    given = [] if weights_dir is None else [weights_dir] if isinstance(weights_dir, (str, Path)) else list(weights_dir)
    env = [p for p in os.environ.get(WEIGHTS_PATH_ENV, "").split(os.pathsep) if p]
    return [Path(p) for p in [*given, *env]]


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` (links and ``..`` resolved) lies in one of the folders ``roots``."""
    target = path.resolve()
    return any(target.is_relative_to(root.resolve()) for root in roots)


def _check_outside(found: Path, ref: FileRef, config: Path, what: str, is_dir: bool) -> None:
    """A file outside the checkpoint folder, the working directory and the search path is used only when it
    is the very file the checkpoint was built from (its recorded sha256 matches), and its own hash is never
    told, so a ``config.json`` cannot read or probe other files by an absolute or ``..`` path."""
    if ref.sha256 is None:
        raise GeoExploraError(
            f"{config}: {what} {ref.path} lies outside the checkpoint folder, the working directory and the "
            f"--weights-dir folders, and no sha256 is recorded to check it; pass --weights-dir DIR (or set "
            f"{WEIGHTS_PATH_ENV}) to the folder that holds it"
        )
    if ref.sha256 != (checkpoint_sha256(found) if is_dir else file_sha256(found)):
        target = found / WEIGHTS_NAME if is_dir else found
        raise GeoExploraError(
            f"{target}: sha256 differs from {ref.sha256[:12]} that {config} records for its {what}; restore "
            "the original file, or pass --weights-dir to where it is"
        )


def resolve_ref(ref: FileRef, directory: Path, search: Sequence[Path], what: str, is_dir: bool = False) -> Path:
    """The file ``ref`` names, looked up in the checkpoint folder, the working directory, then ``search``
    (by its relative path, then by its name), and checked against its recorded sha256.

    Raises:
        GeoExploraError: one line naming the checkpoint and the file, when it is missing or has changed.
    """
    recorded = Path(ref.path)
    bases = [] if recorded.is_absolute() else [directory, Path.cwd()]
    candidates = [recorded] if recorded.is_absolute() else [b / recorded for b in bases]
    candidates += [d / recorded for d in search if not recorded.is_absolute()] + [d / recorded.name for d in search]
    found = next((c for c in candidates if (c.is_dir() if is_dir else c.is_file())), None)
    config = directory / CONFIG_NAME
    if found is None:
        looked = ", ".join(dict.fromkeys(os.path.normpath(c.parent) for c in candidates))
        raise GeoExploraError(
            f"{config}: {what} {ref.path} not found (looked in {looked}); pass --weights-dir DIR (or set "
            f"{WEIGHTS_PATH_ENV}) to where it is, or load an exported copy (geoexplora export)"
        )
    found = found.resolve()
    if not _inside(found, [directory, Path.cwd(), *search]):
        _check_outside(found, ref, config, what, is_dir)
    elif ref.sha256 is not None:
        actual = checkpoint_sha256(found) if is_dir else file_sha256(found)
        if actual != ref.sha256:
            target = found / WEIGHTS_NAME if is_dir else found
            raise GeoExploraError(
                f"{target}: sha256 {actual[:12]} differs from {ref.sha256[:12]} that {config} records for its "
                f"{what}; restore the original file, or pass --weights-dir to where it is"
            )
    return found
