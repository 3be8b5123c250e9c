"""The layers of GPT-2 as NumPy functions: forward (and, later, backward) side by side.

Every function keeps float32 in, float32 out: constants are float32 scalars, because one float64 scalar
(say `np.sqrt(head_size)`) silently promotes whole activations to float64 and makes decoding ~7x slower.

The plain functions (`layer_norm`, `gelu`, `linear`, `softmax`, `attention`) are the reference. The few
inference variants that write into preallocated buffers (`*_into`, `gelu_`) sit beside their plain twin
and are tested against it.

References: GPT-2 (Radford et al. 2019), Hugging Face `modeling_gpt2.py`, picoGPT.

Shape legend: B batch, T time (new positions), S positions attended to (cached + new), C channels,
H heads, D head size (C // H), V vocabulary, N any leading dimensions.
"""

from __future__ import annotations

import numpy as np

# GPT-2's tanh approximation of GELU ("gelu_new" in Hugging Face), with float32 constants.
GELU_SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))
GELU_CUBIC = np.float32(0.044715)
HALF = np.float32(0.5)
ONE = np.float32(1.0)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """Normalise each vector over its last axis to zero mean and unit variance, then scale and shift.

    y = (x - mean) / sqrt(var + eps) * w + b, with the biased variance (as torch.nn.LayerNorm).
    """
    mean = x.mean(axis=-1, keepdims=True)                     # [N, C] -> [N, 1]
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)    # [N, C] -> [N, 1]
    return centred / np.sqrt(var + np.float32(eps)) * w + b


def layer_norm_into(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    """`layer_norm` written into `out` (same shape as x, may not alias x), with no temporary arrays
    of x's size: the inference hot path calls this twice per block per token."""
    mean = x.mean(axis=-1, keepdims=True)                     # [N, C] -> [N, 1]
    np.subtract(x, mean, out=out)
    var = np.einsum("...c,...c->...", out, out)[..., None]    # [N, C] -> [N, 1], sum of squares
    var *= np.float32(1.0 / x.shape[-1])
    var += np.float32(eps)
    np.sqrt(var, out=var)
    out /= var
    out *= w
    out += b
    return out


def gelu(x: np.ndarray) -> np.ndarray:
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return HALF * x * (ONE + np.tanh(GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)))


def gelu_(x: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """`gelu` in place on x, using `scratch` (same shape) instead of allocating temporaries."""
    np.multiply(x, x, out=scratch)                 # x^2
    scratch *= GELU_CUBIC
    scratch += ONE                                 # 1 + 0.044715 x^2
    scratch *= x                                   # x + 0.044715 x^3
    scratch *= GELU_SQRT_2_OVER_PI
    np.tanh(scratch, out=scratch)
    scratch += ONE
    x *= HALF
    x *= scratch
    return x


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Affine map with the weight stored [in, out] (GPT-2's Conv1D layout): y = x @ w + b."""
    return x @ w + b                               # [N, in] -> [N, out]


def linear_into(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`linear` written into a preallocated `out` (2-D x only, so BLAS sees one matrix product)."""
    np.matmul(x, w, out=out)                       # [N, in] -> [N, out]
    out += b
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along `axis`, with the max subtracted first so exp never overflows.

    Entries equal to -inf get probability 0; a slice that is -inf everywhere becomes all zeros, not NaN.
    """
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, np.float32(0))            # subtle: -inf - -inf would be NaN
    e = np.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    return e / np.where(s > 0, s, np.float32(1))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Scaled dot-product attention: softmax(q k^T / sqrt(D), masked) v.

    q: [B, H, T, D]; k, v: [B, H, S, D]; mask: boolean, broadcastable to [B, 1, T, S] (True = may attend),
    or None for no mask. A query that may attend to nothing gets a zero vector, not NaN.
    """
    scale = np.float32(1.0 / np.sqrt(q.shape[-1]))
    scores = (q @ k.swapaxes(-1, -2)) * scale                  # [B, H, T, D] x [B, H, D, S] -> [B, H, T, S]
    if mask is not None:
        scores = np.where(mask, scores, np.float32(-np.inf))
    return softmax(scores, axis=-1) @ v                        # [B, H, T, S] x [B, H, S, D] -> [B, H, T, D]


def causal_mask(t: int, s: int) -> np.ndarray:
    """Boolean [T, S] mask for T new queries at the end of S positions: query i sees keys 0 .. S - T + i."""
    return np.tri(t, s, k=s - t, dtype=bool)
