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

One row keeps the matrix-vector product (ops.linear_row_into), faster than panels; more than MAX_ROWS
rows keep `x @ w`, where packing pays for itself. `linear` (x @ w + b) is the plain twin.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import NumgptError
from .params import Kind, tensor_kind

DIRECT_MNK = 2 * 350 * 512   # OpenBLAS's direct sgemm takes M x N x K up to this (its multithreaded limit)
PANEL = 32                   # columns a panel: 8 rows x 32 x 768 fits the limit; 16-column panels ran slower
MAX_ROWS = 16                # 2 .. MAX_ROWS rows go through the panels
SPARE_BYTES = 1 << 29        # panels are made only while the machine keeps this much (and their size) spare
THREADED_BYTES = 1 << 21     # a weight of at least this many bytes is split between two threads (below it,
                             # the hand-over costs more than the second core gives)


@functools.cache
def panels_pay_off() -> bool:
    """True where NumPy's BLAS is OpenBLAS on a CPU with AVX-512, the only place its direct sgemm runs
    (elsewhere each panel would be packed like the whole weight, and nothing is gained). A fact of the
    machine, looked up once."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return "openblas" in str(blas).lower() and re.search(r"\bavx512f\b", flags) is not None


def spare_memory(nbytes: int) -> bool:
    """Whether a copy of nbytes leaves the machine at least as much again and SPARE_BYTES more (unknown
    memory: yes)."""
    from .training.memory import available_memory   # the one reading of /proc/meminfo
    available = available_memory()
    return available is None or available >= 2 * nbytes + SPARE_BYTES


def in_chunks(rows: int, n_in: int) -> int:
    """How many chunks a product of `rows` rows cuts the inner dimension `n_in` into so that each panel's
    product (rows x PANEL x chunk) stays within DIRECT_MNK."""
    return -(-rows * PANEL * n_in // DIRECT_MNK)


def panel_copy(w: np.ndarray) -> np.ndarray:
    """w [in, out] (any strides) as column panels [n, in, PANEL], the last one zero-padded."""
    n_in, n_out = w.shape
    n = -(-n_out // PANEL)
    data = np.zeros((n, n_in, PANEL), np.float32)                       # [n, in, P]
    for i in range(n):
        cols = w[:, i * PANEL:(i + 1) * PANEL]                          # [in, <=P]
        data[i, :, :cols.shape[1]] = cols
    return data


class Panels:
    """One weight's column panels (`panel_copy`), made on the first few-row product; `pool` (one worker
    thread, or None) takes half of the panels of a big weight."""

    def __init__(self, weight: np.ndarray, pool: "PanelPool | None"):
        self.weight, self.pool = weight, pool                          # weight: [in, out], as params hold it
        self._data: np.ndarray | None = None
        self._refused = False

    @property
    def data(self) -> np.ndarray | None:
        """The panels, copied on first use; None if the machine could not spare their memory then (the
        products go the plain way; they never take what would make the machine swap)."""
        if self._data is None and not self._refused:   # two threads racing here both copy; either is right
            if spare_memory(self.weight.nbytes):
                self._data = panel_copy(self.weight)
            else:
                self._refused = True
        return self._data

    def takes(self, rows: int) -> bool:
        """Whether a product of `rows` rows goes through the panels: 2 .. MAX_ROWS rows, panels at hand."""
        return 1 < rows <= MAX_ROWS and self.data is not None

    def linear_into(self, x: np.ndarray, b: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """x @ weight (+ b) into out, through the panels. [M, in] -> [M, out]"""
        data = self.data                                                # [n, in, P]; takes() said it is there
        n, n_in, _ = data.shape
        chunks = in_chunks(x.shape[0], n_in)
        res = np.empty((n, x.shape[0], PANEL), np.float32)              # [n, M, P]
        part = lambda s: _panel_products(x, data[s], chunks, res[s])
        if self.pool is not None and self.weight.nbytes >= THREADED_BYTES and n > 1:
            self.pool.halves(part, n)
        else:
            part(slice(0, n))
        out[...] = res.transpose(1, 0, 2).reshape(x.shape[0], n * PANEL)[:, :out.shape[1]]  # [M, out]
        if b is not None:
            out += b
        return out


def _panel_products(x: np.ndarray, data: np.ndarray, chunks: int, res: np.ndarray) -> None:
    """res[i] = x @ data[i] for a stack of panels, the inner dimension cut into `chunks` parts whose
    products are summed. x [M, in], data [n, in, P] -> res [n, M, P]"""
    n_in = data.shape[1]
    step = -(-n_in // chunks)
    np.matmul(x[None, :, :step], data[:, :step], out=res)
    for k in range(step, n_in, step):
        res += np.matmul(x[None, :, k:k + step], data[:, k:k + step])


class PanelPool:
    """One worker thread that runs half of a product's panels while the caller runs the other half."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        me = weakref.ref(self)                   # a forked child has no worker thread: it starts its own
        os.register_at_fork(after_in_child=lambda: (pool := me()) is not None and pool._forget())

    def _forget(self) -> None:
        self._executor, self._lock = None, threading.Lock()

    def halves(self, fn, n: int) -> None:
        """fn(slice) over 0 .. n-1: the second half on the worker, the first here."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="numgpt-panels")
        h = n // 2
        future = self._executor.submit(fn, slice(h, n))
        fn(slice(0, h))
        future.result()


class DecodeParams(dict):
    """Params (name -> array, as `Params`) of a model loaded for inference (numgpt.load), with the column
    panels of each matrix a decode step multiplies: `panels[name]`, made on first use. Only where they pay
    off (`panels_pay_off`); otherwise `panels` is empty and products go as before. The weights must not be
    changed in place once panels are made (they are copies)."""

    def __init__(self, params: dict, threads: int):
        super().__init__(params)
        pool = PanelPool() if threads > 1 else None
        self.panels: dict[str, Panels] = {}
        if panels_pay_off():
            for name in decode_matrices(self):
                w = self[name]
                self.panels[name] = Panels(w.T if name == HEAD else w, pool)   # the head multiplies by wte^T


HEAD = "wte.weight"   # the tied output projection: its panels are of wte^T [C, V]


def decode_matrices(params: dict) -> list[str]:
    """The names of the matrices a decode step multiplies: the blocks' linear weights and wte."""
    return [name for name in params if name == HEAD or _linear_weight(name)]


def _linear_weight(name: str) -> bool:
    try:
        return tensor_kind(name) in (Kind.WEIGHT, Kind.RESIDUAL_WEIGHT)
    except NumgptError:                         # not GPT-2's (a classifier's head): no panels
        return False
