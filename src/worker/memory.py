"""Keep the memory a job freed for the next job, instead of handing it back to the kernel at once.

A job moves its video through buffers of the video's size: the base64 buffer, the base64 text, the SDK's JSON.
glibc serves blocks that large with ``mmap`` and unmaps them when they are freed, so every job faults each of
those pages in anew and the kernel zeroes each one: for a 50 MB video some 50,000 page faults per job, which
cost more than the encoding itself (on virtual machines whose host reclaims freed memory, many times more).
With large blocks taken from one heap, shared by all threads, and that heap trimmed only past ``limit`` bytes
of free space, the next job reuses the pages of the last: a 50 MB video's job then faults in a dozen pages.

Linux with glibc only; elsewhere (or with a limit of 0) nothing changes. ``RETAIN_FREED_MEMORY_MB`` sets it.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger("worker.memory")

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


def retain_freed_memory(limit_bytes: int) -> bool:
    """Serve large blocks from the heap and keep up to ``limit_bytes`` of it free; True when applied."""
    if limit_bytes <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # it returns an int, ctypes' default
    limit = min(limit_bytes, 2**31 - 1)
    # One arena: a thread's own arena is a separate mapping that large blocks do not fit, so the pages a
    # job freed in one thread would not be found by the next job's threads.
    applied = all(
        mallopt(param, value)
        for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, limit))
    )
    if applied:
        log.info("memory: up to %d MB of freed memory kept for the next job", limit >> 20)
    return applied
