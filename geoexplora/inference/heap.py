"""Memory the pipeline frees goes back to the system: glibc's mmap threshold held at a fixed size.

glibc serves allocations above its mmap threshold (128 KiB at start) with ``mmap`` and returns them on free,
but every such free raises the threshold (up to 32 MiB), after which batch-sized buffers (12.5 MiB for 16
windows of 4 x 224 x 224 float32) come from the per-thread heaps, which keep what is freed: on a 10,000^2
predict that was about 260 MiB of resident memory the pipeline no longer used. Holding the threshold at
:data:`MMAP_THRESHOLD_BYTES` keeps every large buffer mapped only while it lives. Elsewhere than glibc this
is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 4 * 2**20


@functools.cache
def hold_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` for the process (once); whether it was set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc
        return False
