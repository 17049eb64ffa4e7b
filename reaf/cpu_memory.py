"""Keep freed memory in the process on the CPU, so that each step's large tensors do not fault in fresh pages.

glibc hands every block over its mmap threshold (at most 32 MiB, whatever it adapts to) straight from the kernel and
returns it on free, so a tensor of a batch's size costs a page fault per 4 KiB every time it is made: on this
project's 2-core EPYC stacking the demo's 32 volumes took 21.6 ms that way against 3.6-4.2 ms from reused memory,
and its patch embedding's forward and weight gradient 62-67 ms against 45-49 ms (bench notes in docs/demo.md).
`keep_freed_memory` raises the mmap and trim thresholds with mallopt, so such blocks come from and go back to the
heap; the process's memory then stays near its peak instead of shrinking between steps. It must run before the
large tensors are made: blocks mapped before it keep the heap from growing in place, and later batches fault again. A no-op where the C
library is not glibc (macOS, musl) or when REAF_KEEP_FREED_MEMORY=0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
THRESHOLD = 1 << 30  # blocks up to 1 GiB from the heap; freed memory beyond 1 GiB at the heap's top is returned
_done = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; returns whether they are set."""
    global _done
    if _done:
        return True
    if os.environ.get("REAF_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):
        return False  # mallopt of another C library may read these numbers otherwise
    _done = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    log.debug("glibc mmap/trim thresholds %s", "set to 1 GiB" if _done else "left as they were")
    return _done
