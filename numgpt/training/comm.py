"""The communicator: the few collective calls data-parallel training needs, behind one small interface.

    rank, size                    this participant's index, and how many take part
    allreduce_sum(buf)            in place: every participant's buf becomes the sum over ranks of buf
    broadcast(buf, root=0)        in place: every participant's buf becomes root's
    barrier()                     return once every participant has called it

The training loop (loop.py) and the data-parallel gradient code (parallel.py) call only these; they
never ask which backend they have (llm.c keeps its multi-GPU code behind a few calls the same way).
Backends:

    SingleProcess    size 1: every call is a no-op (the default)
    ThreadGroup      `size` threads of one process, one `member(rank)` each; parallel.py sums the
                     per-thread gradient buffers of a batch into thread 0's with its `reduce_sum`
                     (rank = thread index: the same order and bits as its all-reduce, fewer writes)

    MPICommunicator  one process per rank (mpi.py, mpi4py): the same order and bits as ThreadGroup

What is guaranteed, for every backend:
- allreduce_sum adds the ranks' buffers in rank order, (((buf_0 + buf_1) + buf_2) + ...) element by
  element in the buffer's dtype, so the result does not depend on timing and is the same bits on every
  rank. The buffer is flat (1-D, C-contiguous) float32, or float64 for small things like a loss.
- Every rank must make the same calls in the same order with buffers of the same size and dtype. A rank
  that raises leaves the others waiting at their next call (ThreadGroup.abort() releases them with
  threading.BrokenBarrierError).
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

import numpy as np

CHUNK = 1 << 16   # elements summed at a time: one chunk of every buffer stays in L2 cache


@runtime_checkable
class Communicator(Protocol):
    """The collective operations of data parallelism (see the module docstring for the guarantees)."""

    rank: int
    size: int
    can_overlap: bool      # start_allreduce_sum returns requests (else None: sum after the backward)

    def allreduce_sum(self, buf: np.ndarray) -> None:
        """In place: buf becomes the sum over ranks of buf, added in rank order 0, 1, .., size-1."""

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        """In place: buf becomes root's buf."""

    def barrier(self) -> None:
        """Wait until every rank has called barrier."""

    def reduce_scatter_sum(self, buf: np.ndarray, starts: list[int]) -> None:
        """In place: on rank r, buf[starts[r]:starts[r+1]] becomes the sum over ranks of that part, added
        in rank order; the other parts are left unspecified. starts: size + 1 offsets from 0 to buf.size."""

    def allgather(self, buf: np.ndarray, starts: list[int]) -> None:
        """In place: every rank's buf[starts[r]:starts[r+1]] becomes rank r's (each rank contributes its part)."""

    def start_allreduce_sum(self, buf: np.ndarray):
        """Begin allreduce_sum(buf) without waiting, where the backend can do it exactly: a request whose
        wait() finishes it, and whose test() lets it progress; None where it cannot (then call
        allreduce_sum). Used to overlap the gradient sum with the backward pass (parallel.py)."""


class SingleProcess:
    """The communicator of a lone process: rank 0 of 1, and the collectives change nothing."""

    rank = 0
    size = 1
    can_overlap = False

    def allreduce_sum(self, buf: np.ndarray) -> None:
        _check_flat(buf)

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        if root != 0:
            raise ValueError(f"broadcast root {root} is not a rank of 1")

    def barrier(self) -> None:
        pass

    def reduce_scatter_sum(self, buf: np.ndarray, starts: list[int]) -> None:
        _check_flat(buf)

    def allgather(self, buf: np.ndarray, starts: list[int]) -> None:
        _check_flat(buf)

    def start_allreduce_sum(self, buf: np.ndarray):
        return None


class ThreadGroup:
    """`size` ranks that are threads of one process, sharing memory: each thread calls the collectives
    of its own `member(rank)`. An all-reduce is a reduce-scatter and an all-gather in one pass: rank r
    sums the r-th contiguous part of every buffer, in rank order, and writes it into every buffer, so all
    threads work at once and no element is added twice."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a thread group needs at least 1 thread, got {size}")
        self.size = size
        self._barrier = threading.Barrier(size)
        self._bufs: list[np.ndarray | None] = [None] * size

    def member(self, rank: int) -> "ThreadRank":
        """The communicator of thread `rank` (0 .. size-1)."""
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} is not in 0..{self.size - 1}")
        return ThreadRank(self, rank)

    def abort(self) -> None:
        """Release every thread waiting in a collective with threading.BrokenBarrierError (after a rank
        failed); the group cannot be used again."""
        self._barrier.abort()


class ThreadRank:
    """One thread's communicator in a ThreadGroup."""

    def __init__(self, group: ThreadGroup, rank: int):
        self.group = group
        self.rank = rank
        self.size = group.size
        self.can_overlap = False

    def allreduce_sum(self, buf: np.ndarray) -> None:
        self._sum(buf, everywhere=True)

    def reduce_sum(self, buf: np.ndarray) -> None:
        """Rank 0's buf becomes the sum over ranks (same order and bits as allreduce_sum); the others'
        bufs are left as they were. What a rank's threads need: only thread 0's gradients are used."""
        self._sum(buf, everywhere=False)

    def _sum(self, buf: np.ndarray, *, everywhere: bool) -> None:
        _check_flat(buf)
        bufs = self._exchange(buf)
        if any(b.shape != buf.shape or b.dtype != buf.dtype for b in bufs):
            raise ValueError("a sum over ranks needs buffers of one size and dtype on every rank")
        n = buf.size
        part = slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)   # this rank's share
        for start in range(part.start, part.stop, CHUNK):
            s = slice(start, min(start + CHUNK, part.stop))
            total = bufs[0][s]                         # a view: the sum is formed in rank 0's buffer
            for b in bufs[1:]:
                total += b[s]                          # rank order: ((b0 + b1) + b2) + ...
            if everywhere:
                for b in bufs[1:]:
                    b[s] = total
        self.group._barrier.wait()                     # every share written before anyone reads its buf

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        if not 0 <= root < self.size:
            raise ValueError(f"broadcast root {root} is not in 0..{self.size - 1}")
        bufs = self._exchange(buf)
        if self.rank != root:
            buf[...] = bufs[root]
        self.group._barrier.wait()                     # root's buffer is not changed before all copied

    def barrier(self) -> None:
        self.group._barrier.wait()

    def reduce_scatter_sum(self, buf: np.ndarray, starts: list[int]) -> None:
        self._sum(buf, everywhere=True)               # every part summed everywhere: more than is asked

    def allgather(self, buf: np.ndarray, starts: list[int]) -> None:
        bufs = self._exchange(buf)
        for r, b in enumerate(bufs):
            if r != self.rank:
                buf[starts[r]:starts[r + 1]] = b[starts[r]:starts[r + 1]]
        self.group._barrier.wait()                     # nobody changes its part before all have copied it

    def start_allreduce_sum(self, buf: np.ndarray):
        return None                                    # threads sum after their backward (parallel.py)

    def _exchange(self, buf: np.ndarray) -> list[np.ndarray]:
        """Show buf to the other ranks; returns every rank's buffer once all have arrived."""
        self.group._bufs[self.rank] = buf
        self.group._barrier.wait()
        return list(self.group._bufs)


def _check_flat(buf: np.ndarray) -> None:
    if buf.ndim != 1 or not buf.flags.c_contiguous or buf.dtype not in (np.float32, np.float64):
        raise ValueError(f"collectives take a flat C-contiguous float32/float64 buffer, got {buf.dtype} "
                         f"of shape {buf.shape}")
