"""The MPI backend of the communicator (comm.py): one process per rank, started by mpiexec or srun.

    mpiexec -n 2 numgpt train DATA --out RUN --threads 1

mpi4py moves NumPy buffers at C speed; it is imported here only, so `import numgpt` never needs it
(`pip install 'numgpt[mpi]'` installs mpi4py with the MPICH wheel, whose mpiexec is the one to use).

Exactness: an MPI reduction may add the ranks' buffers in any order, so at 3 or more ranks
`allreduce_sum` does not use MPI_Allreduce. It is a reduce-scatter and an all-gather built from
Alltoallv and Allgatherv: rank r
receives the r-th contiguous part of every rank's buffer, adds them in rank order ((b0 + b1) + b2) + ...,
and the parts are gathered back to every rank. That is the order and the bits of the thread backend, so P
ranks of one thread give the same weights as one process of P threads, and every rank the same bits. It
moves 2 (P - 1) / P of the buffer per rank, as a ring all-reduce does. With two ranks each element is one
addition, and b0 + b1 == b1 + b0 exactly in IEEE arithmetic, so MPI_Allreduce itself is exact there and
is used: 0.21 s instead of the ordered path's 0.69 s for the 124M model's 498 MB of gradients here
(bench/bench_mpi.py).

`world(environ)` decides from the launcher's environment whether this process is one rank of several,
and refuses the classic mistake of a launcher that does not belong to mpi4py's MPI library ("N copies of
rank 0": the launcher says N ranks, MPI sees a world of 1), which would otherwise run N identical
trainings into one folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

from ..errors import NumgptError
from .comm import Communicator, SingleProcess

# the world size each launcher announces: MPICH's and Intel MPI's hydra (and srun --mpi=pmi2), Open MPI,
# MVAPICH. (Not SLURM_NTASKS: it is set in every step of an allocation, also for a plain `python ...`.)
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launcher_size(environ: Mapping[str, str]) -> int | None:
    """The number of ranks the launcher started, from its environment variables; None when no MPI
    launcher started this process."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def world(environ: Mapping[str, str]) -> Communicator:
    """The communicator of this process: MPI's world when a launcher started several ranks, else a
    single process. The caller passes the environment in (the CLI passes os.environ)."""
    expected = launcher_size(environ)
    if expected is None or expected == 1:
        return SingleProcess()
    try:
        from mpi4py import MPI
    except ImportError:
        raise NumgptError(f"started by an MPI launcher as one of {expected} ranks, but mpi4py is not installed; "
                          "pip install 'numgpt[mpi]' (mpi4py and the MPICH wheel) and use its mpiexec") from None
    comm = MPICommunicator(MPI.COMM_WORLD)
    if comm.size != expected:
        raise NumgptError(f"the launcher started {expected} ranks but this process's MPI sees a world of "
                          f"{comm.size}: the mpiexec is not the one of the MPI library mpi4py uses (each rank "
                          "would train alone into the same folder); run the mpiexec installed beside mpi4py "
                          "(with the MPICH wheel: the venv's bin/mpiexec)")
    return comm


class MPICommunicator:
    """A Communicator over an mpi4py communicator (default: the world): rank, size and the collectives
    of comm.py, with allreduce_sum exact: the rank order (see the module docstring)."""

    def __init__(self, comm=None):
        if comm is None:
            from mpi4py import MPI
            comm = MPI.COMM_WORLD
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.can_overlap = self.size == 2                  # see start_allreduce_sum

    def allreduce_sum(self, buf: np.ndarray) -> None:
        """In place: buf becomes the sum over ranks, added in rank order (at 2 ranks MPI_Allreduce, exact
        for two operands; else reduce-scatter by Alltoallv, sums in rank order, all-gather by Allgatherv)."""
        if buf.ndim != 1 or not buf.flags.c_contiguous:
            raise ValueError(f"allreduce_sum takes a flat C-contiguous buffer, got shape {buf.shape}")
        if self.size == 2:              # one addition per element, b0 + b1 == b1 + b0 exactly: MPI's own is exact
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            return
        P, n = self.size, buf.size
        starts = np.array([n * r // P for r in range(P)], np.int64)      # part r: starts[r] .. starts[r+1]
        counts = np.diff(np.append(starts, n))
        total = self._sum_own_part(buf, starts, counts)
        self.comm.Allgatherv(total, [buf, (counts, starts)])

    def start_allreduce_sum(self, buf: np.ndarray):
        """A non-blocking exact all-reduce where MPI's own is exact, at two ranks (MPI_Iallreduce); None at
        more, where the rank order needs the two-phase path of allreduce_sum."""
        if self.size != 2:
            return None
        from mpi4py import MPI
        return _Request(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM))

    def reduce_scatter_sum(self, buf: np.ndarray, starts: list[int]) -> None:
        """Rank r's part (starts[r] .. starts[r+1]) becomes the sum over ranks in rank order: Alltoallv,
        then the sums in rank order (ZeRO-1's gradient step, where every rank owns a part)."""
        own = self._sum_own_part(buf, np.asarray(starts[:-1], np.int64), np.diff(np.asarray(starts, np.int64)))
        buf[starts[self.rank]:starts[self.rank + 1]] = own

    def allgather(self, buf: np.ndarray, starts: list[int]) -> None:
        """Every rank's part r becomes rank r's, in place (Allgatherv)."""
        from mpi4py import MPI
        counts = np.diff(np.asarray(starts, np.int64))
        self.comm.Allgatherv(MPI.IN_PLACE, [buf, (counts, np.asarray(starts[:-1], np.int64))])

    def _sum_own_part(self, buf: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """This rank's part of buf summed over the ranks in rank order: ((b0 + b1) + b2) + ... [counts[rank]]"""
        P, mine = self.size, int(counts[self.rank])
        parts = np.empty((P, mine), buf.dtype)                            # my part of every rank's buffer
        self.comm.Alltoallv([buf, (counts, starts)], [parts, ([mine] * P, [mine * r for r in range(P)])])
        total = parts[0].copy()
        for r in range(1, P):
            total += parts[r]                                             # rank order
        return total

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        self.comm.Bcast(buf, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        """End every rank of the job now (MPI_Abort): a rank that fails must not leave the others waiting
        forever in their next collective (a plain exit does not stop them)."""
        self.comm.Abort(code)


class _Request:
    """An MPI request as the communicator interface shows it: test() to let it progress, wait() to end it."""

    def __init__(self, request):
        self._request = request

    def test(self) -> bool:
        return bool(self._request.Test())

    def wait(self) -> None:
        self._request.Wait()


class AgreedError(NumgptError):
    """An error every rank raises at the same point (they agreed on it through a collective), so the job
    can end with each rank's plain exit: no rank is left waiting, and no MPI_Abort is needed."""


def check_same_everywhere(comm: Communicator, what: str, value: object) -> None:
    """Refuse to start when the ranks disagree on `value` (a config, a data description): each rank's
    sha256 of its JSON is compared with rank 0's. A NumgptError on every rank that differs, and on the
    others too, so no rank is left waiting."""
    digest = np.frombuffer(hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest(),
                           np.uint8).astype(np.float64)                   # [32], exact in float64
    rank0 = digest.copy()
    comm.broadcast(rank0)
    differs = np.array([float(not np.array_equal(digest, rank0))])
    comm.allreduce_sum(differs)
    if differs[0]:
        raise AgreedError(f"the ranks disagree on the {what} ({int(differs[0])} of {comm.size} differ from rank "
                          "0's); every rank must get the same options and see the same data folder")
