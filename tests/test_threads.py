"""threads.py: every row range is run exactly once, errors reach the caller, the thread count is honoured,
and the library reads no environment variable (only threads_from_env, given a mapping, parses one)."""

import threading

import numpy as np
import pytest

import os

from numgpt.errors import NumgptError
from numgpt.threads import row_ranges, run_split, thread_count, threads_from_env


@pytest.mark.parametrize("n, parts", [(1, 2), (7, 2), (10, 3), (5, 8), (1000, 2)])
def test_row_ranges_cover_every_row_once(n, parts):
    seen = np.concatenate([np.arange(n)[s] for s in row_ranges(n, parts)])
    assert np.array_equal(seen, np.arange(n))
    assert len(row_ranges(n, parts)) == min(n, parts)


def test_run_split_uses_threads_for_big_work_and_fills_every_row():
    x = np.arange(100_000, dtype=np.float32)
    out = np.zeros_like(x)
    names = set()

    def square(rows):
        names.add(threading.current_thread().name)
        np.multiply(x[rows], x[rows], out=out[rows])
    run_split(square, len(x), work=x.size, min_work=1000, threads=2)
    assert np.array_equal(out, x * x)
    assert len(names) == 2


def test_small_work_stays_in_the_calling_thread():
    names = []
    run_split(lambda rows: names.append(threading.current_thread().name), 10, work=10, min_work=1000, threads=4)
    assert names == [threading.current_thread().name]


def test_an_error_in_a_worker_thread_is_raised_in_the_caller():

    def fail_late_rows(rows):
        if rows.start > 0:
            raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        run_split(fail_late_rows, 10, work=10**6, threads=2)


def test_the_environment_is_read_only_by_the_caller(monkeypatch):
    monkeypatch.setenv("NUMGPT_NUM_THREADS", "1")
    assert thread_count() == len(os.sched_getaffinity(0))             # the library ignores the variable
    names = set()
    run_split(lambda rows: names.add(threading.current_thread().name), 10, work=10**6, threads=2)
    assert len(names) == 2                                             # `threads` decides, not the variable
    assert threads_from_env({"NUMGPT_NUM_THREADS": "3"}) == 3
    assert threads_from_env({"NUMGPT_NUM_THREADS": " 2 "}) == 2
    assert threads_from_env({"NUMGPT_NUM_THREADS": " "}) is None and threads_from_env({}) is None
    for bad in ("0", "-1", "two", "1.5"):                              # refused by name, not ignored
        with pytest.raises(NumgptError, match=f"NUMGPT_NUM_THREADS must be a whole number >= 1 .*, got '{bad}'"):
            threads_from_env({"NUMGPT_NUM_THREADS": bad})
