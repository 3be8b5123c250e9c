"""Few-row products at the weights' streaming speed: each decode matrix copied once into column panels.

A product of a few rows with a weight -- a speculative verification's K + 1 rows, a batch of 8 -- went
through OpenBLAS's sgemm, which first packs the whole weight into its own layout, on every call: 8 rows
times 124M's matrices streamed at ~11 GB/s, a third of one row's matrix-vector product. OpenBLAS has a
second sgemm for small problems on AVX-512 CPUs (its "direct" kernel, `sgemm_kernel_direct`) that reads
both operands where they lie, unpacked and on one thread, but it takes a product only when it is plain
row-major times row-major and M x N x K <= DIRECT_MNK (OpenBLAS's `sgemm_kernel_direct_performant`, with
more than one thread allowed). So each weight [in, out] is copied into panels of PANEL columns, [n, in,
PANEL] contiguous: one np.matmul over the stack of panels is n direct products, each small enough. A
long `in` is cut into chunks whose partial products are summed, and two threads each take half of the
panels. Measured on 124M's 48 block matrices (BENCHMARKS.md, Decoding beyond the peers).

One row keeps the matrix-vector product (ops.linear_row_into), faster than panels. Up to MAX_ROWS rows
the panels of a big weight also beat OpenBLAS's own sgemm, which packs the weight on every call: a 66-row
product (a short prompt's prefill) with 124M's matrices ran 1.31x faster; from ~110 rows packing pays for
itself and `x @ w` wins. A small weight (under THREADED_BYTES, one thread) takes the panels only up to
FEW_ROWS rows. ops.linear (x @ w + b) is the plain twin. A forward takes the panels only when asked
(model.forward's `panels`: the decode loop's batched steps and their prefill, speculative decoding, the
serving engine's slots), so everything else (a plain batch-1 decode, which then never makes the panels;
scoring, embeddings, the teaching views) computes as before, bit for bit. At a fixed number of rows a row's
result does not depend on the rows beside it or where it sits (tests/test_panels.py).

The panels are copied on first use, all or none: only while the machine can spare their total size twice
over and SPARE_BYTES more. The matrices that have panels are read-only; a weight replaced in the dict
(`params[name] = new`) loses its panels. The second thread is one persistent worker, not a thread per
call as in threads.py: a 124M step makes 49 products, and starting a thread costs tens of microseconds.

Shape legend: M rows, n panels, P = PANEL columns a panel.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .machine import available_memory, blas_threads_sleep_when_idle
from .params import BLOCK_MATRICES
from .threads import thread_count

DIRECT_MNK = 2 * 350 * 512   # OpenBLAS's direct sgemm takes M x N x K up to this (its multithreaded limit)
PANEL = 32                   # columns a panel: 8 rows x 32 x 768 fits the limit; 16-column panels ran slower
FEW_ROWS = 16                # 2 .. FEW_ROWS rows go through any weight's panels
MAX_ROWS = 80                # up to MAX_ROWS through a big one's (THREADED_BYTES, on two threads), where its
                             # panels still beat OpenBLAS's packing sgemm (a prefill of a short prompt)
SPARE_BYTES = 1 << 29        # panels are made only while the machine keeps this much (and their size) spare
THREADED_BYTES = 1 << 21     # a weight of at least this many bytes is split between two threads (below it,
                             # the hand-over costs more than the second core gives)
HEAD = "wte.weight"          # the tied output projection: its panels are of wte^T [C, V]


@functools.cache
def panels_pay_off() -> bool:
    """True where NumPy's BLAS is OpenBLAS on a CPU with AVX-512, the only place its direct sgemm runs
    (elsewhere each panel would be packed like the whole weight, and nothing is gained). A fact of the
    machine, looked up once. (OPENBLAS_CORETYPE forcing older kernels would make the panels pointless, not
    wrong.)"""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return "openblas" in str(blas).lower() and re.search(r"\bavx512f\b", flags) is not None


def chunk_length(rows: int, n_in: int) -> int:
    """The longest part of the inner dimension n_in whose panel products (rows x PANEL x part) stay within
    DIRECT_MNK; the products of the parts are summed."""
    return max(1, min(n_in, DIRECT_MNK // (rows * PANEL)))


def panel_copy(w: np.ndarray) -> np.ndarray:
    """w [in, out] (any strides) as column panels [n, in, P], the last one zero-padded."""
    n_in, n_out = w.shape
    n = -(-n_out // PANEL)
    data = np.zeros((n, n_in, PANEL), np.float32)                       # [n, in, P]
    for i in range(n):
        cols = w[:, i * PANEL:(i + 1) * PANEL]                          # [in, <=P]
        data[i, :, :cols.shape[1]] = cols
    return data


class Panels:
    """One weight's column panels (`panel_copy`), made on the first few-row product if `allowed()` (the
    owner's memory check); `pool` (one worker thread, or None) takes half of the panels of a big weight."""

    def __init__(self, weight: np.ndarray, pool: "PanelPool | None", allowed: Callable[[], bool]):
        self.weight, self.pool, self.allowed = weight, pool, allowed   # weight: [in, out], as params hold it
        self._data: np.ndarray | None = None

    @property
    def data(self) -> np.ndarray | None:
        """The panels [n, in, P], copied on first use; None where the machine cannot spare them (then the
        products go the plain way)."""
        if self._data is None and self.allowed():   # two threads racing here both copy; either is right
            self._data = panel_copy(self.weight)
        return self._data

    def takes(self, rows: int) -> bool:
        """Whether a product of `rows` rows goes through the panels (panels at hand): 2 .. FEW_ROWS rows, or
        up to MAX_ROWS for a weight big enough to split between two threads while OpenBLAS's idle threads
        sleep (machine.py; spinning, they take the worker's core). A small weight's packing is cheap, and
        there OpenBLAS's own two threads win from FEW_ROWS rows on."""
        if rows <= 1 or rows > MAX_ROWS:
            return False
        if rows > FEW_ROWS and not (self.threaded and blas_threads_sleep_when_idle()):
            return False
        return self.data is not None

    @property
    def threaded(self) -> bool:
        """Whether half of this weight's panels go to the pool's worker thread."""
        return self.pool is not None and self.weight.nbytes >= THREADED_BYTES

    def linear_into(self, x: np.ndarray, b: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """x @ weight (+ b) into out, through the panels (`takes` said they are there). [M, in] -> [M, out]"""
        data = self.data                                                # [n, in, P]
        n, n_in, _ = data.shape
        step = chunk_length(x.shape[0], n_in)
        res = np.empty((n, x.shape[0], PANEL), np.float32)              # [n, M, P]

        def part(s: slice) -> None:
            _panel_products(x, data[s], step, res[s])

        if self.threaded and n > 1:
            self.pool.halves(part, n)
        else:
            part(slice(0, n))
        out[...] = res.transpose(1, 0, 2).reshape(x.shape[0], n * PANEL)[:, :out.shape[1]]  # [n, M, P] -> [M, out]
        if b is not None:
            out += b
        return out


def _panel_products(x: np.ndarray, data: np.ndarray, step: int, res: np.ndarray) -> None:
    """res[i] = x @ data[i] for a stack of panels, the inner dimension in parts of `step` whose products
    are summed (through one scratch: a 66-row prefill cuts 3072 inputs into 19 parts). x [M, in],
    data [n, in, P] -> res [n, M, P]"""
    n_in = data.shape[1]
    np.matmul(x[None, :, :step], data[:, :step], out=res)               # [1, M, s] x [n, s, P] -> [n, M, P]
    part = np.empty_like(res) if step < n_in else None
    for k in range(step, n_in, step):
        np.matmul(x[None, :, k:k + step], data[:, k:k + step], out=part)
        res += part


class PanelPool:
    """One worker thread that runs half of a product's panels while the caller runs the other half (started
    on first use, and again in a forked child, which has no copy of its parent's threads)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def halves(self, fn: Callable[[slice], None], n: int) -> None:
        """fn(slice) over 0 .. n-1: the second half on the worker, the first here."""
        if self._pid != os.getpid():                                   # a forked child
            self._executor, self._pid, self._lock = None, os.getpid(), threading.Lock()
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="numgpt-panels")
        h = n // 2
        future = self._executor.submit(fn, slice(h, n))
        fn(slice(0, h))
        future.result()


class DecodeParams(dict):
    """Params (name -> array, as `Params`) of a model loaded for inference (numgpt.load), with the column
    panels of each matrix a decode step multiplies: `panels[name]`, made on first use, all or none (the
    module docstring). Only where they pay off (`panels_pay_off`); otherwise `panels` is empty and products
    go as before. Those matrices are read-only; replacing one (`params[name] = w`) drops its panels."""

    def __init__(self, params: dict, threads: int | None = None):
        super().__init__(params)
        self.threads = thread_count() if threads is None else threads
        self.panels: dict[str, Panels] = {}
        self._room: bool | None = None                                  # the memory check, once
        if panels_pay_off():
            pool = PanelPool() if self.threads > 1 else None
            for name in decode_matrices(self):
                w = self[name]
                w.flags.writeable = False                               # panels are copies: no edits behind them
                self.panels[name] = Panels(w.T if name == HEAD else w, pool, self._may_copy)

    def _may_copy(self) -> bool:
        if self._room is None:
            total = sum(p.weight.nbytes for p in self.panels.values())
            self._room = spare_memory(total)
        return self._room

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self.panels.pop(name, None)
        super().__setitem__(name, value)

    def __delitem__(self, name: str) -> None:
        self.panels.pop(name, None)
        super().__delitem__(name)

    def pop(self, name, *default):
        self.panels.pop(name, None)
        return super().pop(name, *default)

    def update(self, *args, **kwargs) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def setdefault(self, name, value=None):
        if name not in self:
            self[name] = value
        return self[name]

    def popitem(self):
        name, value = super().popitem()
        self.panels.pop(name, None)
        return name, value

    def clear(self) -> None:
        self.panels.clear()
        super().clear()

    def __reduce__(self):
        """Pickled and deep-copied as the plain dict and the thread count (panels and the worker are
        made again where it is loaded)."""
        return (DecodeParams, (dict(self), self.threads))


def spare_memory(nbytes: int) -> bool:
    """Whether a copy of nbytes leaves the machine at least as much again and SPARE_BYTES more (unknown
    memory: yes)."""
    available = available_memory()
    return available is None or available >= 2 * nbytes + SPARE_BYTES


def decode_matrices(params: dict) -> list[str]:
    """The names of the matrices a decode step multiplies: the blocks' (params.BLOCK_MATRICES) and wte."""
    suffixes = tuple(f".{name}" for name in BLOCK_MATRICES)
    return [name for name in params if name == HEAD or (name.startswith("h.") and name.endswith(suffixes))]


def make_panels(params: dict) -> None:
    """Copy every matrix's panels now instead of on its first few-row product (a server, which would
    otherwise pay 0.25-0.8 s of copies for 124M in its first batch); params without panels: nothing. The
    memory check still applies (all or none)."""
    for p in getattr(params, "panels", {}).values():
        p.data


def head_panels(params: dict) -> Panels | None:
    """wte^T's panels where params carries panels (a DecodeParams), else None: the output projection's."""
    return getattr(params, "panels", {}).get(HEAD)
