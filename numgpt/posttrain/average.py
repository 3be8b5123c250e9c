"""Weight averaging: one model whose every parameter is the (weighted) mean of several models' -- a "model
soup" (Wortsman et al., 2022), or checkpoint averaging.

It works for models fine-tuned from one start, which stay in one basin of the loss: DPO runs from the same SFT
model that differ only in the order of their batches (`numgpt dpo --seed`), for example, whose mistakes
partly cancel in the mean (BENCHMARKS.md, "Averaging DPO runs"). Averaging models trained from different
random starts gives noise: their hidden units are not in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import GPTConfig
from ..errors import NumgptError
from ..params import Params, param_shapes


def mixing_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """The n models' shares of the mean, summing to 1: equal without `weights`, else `weights` scaled to sum
    to 1 (finite, >= 0, not all 0, one per model). float64 [n]."""
    if n < 2:
        raise NumgptError(f"averaging needs at least two models, got {n}")
    if weights is None:
        return np.full(n, 1.0 / n)
    w = [float(x) for x in weights]
    if len(w) != n:
        raise NumgptError(f"{len(w)} weights for {n} models: give one weight per model")
    if not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise NumgptError(f"the weights must be finite, >= 0 and not all 0, got {', '.join(map(str, w))}")
    return np.array(w) / sum(w)


def average_params(params: Sequence[Params], config: GPTConfig, weights: Sequence[float] | None = None) -> Params:
    """sum_i w_i params[i], tensor by tensor: float32 tensors in the config's shapes, each summed in float64
    (so the result does not depend on the models' order beyond the last rounding). Reads each input once,
    so memory-mapped inputs are not copied; holds the result plus one tensor in float64."""
    share = mixing_weights(weights, len(params))
    out: Params = {}
    for name, shape in param_shapes(config).items():
        total = np.zeros(shape, np.float64)
        for w, p in zip(share, params):
            term = np.array(p[name], np.float64)               # one input tensor in float64 at a time
            term *= w
            total += term
        out[name] = total.astype(np.float32)
    return out


def check_same_kind(models: Sequence[Any], names: Sequence[str]) -> None:
    """Models to average must share their shape, tokenizer and chat template (one line naming the first
    that differs from the first model if not)."""
    from ..lm import same_tokenizer

    first, first_name = models[0], names[0]
    for m, name in zip(models[1:], names[1:]):
        if m.config != first.config:
            diffs = [f"{k} {getattr(m.config, k)} against {getattr(first.config, k)}"
                     for k in first.config.__dataclass_fields__ if getattr(m.config, k) != getattr(first.config, k)]
            raise NumgptError(f"{name}: not the shape of {first_name} ({', '.join(diffs)}); only models of one "
                              "shape, fine-tuned from one start, can be averaged")
        if not same_tokenizer(m.tokenizer, first.tokenizer):
            raise NumgptError(f"{name}: another tokenizer than {first_name}'s; only models fine-tuned from one "
                              "start can be averaged")
        if getattr(m.tokenizer, "chat_template", None) != getattr(first.tokenizer, "chat_template", None):
            raise NumgptError(f"{name}: another chat template than {first_name}'s; the average would have "
                              "to pick one")


def averaging_bytes(config: GPTConfig) -> int:
    """Memory the mean takes beyond its memory-mapped inputs: the float32 result and the largest tensor in
    float64 twice (the running sum and one input's float64 copy)."""
    shapes = param_shapes(config).values()
    return sum(4 * math.prod(s) for s in shapes) + 2 * 8 * max(math.prod(s) for s in shapes)
