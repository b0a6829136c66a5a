"""Output files: is their folder writable (tried, not guessed), and one writer per output (a PID lock file).

:class:`OutputLock` creates ``<output>.lock`` beside each output with ``O_EXCL`` and writes this process's
PID into it; a second process writing the same output gets one line naming the lock and the PID holding
it. A lock left by a process that is no longer running (killed) is taken over, with a message. Locks are
re-entrant within one process, so a command may lock its outputs before loading the model and the engine
lock them again.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from geoexplora.errors import GeoExploraError

logger = logging.getLogger(__name__)

_HELD: dict[Path, int] = {}  # lock file -> how many times this process holds it


def folder_is_writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (root, read-only mounts and immutable folders defeat
    permission bits, so this tries)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".geoexplora-probe-"):
            return True
    except OSError:
        return False


def lock_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.lock")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _read_pid(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


class OutputLock:
    """Exclusive locks on ``paths`` for this process; ``with OutputLock([out, probs]): ...``.

    Raises:
        GeoExploraError: on entry, when a running process holds one of the locks.
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self.locks = [lock_path(Path(p)).absolute() for p in paths]
        self._taken: list[Path] = []

    def __enter__(self) -> OutputLock:
        try:
            for lock in self.locks:
                self._acquire(lock)
                self._taken.append(lock)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        while self._taken:
            lock = self._taken.pop()
            _HELD[lock] -= 1
            if _HELD[lock] == 0:
                del _HELD[lock]
                if _read_pid(lock) == os.getpid():
                    lock.unlink(missing_ok=True)

    def _acquire(self, lock: Path) -> None:
        if lock in _HELD:
            _HELD[lock] += 1
            return
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid = _read_pid(lock)
                if pid is not None and pid != os.getpid() and _pid_running(pid):
                    output = lock.with_name(lock.name[: -len(".lock")])
                    raise GeoExploraError(f"{output}: process {pid} is writing it ({lock}); wait for it to finish, "
                                          "or write to another --out") from None
                logger.warning("%s: stale lock of process %s, which is not running; taking it over", lock, pid)
                lock.unlink(missing_ok=True)
                continue
            except OSError as err:
                raise GeoExploraError(f"{lock}: cannot create the output lock ({err.strerror})") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            _HELD[lock] = 1
            return
        raise GeoExploraError(f"{lock}: another process keeps taking this lock; write to another --out")
