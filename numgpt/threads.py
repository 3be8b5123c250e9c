"""Both cores for NumPy: run parts of the work in Python threads at once.

NumPy's ufuncs and BLAS calls release the GIL while they run, so Python threads that each run a chain of
array operations on their own data proceed in parallel. Two users:
- training/parallel.py runs each thread's share of a training batch (forward and backward) with BLAS held to one
  thread (`single_threaded_blas`), so that the elementwise half of a step runs on all cores too.
- AdamW (training/optim.py) splits its slices over threads: 0.40 s instead of 0.60 s per 124M-parameter step.

Elementwise operations split over threads right after multithreaded BLAS products gained nothing: OpenBLAS's
idle threads spun on the cores for ~0.1 s after each product and the two competed (GELU and softmax split
that way were measured no faster, the small training model 15% slower). Hence the data-parallel design.
(`import numgpt` now asks OpenBLAS to put them to sleep within ~0.1 ms, machine.py; those splits were not
measured again.)

Threads are started per call (tens of microseconds) and only for work big enough to repay that. How many
is the caller's choice: functions that split work take `threads` (None: `thread_count()`, the cores this
process may use). Nothing here reads the environment; the CLI turns NUMGPT_NUM_THREADS into a count with
`threads_from_env(os.environ)` and passes it down.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

from .errors import NumgptError


def thread_count() -> int:
    """The cores this process may run on (its CPU affinity; all CPUs where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                    # not Linux
        return os.cpu_count() or 1


THREADS_ENV = "NUMGPT_NUM_THREADS"


def threads_from_env(environ: Mapping[str, str]) -> int | None:
    """The thread count NUMGPT_NUM_THREADS asks for in `environ` (the CLI passes os.environ), or None
    when it is unset or empty (then the caller's default applies); anything but a whole number >= 1 is a
    NumgptError (it was ignored, and a typo then ran on every core)."""
    value = environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not (value.isdigit() and int(value) > 0):
        raise NumgptError(f"{THREADS_ENV} must be a whole number >= 1 (the threads numgpt uses), got {value!r}; "
                          "fix it, or unset it for the default")
    return int(value)


def row_ranges(n: int, parts: int) -> list[slice]:
    """`parts` contiguous slices covering 0 .. n-1, sizes differing by at most one (none empty)."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


def run_split(fn: Callable[[slice], object], n: int, *, work: int, min_work: int = 1 << 16,
              threads: int | None = None) -> None:
    """Call fn(rows) for slices of 0 .. n-1, over up to `threads` threads at once (None: thread_count())
    when work (elements touched, roughly) is at least min_work; fn must write only its own rows."""
    threads = thread_count() if threads is None else threads
    slices = row_ranges(n, threads if work >= min_work else 1)
    run_in_threads(lambda k: fn(slices[k]), len(slices))


def run_in_threads(fn: Callable[[int], object], n: int) -> None:
    """fn(0) in this thread and fn(1) .. fn(n-1) in new threads, all at once. The first exception of any
    of them is raised here, after all have finished."""
    if n <= 1:
        if n == 1:
            fn(0)
        return
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            fn(k)
        except BaseException as e:                            # re-raised in the caller's thread
            errors.append(e)

    others = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(1, n)]
    for t in others:
        t.start()
    run(0)
    for t in others:
        t.join()
    if errors:
        raise errors[0]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Hold BLAS (OpenBLAS, MKL, ...) to one thread inside the block, for code that runs its own threads
    (training/parallel.py): BLAS threads of their own would oversubscribe the cores, and OpenBLAS's idle threads
    spin between products. Uses threadpoolctl; without it, BLAS is left alone."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
