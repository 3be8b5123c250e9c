"""The layers of GPT-2 as NumPy functions: forward and backward side by side.

Every function keeps float32 in, float32 out: constants are float32 scalars, because one float64 scalar
(say `np.sqrt(head_size)`) silently promotes whole activations to float64 and makes decoding ~7x slower.

Training uses `<op>_forward` -> (out, ctx) / `<op>_backward(dout, ctx, ...)` pairs that share the math of
the plain forwards. Backwards ACCUMULATE parameter gradients into the buffers passed in (`dw += ...`), so
residual branches and the tied wte/lm_head need no special case (as llm.c and micrograd do), and return
the gradient of their input.

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
GELU_U_CUBIC = np.float32(float(GELU_SQRT_2_OVER_PI) * float(GELU_CUBIC))  # training: u = x (a + b x^2)
ONE = np.float32(1.0)
FLOAT32_LOWEST = np.finfo(np.float32).min    # inference attention: the floor of a row max (see below)
FLOAT32_TINY = np.finfo(np.float32).tiny
EXP_NEGLIGIBLE_BELOW = np.float32(-64 * np.log(2.0))   # -44.4: exp(x) < 2^-64 below (see its use)


def row_sums(x: np.ndarray) -> np.ndarray:
    """Sums over the last axis ([..., C] -> [...]) as a BLAS matrix-vector product. On the short rows of
    LayerNorm and attention, NumPy's own reduction loops row by row and costs several times more
    (measured: [384, 128] rows 43 us with .mean, 8 us this way; [6, 4, 64, 64] 82 us against 12 us)."""
    return x @ np.ones(x.shape[-1], x.dtype)


def column_sums(x: np.ndarray) -> np.ndarray:
    """Sums over the first axis of a 2-D array ([N, C] -> [C]), as a matrix-vector product (see row_sums)."""
    return np.ones(x.shape[0], x.dtype) @ x


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """Normalise each vector over its last axis to zero mean and unit variance, then scale and shift.

    y = (x - mean) / sqrt(var + eps) * w + b, with the biased variance (as torch.nn.LayerNorm).
    """
    mean = x.mean(axis=-1, keepdims=True)                     # [N, C] -> [N, 1]
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)    # [N, C] -> [N, 1]
    return centred / np.sqrt(var + np.float32(eps)) * w + b


def layer_norm_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float
                       ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`layer_norm` for training: also returns (xhat, rstd, w), what `layer_norm_backward` needs."""
    mean = row_sums(x)[..., None]                             # [N, C] -> [N, 1]
    mean *= np.float32(1.0 / x.shape[-1])
    xhat = x - mean
    var = np.einsum("...c,...c->...", xhat, xhat)[..., None]  # [N, C] -> [N, 1], sum of squares
    var *= np.float32(1.0 / x.shape[-1])
    var += np.float32(eps)
    rstd = np.sqrt(var)
    np.reciprocal(rstd, out=rstd)                             # [N, 1], 1 / standard deviation
    xhat *= rstd
    y = xhat * w
    y += b
    return y, (xhat, rstd, w)


def layer_norm_backward(dy: np.ndarray, ctx: tuple[np.ndarray, np.ndarray, np.ndarray],
                        dw: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Differentiates y = xhat * w + b, xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps).

    Accumulates dw += sum(dy * xhat), db += sum(dy) over all leading axes; returns
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w.
    """
    xhat, rstd, w = ctx
    C = dy.shape[-1]
    dy2, xhat2 = dy.reshape(-1, C), xhat.reshape(-1, C)       # [N, C]
    dw += np.einsum("nc,nc->c", dy2, xhat2)
    db += column_sums(dy2)
    g = dy * w
    g_mean = row_sums(g)[..., None]                           # [N, C] -> [N, 1]
    g_mean *= np.float32(1.0 / C)
    gx_mean = np.einsum("...c,...c->...", g, xhat)[..., None]  # [N, C] -> [N, 1]
    gx_mean *= np.float32(1.0 / C)
    dx = np.multiply(xhat, gx_mean)
    np.subtract(g, dx, out=dx)
    dx -= g_mean
    dx *= rstd
    return dx


def layer_norm_into(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    """`layer_norm` written into `out` (same shape as x, may not alias x), with no temporary arrays
    of x's size: the inference hot path calls this twice per block per token."""
    inv_c = np.float32(1.0 / x.shape[-1])
    mean = row_sums(x)[..., None]                             # [N, C] -> [N, 1]
    mean *= inv_c
    np.subtract(x, mean, out=out)
    var = np.einsum("...c,...c->...", out, out)[..., None]    # [N, C] -> [N, 1], sum of squares
    var *= inv_c
    var += np.float32(eps)
    np.sqrt(var, out=var)
    out /= var
    out *= w
    out += b
    return out


