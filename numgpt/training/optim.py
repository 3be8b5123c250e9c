"""AdamW with decoupled weight decay, the learning-rate schedule, and gradient clipping by global norm.

    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2                      (Adam's moments)
    p = p (1 - lr wd) - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

exactly as torch.optim.AdamW computes it (Loshchilov & Hutter 2019), so a run can be checked step for step
against PyTorch. Weight decay applies to matrices only (nanoGPT, minGPT): never to biases or LayerNorm
gains, and to the embeddings wte/wpe unless `decay_embeddings` is off.

The learning rate warms up linearly, then follows a cosine down to a floor (nanoGPT's schedule).

State is plain data: the moments m and v as float32 arrays keyed by parameter name (params.py's schema),
and the step count; the checkpoint code saves them as they are.

`Optimizer` is the interface the training step calls (zero_grad, reduce_gradients over the ranks, clip,
step, full_state); `AdamW` implements it with every moment on every rank, zero.ZeroAdamW with the moments
sharded over the ranks (ZeRO-1). Both give the same bits.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .. import params as schema
from ..errors import NumgptError
from ..params import Params, zeros_like
from ..threads import run_split
from .comm import Communicator


@dataclass(frozen=True)
class AdamWConfig:
    """Optimizer hyperparameters: peak and floor learning rates, schedule lengths, Adam's betas and eps,
    decoupled weight decay, and the gradient-norm clip (0 = no clipping)."""

    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    decay_iters: int = 2000          # the cosine reaches min_lr here and stays there
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = True    # nanoGPT decays every 2-D tensor, embeddings included
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        check_number_fields(self)
        check_field(self, "lr", math.isfinite(self.lr) and self.lr > 0, "must be a finite number > 0")
        check_field(self, "min_lr", math.isfinite(self.min_lr) and 0 <= self.min_lr <= self.lr,
                    f"must be in [0, lr={self.lr}]")
        for name in ("beta1", "beta2"):
            check_field(self, name, 0 <= getattr(self, name) < 1, "must be in [0, 1)")
        for name in ("warmup_iters", "decay_iters"):
            check_field(self, name, getattr(self, name) >= 0, "must be >= 0")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            check_field(self, name, math.isfinite(value) and value >= 0, "must be a finite number >= 0")
        check_field(self, "eps", math.isfinite(self.eps) and self.eps > 0, "must be a finite number > 0")


class ConfigFieldError(NumgptError):
    """A training option out of its range: the message names the dataclass field; `field` and `rule`
    let the CLI say the same with its flag's name."""

    def __init__(self, owner: str, field: str, rule: str, value: object):
        self.field, self.rule, self.value = field, rule, value
        super().__init__(f"{owner}.{field} {rule}, got {value!r}")


def check_number_fields(config: object) -> None:
    """Every int or float field of a config dataclass holds a number of that kind (a string from a
    damaged JSON file, a bool, or None would otherwise fail later as a TypeError): ConfigFieldError."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.type not in ("int", "float"):
            continue
        kind = numbers.Integral if f.type == "int" else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            rule = "must be a whole number" if f.type == "int" else "must be a number"
            raise ConfigFieldError(type(config).__name__, f.name, rule, value)


def check_field(config: object, field: str, ok: bool, rule: str) -> None:
    """Raise ConfigFieldError for config.field unless ok (NaN fails every comparison, so it is refused)."""
    if not ok:
        raise ConfigFieldError(type(config).__name__, field, rule, getattr(config, field))


@dataclass
class AdamWState:
    """First and second moments per parameter, and the number of updates done so far."""

    m: Params
    v: Params
    step: int = 0


def init_state(params: Params) -> AdamWState:
    """Zero moments shaped like the parameters."""
    return AdamWState(m=zeros_like(params), v=zeros_like(params), step=0)


def learning_rate(config: AdamWConfig, step: int) -> float:
    """The learning rate of update number `step` (0-based): linear warmup over warmup_iters, cosine decay
    to min_lr at decay_iters, then min_lr (nanoGPT's get_lr)."""
    if step < config.warmup_iters:
        return config.lr * (step + 1) / (config.warmup_iters + 1)
    if step >= config.decay_iters:
        return config.min_lr
    ratio = (step - config.warmup_iters) / (config.decay_iters - config.warmup_iters)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (config.lr - config.min_lr)


def decays(name: str, shape: tuple[int, ...], config: AdamWConfig) -> bool:
    """Whether weight decay applies: the parameter schema's rule, by the tensor's kind (params.decays)."""
    return schema.decays(name, shape, decay_embeddings=config.decay_embeddings)


def global_norm(grads: Params) -> float:
    """sqrt of the sum of every gradient entry squared (float32 dots summed in float64)."""
    return math.sqrt(sum(float(np.dot(g.reshape(-1), g.reshape(-1))) for g in grads.values()))


def clip_grad_norm(grads: Params, max_norm: float) -> float:
    """Scale all gradients in place so their global norm is at most max_norm (as
    torch.nn.utils.clip_grad_norm_: factor max_norm / (norm + 1e-6) when below 1); returns the norm
    before clipping. max_norm 0 means no clipping."""
    norm = global_norm(grads)
    if max_norm > 0 and math.isfinite(norm):
        factor = max_norm / (norm + 1e-6)
        if factor < 1:
            for g in grads.values():
                g *= np.float32(factor)
    return norm


def adamw_step(params: Params, grads: Params, state: AdamWState, config: AdamWConfig, lr: float, *,
               threads: int | None = None) -> None:
    """One AdamW update of every parameter, in place (params, state.m, state.v, state.step), its slices
    split over up to `threads` threads (None: all cores; the result does not depend on it)."""
    state.step += 1
    t = state.step
    b1, b2 = config.beta1, config.beta2
    step_size = np.float32(lr / (1 - b1 ** t))                   # bias correction of m folded into lr
    sqrt_bc2 = np.float32(math.sqrt(1 - b2 ** t))                # bias correction of v
    work = [(s, np.float32(lr * config.weight_decay) if decays(name, p.shape, config) else None)
            for name, p in params.items() for s in chunks(p, grads[name], state.m[name], state.v[name])]

    def update(part: list) -> None:                              # some of the slices, in one thread
        scratch = np.empty(CHUNK, np.float32)
        for s, decay in part:
            adamw_update(*s, b1=b1, b2=b2, eps=config.eps, step_size=step_size, sqrt_bc2=sqrt_bc2,
                         decay=decay, scratch=scratch[:s[0].size] if s[0].size <= CHUNK else None)
    run_split(lambda rows: update(work[rows]), len(work), work=sum(s[0].size for s, _ in work), threads=threads)


# Elements updated at a time: the temporaries of one slice (256 KB) stay in L2 cache, so AdamW's dozen
# elementwise passes read main memory about once, and a 124M-parameter update allocates nothing big.
CHUNK = 1 << 16


def chunks(*arrays: np.ndarray):
    """Matching 1-D slices (views) of same-shaped C-contiguous arrays, CHUNK elements at a time."""
    if not all(a.flags.c_contiguous for a in arrays):
        yield arrays                                             # cannot take flat views: whole tensors
        return
    flat = [a.reshape(-1) for a in arrays]
    for i in range(0, flat[0].size, CHUNK):
        yield tuple(f[i:i + CHUNK] for f in flat)


def adamw_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, *, b1: float, b2: float,
                 eps: float, step_size: np.float32, sqrt_bc2: np.float32, decay: np.float32 | None,
                 scratch: np.ndarray | None = None) -> None:
    """AdamW on one tensor (or slice), in place, in torch's order of operations (so float32 results match):
    p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= step_size * m / (sqrt(v) / sqrt_bc2 + eps).   scratch: a buffer of p's size, or None."""
    tmp = np.empty_like(p) if scratch is None else scratch.reshape(p.shape)
    if decay is not None:
        p *= np.float32(1) - decay
    np.subtract(g, m, out=tmp)
    tmp *= np.float32(1 - b1)
    m += tmp                                                     # torch's lerp: m + (g - m)(1 - b1)
    v *= np.float32(b2)
    np.multiply(g, g, out=tmp)
    tmp *= np.float32(1 - b2)
    v += tmp
    np.sqrt(v, out=tmp)
    tmp /= sqrt_bc2
    tmp += np.float32(eps)
    np.divide(m, tmp, out=tmp)
    tmp *= step_size
    p -= tmp


