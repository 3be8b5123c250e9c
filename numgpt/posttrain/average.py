"""Weight averaging: one model whose every parameter is the (weighted) mean of several models' -- a "model
soup" (Wortsman et al., 2022), or checkpoint averaging.

It works for models fine-tuned from one start, which stay in one basin of the loss: DPO runs from the same SFT
model that differ only in the order of their batches (`numgpt dpo --seed`), for example, whose mistakes
partly cancel in the mean (BENCHMARKS.md, "Averaging DPO runs"). Averaging models trained from different
random starts gives noise: their hidden units are not in the same order.

The mean is a running sum in float64, one model added at a time (`add_weighted`), so the memory it takes
does not grow with the number of models, and the order of the models changes only the float64 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import GPTConfig
from ..errors import NumgptError
from ..params import Params, count_params, param_shapes


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
    if not all(math.isfinite(x) and x >= 0 for x in w) or max(w) <= 0:
        raise NumgptError(f"weights must be finite, >= 0 and not all 0, got {', '.join(map(str, w))}")
    share = np.array(w) / max(w)                # in (0, 1] first, so that the sum cannot overflow
    return share / share.sum()


def add_weighted(total: dict[str, np.ndarray] | None, params: Params, config: GPTConfig, w: float
                 ) -> dict[str, np.ndarray]:
    """total + w * params, tensor by tensor in float64 (a new total of zeros if total is None). Holds one
    input tensor in float64 at a time beside the total."""
    shapes = param_shapes(config)
    if total is None:
        total = {name: np.zeros(shape, np.float64) for name, shape in shapes.items()}
    for name in shapes:
        term = np.array(params[name], np.float64)          # [shape] float64 copy of one tensor
        term *= w
        total[name] += term
    return total


def as_params(total: dict[str, np.ndarray]) -> Params:
    """The float32 parameters of a running sum, each float64 tensor dropped once it is cast."""
    return {name: total.pop(name).astype(np.float32) for name in list(total)}


def average_params(params: Sequence[Params], config: GPTConfig, weights: Sequence[float] | None = None) -> Params:
    """sum_i w_i params[i] in float32, summed in float64 (mixing_weights says what w is)."""
    total = None
    for w, p in zip(mixing_weights(weights, len(params)), params):
        total = add_weighted(total, p, config, float(w))
    return as_params(total)


def check_same_kind(first: Any, other: Any, first_name: str, name: str) -> None:
    """A model to average must share the first model's shape, tokenizer and chat template (one line naming
    what differs if not). first and other: LanguageModels."""
    from ..lm import same_tokenizer

    if other.config != first.config:
        diffs = [f"{k} {getattr(other.config, k)} against {getattr(first.config, k)}"
                 for k in first.config.__dataclass_fields__ if getattr(other.config, k) != getattr(first.config, k)]
        raise NumgptError(f"{name}: not the shape of {first_name} ({', '.join(diffs)}); only models of one "
                          "shape, fine-tuned from one start, can be averaged")
    if not same_tokenizer(other.tokenizer, first.tokenizer):
        raise NumgptError(f"{name}: another tokenizer than {first_name}'s; only models fine-tuned from one "
                          "start can be averaged")
    if getattr(other.tokenizer, "chat_template", None) != getattr(first.tokenizer, "chat_template", None):
        raise NumgptError(f"{name}: another chat template than {first_name}'s; the average would have "
                          "to pick one")


def averaging_bytes(config: GPTConfig) -> int:
    """Memory the mean takes beyond the first model, whatever the number of models: the float64 running sum,
    one more model's weights converted to float32 as it loads (a float16 file, a LoRA run's merged
    weights; a float32 file is memory-mapped instead), one tensor's float64 copy and one tokenizer."""
    n, largest = count_params(config), max(math.prod(s) for s in param_shapes(config).values())
    return 8 * n + 4 * n + 8 * largest + TOKENIZER_BYTES


TOKENIZER_BYTES = 64 << 20    # a loaded GPT-2 tokenizer's tables: ~47 MB measured, with headroom
