"""Embeddings: one vector per input, the model's final hidden states pooled over the input's tokens.

    vectors = embed_ids(params, config, [[464, 3290, 318], [15496]], pooling="mean")   # float32 [2, C]

Which hidden states: model.hidden_states, the residual stream after the final LayerNorm ln_f. It is
transformers' GPT2Model `last_hidden_state` (so the vectors can be checked against it and compared with
what a transformers user computes), the state lm_head projects to the next token, and the state
posttrain/classify.py's head reads. Before ln_f, GPT-2's residual stream carries a few channels far larger
than the others at every position, which would dominate every dot product of the pooled vectors; ln_f puts
each position on one scale.

Pooling, over each input's own tokens (never the padding):
    "mean"  the average of the T hidden states                                  [T, C] -> [C]
    "last"  the last token's hidden state: in a causal model the only one that has seen the whole input
            (what GPT2ForSequenceClassification reads)
Vectors are returned as pooled, not scaled to unit length (OpenAI's are; v / |v| is one division away), so
that they equal transformers' hidden states pooled the same way. Text is embedded as its tokens alone, with
no <|endoftext|> added around it.

Batching (`embed_ids`): the inputs are sorted by length and cut into LEFT-padded batches of at most
`batch_tokens` padded positions -- the memory bound: a forward's buffers grow with batch x length, about
15 C floats per position (46 KB for 124M) -- and each batch is one hidden_states call with its attention
mask, so a padded row gives the hidden states of its input run alone (model.py). `embed_one` is the slow
obvious twin (one input, no padding); the tests hold both equal to transformers.

Shape legend: B batch, T positions, C channels (n_embd).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import GPTConfig
from .errors import NumgptError
from .model import check_finite_weights, hidden_states
from .params import Params

POOLINGS = ("mean", "last")
# Padded positions per forward (so about the rows of every matrix product). Smaller batches of sorted
# inputs pad less: on 64 inputs of 16-128 tokens (bench_embeddings) the padded positions are 1.08x the
# real ones at 512, 1.15x at 1024, 1.29x at 2048; and 512 rows still run BLAS at full speed (the 512-token
# prefill is at parity with transformers, BENCHMARKS.md). A 124M batch's buffers stay near 25 MB; an input
# longer than this runs alone.
BATCH_TOKENS = 512


def check_pooling(pooling: object) -> str:
    if pooling not in POOLINGS:
        raise NumgptError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {pooling!r}")
    return pooling


def pool(hidden: np.ndarray, valid: np.ndarray, pooling: str) -> np.ndarray:
    """Each row's vector from its hidden states [B, T, C], real tokens marked by valid [B, T] (padding on
    the left: the last column is every row's last token)."""
    if pooling == "last":
        return hidden[:, -1]                                   # [B, T, C] -> [B, C]
    weights = valid.astype(np.float32) / valid.sum(axis=1, keepdims=True)  # [B, T], each row sums to 1
    return (weights[:, None, :] @ hidden)[:, 0]                # [B, 1, T] x [B, T, C] -> [B, C]


def embed_one(params: Params, config: GPTConfig, ids: Sequence[int], pooling: str = "mean") -> np.ndarray:
    """The plain twin of `embed_batch`: one input alone, no padding. [T] -> float32 [C]"""
    hidden = hidden_states(params, config, np.asarray([ids]))  # [1, T] -> [1, T, C]
    return pool(hidden, np.ones(hidden.shape[:2], bool), check_pooling(pooling))[0]


def embed_batch(params: Params, config: GPTConfig, seqs: Sequence[np.ndarray], pooling: str) -> np.ndarray:
    """The vectors of a few inputs [B, C] in one forward, left-padded to the longest."""
    T = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), T), np.int64)                   # [B, T]; the pad id is never attended
    valid = np.zeros((len(seqs), T), bool)
    for row, s in enumerate(seqs):
        ids[row, T - len(s):] = s
        valid[row, T - len(s):] = True
    hidden = hidden_states(params, config, ids, attention_mask=valid, all_positions=pooling == "mean")
    if pooling == "last":
        return hidden                                          # [B, C]: the last column only
    return pool(hidden, valid, pooling)                        # [B, T, C] -> [B, C]


def plan_batches(lengths: Sequence[int], batch_tokens: int = BATCH_TOKENS) -> list[np.ndarray]:
    """The inputs' indices in batches: shortest first, each batch as many as fit in batch_tokens padded
    positions (at least one), so that a batch pads little."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    out, start = [], 0
    for end in range(1, len(order) + 1):
        # order[start:end] is a batch if the next input, the longest yet, would pad it past batch_tokens
        if end == len(order) or (end + 1 - start) * lengths[order[end]] > batch_tokens:
            out.append(order[start:end])
            start = end
    return out


def checked_inputs(seqs: Sequence[Sequence[int]], config: GPTConfig, *, truncate: bool = False,
                   fix: str = "shorten it, or pass truncate=True to keep its first tokens") -> list[np.ndarray]:
    """The inputs as int64 arrays, checked: at least one, none empty, ids in the vocabulary, each within
    the context (n_positions) -- cut to its first n_positions tokens if truncate, else a NumgptError naming
    the input and ending in `fix`."""
    if not len(seqs):
        raise NumgptError("no inputs: give at least one text or list of token ids to embed")
    out = []
    for k, s in enumerate(seqs):
        a = np.asarray(s, dtype=np.int64)                      # [T]
        if a.size == 0:
            raise NumgptError(f"input {k} is empty: an embedding needs at least one token")
        if a.min() < 0 or a.max() >= config.vocab_size:
            raise NumgptError(f"input {k}: token ids must be in 0..{config.vocab_size - 1}, got {a.min()}..{a.max()}")
        if a.size > config.n_positions and not truncate:
            raise NumgptError(f"input {k} has {a.size} tokens, more than the model's context of "
                              f"n_positions={config.n_positions}; {fix}")
        out.append(a[:config.n_positions])
    return out


def embed_ids(params: Params, config: GPTConfig, seqs: Sequence[Sequence[int]], *, pooling: str = "mean",
              truncate: bool = False, batch_tokens: int = BATCH_TOKENS) -> np.ndarray:
    """One vector per input of token ids: float32 [n, C], in the order given (see the module docstring)."""
    check_pooling(pooling)
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise NumgptError(f"batch_tokens must be a whole number >= 1, got {batch_tokens!r}")
    seqs = checked_inputs(seqs, config, truncate=truncate)
    out = np.empty((len(seqs), config.n_embd), np.float32)    # [n, C]
    for pick in plan_batches([len(s) for s in seqs], batch_tokens):
        out[pick] = embed_batch(params, config, [seqs[i] for i in pick], pooling)
    check_finite_vectors(out, params)
    return out


def check_finite_vectors(vectors: np.ndarray, params: Params) -> None:
    """Non-finite vectors come from damaged weights (named by check_finite_weights) or an overflow."""
    if np.isfinite(vectors).all():
        return
    check_finite_weights(params)
    raise NumgptError("the model produced non-finite hidden states (NaN or inf) from finite weights: an "
                      "overflow; the checkpoint's weights are out of any sane range")
