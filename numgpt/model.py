"""The GPT-2 forward pass in NumPy: embed, n_layer pre-LayerNorm blocks, final LayerNorm, tied projection.

    x = wte[ids] + wpe[positions]
    for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    logits = ln_f(x) @ wte^T

Parameters are a dict of GPT-2's names (see params.py) with every linear weight stored [in, out]; the
arrays may be read-only memory maps of a checkpoint, nothing here writes to them. Everything is float32.

Batches of prompts of different lengths are LEFT-padded, with a boolean attention mask (True = real
token). Each row's positions come from its mask (position = number of real tokens before it, as Hugging
Face's generate computes position_ids), so a padded row gives the same logits as the prompt run alone, and
the last column is every row's newest real token.

With a KVCache, `forward` appends the new positions' keys and values to it and attends to all cached
ones: prefill once, then decode one token per call.

Shape legend: B batch, T new positions, S attended positions (cached + new), C channels (n_embd),
H heads, D head size (C // H), V vocabulary, L layers.
"""

from __future__ import annotations

import numpy as np

from .config import GPTConfig
from .errors import NumgptError
from .kvcache import KVCache
from .ops import attention, causal_mask, gelu, layer_norm, linear
from .params import Params


def forward(params: Params, config: GPTConfig, ids: np.ndarray, *, cache: KVCache | None = None,
            attention_mask: np.ndarray | None = None, all_logits: bool = False) -> np.ndarray:
    """Logits for token ids [B, T]: float32 [B, V] for the last position, or [B, T, V] if all_logits.

    cache: if given, the T ids continue the cache's `length` positions; their keys/values are written
        into it and `cache.length` advances by T.
    attention_mask: bool [B, T] or [B, cache.length + T], True for real tokens and False for (left)
        padding; default all True for the new ids (and the cache's own mask for the cached positions).
    Raises NumgptError if a position would reach n_positions or the cache is too short.
    """
    ids = _check_ids(ids, config)
    B, T = ids.shape
    past = 0 if cache is None else cache.length
    valid = _attended_positions(B, T, cache, attention_mask)  # [B, S]
    positions = token_positions(valid)[:, past:]               # [B, S] -> [B, T]
    _check_context(config, cache, positions, T)
    mask = attention_mask_for(valid, T)                        # [B, 1, T, S] or None
    x = embed(params, ids, positions)                          # [B, T] -> [B, T, C]
    for i in range(config.n_layer):
        kv = None if cache is None else (cache.keys[i], cache.values[i], past)
        x = block(params, f"h.{i}.", config, x, mask, kv)      # [B, T, C] -> [B, T, C]
    if cache is not None:
        cache.mask[:, :past + T] = valid
        cache.length = past + T
    if not all_logits:
        x = x[:, -1]                                           # [B, T, C] -> [B, C]
    x = layer_norm(x, params["ln_f.weight"], params["ln_f.bias"], config.layer_norm_epsilon)
    return lm_head(params, x)                                  # [..., C] -> [..., V]


def embed(params: Params, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Token embedding plus position embedding."""
    return params["wte.weight"][ids] + params["wpe.weight"][positions]  # [B, T] -> [B, T, C]


def block(params: Params, h: str, config: GPTConfig, x: np.ndarray, mask: np.ndarray | None,
          kv: tuple[np.ndarray, np.ndarray, int] | None) -> np.ndarray:
    """One transformer block: pre-LayerNorm attention and MLP, each added to the residual stream."""
    eps = config.layer_norm_epsilon
    x = x + self_attention(params, h, config, layer_norm(x, params[h + "ln_1.weight"], params[h + "ln_1.bias"], eps),
                           mask, kv)
    x = x + mlp(params, h, layer_norm(x, params[h + "ln_2.weight"], params[h + "ln_2.bias"], eps))
    return x


def self_attention(params: Params, h: str, config: GPTConfig, x: np.ndarray, mask: np.ndarray | None,
                   kv: tuple[np.ndarray, np.ndarray, int] | None) -> np.ndarray:
    """Multi-head causal self-attention; with kv = (keys, values, past) of one layer's cache
    ([B, H, M, D] each), the new keys/values are stored at past .. past+T and all S are attended to."""
    B, T, C = x.shape
    qkv = linear(x, params[h + "attn.c_attn.weight"], params[h + "attn.c_attn.bias"])  # [B, T, C] -> [B, T, 3C]
    q, k, v = split_heads(qkv, config.n_head)                  # [B, T, 3C] -> 3 x [B, H, T, D]
    if kv is not None:
        keys, values, past = kv
        keys[:, :, past:past + T] = k
        values[:, :, past:past + T] = v
        k, v = keys[:, :, :past + T], values[:, :, :past + T]  # [B, H, S, D]
    y = attention(q, k, v, mask)                               # -> [B, H, T, D]
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)               # [B, H, T, D] -> [B, T, C]
    return linear(y, params[h + "attn.c_proj.weight"], params[h + "attn.c_proj.bias"])


def split_heads(qkv: np.ndarray, n_head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of q, k, v with heads split out, no copy."""
    B, T, C3 = qkv.shape
    qkv = qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)  # -> [3, B, H, T, D]
    return qkv[0], qkv[1], qkv[2]


def mlp(params: Params, h: str, x: np.ndarray) -> np.ndarray:
    """Position-wise feed-forward: C -> 4C, tanh GELU, 4C -> C."""
    x = gelu(linear(x, params[h + "mlp.c_fc.weight"], params[h + "mlp.c_fc.bias"]))  # [B, T, C] -> [B, T, 4C]
    return linear(x, params[h + "mlp.c_proj.weight"], params[h + "mlp.c_proj.bias"])  # [B, T, 4C] -> [B, T, C]


def lm_head(params: Params, x: np.ndarray) -> np.ndarray:
    """Output projection tied to the token embedding: x @ wte^T (wte is [V, C], its .T a free view)."""
    return x @ params["wte.weight"].T                          # [..., C] -> [..., V]


def token_positions(valid: np.ndarray) -> np.ndarray:
    """Position of each token from the mask: the number of real tokens before it (0 for padding)."""
    return np.maximum(np.cumsum(valid, axis=-1) - 1, 0)       # [B, S] -> [B, S]


def attention_mask_for(valid: np.ndarray, t: int) -> np.ndarray | None:
    """Causal mask for the last t of S positions, and-ed with the padding mask; None when that is only
    causal and t == 1 (a single new token may attend to everything), so decoding skips the masking."""
    if t == 1 and valid.all():
        return None
    causal = causal_mask(t, valid.shape[1])                    # [T, S]
    return causal[None, None] & valid[:, None, None, :]        # -> [B, 1, T, S]


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


def _check_context(config: GPTConfig, cache: KVCache | None, positions: np.ndarray, t: int) -> None:
    if positions.max() >= config.n_positions:
        past = 0 if cache is None else cache.length
        raise NumgptError(f"context overflow: {past} cached + {t} new tokens reach position {positions.max()}, "
                          f"but the model has n_positions={config.n_positions}; shorten the prompt or re-prefill "
                          "the last tokens into a reset cache (sliding window)")
    if cache is not None and cache.length + t > cache.max_len:
        raise NumgptError(f"KV cache full: {cache.length} cached + {t} new tokens exceed its max_len "
                          f"{cache.max_len}; allocate a longer cache")