def layer_norm_row_(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    """`layer_norm` of one vector x [C] into `out` [C] (may not alias x): its mean and variance as Python
    floats, so six NumPy calls instead of `layer_norm_into`'s ten on [1, C] arrays (4.4 against 11.8 us at
    C = 192: a batch-1 decode step of a small model is mostly such calls)."""
    inv_c = 1.0 / x.shape[-1]
    np.subtract(x, np.float32(float(x.sum()) * inv_c), out=out)
    out *= np.float32(1.0 / np.sqrt(float(np.dot(out, out)) * inv_c + eps))
    out *= w
    out += b
    return out


def gelu(x: np.ndarray) -> np.ndarray:
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return HALF * x * (ONE + np.tanh(GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)))


def gelu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`gelu` for training, written as y = x * h with h = 0.5 (1 + tanh u); returns (y, h) -- h is what
    `gelu_backward` needs. h is computed as the logistic sigmoid(2u) = 1 / (1 + exp(-2u)), which equals
    0.5 (1 + tanh u) and costs a third less: NumPy's tanh takes ~3.9 ns an element here against ~2.3
    for exp (neither vectorised on AVX2). In place on one buffer: 8 passes over x."""
    h = gelu_denominator(x)
    np.reciprocal(h, out=h)                                    # h = 1 / (1 + exp(-2u)) = 0.5 (1 + tanh u)
    return x * h, h


def gelu_denominator(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 + exp(-2u), u = sqrt(2/pi) (x + 0.044715 x^3): GELU(x) = x / this, in 6 passes (into `out` if given).
    exp(-2u) overflows to inf below x ~ -10.1, which is right: GELU's x / inf = 0 there."""
    d = np.multiply(x, x, out=out)
    d *= np.float32(-2) * GELU_U_CUBIC
    d += np.float32(-2) * GELU_SQRT_2_OVER_PI
    d *= x                                                     # -2u
    with np.errstate(over="ignore"):
        np.exp(d, out=d)
    d += ONE
    return d


