"""What training minimises: a loss function over a batch, and the set of parameters it trains.

    Objective(batch=next_token_batch, loss=next_token_loss, evaluate=next_token_value, trainable=None)
                                                                                  pre-training (the default)

The training step (loop.train_step) never asks which objective it has: it draws a batch with `batch` (a
tuple of arrays whose first axis is the row, so data parallelism can split any batch by rows; each rank
reads only its rows), calls `loss` on each slice of rows, sums the gradients of the `trainable` parameters over threads and ranks, and updates those
parameters only. Another training task is another Objective, not another loop: masked cross-entropy, a
classification head, DPO or a policy-gradient loss is a new `loss` (with the `batch` it reads), and
LoRA's adapters a new `trainable`.

A loss function adds scale * d(mean loss over the slice's rows)/d(param) into grads[name] for every
trainable parameter and returns the mean loss (backprop.accumulate_grads is the model of one):

    loss(params, config, batch, grads, *, scale, dropout, rng, workspace, block_done) -> float

block_done(i), if given, is called once layer i's gradients are complete (and -1 after ln_f's), so the sum
over the ranks can start during the backward (parallel.py); a loss may leave it uncalled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from ..backprop import Workspace, accumulate_grads, loss_only
from ..config import GPTConfig
from ..errors import NumgptError
from ..params import Params
from .data import Dataset, get_batch

if TYPE_CHECKING:
    from .loop import Trainer

Batch = tuple[np.ndarray, ...]       # arrays of one batch, rows first: (ids [B, T], targets [B, T]) here
# (data, split, batch_size, block_size, rng, rows) -> this rank's rows of a batch; draws from rng as for the
# whole batch, so every rank's rng stays the same
BatchFn = Callable[[Dataset, str, int, int, np.random.Generator, slice], Batch]


def next_token_batch(data: Dataset, split: str, batch_size: int, block_size: int, rng: np.random.Generator,
                     rows: slice) -> Batch:
    """Random windows of the split and the same windows one token on: (ids, targets), [rows, T] each."""
    return get_batch(data.split(split), batch_size, block_size, rng, rows=rows)


class LossFn(Protocol):
    def __call__(self, params: Params, config: GPTConfig, batch: Batch, grads: Params, *, scale: float,
                 dropout: float, rng: np.random.Generator | None, workspace: Workspace | None,
                 block_done: Callable[[int], None] | None) -> float: ...


ValueFn = Callable[[Params, GPTConfig, Batch, Workspace | None], float]   # the mean loss, no gradients
# (comm) -> figures added to a step's event; called on every rank after the step's update (it may sum
# over the ranks: comm is the loop's Communicator)
ReportFn = Callable[[Any], dict[str, Any]]
# (trainer) -> {"train": loss, "val": loss, and other figures to log}: an evaluation of the objective's own
EstimateFn = Callable[["Trainer"], dict[str, Any]]


def next_token_loss(params: Params, config: GPTConfig, batch: Batch, grads: Params, *, scale: float = 1.0,
                    dropout: float = 0.0, rng: np.random.Generator | None = None,
                    workspace: Workspace | None = None, block_done: Callable[[int], None] | None = None) -> float:
    """Next-token cross-entropy of batch = (ids [B, T], targets [B, T]); gradients of the parameters
    that grads holds (the others' go to scratch buffers)."""
    ids, targets = batch
    workspace = Workspace() if workspace is None else workspace
    return accumulate_grads(params, config, ids, targets, with_frozen(params, grads, workspace), scale=scale,
                            dropout=dropout, rng=rng, workspace=workspace, block_done=block_done)


def next_token_value(params: Params, config: GPTConfig, batch: Batch, workspace: Workspace | None = None) -> float:
    """Mean next-token cross-entropy of (ids, targets), no dropout, no gradients (evaluation)."""
    ids, targets = batch
    return loss_only(params, config, ids, targets, workspace=workspace)


def with_frozen(params: Params, grads: Params, workspace: Workspace) -> Params:
    """grads, completed with zeroed scratch buffers for the parameters it does not train (the backward
    writes every parameter's gradient; a frozen one's is thrown away). grads itself when it trains all."""
    if len(grads) == len(params):
        return grads
    full = {}
    for name, p in params.items():
        if name in grads:
            full[name] = grads[name]
        else:
            full[name] = workspace.get("frozen." + name, p.shape, np.float32)
            full[name].fill(0)
    return full


@dataclass(frozen=True)
class Objective:
    """A training task: its batches, its loss (with gradients), its evaluation (without), and the
    parameters it trains (None: all of them; else a set of names from the parameter schema).

    estimate, if given, replaces the loop's estimate_loss (`evaluate` over eval_iters batches of each split):
    it returns the "train" and "val" losses and any other figures of the task, all logged with each
    evaluation (DPO's reward margin and preference accuracy); every rank calls it at the same point."""

    batch: BatchFn = next_token_batch
    loss: LossFn = next_token_loss
    evaluate: ValueFn = next_token_value
    trainable: frozenset[str] | None = None
    report: ReportFn | None = None       # more figures for each step's event (RL's reward, KL, sampling speed)
    estimate: EstimateFn | None = None

    def trainable_params(self, params: Params) -> Params:
        """The trained parameters, in the schema's order (the order of params)."""
        if self.trainable is None:
            return params
        unknown = sorted(set(self.trainable) - set(params))
        if unknown:
            raise NumgptError(f"trainable names {unknown[0]!r}, which is no parameter of this model (names as in "
                              "params.param_shapes: 'h.0.attn.c_attn.weight', 'ln_f.bias', ...)")
        return {name: p for name, p in params.items() if name in self.trainable}