# ---------------------------------------------------------------- the optimizer the training step calls

class Optimizer(Protocol):
    """What the training step (loop.train_step) asks of an optimizer; AdamW below and ZeRO-1's
    ZeroAdamW (zero.py) implement it. It owns the gradients of the trained parameters, as views of one
    flat float32 buffer (so the sum over the ranks is one call), and the optimizer state."""

    grads: Params                                  # name -> gradient, the trained parameters only
    layer_done: Callable[[int], None] | None       # starts layer i's sum over the ranks during the backward

    def zero_grad(self) -> None:
        """Set every gradient to 0 (before the first micro-batch of a step)."""

    def reduce_gradients(self) -> None:
        """Sum the gradients over the ranks (after each micro-batch), in rank order: exact on every backend."""

    def clip(self, max_norm: float) -> float:
        """Scale the gradients to a global norm of at most max_norm (0: no clipping); the norm before."""

    def step(self, params: Params, lr: float) -> None:
        """One update of the trained parameters in place, at learning rate lr."""

    def full_state(self) -> AdamWState:
        """The whole optimizer state, to save (a collective where the state is sharded: every rank calls it)."""


class AdamW:
    """AdamW over data-parallel ranks: every rank keeps every moment, and the gradients are summed by an
    all-reduce, started layer by layer during the backward where the communicator can (parallel.py,
    OverlappedSum). params: the trained parameters (their order is the gradient buffer's)."""

    def __init__(self, params: Params, state: AdamWState, config: AdamWConfig, *, comm: Communicator | None = None,
                 threads: int | None = None, n_layer: int = 0, overlap: bool = True):
        from .comm import SingleProcess
        from .parallel import OverlappedSum, flat_zeros_like

        self.state, self.config, self.threads = state, config, threads
        self.comm = SingleProcess() if comm is None else comm
        self.flat, self.grads = flat_zeros_like(params)
        self._sum = OverlappedSum.of(self.comm, self.flat, self.grads, n_layer) if overlap else None
        self.layer_done = None if self._sum is None else self._sum.block_done

    def zero_grad(self) -> None:
        self.flat.fill(0)

    def reduce_gradients(self) -> None:
        if self._sum is not None and self._sum.started:
            self._sum.finish()                     # the layers' sums started in the backward, then the rest
        else:
            self.comm.allreduce_sum(self.flat)

    def clip(self, max_norm: float) -> float:
        return clip_grad_norm(self.grads, max_norm)

    def step(self, params: Params, lr: float) -> None:
        trained = params if len(params) == len(self.grads) else {name: params[name] for name in self.grads}
        adamw_step(trained, self.grads, self.state, self.config, lr, threads=self.threads)

    def full_state(self) -> AdamWState:
        return self.state
