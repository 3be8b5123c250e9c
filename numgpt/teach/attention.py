"""The model's own attention probabilities: the plain forward, one layer at a time, keeping each layer's
softmax(q k^T / sqrt(D)) under the causal mask.

`traced_forward` is `model.reference_forward` for one text, written out so that it can keep what it
computes. It is made of model.py's and ops.py's pieces (embed, split_heads, mlp, lm_head, layer_norm,
linear, causal_mask, softmax) in the same order, and each head's output is computed *from* the kept
probabilities (y = P v). So the logits of the same pass vouch for the probabilities: the tests hold them
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
from ..model import check_context, check_finite_weights, embed, lm_head, mlp, split_heads
from ..ops import causal_mask, layer_norm, linear, softmax
from ..params import Attention, Layer, Params, layer
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
    x = embed(params, ids[None], np.arange(T)[None])           # [1, T] -> [1, T, C]
    mask = causal_mask(T, T)[None, None]                       # [1, 1, T, T]
    weights = np.empty((len(keep), config.n_head, T, T), np.float32)
    for i in range(config.n_layer):
        x, probs = traced_block(layer(params, i), config, x, mask)  # [1, T, C], [1, H, T, T]
        for k in (k for k, kept in enumerate(keep) if kept == i):
            weights[k] = probs[0]
    x = layer_norm(x, params["ln_f.weight"], params["ln_f.bias"], config.layer_norm_epsilon)
    return AttentionTrace(logits=lm_head(params, x)[0], weights=weights)  # [1, T, C] -> [T, V]


def traced_block(layer: Layer, config: GPTConfig, x: np.ndarray, mask: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """model.block, also returning its attention probabilities [B, H, T, T]."""
    eps = config.layer_norm_epsilon
    y, probs = traced_self_attention(layer.attn, config, layer_norm(x, layer.ln_1.weight, layer.ln_1.bias, eps), mask)
    x = x + y
    x = x + mlp(layer.mlp, layer_norm(x, layer.ln_2.weight, layer.ln_2.bias, eps))
    return x, probs


def traced_self_attention(p: Attention, config: GPTConfig, x: np.ndarray, mask: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """model.self_attention, with the heads' outputs computed from the probabilities it returns."""
    B, T, C = x.shape
    qkv = linear(x, p.c_attn.weight, p.c_attn.bias)            # [B, T, C] -> [B, T, 3C]
    q, k, v = split_heads(qkv, config.n_head)                  # [B, T, 3C] -> 3 x [B, H, T, D]
    probs = attention_probabilities(q, k, mask)                # -> [B, H, T, T]
    y = probs @ v                                              # [B, H, T, T] x [B, H, T, D] -> [B, H, T, D]
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)               # [B, H, T, D] -> [B, T, C]
    return linear(y, p.c_proj.weight, p.c_proj.bias), probs


def attention_probabilities(q: np.ndarray, k: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """softmax(q k^T / sqrt(D)) where the mask allows, 0 elsewhere: the weights inside ops.attention, in
    its own three steps (a test holds `attention_probabilities(q, k, mask) @ v` bit-equal to
    ops.attention, so the two cannot drift apart). q [B, H, T, D], k [B, H, S, D] -> [B, H, T, S]."""
    scale = np.float32(1.0 / np.sqrt(q.shape[-1]))
    scores = (q @ k.swapaxes(-1, -2)) * scale                  # [B, H, T, D] x [B, H, D, S] -> [B, H, T, S]
    scores = np.where(mask, scores, np.float32(-np.inf))
    return softmax(scores, axis=-1)


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
