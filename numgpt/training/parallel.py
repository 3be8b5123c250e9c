"""Data parallelism: each participant runs the forward and backward of its own rows of the batch, and
the gradients are summed in a fixed order through a communicator (comm.py): over a rank's threads here
(`DataParallel.forward_backward`, for any loss function of objective.py), over the ranks by the
optimizer (optim.Optimizer.reduce_gradients, started layer by layer during the backward by AdamW's
layer_done where the communicator can: `OverlappedSum`).

Participants are the ranks of a communicator (processes, or threads standing in for them), and within
each rank up to `threads` Python threads. A batch of n rows is split first over the ranks, rank r
taking its contiguous share n*r//R .. n*(r+1)//R, then each share over the rank's threads
(`batch_slices`). So P ranks with 1 thread each split the rows exactly like 1 rank with P threads.

Why threads rather than letting BLAS use the cores: a training step is only half matrix products. The
other half is NumPy's elementwise work (GELU, softmax, LayerNorm, cross-entropy), which runs on one core,
while OpenBLAS's idle threads spin on the others between products. With BLAS held to one thread
(`single_threaded_blas`) and one slice of the batch per core, every operation of the step runs on all
cores at once, since NumPy releases the GIL inside each operation. Measured on 2 cores
(bench/bench_train.py, same-run ratios to torch): the nanoGPT character model's step went from 1.36x to
0.90-1.05x torch's time, the 124M model's from 1.16x to 1.01x.

Gradients live in one flat float32 buffer per participant with a view per parameter (`flat_zeros_like`),
so a sum is one collective call. What is guaranteed:
- The result does not depend on timing: slice k always holds the same rows; a rank's thread buffers are
  summed in thread order (a ThreadGroup all-reduce, rank = thread index), then the ranks' sums in rank
  order (the communicator's all-reduce). Total = slice 0 + slice 1 + ... in that order: with one rank,
  bit for bit what `add_into` gives; with P ranks of 1 thread, the same bits as 1 rank of P threads.
- Within a step of several micro-batches, only the first participant (rank 0, thread 0) adds onto the
  running gradient; every other one starts each micro-batch from zero, so the running sum is counted
  once and the grouping of the float32 additions is the same for P ranks x 1 thread as for 1 x P.
- With dropout, each slice draws its masks from its own generator, seeded from one draw of rng per
  micro-batch (one seed per slice of the whole batch, every rank drawing the same seeds), so masks too
  are the same for P ranks x 1 thread as for 1 x P. A lone slice uses rng itself.
- The result does depend on the number of slices (the float32 sums group differently), so a run records
  its thread count and a resumed run uses it again. R ranks of T > 1 threads sum as (per-rank sums) in
  rank order, which is deterministic but not the grouping of 1 rank of R*T threads.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from ..backprop import Workspace
from ..config import GPTConfig
from .comm import Communicator, SingleProcess, ThreadGroup
from .objective import Batch, LossFn, ValueFn
from ..params import Params
from ..threads import row_ranges, run_in_threads, run_split


def flat_zeros_like(params: Params) -> tuple[np.ndarray, Params]:
    """One flat float32 zero buffer for all of params, and a view of it shaped like each parameter (in
    params' order, back to back): (flat [sum of sizes], {name: view})."""
    flat = np.zeros(sum(p.size for p in params.values()), np.float32)
    views, offset = {}, 0
    for name, p in params.items():
        views[name] = flat[offset:offset + p.size].reshape(p.shape)
        offset += p.size
    return flat, views


def flat_buffer(grads: Params) -> np.ndarray | None:
    """The flat buffer behind grads if they are its views back to back (as `flat_zeros_like` makes them),
    else None."""
    arrays = list(grads.values())
    base = arrays[0].base if arrays else None
    if base is None or base.ndim != 1 or base.dtype != np.float32 or not base.flags.c_contiguous:
        return None
    address = base.__array_interface__["data"][0]
    for a in arrays:
        if a.base is not base or a.dtype != np.float32 or not a.flags.c_contiguous or \
                a.__array_interface__["data"][0] != address:
            return None
        address += a.nbytes
    return base if address == base.__array_interface__["data"][0] + base.nbytes else None


def share(n: int, rank: int, ranks: int) -> slice:
    """Rank `rank`'s contiguous share of rows 0 .. n-1 split over `ranks` (sizes differ by at most one)."""
    return slice(n * rank // ranks, n * (rank + 1) // ranks)


def batch_slices(n: int, ranks: int, threads: int) -> list[list[slice]]:
    """Rows 0 .. n-1 split over `ranks` contiguous shares, each share over up to `threads` threads:
    [rank][thread] -> rows. A rank whose share is empty gets no slices."""
    plan = []
    for r in range(ranks):
        lo, hi = share(n, r, ranks).start, share(n, r, ranks).stop
        plan.append([slice(lo + s.start, lo + s.stop) for s in row_ranges(hi - lo, threads)] if hi > lo else [])
    return plan


class DataParallel:
    """A rank's share of data parallelism: its rows of each batch split over up to `threads` threads,
    the gradients summed over the threads (`forward_backward`; the sum over `comm`'s ranks is the
    optimizer's, optim.Optimizer.reduce_gradients), see the module docstring. Per-thread gradient
    buffers (one flat copy of the trained parameters per extra thread used) and workspaces are made on
    first use and reused every step."""

    def __init__(self, threads: int, comm: Communicator | None = None):
        self.threads = max(1, threads)
        self.comm = SingleProcess() if comm is None else comm
        self.workspaces = [Workspace() for _ in range(self.threads)]
        self.extra_grads: list[tuple[np.ndarray, Params]] = []   # (flat, views) of threads 1, 2, ...

    @property
    def participants(self) -> int:
        """Slices a full batch is split over at most: ranks x threads."""
        return self.comm.size * self.threads

    def forward_backward(self, loss: LossFn, params: Params, config: GPTConfig, batch: Batch, grads: Params, *,
                         scale: float = 1.0, dropout: float = 0.0, rng: np.random.Generator | None = None,
                         total: int | None = None, block_done: Callable[[int], None] | None = None) -> float:
        """Add scale * d(mean loss of the whole batch)/d(param) of this rank's rows into grads (views of one
        flat buffer, `flat_zeros_like`), its rows split over the threads and summed in thread order;
        returns the mean loss of the whole batch (the same on every rank). The sum over the ranks is left
        to the caller, except what block_done starts while the backward runs (with one slice on this rank).
        batch: arrays whose rows are this rank's share (`rank_rows(total)`) of a batch of `total` rows
        (None: the arrays are the whole batch)."""
        n = len(batch[0]) if total is None else total
        plan = batch_slices(n, self.comm.size, self.threads)
        mine = self._local(plan[self.comm.rank], n, total)
        rngs = self._slice_rngs(plan, dropout, rng)
        flat = flat_buffer(grads)
        if flat is None:
            raise ValueError("forward_backward takes gradients that are views of one flat buffer (flat_zeros_like)")
        buffers = [(flat, grads), *self._extra_grads(len(mine) - 1, grads)]
        group = ThreadGroup(len(mine)) if len(mine) > 1 else None
        block_done = block_done if len(mine) == 1 else None

        def slice_grads(k: int, rows: slice, weight: float) -> float:
            k_flat, k_views = buffers[k]
            if k > 0 or self.comm.rank > 0:
                k_flat.fill(0)                        # only rank 0's thread 0 adds onto the running sum
            return loss(params, config, tuple(a[rows] for a in batch), k_views, scale=scale * weight,
                        dropout=dropout, rng=rngs[k], workspace=self.workspaces[k], block_done=block_done)

        def then_sum(k: int) -> None:
            if group is not None:
                try:
                    group.member(k).reduce_sum(buffers[k][0])       # into thread 0's, in thread order
                except threading.BrokenBarrierError:
                    pass                              # another thread failed; its error is raised
        if not mine and self.comm.rank > 0:
            flat.fill(0)                              # a rank without rows adds nothing
        return self._weighted_mean(mine, n, slice_grads, then_sum, on_error=None if group is None else group.abort)

    def evaluate(self, value: ValueFn, params: Params, config: GPTConfig, batch: Batch, *,
                 total: int | None = None) -> float:
        """value's mean loss (no gradients) of the whole batch, its rows split over the ranks and threads;
        the same on every rank. total: as in forward_backward."""
        n = len(batch[0]) if total is None else total
        mine = self._local(batch_slices(n, self.comm.size, self.threads)[self.comm.rank], n, total)
        return self._weighted_mean(mine, n, lambda k, rows, weight: value(
            params, config, tuple(a[rows] for a in batch), self.workspaces[k]))

    def rank_rows(self, n: int) -> slice:
        """This rank's contiguous share of a batch of n rows (the rows it reads and computes)."""
        return share(n, self.comm.rank, self.comm.size)

    def _local(self, slices: list[slice], n: int, total: int | None) -> list[slice]:
        """Slices of the whole batch as indices into what this rank holds: itself for a whole batch, else
        shifted to the start of rank_rows(n)."""
        if total is None:
            return slices
        first = self.rank_rows(n).start
        return [slice(s.start - first, s.stop - first) for s in slices]

    def _weighted_mean(self, slices: list[slice], n: int, per_slice: Callable[[int, slice, float], float],
                       then: Callable[[int], None] | None = None,
                       on_error: Callable[[], None] | None = None) -> float:
        """sum over every rank's slices of weight * per_slice(k, rows, weight), weight = the slice's share
        of the n rows: the batch mean of per-slice means. This rank's slices run at once, one per thread
        (each calling then(k) after, if given); the per-rank sums are added in rank order (float64).
        on_error() runs when a thread fails at any point, Ctrl-C included (a KeyboardInterrupt can land
        anywhere in the main thread): it must release the threads waiting for the failed one."""
        values = [0.0] * len(slices)

        def run(k: int) -> None:
            try:
                weight = (slices[k].stop - slices[k].start) / max(n, 1)
                values[k] = weight * per_slice(k, slices[k], weight)
                if then is not None:
                    then(k)
            except BaseException:
                if on_error is not None:
                    on_error()                        # e.g. abort the thread group's barrier: no hang
                raise
        run_in_threads(run, len(slices))
        total = np.array([sum(values)], np.float64)
        self.comm.allreduce_sum(total)
        return float(total[0])

    def _slice_rngs(self, plan: list[list[slice]], dropout: float, rng: np.random.Generator | None) -> list:
        """The dropout generator of each of this rank's slices: rng itself for a lone slice, else one
        seeded generator per slice of the whole batch, from one draw of rng that every rank makes alike."""
        mine = plan[self.comm.rank]
        count = sum(len(p) for p in plan)
        if not (dropout > 0 and count > 1):
            return [rng] * len(mine)
        if rng is None:
            raise ValueError("dropout > 0 needs an rng (np.random.Generator)")
        first = sum(len(p) for p in plan[:self.comm.rank])
        seeds = rng.integers(0, 2**63, count)
        return [np.random.default_rng(seed) for seed in seeds[first:first + len(mine)]]

    def _extra_grads(self, count: int, like: Params) -> list[tuple[np.ndarray, Params]]:
        while len(self.extra_grads) < count:
            self.extra_grads.append(flat_zeros_like(like))
        return self.extra_grads[:count]


class OverlappedSum:
    """The gradient sum over the ranks bucketed by layer: block_done(i) starts block i's bucket (and -1,
    ln_f's) while the backward goes on, each later call lets the earlier ones progress, and finish() waits
    for them and sums what is left (wte and wpe, complete only at the end of the backward). The same bits
    as one all-reduce of the whole buffer: each element is summed once, by the same exact rule."""

    @classmethod
    def of(cls, comm: Communicator, flat: np.ndarray, views: Params, n_layer: int) -> "OverlappedSum | None":
        """The overlapped sum of these gradients, where the communicator can sum exactly without waiting
        (comm.start_allreduce_sum) and every parameter is trained (a bucket per layer); else None."""
        layered = all(any(n.startswith(f"h.{i}.") for n in views) for i in range(n_layer))
        if not (comm.can_overlap and layered and any(n.startswith("ln_f.") for n in views)):
            return None
        return cls(comm, flat, views, n_layer)

    def __init__(self, comm: Communicator, flat: np.ndarray, views: Params, n_layer: int):
        self.comm, self.flat, self.requests, self.started = comm, flat, [], False
        base = flat.__array_interface__["data"][0]

        def span(names: list[str]) -> slice:
            starts = [(views[n].__array_interface__["data"][0] - base) // 4 for n in names]
            return slice(min(starts), max(s + views[n].size for s, n in zip(starts, names)))
        self.buckets = {i: span([n for n in views if n.startswith(f"h.{i}.")]) for i in range(n_layer)}
        self.buckets[-1] = span([n for n in views if n.startswith("ln_f.")])
        self.rest = slice(0, min(b.start for b in self.buckets.values()))     # wte, wpe (the schema's order)
        covered = sorted([(b.start, b.stop) for b in self.buckets.values()] + [(0, self.rest.stop)])
        if covered[0][0] != 0 or covered[-1][1] != flat.size or any(a[1] != b[0] for a, b in zip(covered, covered[1:])):
            raise ValueError("the gradient buffer is not laid out in the parameter schema's order")

    def block_done(self, i: int) -> None:
        for request in self.requests:
            request.test()                             # progress for the buckets already on their way
        self.requests.append(self.comm.start_allreduce_sum(self.flat[self.buckets[i]]))
        self.started = True

    def finish(self) -> None:
        self.comm.allreduce_sum(self.flat[self.rest])
        for request in self.requests:
            request.wait()
        self.requests, self.started = [], False


def add_into(total: Params, parts: list[Params], *, threads: int | None = None) -> None:
    """total[name] += each part's [name], parts in order, in slices spread over up to `threads` threads:
    the plain ordered sum, the reference the communicators' all-reduce is tested against."""
    from .optim import chunks                         # (optim imports this module)
    if not parts:
        return
    work = [s for name in total for s in chunks(total[name], *(part[name] for part in parts))]

    def add(rows: slice) -> None:
        for t, *ps in work[rows]:
            for p in ps:
                t += p
    run_split(add, len(work), work=sum(a.size for a in total.values()) * len(parts), threads=threads)
