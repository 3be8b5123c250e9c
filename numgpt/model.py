"""The GPT-2 forward pass in NumPy: embed, n_layer pre-LayerNorm blocks, final LayerNorm, tied projection.

    x = wte[ids] + wpe[positions]
    for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    logits = ln_f(x) @ wte^T

Parameters are a dict of GPT-2's names (see params.py) with every linear weight shaped [in, out]; the
arrays may be read-only memory maps of a checkpoint, nothing here writes to them. numgpt.load hands in the
decode step's matrices with their longer side contiguous (formats.hf.load_checkpoint, for_inference: the
c_proj weights and wte as transposed views), which one-row products stream fastest (ops.linear_into,
`lm_head`), and with a copy of each in column panels (panels.DecodeParams), through which 2 .. 16 rows
stream at up to twice the speed, and a short prompt's prefill computes ~1.3x faster (`product_into`),
where a forward asks for them (`panels=True`: the decode loop's batched steps and their prefill,
speculative decoding, the serving engine's slots). Everything is float32.

Batches of prompts of different lengths are LEFT-padded, with a boolean attention mask (True = real
token). Each row's positions come from its mask (position = number of real tokens before it, as Hugging
Face's generate computes position_ids), so a padded row gives the same logits as the prompt run alone, and
the last column is every row's newest real token.

With a KVCache, `forward` appends the new positions' keys and values to it and attends to all cached
ones: prefill once, then decode one token per call.

The blocks, side by side: `block` (with `self_attention`, `mlp`) is the plain model, one new array per
operation, run by `reference_forward`; `block_` is the fast twin `forward` runs -- it updates the residual
stream in place through buffers allocated once per call, attention runs in cache-sized query blocks and
skips the causal upper triangle (a decode step's single query per row goes through `attend_rows_into`),
and the vocabulary projection is computed only for the positions asked for; `decode_block_` is the slot-batched decode step (slots.decode_slots: one new position per row, each
row at its own cache length, batch-invariant); `decode_row_` is a batch-1 decode step through a cache
without padding, on vectors instead of [1, C] rows, where a small model's step is mostly the count of NumPy
calls, not their work. Tests hold each fast block equal to `block`, and the forwards equal to transformers. A block reads its tensors through the layer view of params.py
(`layer.attn.c_attn.weight`), built once per forward call.

Shape legend: B batch, T new positions, S attended positions (cached + new), C channels (n_embd),
H heads, D head size (C // H), V vocabulary, L layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import GPTConfig
from .errors import NumgptError
from .kvcache import KVCache
from .ops import (EXP_NEGLIGIBLE_BELOW, FEW_ROWS, attention_probabilities, causal_attention_into, causal_mask, gelu, gelu_, layer_norm,
                  layer_norm_into, layer_norm_row_, linear, linear_into, linear_row_into, row_sums,
                  stored_out_in)
from .panels import head_panels
from .params import Layer, Linear, Params, layers

# Receives the plain forward's intermediates as they are computed: record(layer, name, value). Names:
# "attn.probs", block `layer`'s attention probabilities [B, H, T, S] (0 where masked). teach's views
# keep what they show with one; None (the default) records nothing and costs nothing.
Recorder = Callable[[int, str, np.ndarray], None]


def forward(params: Params, config: GPTConfig, ids: np.ndarray, *, cache: KVCache | None = None,
            attention_mask: np.ndarray | None = None, all_logits: bool = False, panels: bool = False) -> np.ndarray:
    """Logits for token ids [B, T]: float32 [B, V] for the last position, or [B, T, V] if all_logits.

    cache: if given, the T ids continue the cache's `length` positions; their keys/values are written
        into it and `cache.length` advances by T.
    attention_mask: bool [B, T] or [B, cache.length + T], True for real tokens and False for (left)
        padding; default all True for the new ids (and the cache's own mask for the cached positions).
    panels: let 2 .. panels.MAX_ROWS rows go through the weights' column panels where params has them
        (numgpt.load's, panels.py; `Panels.takes` says which): the decode loop's batched steps and their
        prefill, speculative decoding and the serving engine's slots ask for it. Off, every forward
        computes as it always did, bit for bit (scoring, teach's views, embeddings).
    Raises NumgptError if a position would reach n_positions or the cache is too short.

    This is the fast path: each block works in place on buffers allocated once per call (`block_`), and
    without all_logits the last block computes only the last position's output (`last_block_`);
    `reference_forward` is its plain twin, and the tests hold them equal.
    """
    x = hidden_states(params, config, ids, cache=cache, attention_mask=attention_mask, all_positions=all_logits,
                      panels=panels)
    return lm_head(params, x, panels=panels)                   # [..., C] -> [..., V]


def hidden_states(params: Params, config: GPTConfig, ids: np.ndarray, *, cache: KVCache | None = None,
                  attention_mask: np.ndarray | None = None, all_positions: bool = True,
                  panels: bool = False) -> np.ndarray:
    """The final hidden states, after ln_f (what lm_head projects, and transformers' GPT2Model returns as
    last_hidden_state): float32 [B, T, C], or [B, C] for the last position only if not all_positions.
    `forward` without the projection; cache, attention_mask and panels as there (embeddings.py pools these)."""
    if _one_row_step(config, ids, cache, attention_mask):
        x = decode_row(params, config, int(ids[0, 0]), cache)  # [C]
        return x[None, None] if all_positions else x[None]     # -> [1, 1, C] or [1, C]
    ids = _check_ids(ids, config)
    B, T = ids.shape
    past = 0 if cache is None else cache.length
    if attention_mask is None and _unpadded(cache, B):         # no padding anywhere: positions past .. past+T-1
        valid, key_valid = None, None
        positions = np.broadcast_to(np.arange(past, past + T), (B, T))  # [B, T]
    else:
        valid = _attended_positions(B, T, cache, attention_mask)  # [B, S]
        positions = token_positions(valid)[:, past:]           # [B, S] -> [B, T]
        key_valid = None if valid.all() else valid
    _check_context(config, cache, positions, T)
    x = embed(params, ids, positions)                          # [B, T] -> [B, T, C]
    buffers = BlockBuffers.allocate(config, B, T)
    for layer in layers(params, config, panels=panels):
        kv = None if cache is None else (cache.keys[layer.index], cache.values[layer.index], past)
        if all_positions or layer.index < config.n_layer - 1:
            block_(layer, config, x, key_valid, kv, buffers)   # [B, T, C], in place
        else:
            x = last_block_(layer, config, x, key_valid, kv, buffers)  # [B, T, C] -> [B, C]
    if cache is not None:
        if valid is None:
            cache.mask[:, past:past + T] = True
        else:
            cache.mask[:, :past + T] = valid
        cache.length = past + T
    return layer_norm(x, params["ln_f.weight"], params["ln_f.bias"], config.layer_norm_epsilon)


def reference_forward(params: Params, config: GPTConfig, ids: np.ndarray, *,
                      attention_mask: np.ndarray | None = None, record: Recorder | None = None) -> np.ndarray:
    """The plain forward, written for reading and as the reference `forward` is tested against: logits
    [B, T, V] at every position, no cache, one new array per operation. record: see `Recorder`."""
    ids = _check_ids(ids, config)
    B, T = ids.shape
    valid = _attended_positions(B, T, None, attention_mask)   # [B, T]
    positions = token_positions(valid)
    _check_context(config, None, positions, T)
    mask = causal_mask(T, T)[None, None] & valid[:, None, None, :]  # [B, 1, T, T]
    x = embed(params, ids, positions)                          # [B, T] -> [B, T, C]
    for layer in layers(params, config):
        x = block(layer, config, x, mask, record)              # [B, T, C] -> [B, T, C]
    x = layer_norm(x, params["ln_f.weight"], params["ln_f.bias"], config.layer_norm_epsilon)
    return lm_head(params, x)                                  # [B, T, C] -> [B, T, V]


def embed(params: Params, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Token embedding plus position embedding."""
    return params["wte.weight"][ids] + params["wpe.weight"][positions]  # [B, T] -> [B, T, C]


def block(layer: Layer, config: GPTConfig, x: np.ndarray, mask: np.ndarray, record: Recorder | None = None
          ) -> np.ndarray:
    """One transformer block: pre-LayerNorm attention and MLP, each added to the residual stream."""
    eps = config.layer_norm_epsilon
    x = x + self_attention(layer, config, layer_norm(x, layer.ln_1.weight, layer.ln_1.bias, eps), mask, record)
    x = x + mlp(layer, layer_norm(x, layer.ln_2.weight, layer.ln_2.bias, eps))
    return x


def self_attention(layer: Layer, config: GPTConfig, x: np.ndarray, mask: np.ndarray,
                   record: Recorder | None = None) -> np.ndarray:
    """Multi-head self-attention of T positions over themselves, under a boolean mask [B, 1, T, T]:
    ops.attention in its two steps, so that a recorder sees the probabilities the heads' outputs are
    computed from."""
    B, T, C = x.shape
    qkv = linear(x, layer.attn.c_attn.weight, layer.attn.c_attn.bias)  # [B, T, C] -> [B, T, 3C]
    q, k, v = split_heads(qkv, config.n_head)                  # [B, T, 3C] -> 3 x [B, H, T, D]
    probs = attention_probabilities(q, k, mask)                # -> [B, H, T, T]
    if record is not None:
        record(layer.index, "attn.probs", probs)
    y = probs @ v                                              # [B, H, T, T] x [B, H, T, D] -> [B, H, T, D]
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)               # [B, H, T, D] -> [B, T, C]
    return linear(y, layer.attn.c_proj.weight, layer.attn.c_proj.bias)


def split_heads(qkv: np.ndarray, n_head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of q, k, v with heads split out, no copy."""
    B, T, C3 = qkv.shape
    qkv = qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)  # -> [3, B, H, T, D]
    return qkv[0], qkv[1], qkv[2]


def mlp(layer: Layer, x: np.ndarray) -> np.ndarray:
    """Position-wise feed-forward: C -> 4C, tanh GELU, 4C -> C."""
    x = gelu(linear(x, layer.mlp.c_fc.weight, layer.mlp.c_fc.bias))  # [B, T, C] -> [B, T, 4C]
    return linear(x, layer.mlp.c_proj.weight, layer.mlp.c_proj.bias)  # [B, T, 4C] -> [B, T, C]


@dataclass
class BlockBuffers:
    """Scratch arrays for `block_`, allocated once per forward call and reused by every layer
    (N = B * T rows)."""

    ln: np.ndarray          # [N, C]   LayerNorm output
    qkv: np.ndarray         # [N, 3C]
    att: np.ndarray         # [B, T, H, D] attention output, heads merged by a free reshape
    proj: np.ndarray        # [N, C]   output of either c_proj
    fc: np.ndarray          # [N, 4C]
    scratch: np.ndarray     # [N, 4C]  GELU's temporary

    @classmethod
    def allocate(cls, config: GPTConfig, b: int, t: int) -> "BlockBuffers":
        n, C = b * t, config.n_embd
        return cls(ln=np.empty((n, C), np.float32), qkv=np.empty((n, 3 * C), np.float32),
                   att=np.empty((b, t, config.n_head, config.head_size), np.float32),
                   proj=np.empty((n, C), np.float32), fc=np.empty((n, 4 * C), np.float32),
                   scratch=np.empty((n, 4 * C), np.float32))


def block_(layer: Layer, config: GPTConfig, x: np.ndarray, key_valid: np.ndarray | None,
           kv: tuple[np.ndarray, np.ndarray, int] | None, buf: BlockBuffers) -> np.ndarray:
    """`block` in place on x [B, T, C], using buf instead of new arrays. With kv = (keys, values, past)
    of one layer's cache ([B, H, M, D] each), the new keys/values are stored at past .. past+T and the
    queries attend to all past+T positions; key_valid [B, past+T] masks padding (None: no padding)."""
    B, T, C = x.shape
    eps = config.layer_norm_epsilon
    x2 = x.reshape(B * T, C)                                   # a view: x is updated through it
    q, k, v = queries_keys_values_(layer, config, x, kv, buf)
    if T == 1:
        attend_rows_into(q, k, v, key_valid, buf.att)          # a decode step: -> [B, 1, H, D]
    else:
        causal_attention_into(q, k, v, key_valid, buf.att)     # -> [B, T, H, D]
    product_into(buf.att.reshape(B * T, C), layer.attn.c_proj, buf.proj)
    x2 += buf.proj
    layer_norm_into(x2, layer.ln_2.weight, layer.ln_2.bias, eps, buf.ln)
    product_into(buf.ln, layer.mlp.c_fc, buf.fc)  # [N, C] -> [N, 4C]
    gelu_(buf.fc, buf.scratch)
    product_into(buf.fc, layer.mlp.c_proj, buf.proj)  # [N, 4C] -> [N, C]
    x2 += buf.proj
    return x


def last_block_(layer: Layer, config: GPTConfig, x: np.ndarray, key_valid: np.ndarray | None,
                kv: tuple[np.ndarray, np.ndarray, int] | None, buf: BlockBuffers) -> np.ndarray:
    """The last block of a forward that wants only the last position's output (a prefill before the first
    token): every position's keys and values, which the cache keeps, but the query, attention, c_proj and
    the MLP of the last position alone -- 3/12 of the block's products instead of all of them (a 4-layer
    model's prefill does a fifth less work). Arguments as `block_`'s. [B, T, C] -> [B, C]"""
    B, T, C = x.shape
    q, k, v = queries_keys_values_(layer, config, x, kv, buf)
    att = np.empty((B, 1, config.n_head, config.head_size), np.float32)
    attend_rows_into(q[:, :, -1:], k, v, key_valid, att)       # the last query sees every key: [B, 1, H, D]
    last = x[:, -1] + affine(att.reshape(B, C), layer.attn.c_proj)  # [B, C]
    ln = layer_norm_into(last, layer.ln_2.weight, layer.ln_2.bias, config.layer_norm_epsilon, buf.ln[:B])
    fc = affine(ln, layer.mlp.c_fc)                            # [B, C] -> [B, 4C]
    gelu_(fc, buf.scratch[:B])
    last += affine(fc, layer.mlp.c_proj)                       # [B, 4C] -> [B, C]
    return last


def queries_keys_values_(layer: Layer, config: GPTConfig, x: np.ndarray,
                         kv: tuple[np.ndarray, np.ndarray, int] | None, buf: BlockBuffers
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block's first half up to attention, for `block_` and `last_block_`: ln_1 and c_attn of every position
    of x [B, T, C] (through buf.ln, buf.qkv), the new keys and values stored in the layer's cache when kv =
    (keys, values, past) is given. Returns q [B, H, T, D] and the keys and values to attend to, [B, H, S, D]
    (S = past + T; the new positions' own without a cache)."""
    B, T, C = x.shape
    layer_norm_into(x.reshape(B * T, C), layer.ln_1.weight, layer.ln_1.bias, config.layer_norm_epsilon, buf.ln)
    product_into(buf.ln, layer.attn.c_attn, buf.qkv)           # [N, C] -> [N, 3C]
    q, k, v = split_heads(buf.qkv.reshape(B, T, 3 * C), config.n_head)  # -> 3 x [B, H, T, D] views
    if kv is None:
        return q, k, v
    keys, values, past = kv
    keys[:, :, past:past + T] = k
    values[:, :, past:past + T] = v
    return q, keys[:, :, :past + T], values[:, :, :past + T]


def product_into(x: np.ndarray, linear: Linear, out: np.ndarray) -> np.ndarray:
    """x @ weight + bias into out: through the weight's column panels for 2 .. panels.MAX_ROWS rows where it
    has them (numgpt.load's models, panels.py), else ops.linear_into. [N, in] -> [N, out]"""
    if linear.panels is not None and linear.panels.takes(x.shape[0]):
        return linear.panels.linear_into(x, linear.bias, out)
    return linear_into(x, linear.weight, linear.bias, out)


def decode_block_(layer: Layer, config: GPTConfig, x: np.ndarray, keys: np.ndarray, values: np.ndarray,
                  rows: np.ndarray, at: np.ndarray) -> None:
    """`block` for one new position per row, each row at its own cache length, in place on x [W, C]
    (slots.decode_slots' step). keys, values [S, H, M, D]: this layer's slot cache; rows [n]: the slots of
    x's rows 0 .. n-1, whose new positions are at [n] (rows beyond n are padding that keeps the products'
    shape fixed: no cache, no attention). Products go through `affine` and attention row by row
    over each slot's own keys, so a row's result does not depend on the rows beside it."""
    eps, (N, C) = config.layer_norm_epsilon, x.shape
    ln = np.empty_like(x)
    layer_norm_into(x, layer.ln_1.weight, layer.ln_1.bias, eps, ln)
    qkv = affine(ln, layer.attn.c_attn)                                         # [N, C] -> [N, 3C]
    q, k, v = qkv.reshape(N, 3, config.n_head, config.head_size).transpose(1, 0, 2, 3)  # 3 x [N, H, D]
    keys[rows, :, at] = k[:rows.size]                                            # [n, H, D] into [n] slots
    values[rows, :, at] = v[:rows.size]
    q = q[:rows.size] * np.float32(1.0 / np.sqrt(config.head_size))              # [n, H, D]
    att = np.zeros((N, config.n_head, config.head_size), np.float32)             # [W, H, D]
    for i, (s, n) in enumerate(zip(rows.tolist(), (at + 1).tolist())):
        att[i] = attend(q[i], keys[s, :, :n], values[s, :, :n])
    x += affine(att.reshape(N, C), layer.attn.c_proj)
    layer_norm_into(x, layer.ln_2.weight, layer.ln_2.bias, eps, ln)
    fc = affine(ln, layer.mlp.c_fc)                                             # [N, C] -> [N, 4C]
    gelu_(fc, np.empty_like(fc))
    x += affine(fc, layer.mlp.c_proj)                                           # [N, 4C] -> [N, C]


def _one_row_step(config: GPTConfig, ids: np.ndarray, cache: KVCache | None, attention_mask: np.ndarray | None
                  ) -> bool:
    """True for a batch-1 decode step that `decode_row` can take: one token in range, after a prefill (a cache
    holding positions, none of them padding) with room for it. Anything else goes the general way, which also
    says what is wrong; a prefill too, so that it computes what a forward without a cache computes, bit for
    bit (teach's views)."""
    if cache is None or attention_mask is not None or not isinstance(ids, np.ndarray) or ids.shape != (1, 1):
        return False
    past = cache.length
    return (0 < past < min(config.n_positions, cache.max_len) and np.issubdtype(ids.dtype, np.integer)
            and 0 <= ids[0, 0] < config.vocab_size and _unpadded(cache, 1))


def decode_row(params: Params, config: GPTConfig, token: int, cache: KVCache) -> np.ndarray:
    """`hidden_states` of one new token of one sequence whose cache has no padding (a batch-1 decode step,
    the token at position cache.length): its final hidden state [C], after ln_f; the cache advances by one.
    Vectors rather than [1, C] rows throughout (`decode_row_`): on the small models a step is mostly NumPy
    calls, and this takes 0.64-0.78x `block_`'s time on them (BENCHMARKS.md)."""
    past, C = cache.length, config.n_embd
    x = params["wte.weight"][token] + params["wpe.weight"][past]  # [C]
    buf = (np.empty(C, np.float32), np.empty(3 * C, np.float32), np.empty(4 * C, np.float32),
           np.empty(4 * C, np.float32), np.empty((config.n_head, config.head_size), np.float32))
    for layer in layers(params, config):
        decode_row_(layer, config, x, cache.keys[layer.index, 0], cache.values[layer.index, 0], past, buf)
    cache.mask[0, past] = True
    cache.length = past + 1
    return layer_norm_row_(x, params["ln_f.weight"], params["ln_f.bias"], config.layer_norm_epsilon, buf[0])


def decode_row_(layer: Layer, config: GPTConfig, x: np.ndarray, keys: np.ndarray, values: np.ndarray, past: int,
                buf: tuple[np.ndarray, ...]) -> None:
    """`block` for one position of one sequence, in place on x [C]: its key and value go into keys, values
    [H, M, D] (this layer's cache of that sequence) at `past`, and its query attends to positions 0 .. past,
    all real. buf: scratch vectors [C], [3C], [4C], [4C] and [H, D]."""
    eps, H, D = config.layer_norm_epsilon, config.n_head, config.head_size
    ln, qkv, fc, scratch, att = buf
    layer_norm_row_(x, layer.ln_1.weight, layer.ln_1.bias, eps, ln)
    linear_row_into(ln, layer.attn.c_attn.weight, layer.attn.c_attn.bias, qkv)      # [C] -> [3C]
    q, k, v = qkv.reshape(3, H, D)                                               # 3 x [H, D] views
    keys[:, past] = k
    values[:, past] = v
    attend(q * np.float32(1.0 / np.sqrt(D)), keys[:, :past + 1], values[:, :past + 1], att)  # -> [H, D]
    x += linear_row_into(att.reshape(-1), layer.attn.c_proj.weight, layer.attn.c_proj.bias, ln)
    layer_norm_row_(x, layer.ln_2.weight, layer.ln_2.bias, eps, ln)
    gelu_(linear_row_into(ln, layer.mlp.c_fc.weight, layer.mlp.c_fc.bias, fc), scratch)  # [C] -> [4C]
    x += linear_row_into(fc, layer.mlp.c_proj.weight, layer.mlp.c_proj.bias, ln)     # [4C] -> [C]


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """One query per head (already scaled by 1/sqrt(D)) over one sequence's own keys: softmax(q k^T) v, into
    `out` if given. Every key is real (no mask), so the softmax is the plain one, in place (floored like
    causal_attention_into's: no subnormals). [H, D], [H, S, D] -> [H, D]"""
    scores = (k @ q[:, :, None])[:, :, 0]                      # [H, S, D] x [H, D, 1] -> [H, S]
    scores -= scores.max(axis=-1, keepdims=True)
    np.maximum(scores, EXP_NEGLIGIBLE_BELOW, out=scores)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    if out is None:
        return (scores[:, None, :] @ v)[:, 0]                  # [H, 1, S] x [H, S, D] -> [H, D]
    np.matmul(scores[:, None, :], v, out=out[:, None, :])
    return out


def attend_rows_into(q: np.ndarray, k: np.ndarray, v: np.ndarray, key_valid: np.ndarray | None,
                     out: np.ndarray) -> np.ndarray:
    """`causal_attention_into` for one new position per row (a decode step): every key is in the past,
    so there is no causal mask and no query blocking, just two batched products and a softmax (about
    half its time at 100 cached positions). key_valid [B, S] hides left padding (each row always sees
    at least its own new key). q [B, H, 1, D], k, v [B, H, S, D] -> out [B, 1, H, D]"""
    q = q * np.float32(1.0 / np.sqrt(q.shape[-1]))              # [B, H, 1, D]
    scores = (k @ q.swapaxes(-1, -2))[..., 0]                   # [B, H, S, D] x [B, H, D, 1] -> [B, H, S]
    if key_valid is not None:
        np.copyto(scores, np.float32(-np.inf), where=~key_valid[:, None, :])
    scores -= scores.max(axis=-1, keepdims=True)
    np.maximum(scores, EXP_NEGLIGIBLE_BELOW, out=scores)        # no subnormals (causal_attention_into)
    np.exp(scores, out=scores)
    if key_valid is not None:
        np.copyto(scores, np.float32(0), where=~key_valid[:, None, :])
    scores /= row_sums(scores)[..., None]
    out[:, 0] = (scores[:, :, None, :] @ v)[:, :, 0]           # [B, H, 1, S] x [B, H, S, D] -> [B, H, D]
    return out


def affine(x: np.ndarray, linear: Linear) -> np.ndarray:
    """x @ weight + bias for the decode rows: through the weight's panels where it has them (panels.py:
    each row computed alone, the same wherever it sits at a fixed number of rows), else `columns_product`."""
    if linear.panels is not None and linear.panels.takes(x.shape[0]):
        return linear.panels.linear_into(x, linear.bias, np.empty((x.shape[0], linear.weight.shape[1]), np.float32))
    out = columns_product(linear.weight.T, x)
    out += linear.bias
    return out


def columns_product(w_out_in: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x @ w_out_in.T computed as (w_out_in @ x.T).T. At a fixed number of columns OpenBLAS computes every
    column the same way wherever it sits, whichever way the weight is stored (numgpt.load's [out, in]
    copies, or the checkpoint's [in, out] with mmap=True; tests/test_slots.py). [N, in] -> [N, out]"""
    return np.ascontiguousarray((w_out_in @ x.T).T)


def lm_head(params: Params, x: np.ndarray, *, panels: bool = False) -> np.ndarray:
    """Output projection tied to the token embedding: x @ wte^T. wte stored [C, V] (the decode layout of
    numgpt.load) makes that a product with a row-major matrix of long rows, the fastest form at every row
    count; stored [V, C], a few rows go as wte @ x^T, the form OpenBLAS runs faster for them; with `panels`
    and wte's panels (panels.DecodeParams), 2 .. panels.MAX_ROWS rows go through those. Any leading
    dimensions go as the rows of one 2-D product (a 3-D x @ wte.T was ~8x slower for a few rows)."""
    wte = params["wte.weight"]
    rows = x.reshape(-1, x.shape[-1])                          # [..., C] -> [N, C]
    head = head_panels(params) if panels else None
    if head is not None and head.takes(rows.shape[0]):         # a few rows: wte's panels (panels.py)
        out = head.linear_into(rows, None, np.empty((rows.shape[0], wte.shape[0]), np.float32))
    elif stored_out_in(wte):
        out = rows @ wte.T                                     # [N, C] x [C, V] -> [N, V]
    elif rows.shape[0] < FEW_ROWS:
        out = np.ascontiguousarray((wte @ rows.T).T)           # [V, C] x [C, N] -> [V, N] -> [N, V]
    else:
        out = rows @ wte.T
    return out.reshape(*x.shape[:-1], out.shape[-1])           # -> [..., V]


def token_positions(valid: np.ndarray) -> np.ndarray:
    """Position of each token from the mask: the number of real tokens before it (0 for padding)."""
    return np.maximum(np.cumsum(valid, axis=-1) - 1, 0)       # [B, S] -> [B, S]


def _unpadded(cache: KVCache | None, b: int) -> bool:
    """True when no cached position is padding (or there is no cache); a cache of another batch size is
    left to `_attended_positions` to refuse."""
    return cache is None or (cache.batch_size == b and bool(cache.mask[:, :cache.length].all()))


def _attended_positions(b: int, t: int, cache: KVCache | None, attention_mask: np.ndarray | None) -> np.ndarray:
    """The [B, S] mask of real tokens over cached + new positions."""
    past = 0 if cache is None else cache.length
    if cache is not None and cache.batch_size != b:
        raise NumgptError(f"ids have batch size {b} but the KV cache has {cache.batch_size} rows; "
                          "allocate the cache with the same batch size (or cache.select rows)")
    if attention_mask is None:
        new = np.ones((b, t), bool)
    else:
        attention_mask = np.asarray(attention_mask).astype(bool, copy=False)
        if attention_mask.shape == (b, past + t):
            return attention_mask
        if attention_mask.shape != (b, t):
            raise NumgptError(f"attention_mask has shape {attention_mask.shape}, expected ({b}, {t}) or "
                              f"({b}, {past + t}) (batch, new or all positions)")
        new = attention_mask
    if cache is None:
        return new
    return np.concatenate([cache.mask[:, :past], new], axis=1)


def _check_ids(ids: np.ndarray, config: GPTConfig) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise NumgptError(f"ids must be a 2-D integer array [batch, time], got {ids.dtype} {ids.shape}")
    if ids.shape[1] == 0:
        raise NumgptError("ids are empty: give at least one token per row")
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
        raise NumgptError(f"token ids must be in 0..{config.vocab_size - 1}, got {ids.min()}..{ids.max()}")
    return ids


def check_context(config: GPTConfig, tokens: int, max_new_tokens: int = 0, *, fix: str | None = None) -> None:
    """The one context rule: `tokens` (a prompt, a training window, everything a row has seen) plus
    max_new_tokens must fit in n_positions, GPT-2's learned positions; else a one-line NumgptError ending in
    `fix`, what the caller's user can do (default: the generation advice)."""
    if tokens + max_new_tokens <= config.n_positions:
        return
    if fix is None:
        room = config.n_positions - tokens
        fix = (f"lower max_new_tokens to {room}" if room > 0 and max_new_tokens else "shorten the prompt") \
            + " or pass sliding_window=True"
    asked = f"{tokens} tokens + max_new_tokens {max_new_tokens} = {tokens + max_new_tokens}" if max_new_tokens \
        else f"{tokens} tokens"
    raise NumgptError(f"context overflow: {asked} > the model's context of n_positions={config.n_positions}; "
                      f"{fix}")


def check_finite_weights(params: Params, *, fix: str = "the checkpoint is damaged: download or save it again"
                         ) -> None:
    """The one rule for damaged weights: a NumgptError naming the first tensor that holds NaN or inf (and
    how many), then `fix`, what the caller's user should do."""
    for name, array in params.items():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise NumgptError(f"the model's weights are not finite: {name} has {bad} NaN/inf values of "
                              f"{array.size}; {fix}")


def check_finite_logits(logits: np.ndarray, params: Params) -> None:
    """Refuse non-finite model output once, naming the cause: a weight tensor holding NaN or inf (a damaged
    checkpoint) or, with finite weights, an overflow. One pass over [B, V]; the weights are scanned only
    when something is wrong."""
    if np.isfinite(logits).all():
        return
    check_finite_weights(params)
    raise NumgptError("the model produced non-finite logits (NaN or inf) from finite weights: an overflow; "
                      "the checkpoint's weights are out of any sane range")


def _check_context(config: GPTConfig, cache: KVCache | None, positions: np.ndarray, t: int) -> None:
    if positions.max() >= config.n_positions:
        check_context(config, int(positions.max()) + 1, fix="shorten the input, or re-prefill its last tokens "
                      "into a reset cache (generate's sliding window)")
    if cache is not None and cache.length + t > cache.max_len:
        raise NumgptError(f"KV cache full: {cache.length} cached + {t} new tokens exceed its max_len "
                          f"{cache.max_len}; allocate a longer cache")