def gelu_backward(dy: np.ndarray, x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Differentiates y = 0.5 x (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3); x the input, h = 0.5 (1 + tanh u).

    dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx, and with 1 + tanh u = 2h, 1 - tanh u = 2 (1 - h):
    dy/dx = h (1 + (1 - h) q),  q = 2 x du/dx = x (2 sqrt(2/pi) + 6 * 0.044715 sqrt(2/pi) x^2).
    """
    q = np.multiply(x, x)
    q *= np.float32(6) * GELU_U_CUBIC
    q += np.float32(2) * GELU_SQRT_2_OVER_PI
    q *= x
    one_minus_h = np.subtract(ONE, h)
    q *= one_minus_h
    q += ONE
    q *= h
    q *= dy
    return q


def gelu_(x: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """`gelu` in place on x, using `scratch` (same shape) instead of allocating temporaries; as
    x / (1 + exp(-2u)), the sigmoid form of `gelu_forward`."""
    x /= gelu_denominator(x, out=scratch)
    return x


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Affine map with the weight stored [in, out] (GPT-2's Conv1D layout): y = x @ w + b."""
    return x @ w + b                               # [N, in] -> [N, out]


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`linear` for training, 2-D x: the bias is added in place into the product, so the step allocates
    one [N, out] array instead of two (a fresh megabyte-sized array costs more than the addition)."""
    y = x @ w                                                  # [N, in] -> [N, out]
    y += b
    return y


def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, dw: np.ndarray, db: np.ndarray | None
                    ) -> np.ndarray:
    """Differentiates y = x @ w + b: accumulates dw += x^T dy and db += sum(dy) over all rows; returns
    dx = dy @ w^T. Leading axes are flattened so BLAS sees one matrix product."""
    n_in, n_out = w.shape
    x2, dy2 = x.reshape(-1, n_in), dy.reshape(-1, n_out)      # [N, in], [N, out]
    dw += x2.T @ dy2                                           # [in, N] x [N, out] -> [in, out]
    if db is not None:
        db += column_sums(dy2)
    return (dy2 @ w.T).reshape(*dy.shape[:-1], n_in)           # [N, out] x [out, in] -> [N, in]


FEW_ROWS = 16   # below this many rows, products with a [out, in] weight go as w.T @ x.T (linear_into)
ROW_BY_ROW = 4  # up to this many rows, linear_into multiplies one row at a time (matrix-vector products) ...
STREAMED_BYTES = 1 << 21   # ... a weight of at least this size, read from memory rather than from cache


def linear_into(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`linear` written into a preallocated `out` (2-D x only, so BLAS sees one matrix product).

    2 to ROW_BY_ROW rows (a speculative verification, a small batch) times a weight of STREAMED_BYTES or
    more go one matrix-vector product per row: OpenBLAS's matrix-matrix product packs the weight on every
    call, which makes 2 rows cost ~2.7x one row on 124M's matrices, where a second pass over a weight just
    read comes from cache (measured in BENCHMARKS.md, Decoding beyond the peers). A small weight that
    stays in cache (the built-in models': 0.4-1 MB) is the other way round: 4 rows in one product 9 us,
    row by row 23 us. A weight stored [out, in] (w.T C-ordered:
    formats.hf.load_checkpoint(for_inference=True)) and fewer than FEW_ROWS rows multiply as w.T @ x.T,
    which OpenBLAS streams faster than `x @ w` (BENCHMARKS.md, Inference); one row (a batch-1 decode step)
    as w.T @ x[0] straight into out (the same product, without its temporary and copy: ~2 us of 68 on
    c_fc). Bigger batches take `x @ w`.
    """
    transposed = stored_out_in(w)
    if (1 < x.shape[0] <= ROW_BY_ROW and w.nbytes >= STREAMED_BYTES) or (x.shape[0] == 1 and transposed):
        for row, y in zip(x, out):                 # matrix-vector products (one row: a decode step, no temporary)
            linear_row_into(row, w, b, y)
        return out
    if x.shape[0] < FEW_ROWS and transposed:
        out[...] = (w.T @ x.T).T                   # [out, in] x [in, N] -> [out, N] -> [N, out]
    else:
        np.matmul(x, w, out=out)                   # [N, in] -> [N, out]
    out += b
    return out


def linear_row_into(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`linear` of one vector x [in] into out [out]: one matrix-vector product over w as it is stored (a
    batch-1 decode step's products, and linear_into's row by row)."""
    if stored_out_in(w):
        np.matmul(w.T, x, out=out)                 # [out, in] x [in] -> [out]
    else:
        np.matmul(x, w, out=out)                   # [in] x [in, out] -> [out]
    out += b
    return out


def stored_out_in(w: np.ndarray) -> bool:
    """True when a weight [in, out] is the transposed view of a row-major [out, in] array (the decode layout
    of formats.hf.load_checkpoint(for_inference=True)), so that w.T is the one to multiply with."""
    return w.T.flags.c_contiguous and not w.flags.c_contiguous


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along `axis`, with the max subtracted first so exp never overflows.

    Entries equal to -inf get probability 0; a slice that is -inf everywhere becomes all zeros, not NaN.
    """
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, np.float32(0))            # subtle: -inf - -inf would be NaN
    e = np.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    return e / np.where(s > 0, s, np.float32(1))


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) computed stably as x - max - log(sum(exp(x - max))); -inf entries stay -inf."""
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, np.zeros_like(m))         # subtle: -inf - -inf would be NaN
    shifted = x - m
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log_softmax(logits)[row, target] of each row, float64, without the [N, V] result. [N, V] -> [N]

    The exponentials stay float32 (each is exact to ~1e-7 relative) and are summed in float64, so no
    float64 copy of the [N, V] logits is made; the result is as accurate as the float32 logits allow.
    """
    m = logits.max(axis=-1, keepdims=True)                                     # [N, V] -> [N, 1]
    total = np.exp(logits - m).sum(axis=-1, dtype=np.float64)                 # [N, V] -> [N]
    picked = logits[np.arange(len(targets)), targets].astype(np.float64)       # [N]
    return picked - m[:, 0].astype(np.float64) - np.log(total)


