"""ZeRO stage 1 (`--zero 1`): the optimizer state sharded over the ranks, so each holds about 1/P of it.

    gradients    reduce-scattered: rank r receives, summed in rank order, only the part it owns
    clip         the global norm from every rank's per-parameter dot products, summed in parameter order
    AdamW        each rank updates the parameters it owns, with the moments it alone keeps
    parameters   all-gathered: every rank has every updated weight again

Shards are whole parameters, contiguous in the schema's order, balanced by size (rank r owns the
parameters whose first element lies in the r-th P-th of all). So the global norm is the same float64
sum of the same float32 dot products as `optim.global_norm`, and AdamW, which is elementwise, sees the
same numbers: results are bit-identical to ZeRO-0 on any number of ranks. Any parameter count splits over
any P (a rank may own none), with no padding. The balance is as good as the largest tensor allows
(GPT-2's wte is 31% of the 124M model).

Checkpoints stay independent of the world size: before a save the owners broadcast their moments one
parameter at a time, and rank 0 writes the same files as an unsharded run.
"""

from __future__ import annotations

import math

import numpy as np

from ..params import Params
from .comm import Communicator
from .optim import AdamWConfig, AdamWState, adamw_step
from .parallel import flat_zeros_like


class ZeroShards:
    """Which parameters each rank owns, and the sharded steps of one update (see the module docstring).

    Made from the training state's params, it moves them into one flat buffer (`flat_params`) that the
    all-gather fills, and puts views of it in their place in that dict: the values stay the same."""

    def __init__(self, params: Params, comm: Communicator):
        self.comm = comm
        self.flat_params, views = flat_zeros_like(params)
        for name, view in views.items():
            view[...] = params[name]
            params[name] = view
        self.names = list(params)
        sizes = [params[n].size for n in self.names]
        offsets = np.cumsum([0] + sizes)                     # parameter i: offsets[i] .. offsets[i+1]
        total = int(offsets[-1])
        self.owner = {n: min(comm.size - 1, int(offsets[i]) * comm.size // max(total, 1))
                      for i, n in enumerate(self.names)}
        # the flat-buffer offsets where each rank's parameters begin (and the end)
        self.starts = [int(offsets[next((i for i, n in enumerate(self.names) if self.owner[n] >= r),
                                        len(self.names))]) for r in range(comm.size)] + [total]
        self.mine = [n for n in self.names if self.owner[n] == comm.rank]

    def keep_own_moments(self, optim: AdamWState) -> None:
        """Drop the moments of the parameters other ranks own (the memory ZeRO-1 saves)."""
        for table in (optim.m, optim.v):
            for name in list(table):
                if self.owner[name] != self.comm.rank:
                    del table[name]

    def sum_gradients(self, flat: np.ndarray) -> None:
        """The reduce-scatter: this rank's part of the flat gradients becomes the sum over ranks."""
        self.comm.reduce_scatter_sum(flat, self.starts)

    def clip(self, grads: Params, max_norm: float) -> float:
        """`optim.clip_grad_norm` on sharded gradients: the same norm (each rank's dot products of its own
        parameters, shared, then summed in parameter order) and the same scaling of its own parameters."""
        dots = np.zeros(len(self.names), np.float64)
        for i, name in enumerate(self.names):
            if self.owner[name] == self.comm.rank:
                g = grads[name].reshape(-1)
                dots[i] = float(np.dot(g, g))
        self.comm.allreduce_sum(dots)                        # each entry: one owner's value plus zeros, exact
        norm = math.sqrt(sum(float(d) for d in dots))       # global_norm's sum, in its order
        if max_norm > 0 and math.isfinite(norm):
            factor = max_norm / (norm + 1e-6)
            if factor < 1:
                for name in self.mine:
                    grads[name] *= np.float32(factor)
        return norm

    def step(self, params: Params, grads: Params, optim: AdamWState, config: AdamWConfig, lr: float, *,
             threads: int | None = None) -> None:
        """AdamW on this rank's parameters, then every rank's updated parameters all-gathered (params
        are the views of flat_params this object put in place)."""
        own = AdamWState(m={n: optim.m[n] for n in self.mine}, v={n: optim.v[n] for n in self.mine}, step=optim.step)
        adamw_step({n: params[n] for n in self.mine}, {n: grads[n] for n in self.mine}, own, config, lr,
                   threads=threads)
        optim.step = own.step
        self.comm.allgather(self.flat_params, self.starts)

    def full_moments(self, optim: AdamWState, params: Params) -> AdamWState:
        """Every parameter's moments, each broadcast by its owner (a collective: every rank calls it); the
        full tables are kept on rank 0 only, for its checkpoint. Other ranks get back their own moments."""
        m, v = {}, {}
        for name in self.names:
            for table, out in ((optim.m, m), (optim.v, v)):
                buf = table[name] if self.owner[name] == self.comm.rank else np.empty(params[name].shape, np.float32)
                self.comm.broadcast(buf.reshape(-1), root=self.owner[name])
                if self.comm.rank == 0 or self.owner[name] == self.comm.rank:
                    out[name] = buf
        return AdamWState(m=m, v=v, step=optim.step)

    def moment_bytes(self, optim: AdamWState) -> int:
        """Bytes of optimizer moments this rank holds."""
        return sum(a.nbytes for a in optim.m.values()) + sum(a.nbytes for a in optim.v.values())


class ZeroAdamW:
    """optim.Optimizer with ZeRO-1: the gradients reduce-scattered, each rank clipping and updating the
    parameters it owns with the moments it alone keeps (`state` loses the others'), the parameters
    all-gathered after. params: the trained parameters, moved into ZeroShards' flat buffer (the dict's
    entries become views of it, with the same values)."""

    layer_done = None                                  # a reduce-scatter is not started layer by layer

    def __init__(self, params: Params, state: AdamWState, config: AdamWConfig, *, comm: Communicator,
                 threads: int | None = None):
        self.state, self.config, self.threads = state, config, threads
        self.shards = ZeroShards(params, comm)
        self.shards.keep_own_moments(state)
        self.params = params
        self.flat, self.grads = flat_zeros_like(params)

    def zero_grad(self) -> None:
        self.flat.fill(0)

    def reduce_gradients(self) -> None:
        self.shards.sum_gradients(self.flat)

    def clip(self, max_norm: float) -> float:
        return self.shards.clip(self.grads, max_norm)

    def step(self, params: Params, lr: float) -> None:
        self.shards.step(params, self.grads, self.state, self.config, lr, threads=self.threads)

    def full_state(self) -> AdamWState:
        return self.shards.full_moments(self.state, self.params)
