"""Data parallelism over the cores of one machine: each thread runs the forward and backward of its own
slice of the batch, and the slices' gradients are summed in a fixed order.

Why not let BLAS use the cores: a training step is only half matrix products. The other half is NumPy's
elementwise work (GELU, softmax, LayerNorm, cross-entropy), which runs on one core, while OpenBLAS's idle
threads spin on the others between products. With BLAS held to one thread (`single_threaded_blas`) and
one slice of the batch per core, every operation of the step runs on all cores at once, since NumPy
releases the GIL inside each operation. Measured on 2 cores (bench/bench_train.py, same-run ratios to
torch): the nanoGPT character model's step went from 1.36x to 0.90-1.05x torch's time, the 124M model's
from 1.16x to 1.01x.

The result does not depend on timing: slice k always holds the same rows, and the gradients are added in
slice order. It does depend on the number of threads (the float32 sums group differently), so a run
records its thread count and a resumed run uses it again.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..backprop import Workspace, accumulate_grads, loss_only
from ..config import GPTConfig
from .optim import chunks
from ..params import Params, zeros_like
from ..threads import row_ranges, run_in_threads, run_split


class DataParallel:
    """Per-thread gradient buffers and workspaces for splitting batches over up to `threads` threads,
    made on first use and reused every step (one params-sized gradient copy per extra thread used)."""

    def __init__(self, threads: int):
        self.threads = max(1, threads)
        self.workspaces = [Workspace() for _ in range(self.threads)]
        self.extra_grads: list[Params] = []

    def accumulate_grads(self, params: Params, config: GPTConfig, ids: np.ndarray, targets: np.ndarray,
                         grads: Params, *, scale: float = 1.0, dropout: float = 0.0,
                         rng: np.random.Generator | None = None) -> float:
        """`backprop.accumulate_grads` with the batch's rows split over the threads: adds
        scale * d(mean loss)/d(param) into grads and returns the mean loss. With dropout and several
        slices, each slice draws its masks from its own generator, seeded from rng (one draw per step);
        a single slice uses rng itself, so one thread is exactly `backprop.accumulate_grads`."""
        slices = row_ranges(len(ids), self.threads)
        rngs = [rng] * len(slices)
        if dropout > 0 and len(slices) > 1:
            if rng is None:
                raise ValueError("dropout > 0 needs an rng (np.random.Generator)")
            rngs = [np.random.default_rng(seed) for seed in rng.integers(0, 2**63, len(slices))]
        while len(self.extra_grads) < len(slices) - 1:
            self.extra_grads.append(zeros_like(grads))
        outputs = [grads, *self.extra_grads[:len(slices) - 1]]

        def slice_grads(k: int, rows: slice, weight: float) -> float:
            if k > 0:
                for g in outputs[k].values():
                    g.fill(0)
            return accumulate_grads(params, config, ids[rows], targets[rows], outputs[k], scale=scale * weight,
                                    dropout=dropout, rng=rngs[k], workspace=self.workspaces[k])
        loss = self._weighted_mean(slices, slice_grads)
        add_into(grads, outputs[1:])
        return loss

    def loss(self, params: Params, config: GPTConfig, ids: np.ndarray, targets: np.ndarray) -> float:
        """`backprop.loss_only` (mean loss, no dropout, no gradients) with the rows split over the threads."""
        return self._weighted_mean(row_ranges(len(ids), self.threads), lambda k, rows, weight: loss_only(
            params, config, ids[rows], targets[rows], workspace=self.workspaces[k]))

    @staticmethod
    def _weighted_mean(slices: list[slice], per_slice: Callable[[int, slice, float], float]) -> float:
        """sum over slices of weight * per_slice(k, rows, weight), weight = the slice's share of the rows,
        the slices run at once, one per thread: the batch mean of a per-slice mean."""
        n = max(slices[-1].stop, 1)
        values = [0.0] * len(slices)

        def run(k: int) -> None:
            weight = (slices[k].stop - slices[k].start) / n
            values[k] = weight * per_slice(k, slices[k], weight)
        run_in_threads(run, len(slices))
        return sum(values)


def add_into(total: Params, parts: list[Params]) -> None:
    """total[name] += each part's [name], parts in order, in slices spread over threads."""
    if not parts:
        return
    work = [s for name in total for s in chunks(total[name], *(part[name] for part in parts))]

    def add(rows: slice) -> None:
        for t, *ps in work[rows]:
            for p in ps:
                t += p
    run_split(add, len(work), work=sum(a.size for a in total.values()) * len(parts))
