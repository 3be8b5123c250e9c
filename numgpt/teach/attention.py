"""The model's own attention probabilities: the plain forward, keeping each layer's
softmax(q k^T / sqrt(D)) under the causal mask.

`traced_forward` IS `model.reference_forward`, run with a recorder that keeps the probabilities of the
layers asked for (model.Recorder). The reference computes each head's output *from* the probabilities it
hands the recorder (y = P v), so the logits of the same pass vouch for them: the tests hold them
bit-equal to reference_forward and within float rounding of the fast forward, and the probabilities
equal transformers' `output_attentions=True`.

Row t of a head's [T, T] matrix is how position t spreads its attention over positions 0..t: each row
sums to 1 and everything above the diagonal is 0 (a token never sees the future).

Shape legend: B batch (1 here), T tokens, C channels, H heads, D head size, V vocabulary, L layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import GPTConfig
from ..errors import NumgptError
from ..model import check_context, check_finite_weights, reference_forward
from ..params import Params
from .inputs import Prompt, index_in_range, prompt_ids, token_labels


@dataclass(frozen=True)
class AttentionTrace:
    """One plain forward pass over a text: its logits and the attention probabilities of the layers kept."""

    logits: np.ndarray    # [T, V] float32, logits at t score the token at t + 1
    weights: np.ndarray   # [K, H, T, T] float32 for the K layers kept (all: K = L); weights[k, h, t, s] =
                          # attention of position t to position s (0 for s > t)


def attention_weights(params: Params, config: GPTConfig, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """The causal softmax attention probabilities of every layer and head for token ids [T]:
    float32 [L, H, T, T]."""
    return traced_forward(params, config, ids).weights


def traced_forward(params: Params, config: GPTConfig, ids: Sequence[int] | np.ndarray, *,
                   layers: Sequence[int] | None = None) -> AttentionTrace:
    """reference_forward for one row of ids [T], keeping the attention probabilities of `layers` (in that
    order; None: every layer). Every layer runs either way; keeping one is what bounds the memory (GPT-2
    124M at 1024 tokens: 48 MiB a layer, 576 MiB for all twelve)."""
    ids = _checked_ids(ids, config)                            # [T]
    T = ids.shape[0]
    keep = list(range(config.n_layer)) if layers is None else \
        [index_in_range("layer", i, config.n_layer, "layers") for i in layers]
    weights = np.empty((len(keep), config.n_head, T, T), np.float32)

    def record(layer: int, name: str, value: np.ndarray) -> None:
        if name == "attn.probs":
            for k in (k for k, kept in enumerate(keep) if kept == layer):
                weights[k] = value[0]                          # [1, H, T, T] -> [H, T, T]

    logits = reference_forward(params, config, ids[None], record=record)[0]  # [1, T] -> [T, V]
    return AttentionTrace(logits=logits, weights=weights)


def _checked_ids(ids: Sequence[int] | np.ndarray, config: GPTConfig) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise NumgptError(f"ids must be a 1-D list of token ids, got {ids.dtype} {ids.shape}")
    if ids.size == 0:
        raise NumgptError("ids are empty: give at least one token")
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise NumgptError(f"token ids must be in 0..{config.vocab_size - 1}, got {ids.min()}..{ids.max()}")
    check_context(config, ids.size, fix="shorten the text")
    return ids


# ---- the view an endpoint returns ----------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionView:
    """One layer's attention for a text, as plain data: weights[i][t][s] is how much position t of the
    text attends to position s in head heads[i] (rows sum to 1, 0 above the diagonal)."""

    ids: list[int]
    tokens: list[str]
    layer: int
    heads: list[int]
    weights: list[list[list[float]]]   # [len(heads), T, T]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def attention_view(lm, text: Prompt, *, layer: int = 0, head: int | None = None) -> AttentionView:
    """The attention of one head (or, head=None, every head) of one layer of lm for a text or token ids."""
    config = lm.config
    layer = index_in_range("layer", layer, config.n_layer, "layers")
    heads = list(range(config.n_head)) if head is None else [index_in_range("head", head, config.n_head, "heads")]
    ids = prompt_ids(lm, text)
    check_finite_weights(lm.params)             # NaN weights would make a table of NaN, said nowhere
    weights = traced_forward(lm.params, config, ids, layers=[layer]).weights[0, heads]  # [1, H, T, T] -> [h, T, T]
    return AttentionView(ids=ids, tokens=token_labels(lm.tokenizer, ids), layer=layer, heads=heads,
                         weights=weights.astype(float).tolist())
