"""Keep freed memory in the process for reuse, instead of handing it back to the kernel after every step.

A training step allocates and frees the same few hundred activation arrays every time (kilobytes to
megabytes each). glibc's malloc serves blocks above its mmap threshold (128 KB at first, raised as blocks
are freed) with fresh memory maps, and gives the top of its heaps back to the kernel once more than its
trim threshold is free. Either way the next step's arrays land on pages the kernel must map and zero
again, one page fault per 4 KB: measured on the nanoGPT character model (bench/bench_train.py's
workload, 6 rows per thread), 6,700 page faults and 26 ms of kernel time per 74 ms step.

`keep_freed_memory` sets the two thresholds high (mallopt), so freed blocks stay in the heap and the next
step reuses them: no page faults after the first step, and the step took 53-57 ms. The cost is that the
process keeps its peak memory until it exits, which a training run reaches on every step anyway.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 << 20  # blocks below 32 MiB come from the heap (glibc's cap for this setting)
TRIM_THRESHOLD_BYTES = 2**31 - 1  # give the heap's free top back only beyond 2 GiB (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed memory rather than unmap it (process-wide, for the rest of the
    process's life). Returns False, changing nothing, where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1   # mallopt returns 1 on success
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
