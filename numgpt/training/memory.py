"""Keep freed memory in the process for reuse, instead of handing it back to the kernel after every step.

A training step allocates and frees the same few hundred activation arrays every time (kilobytes to
megabytes each). glibc's malloc serves blocks above its mmap threshold (128 KB at first, raised as blocks
are freed) with fresh memory maps, and gives the top of its heaps back to the kernel once more than its
trim threshold is free. Either way the next step's arrays land on pages the kernel must map and zero
again, one page fault per 4 KB: measured on the nanoGPT character model (bench/bench_train.py's
workload, 6 rows per thread), 6,700 page faults and 26 ms of kernel time per 74 ms step.

`keep_freed_memory()` is a context manager: inside it the two thresholds are set high (mallopt), so freed
blocks stay in the heap and the next step reuses them: no page faults after the first step, and the step
took 53-57 ms. The cost is that the process keeps its peak memory while the block runs, which a training
run reaches on every step anyway. `train` holds it for its duration; on leaving, the thresholds go back to
glibc's documented defaults (see `restore_malloc_defaults`), so a program that trains and then does
something else gets its memory back as usual.
"""

from __future__ import annotations

import ctypes
import platform
from contextlib import contextmanager
from typing import Iterator

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 << 20  # blocks below 32 MiB come from the heap (glibc's cap for this setting)
TRIM_THRESHOLD_BYTES = 2**31 - 1  # give the heap's free top back only beyond 2 GiB (mallopt takes an int)
DEFAULT_MMAP_THRESHOLD = 128 * 1024   # glibc's documented defaults (mallopt(3))
DEFAULT_TRIM_THRESHOLD = 128 * 1024


@contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Inside the block, glibc's malloc reuses freed memory rather than unmapping it (process-wide: every
    thread's allocations). Yields whether the setting took (False, changing nothing, where the C library
    is not glibc). Leaving the block restores glibc's defaults, also on an error.

    subtle: mallopt has no getter, so "restored" means glibc's documented defaults (both thresholds
    128 KiB), not whatever was set before the block; and setting M_MMAP_THRESHOLD at all switches off
    glibc's dynamic mmap threshold, which is not re-enabled. Not reentrant: nested or concurrent blocks
    restore the defaults when the first of them ends (memory is then handed back again: slower, not wrong).
    """
    kept = set_malloc_thresholds(MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES)
    try:
        yield kept
    finally:
        if kept:
            restore_malloc_defaults()


def restore_malloc_defaults() -> bool:
    """Set glibc's mmap and trim thresholds back to their documented defaults (128 KiB each)."""
    return set_malloc_thresholds(DEFAULT_MMAP_THRESHOLD, DEFAULT_TRIM_THRESHOLD)


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """mallopt(M_MMAP_THRESHOLD, ...) and mallopt(M_TRIM_THRESHOLD, ...), process-wide, until set again.
    Returns False, changing nothing, where the C library is not glibc."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1   # mallopt returns 1 on success
    return mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok


def _mallopt():
    """glibc's mallopt(int, int) -> int through ctypes, or None where there is no glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
