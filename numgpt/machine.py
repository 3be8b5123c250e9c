"""What this machine can still give a process: its memory without swapping, and its cores while BLAS is
idle. The training room checks a run's estimate against the memory before allocating (training/memory.py);
the column panels of numgpt.load's models are copied only within it (panels.py), and run on a second
thread of numgpt's own beside OpenBLAS's threads."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from collections.abc import MutableMapping

from .errors import NumgptError

# OpenBLAS's idle threads spin for 2**OPENBLAS_THREAD_TIMEOUT cycles after each product before they sleep
# (2**28 unless set: ~0.1 s). A thread of numgpt's own (panels.py's worker) that runs meanwhile shares its
# core with a spinning one: a 66-token prefill of the wide quote model through the panels took 45 ms
# against 27-30 with the threads asleep, and prompt lookup decoded 590 tokens/s against 620-710. Read
# when OpenBLAS loads, so numgpt sets it (unless the user did) before NumPy is imported (__init__.py), and
# has an OpenBLAS loaded before it read it again.
BLAS_IDLE_ENV = "OPENBLAS_THREAD_TIMEOUT"
BLAS_IDLE_LOG2_CYCLES = 19   # 2**19 cycles, ~0.2 ms: long enough to bridge the gaps between a one-row step's
                             # products (OpenBLAS's least, 4, made batch-1 decode 3-6% slower, each product
                             # waking its threads; 18, ~0.11 ms at a 2.3 GHz clock, was shorter than 124M's
                             # attention gap of ~0.11 ms on such a machine: attn.c_proj woke them, BENCHMARKS.md),
                             # short enough that they sleep before the panels' work


def available_memory() -> int | None:
    """Bytes the machine can still give without swapping: MemAvailable of /proc/meminfo (Linux), else
    the available physical pages (os.sysconf); None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024        # "MemAvailable:  123456 kB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(need: int, what: str, advice: str) -> None:
    """Refuse (NumgptError, one line) `need` bytes that the machine does not have available, before they are
    allocated: np.zeros reserves memory lazily, and writing it would then fault its way into the
    out-of-memory killer. `what` names them (it is followed by "need"), `advice` says what to ask for."""
    have = available_memory()
    if have is not None and need > have:
        raise NumgptError(f"{what} need {need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB this machine "
                          f"has available: {advice}")


def quiet_blas_threads(environ: MutableMapping[str, str]) -> None:
    """Ask OpenBLAS to put its idle threads to sleep within 2**BLAS_IDLE_LOG2_CYCLES cycles, unless the user
    chose a timeout: through `environ` before NumPy loads it, or, where NumPy came first (`import numpy`
    before `import numgpt`), by having the loaded OpenBLAS read it again (`restart_openblas_threads`)."""
    if BLAS_IDLE_ENV in environ:
        return
    environ[BLAS_IDLE_ENV] = str(BLAS_IDLE_LOG2_CYCLES)
    if "numpy" in sys.modules:
        restart_openblas_threads()


def restart_openblas_threads() -> bool:
    """Have an OpenBLAS that is already loaded read its environment again and stop its threads; it starts
    them anew, with the new timeout, at its next threaded product (its own fork handler stops them the
    same way). Only while this is the process's one Python thread: a product running on another would
    lose its helpers. True if it did."""
    if threading.active_count() > 1:
        return False
    done = False
    for lib in loaded_openblas():
        read, stop = getattr(lib, "openblas_read_env", None), getattr(lib, "blas_thread_shutdown_", None)
        if read is not None and stop is not None:
            read()
            stop()
            done = True
    return done


def loaded_openblas() -> list[ctypes.CDLL]:
    """The OpenBLAS libraries mapped into this process (NumPy's, and any other's)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
        return [ctypes.CDLL(path) for path in sorted(paths)]
    except (OSError, IndexError):
        return []


@functools.cache
def blas_threads_sleep_when_idle() -> bool:
    """Whether NumPy's OpenBLAS, as loaded into this process, puts its idle threads to sleep within
    2**BLAS_IDLE_LOG2_CYCLES cycles (its `openblas_thread_timeout()`: the environment it read when it
    loaded, or again for numgpt). False where that is unknown (another BLAS), or where OpenBLAS loaded
    before numgpt and other threads ran when numgpt was imported."""
    import numpy  # noqa: F401  (OpenBLAS is loaded with NumPy)
    for lib in loaded_openblas():
        fn = getattr(lib, "openblas_thread_timeout", None)
        if fn is not None:
            fn.restype = ctypes.c_int
            return 0 < fn() <= BLAS_IDLE_LOG2_CYCLES
    return False