def softmax_backward(dy: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Differentiates y = softmax(x): dx = y * (dy - sum(dy * y)) along `axis` (y = the forward output)."""
    dx = dy * y
    dx -= y * dx.sum(axis=axis, keepdims=True)
    return dx


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Scaled dot-product attention: softmax(q k^T / sqrt(D), masked) v.

    q: [B, H, T, D]; k, v: [B, H, S, D]; mask: boolean, broadcastable to [B, 1, T, S] (True = may attend),
    or None for no mask. A query that may attend to nothing gets a zero vector, not NaN.
    """
    return attention_probabilities(q, k, mask) @ v            # [B, H, T, S] x [B, H, S, D] -> [B, H, T, D]


def attention_probabilities(q: np.ndarray, k: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The weights inside `attention`: softmax(q k^T / sqrt(D)) where the mask allows, 0 elsewhere (a row
    that may attend to nothing is all 0). q [B, H, T, D], k [B, H, S, D] -> [B, H, T, S]."""
    scale = np.float32(1.0 / np.sqrt(q.shape[-1]))
    scores = (q @ k.swapaxes(-1, -2)) * scale                  # [B, H, T, D] x [B, H, D, S] -> [B, H, T, S]
    if mask is not None:
        scores = np.where(mask, scores, np.float32(-np.inf))
    return softmax(scores, axis=-1)


def causal_attention_into(q: np.ndarray, k: np.ndarray, v: np.ndarray, key_valid: np.ndarray | None,
                          out: np.ndarray, *, block_mnk: int = 1 << 21) -> np.ndarray:
    """Inference twin of `attention(q, k, v, causal_mask(T, S) & key_valid[:, None, None, :])`, written
    into `out` [B, T, H, D] (heads second to last: `out.reshape(B, T, H * D)` merges them for free).

    q [B, H, T, D] are the last T of the S positions in k, v [B, H, S, D] (a KV cache's filled part);
    key_valid [B, S] marks real tokens (None: all real). Queries go in blocks of rows; a block multiplies
    only the keys its rows can see (causal: about half the work of the full T x S), and is sized so that
    one head's products have at most block_mnk multiply-adds (R * s * D). The size is a compromise,
    measured on the 124M model's prefill (2 cores, whole forward, alternating runs, median ratios):
    2^21 (64 rows over 512 keys) against 2^20: 0.98x the time at 256 and 512 tokens, 0.93x at 1024;
    2^19: 1.06x at 512, 1.24x at 1024 (more, smaller products: per-call overhead). For the attention
    alone at 512 tokens, 2^21 took 0.86-0.89x of 2^20's time and no blocks (512 x 512 at once) 1.25x.
    Below 2^18, OpenBLAS runs a product on one thread, which is safer when other processes take a core
    (its two-thread products were once measured 7x slower then): pass a smaller block_mnk on a busy
    machine. A decode step (T = 1) is a single block.
    """
    B, H, T, D = q.shape
    S = k.shape[2]
    past = S - T
    q = q * np.float32(1.0 / np.sqrt(D))                      # scale the [T, D] queries, not the [T, S] scores
    o = out.transpose(0, 2, 1, 3)                              # [B, T, H, D] -> view [B, H, T, D]
    t1 = 0
    while t1 < T:
        t0, t1 = t1, t1 + _block_rows(past + t1, block_mnk // D, T - t1)
        seen = past + t1                                       # keys 0 .. seen-1 are visible to some row
        scores = q[:, :, t0:t1] @ k[:, :, :seen].swapaxes(-1, -2)  # [B, H, R, D] x [B, H, D, s] -> [B, H, R, s]
        # Every row sees keys 0 .. past+t0; only the last R columns (the block's diagonal square) hold
        # keys that some rows may not see yet, so the causal mask covers just that square.
        blocked, masked = None, scores
        if t1 - t0 > 1:
            blocked = ~causal_mask(t1 - t0, t1 - t0)           # [R, R]: row r sees diagonal keys <= r
            masked = scores[..., past + t0:]                   # [B, H, R, R] view
        if key_valid is not None:
            padding = ~key_valid[:, None, None, :seen]         # [B, 1, 1, s]
            if blocked is not None:                            # both: mask the whole block
                blocked = padding | np.pad(blocked, ((0, 0), (past + t0, 0)))  # -> [B, 1, R, s]
                masked = scores
            else:
                blocked = padding
        if blocked is not None:
            np.copyto(masked, np.float32(-np.inf), where=blocked)
        m = scores.max(axis=-1, keepdims=True)                 # [B, H, R, 1]
        if key_valid is not None:                              # (causal alone: a row always sees its own key)
            np.maximum(m, FLOAT32_LOWEST, out=m)               # subtle: a fully masked row has max -inf
        scores -= m
        # subtle: tiny weights make subnormal floats (exp below -87.3, or products p * v in p @ v), which
        # the CPU handles ~5x slower (measured). Floor the exponents at -44.4: weights under 2^-64 of the
        # row's largest (which is 1) change nothing a float32 sum can hold, even over 2^30 keys.
        np.maximum(scores, EXP_NEGLIGIBLE_BELOW, out=scores)
        np.exp(scores, out=scores)
        if blocked is not None:
            np.copyto(masked, np.float32(0), where=blocked)    # masked keys: exactly 0 again
        total = row_sums(scores)[..., None]                    # [B, H, R, 1]; 0 only for a fully masked row
        if key_valid is not None:
            np.maximum(total, FLOAT32_TINY, out=total)         # ... which then gets 0 / tiny = 0, not NaN
        block_out = o[:, :, t0:t1]
        np.matmul(scores, v[:, :, :seen], out=block_out)       # [B, H, R, s] x [B, H, s, D] -> [B, H, R, D]
        block_out /= total
    return out


def _block_rows(first_key_count: int, budget: int, rows_left: int) -> int:
    """Largest R with R * (first_key_count + R) <= budget (R rows, each seeing at most that many keys),
    at least 1 and at most rows_left."""
    a = first_key_count
    r = int((np.sqrt(a * a + 4.0 * budget) - a) / 2)
    return max(1, min(r, rows_left))


def causal_attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, dropout: float = 0.0,
                             rng: np.random.Generator | None = None
                             ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Causal `attention` for training (T queries over the same T positions), optionally with dropout on
    the attention weights as GPT-2 does. Returns the output and (q / sqrt(D), k, v, probs, keep) for the
    backward; keep is the scaled dropout mask or None. q, k, v: [B, H, T, D].
    """
    T = q.shape[-2]
    q = q * np.float32(1.0 / np.sqrt(q.shape[-1]))             # scale q [T, D], not the scores [T, T]
    scores = q @ k.swapaxes(-1, -2)                            # [B, H, T, D] x [B, H, D, T] -> [B, H, T, T]
    np.copyto(scores, np.float32(-np.inf), where=~causal_mask(T, T))  # the future is never attended to
    probs = softmax_(scores)                                   # row 0 always sees itself: never all -inf
    keep = None
    if dropout > 0:
        keep = dropout_mask(probs.shape, dropout, rng)
        out = (probs * keep) @ v                               # [B, H, T, T] x [B, H, T, D] -> [B, H, T, D]
    else:
        out = probs @ v
    return out, (q, k, v, probs, keep)


def causal_attention_backward(dout: np.ndarray, ctx: tuple[np.ndarray, ...]
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Differentiates out = dropout(softmax(mask(q k^T / sqrt(D)))) v; returns (dq, dk, dv).

    Masked scores have probability 0, so their gradient through the softmax is 0 with no special case.
    """
    q_scaled, k, v, probs, keep = ctx
    weights = probs if keep is None else probs * keep
    dv = weights.swapaxes(-1, -2) @ dout                       # [B, H, T, T] x [B, H, T, D] -> [B, H, T, D]
    dprobs = dout @ v.swapaxes(-1, -2)                         # [B, H, T, D] x [B, H, D, T] -> [B, H, T, T]
    if keep is not None:
        dprobs *= keep
    dscores = softmax_backward_(dprobs, probs)                 # d(loss)/d(q k^T / sqrt(D))
    dq = dscores @ k                                           # [B, H, T, T] x [B, H, T, D] -> [B, H, T, D]
    dq *= np.float32(1.0 / np.sqrt(q_scaled.shape[-1]))
    dk = dscores.swapaxes(-1, -2) @ q_scaled                   # [B, H, T, T] x [B, H, T, D] -> [B, H, T, D]
    return dq, dk, dv


def softmax_backward_(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`softmax_backward` over the last axis, overwriting dy with the result (no temporaries of its size)."""
    dy *= y
    total = row_sums(dy)[..., None]                            # sum(dy * y)
    dy -= y * total
    return dy


def softmax_(x: np.ndarray) -> np.ndarray:
    """`softmax` over the last axis in place (x is overwritten and returned); each row must hold at least
    one finite value (true of causal attention, where every query sees itself)."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= row_sums(x)[..., None]
    return x


def embedding_backward(dy: np.ndarray, ids: np.ndarray, dw: np.ndarray) -> None:
    """Differentiates y = w[ids]: accumulates each row of dy into dw at its id (repeated ids add up).

    The rows are sorted by id (stable, so each id's rows keep their order) and each id's rows summed by
    one np.add.reduceat: ~3x faster than np.add.at, which adds row by row (0.25 against 0.8 ms for the
    nanoGPT character model's 384 rows)."""
    ids, dy = ids.reshape(-1), dy.reshape(-1, dw.shape[1])    # [N], [N, C]
    if ids.size == 0:
        return
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # first row of each id
    dw[sorted_ids[starts]] += np.add.reduceat(dy[order], starts, axis=0)  # [U, C] into U distinct rows


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over positions of -log softmax(logits)[target]. Returns the loss and the probabilities.

    logits: [N, V] (overwritten: it becomes the probabilities, to save a [N, V] copy); targets: [N].
    """
    nll, probs = token_nll_(logits, targets)                   # [N] float64, [N, V]
    return float(np.mean(nll)), probs


def token_nll_(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-log softmax(logits[n])[targets[n]] for every position, in float64, and the probabilities, made in
    place of the logits (the core both cross-entropy forwards share). [N, V], [N] -> [N], [N, V]"""
    N = logits.shape[0]
    probs = logits
    probs -= probs.max(axis=-1, keepdims=True)                 # shifted logits, max 0
    picked = probs[np.arange(N), targets]                      # [N], copied out before the exp
    np.exp(probs, out=probs)
    total = probs.sum(axis=-1)                                 # [N, V] -> [N]
    # -log p[target] = log(sum exp) - shifted logit; never log(0), even when p underflows
    nll = np.log(total.astype(np.float64)) - picked
    probs /= total[:, None]
    return nll, probs


def cross_entropy_backward(probs: np.ndarray, targets: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """Differentiates loss = mean(-log softmax(logits)[target]) -- fused through the softmax:
    dlogits = (probs - onehot(target)) / N, times `scale` (1/micro-batches when accumulating).

    probs: [N, V], overwritten and returned as dlogits.
    """
    N = probs.shape[0]
    dlogits = probs
    dlogits[np.arange(N), targets] -= ONE
    dlogits *= np.float32(scale / N)
    return dlogits


def weighted_cross_entropy_forward(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray
                                   ) -> tuple[float, np.ndarray]:
    """sum over positions of weights[n] * -log softmax(logits[n])[targets[n]]: a weighted SUM (the caller's
    weights carry the normalisation; 0 drops a position). Returns the loss and the probabilities.

    logits: [N, V] (overwritten: it becomes the probabilities); targets, weights: [N].
    """
    nll, probs = token_nll_(logits, targets)                   # [N] float64, [N, V]
    return float(np.dot(weights.astype(np.float64), nll)), probs


def weighted_cross_entropy_backward(probs: np.ndarray, targets: np.ndarray, weights: np.ndarray, *,
                                    scale: float = 1.0) -> np.ndarray:
    """Differentiates loss = sum_n weights[n] * -log softmax(logits[n])[targets[n]], fused through the
    softmax: dlogits[n] = scale * weights[n] * (probs[n] - onehot(targets[n])).

    probs: [N, V], overwritten and returned as dlogits; targets, weights: [N].
    """
    N = probs.shape[0]
    dlogits = probs
    dlogits[np.arange(N), targets] -= 1
    dlogits *= (weights * scale).astype(dlogits.dtype)[:, None]   # [N, V] * [N, 1]
    return dlogits


def dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator) -> np.ndarray:
    """Inverted dropout's scaled mask: 1 / (1 - p) where kept (probability 1 - p), 0 where dropped.
    Forward y = x * mask; backward dx = dy * mask."""
    keep = rng.random(shape, dtype=np.float32) >= np.float32(p)
    return keep.astype(np.float32) * np.float32(1.0 / (1.0 - p))


def causal_mask(t: int, s: int) -> np.ndarray:
    """Boolean [T, S] mask for T new queries at the end of S positions: query i sees keys 0 .. S - T + i."""
    return np.tri(t, s, k=s - t, dtype=bool)
