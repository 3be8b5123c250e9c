"""GPT-2's training forward and its hand-written backward pass, in NumPy (as llm.c does in C).

    loss = cross_entropy(ln_f(blocks(wte[ids] + wpe[:T])) @ wte^T, targets)

`accumulate_grads` runs the forward, keeping what each backward needs (the "tape" of ctx tuples from
ops.py), then walks it in reverse, ADDING every parameter's gradient into a caller-owned buffer. Adding
makes the residual branches and the tied wte (embedding and output projection) need no special case, and
gradient accumulation over micro-batches is just calling it again before the optimizer step.

Dropout sits where GPT-2 (and Hugging Face's GPT2Model) puts it: after the embeddings, on the attention
weights, and on each residual branch (attention and MLP outputs) before it is added. Its masks are drawn
from the `rng` passed in, in a fixed order, so a run is reproducible from its seed; with dropout 0 the
rng is never touched.

Activations are kept 2-D, [N, C] with N = B * T rows, so every linear layer is one BLAS matrix product;
only attention reshapes to heads.

Shape legend: B batch, T time, N = B * T rows, C channels, H heads, D head size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from .config import GPTConfig
from .errors import NumgptError
from .model import check_context
from .ops import (causal_attention_backward, causal_attention_forward, cross_entropy_backward,
                  cross_entropy_forward, dropout_mask, embedding_backward, gelu_backward, gelu_forward,
                  layer_norm_backward, layer_norm_forward, linear_backward, linear_forward, token_nll_,
                  weighted_cross_entropy_backward, weighted_cross_entropy_forward)
from .params import Attention, Layer, Params, layer, layers, zeros_like


class Workspace:
    """Buffers reused from one step to the next, for the arrays too big for malloc to recycle: the
    logits [N, V] and the output projection's weight gradient [V, C] (hundreds of MB at GPT-2's
    vocabulary). A fresh array that size is a fresh memory map, and writing it page-faults on every
    4 KB: reusing them makes the vocabulary-sized steps ~2x faster. The training loop owns one and
    passes it in; arrays handed out are overwritten by the next call that uses the same name."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._buffers[name] = np.empty(shape, dtype)
        return buf


def loss_and_grads(params: Params, config: GPTConfig, ids: np.ndarray, targets: np.ndarray, *,
                   dropout: float = 0.0, rng: np.random.Generator | None = None) -> tuple[float, Params]:
    """Mean cross-entropy (nats per token) of predicting targets [B, T] from ids [B, T], and the
    gradient of every parameter (a new dict of float32 arrays keyed like params)."""
    grads = zeros_like(params)
    loss = accumulate_grads(params, config, ids, targets, grads, dropout=dropout, rng=rng)
    return loss, grads


def accumulate_grads(params: Params, config: GPTConfig, ids: np.ndarray, targets: np.ndarray,
                     grads: Params, *, scale: float = 1.0, dropout: float = 0.0,
                     rng: np.random.Generator | None = None, workspace: Workspace | None = None,
                     block_done: Callable[[int], None] | None = None) -> float:
    """Add scale * d(loss)/d(param) into grads[name] for every parameter; return the loss.

    scale: 1 / micro-batches when accumulating, so the sum is the gradient of the mean loss.
    dropout: GPT-2's embedding/attention/residual dropout probability; needs rng when > 0.
    workspace: reusable big buffers (pass the same one every step); a private one if None.
    block_done: see `backward`.
    """
    check_batch(config, ids, targets)
    if dropout > 0 and rng is None:
        raise NumgptError("dropout > 0 needs an rng (np.random.Generator)")
    ws = Workspace() if workspace is None else workspace
    logits, tape = forward_for_training(params, config, ids, dropout=dropout, rng=rng, workspace=ws)
    loss, probs = cross_entropy_forward(logits, targets.reshape(-1))   # [N, V], [N]
    dlogits = cross_entropy_backward(probs, targets.reshape(-1), scale=scale)
    backward(dlogits, tape, params, config, grads, workspace=ws, block_done=block_done)
    return loss


def check_batch(config: GPTConfig, ids: np.ndarray, targets: np.ndarray) -> None:
    """Refuse batches the model cannot take (wrong shape, ids out of range, too long for wpe)."""
    if ids.ndim != 2 or ids.shape != targets.shape:
        raise NumgptError(f"ids and targets must both be [batch, time], got {ids.shape} and {targets.shape}")
    check_context(config, ids.shape[1], fix="use a smaller --block-size")
    for name, a in (("ids", ids), ("targets", targets)):
        if a.size and (a.min() < 0 or a.max() >= config.vocab_size):
            raise NumgptError(f"{name} must be in 0..{config.vocab_size - 1}, got {a.min()}..{a.max()}; "
                              "the data was prepared with a different tokenizer than the model's")


def forward_for_training(params: Params, config: GPTConfig, ids: np.ndarray, *, dropout: float = 0.0,
                         rng: np.random.Generator | None = None, workspace: Workspace | None = None
                         ) -> tuple[np.ndarray, dict]:
    """Logits [N, V] for every position (in the workspace's 'logits' buffer if one is given), and the
    tape the backward walks."""
    xf, tape = hidden_forward(params, config, ids, dropout=dropout, rng=rng)   # [B, T] -> [N, C]
    wte = params["wte.weight"]
    out = None if workspace is None else workspace.get("logits", (xf.shape[0], wte.shape[0]), xf.dtype)
    logits = np.matmul(xf, wte.T, out=out)                             # [N, C] x [C, V] -> [N, V]
    return logits, {**tape, "xf": xf}


def hidden_forward(params: Params, config: GPTConfig, ids: np.ndarray, *, dropout: float = 0.0,
                   rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict]:
    """The body up to ln_f: xf [N, C] at every position, and the tape `hidden_backward` walks (what a
    head other than the vocabulary projection reads: a classifier's score)."""
    B, T = ids.shape
    x, embed_keep = embed_forward(params, ids, dropout, rng)           # [B, T] -> [N, C]
    blocks = []
    for p in layers(params, config):
        x, ctx = block_forward(p, config, x, (B, T), dropout, rng)  # [N, C] -> [N, C]
        blocks.append(ctx)
    xf, ln_f = layer_norm_forward(x, params["ln_f.weight"], params["ln_f.bias"], config.layer_norm_epsilon)
    return xf, {"ids": ids, "embed_keep": embed_keep, "blocks": blocks, "ln_f": ln_f}


def backward(dlogits: np.ndarray, tape: dict, params: Params, config: GPTConfig, grads: Params, *,
             workspace: Workspace | None = None, block_done: Callable[[int], None] | None = None) -> None:
    """Walk the tape in reverse from d(loss)/d(logits) [N, V], accumulating into grads. block_done(i), if
    given, is called once block i's gradients are complete (n_layer - 1 first), and block_done(-1) after
    ln_f's: so a data-parallel caller can start summing them over the ranks while the backward goes on."""
    dxf = head_backward(dlogits, tape["xf"], params, grads, workspace)  # [N, V] -> [N, C]
    hidden_backward(dxf, tape, params, config, grads, block_done=block_done)


def head_backward(dlogits: np.ndarray, xf: np.ndarray, params: Params, grads: Params,
                  workspace: Workspace | None = None) -> np.ndarray:
    """Differentiates logits = xf @ wte^T for rows xf [n, C] and dlogits [n, V]: the tied output projection
    adds into the same dwte as the embedding; returns d(loss)/d(xf) [n, C]."""
    dwte = grads["wte.weight"]
    out = None if workspace is None else workspace.get("dwte", dwte.shape, dwte.dtype)
    dwte += np.matmul(dlogits.T, xf, out=out)                          # [V, n] x [n, C] -> [V, C]
    return dlogits @ params["wte.weight"]                              # [n, V] x [V, C] -> [n, C]


def hidden_backward(dxf: np.ndarray, tape: dict, params: Params, config: GPTConfig, grads: Params, *,
                    first_block: int = 0, block_done: Callable[[int], None] | None = None) -> None:
    """Differentiates `hidden_forward` from d(loss)/d(xf) [N, C], accumulating into grads: ln_f, then the
    blocks from the last down to first_block, then the embeddings when first_block is 0 (blocks below a
    frozen first_block need no gradient, so the walk stops there). block_done as in `backward`."""
    dx = layer_norm_backward(dxf, tape["ln_f"], grads["ln_f.weight"], grads["ln_f.bias"])
    if block_done is not None:
        block_done(-1)                                                 # ln_f is final
    for i in reversed(range(first_block, config.n_layer)):
        dx = block_backward(dx, tape["blocks"][i], layer(params, i), layer(grads, i))
        if block_done is not None:
            block_done(i)
    if first_block == 0:
        embed_backward(dx, tape["ids"], tape["embed_keep"], grads)


def embed_forward(params: Params, ids: np.ndarray, dropout: float, rng: np.random.Generator | None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """x = dropout(wte[ids] + wpe[0..T-1]), flattened to rows."""
    B, T = ids.shape
    x = params["wte.weight"][ids.reshape(-1)]                          # [N] -> [N, C]
    x = x.reshape(B, T, -1)
    x += params["wpe.weight"][:T]                                      # [B, T, C] + [T, C]
    return maybe_dropout(x.reshape(B * T, -1), dropout, rng)


def embed_backward(dx: np.ndarray, ids: np.ndarray, keep: np.ndarray | None, grads: Params) -> None:
    """Differentiates x = dropout(wte[ids] + wpe[:T]): scatter-add into dwte, sum over the batch into dwpe."""
    B, T = ids.shape
    if keep is not None:
        dx = dx * keep
    embedding_backward(dx, ids, grads["wte.weight"])
    grads["wpe.weight"][:T] += dx.reshape(B, T, -1).sum(axis=0)        # [B, T, C] -> [T, C]


def block_forward(p: Layer, config: GPTConfig, x: np.ndarray, bt: tuple[int, int],
                  dropout: float, rng: np.random.Generator | None) -> tuple[np.ndarray, dict]:
    """x + drop(attn(ln_1(x))), then + drop(mlp(ln_2(x))); returns the new residual and the block's tape."""
    eps = config.layer_norm_epsilon
    a, ln_1 = layer_norm_forward(x, p.ln_1.weight, p.ln_1.bias, eps)
    y, attn = attention_forward(p.attn, config, a, bt, dropout, rng)  # [N, C] -> [N, C]
    y, attn_keep = maybe_dropout(y, dropout, rng)
    x = x + y
    m, ln_2 = layer_norm_forward(x, p.ln_2.weight, p.ln_2.bias, eps)
    f = linear_forward(m, p.mlp.c_fc.weight, p.mlp.c_fc.bias)         # [N, C] -> [N, 4C]
    g, gelu_h = gelu_forward(f)
    y = linear_forward(g, p.mlp.c_proj.weight, p.mlp.c_proj.bias)     # [N, 4C] -> [N, C]
    y, mlp_keep = maybe_dropout(y, dropout, rng)
    x += y                                                             # x is our own copy by now
    return x, {"a": a, "ln_1": ln_1, "attn": attn, "attn_keep": attn_keep,
               "m": m, "ln_2": ln_2, "f": f, "gelu_h": gelu_h, "g": g, "mlp_keep": mlp_keep}


def block_backward(dx: np.ndarray, tape: dict, p: Layer, grad: Layer) -> np.ndarray:
    """Differentiates `block_forward`: the residual passes dx straight through, each branch adds its part.
    p: the block's parameters; grad: their gradients (the same view of the gradient dict), accumulated into."""
    dy = dx if tape["mlp_keep"] is None else dx * tape["mlp_keep"]
    dg = linear_backward(dy, tape["g"], p.mlp.c_proj.weight, grad.mlp.c_proj.weight, grad.mlp.c_proj.bias)
    df = gelu_backward(dg, tape["f"], tape["gelu_h"])
    dm = linear_backward(df, tape["m"], p.mlp.c_fc.weight, grad.mlp.c_fc.weight, grad.mlp.c_fc.bias)
    dx = dx + layer_norm_backward(dm, tape["ln_2"], grad.ln_2.weight, grad.ln_2.bias)
    dy = dx if tape["attn_keep"] is None else dx * tape["attn_keep"]
    da = attention_backward(dy, tape["attn"], p.attn, grad.attn)
    dx += layer_norm_backward(da, tape["ln_1"], grad.ln_1.weight, grad.ln_1.bias)
    return dx


def attention_forward(p: Attention, config: GPTConfig, a: np.ndarray, bt: tuple[int, int],
                      dropout: float, rng: np.random.Generator | None) -> tuple[np.ndarray, dict]:
    """Causal multi-head self-attention on rows a [N, C]: c_attn, split heads, attend, merge, c_proj."""
    B, T = bt
    C = a.shape[1]
    H = config.n_head
    qkv = linear_forward(a, p.c_attn.weight, p.c_attn.bias)          # [N, C] -> [N, 3C]
    qkv = qkv.reshape(B, T, 3, H, C // H).transpose(2, 0, 3, 1, 4)    # [N, 3C] -> [3, B, H, T, D]
    y, att = causal_attention_forward(qkv[0], qkv[1], qkv[2], dropout=dropout, rng=rng)  # -> [B, H, T, D]
    y = y.transpose(0, 2, 1, 3).reshape(B * T, C)                      # [B, H, T, D] -> [N, C]
    out = linear_forward(y, p.c_proj.weight, p.c_proj.bias)          # [N, C] -> [N, C]
    return out, {"a": a, "y": y, "att": att, "bth": (B, T, H)}


def attention_backward(dout: np.ndarray, tape: dict, p: Attention, grad: Attention) -> np.ndarray:
    """Differentiates `attention_forward` (gradients accumulated into grad); returns d(loss)/d(a) [N, C]."""
    B, T, H = tape["bth"]
    N, C = dout.shape
    dy = linear_backward(dout, tape["y"], p.c_proj.weight, grad.c_proj.weight, grad.c_proj.bias)  # -> [N, C]
    dy = dy.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)             # [N, C] -> [B, H, T, D]
    dq, dk, dv = causal_attention_backward(dy, tape["att"])           # 3 x [B, H, T, D]
    dqkv = np.empty((B, T, 3, H, C // H), dout.dtype)
    for j, d in enumerate((dq, dk, dv)):
        dqkv[:, :, j] = d.transpose(0, 2, 1, 3)                        # [B, H, T, D] -> [B, T, H, D]
    return linear_backward(dqkv.reshape(N, 3 * C), tape["a"], p.c_attn.weight,
                           grad.c_attn.weight, grad.c_attn.bias)                      # -> [N, C]


def maybe_dropout(x: np.ndarray, p: float, rng: np.random.Generator | None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Inverted dropout: (x * mask, mask) with a fresh scaled mask; (x, None) when p is 0."""
    if p <= 0:
        return x, None
    keep = dropout_mask(x.shape, p, rng)
    return x * keep, keep


def loss_only(params: Params, config: GPTConfig, ids: np.ndarray, targets: np.ndarray, *,
              workspace: Workspace | None = None) -> float:
    """Mean cross-entropy with no dropout and no gradients (evaluation)."""
    check_batch(config, ids, targets)
    logits, _ = forward_for_training(params, config, ids, workspace=workspace)
    loss, _ = cross_entropy_forward(logits, targets.reshape(-1))
    return loss


# ---- weighted (masked) cross-entropy: SFT's loss (its forward/backward pair is in ops.py) ---------------

def accumulate_weighted_grads(params: Params, config: GPTConfig, ids: np.ndarray, targets: np.ndarray,
                              weights: np.ndarray, grads: Params, *, scale: float = 1.0, dropout: float = 0.0,
                              rng: np.random.Generator | None = None, workspace: Workspace | None = None,
                              block_done: Callable[[int], None] | None = None) -> float:
    """`accumulate_grads` for loss = mean over the B rows of each row's weighted sum of token losses,
    sum(weights * nll) / B, with weights [B, T] per target (0: not trained on); returns that loss.
    SFT passes weights = mask * B_batch / (weighted tokens of the batch), so the loss is the masked mean."""
    check_batch(config, ids, targets)
    if weights.shape != targets.shape:
        raise NumgptError(f"weights must be shaped like targets {targets.shape}, got {weights.shape}")
    if dropout > 0 and rng is None:
        raise NumgptError("dropout > 0 needs an rng (np.random.Generator)")
    ws = Workspace() if workspace is None else workspace
    B = ids.shape[0]
    xf, tape = hidden_forward(params, config, ids, dropout=dropout, rng=rng)   # [B, T] -> [N, C]
    keep, logits = trained_rows_logits(params, xf, weights, ws)        # [n], [n, V]
    w = weights.reshape(-1)[keep]                                      # [n]
    loss, probs = weighted_cross_entropy_forward(logits, targets.reshape(-1)[keep], w)
    dlogits = weighted_cross_entropy_backward(probs, targets.reshape(-1)[keep], w, scale=scale / B)
    trained_rows_backward(dlogits, keep, xf, tape, params, config, grads, workspace=ws, block_done=block_done)
    return loss / B


def weighted_loss_only(params: Params, config: GPTConfig, ids: np.ndarray, targets: np.ndarray,
                       weights: np.ndarray, *, workspace: Workspace | None = None) -> float:
    """sum(weights * nll) / B with no dropout and no gradients (evaluation of `accumulate_weighted_grads`)."""
    check_batch(config, ids, targets)
    xf, _ = hidden_forward(params, config, ids)
    keep, logits = trained_rows_logits(params, xf, weights, workspace or Workspace())
    loss, _ = weighted_cross_entropy_forward(logits, targets.reshape(-1)[keep], weights.reshape(-1)[keep])
    return loss / ids.shape[0]


def trained_rows_logits(params: Params, xf: np.ndarray, weights: np.ndarray, workspace: Workspace
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(keep [n], logits [n, V]): the vocabulary projection of only the positions whose loss weight is not 0.
    The others add exactly 0 to a weighted loss and its gradient, and the projection and its softmax are
    a third of a GPT-2 124M step's arithmetic: SFT's replies are 30-50% of its tokens, so this skips most
    of it. (forward_for_training projects every position; `numgpt train` needs them all.)"""
    keep = np.flatnonzero(weights.reshape(-1))                          # [n] positions trained on
    wte = params["wte.weight"]
    buf = workspace.get("logits", (xf.shape[0], wte.shape[0]), xf.dtype)   # [N, V], the first n rows used
    return keep, np.matmul(xf[keep], wte.T, out=buf[:len(keep)])       # [n, C] x [C, V] -> [n, V]


def trained_rows_backward(dlogits: np.ndarray, keep: np.ndarray, xf: np.ndarray, tape: dict, params: Params,
                          config: GPTConfig, grads: Params, *, workspace: Workspace,
                          block_done: Callable[[int], None] | None = None) -> None:
    """`backward` from d(loss)/d(logits) [n, V] of the rows `trained_rows_logits` kept; d(loss)/d(xf) is 0
    on every other row."""
    dxf = np.zeros_like(xf)                                            # [N, C]
    dxf[keep] = head_backward(dlogits, xf[keep], params, grads, workspace)   # [n, V] -> [n, C]
    hidden_backward(dxf, tape, params, config, grads, block_done=block_done)


def trained_rows_nll(params: Params, xf: np.ndarray, mask: np.ndarray, targets: np.ndarray, workspace: Workspace
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keep [n], nll [N] float64, probs [n, V]): -log p(target) at the positions mask [B, T] does not zero
    (projected by `trained_rows_logits`), 0 at the others; probs for `trained_rows_backward`'s dlogits."""
    keep, logits = trained_rows_logits(params, xf, mask, workspace)    # [n], [n, V]
    nll = np.zeros(mask.size)                                          # [N], 0 off the kept positions
    nll[keep], probs = token_nll_(logits, targets.reshape(-1)[keep])   # [n] float64, [n, V]
    return keep, nll, probs


# ---- the same block over a frozen base, its linear layers given as objects --------------------------------
# What a parameter-efficient method trains beside frozen weights (posttrain/lora.py's LoRA adapters): the
# block's structure stays written here, once; each linear layer is a `FrozenBaseLinear` that computes its own
# output and, in the backward, dx and its own gradients. The LayerNorms are frozen: their gradients go to
# the scratch pair passed in. Nothing in the full training above goes through these.

class FrozenBaseLinear(Protocol):
    """A linear layer whose base weight is frozen: forward(x [N, in]) -> (y [N, out], ctx);
    backward(dy, x, ctx) -> dx, accumulating whatever it trains."""

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, Any]: ...

    def backward(self, dy: np.ndarray, x: np.ndarray, ctx: Any) -> np.ndarray: ...


def frozen_block_forward(p: Layer, lin: Mapping[str, FrozenBaseLinear], config: GPTConfig, x: np.ndarray,
                         bt: tuple[int, int], dropout: float, rng: np.random.Generator | None
                         ) -> tuple[np.ndarray, dict]:
    """`block_forward` with the linear layers lin["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]
    (the same dropout masks, drawn in the same order)."""
    B, T = bt
    C, H = x.shape[1], config.n_head
    eps = config.layer_norm_epsilon
    a, ln_1 = layer_norm_forward(x, p.ln_1.weight, p.ln_1.bias, eps)
    qkv, qkv_ctx = lin["attn.c_attn"].forward(a)                      # [N, C] -> [N, 3C]
    heads = qkv.reshape(B, T, 3, H, C // H).transpose(2, 0, 3, 1, 4)  # [N, 3C] -> [3, B, H, T, D]
    y, att = causal_attention_forward(heads[0], heads[1], heads[2], dropout=dropout, rng=rng)
    y = y.transpose(0, 2, 1, 3).reshape(B * T, C)                      # [B, H, T, D] -> [N, C]
    o, o_ctx = lin["attn.c_proj"].forward(y)                          # [N, C] -> [N, C]
    o, attn_keep = maybe_dropout(o, dropout, rng)
    x = x + o
    m, ln_2 = layer_norm_forward(x, p.ln_2.weight, p.ln_2.bias, eps)
    f, f_ctx = lin["mlp.c_fc"].forward(m)                             # [N, C] -> [N, 4C]
    g, gelu_h = gelu_forward(f)
    o, g_ctx = lin["mlp.c_proj"].forward(g)                           # [N, 4C] -> [N, C]
    o, mlp_keep = maybe_dropout(o, dropout, rng)
    x += o
    return x, {"a": a, "ln_1": ln_1, "qkv_ctx": qkv_ctx, "att": att, "y": y, "o_ctx": o_ctx, "bth": (B, T, H),
               "attn_keep": attn_keep, "m": m, "ln_2": ln_2, "f": f, "f_ctx": f_ctx, "gelu_h": gelu_h, "g": g,
               "g_ctx": g_ctx, "mlp_keep": mlp_keep}


def frozen_block_backward(dx: np.ndarray, t: dict, lin: Mapping[str, FrozenBaseLinear],
                          ln_scratch: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Differentiates `frozen_block_forward`: the residual passes dx through, each branch adds its part;
    the linear layers accumulate their own gradients, the LayerNorms' go to ln_scratch ([C], [C])."""
    B, T, H = t["bth"]
    dy = dx if t["mlp_keep"] is None else dx * t["mlp_keep"]
    dg = lin["mlp.c_proj"].backward(dy, t["g"], t["g_ctx"])                     # -> [N, 4C]
    df = gelu_backward(dg, t["f"], t["gelu_h"])
    dm = lin["mlp.c_fc"].backward(df, t["m"], t["f_ctx"])                       # -> [N, C]
    dx = dx + layer_norm_backward(dm, t["ln_2"], *ln_scratch)
    dy = dx if t["attn_keep"] is None else dx * t["attn_keep"]
    dyh = lin["attn.c_proj"].backward(dy, t["y"], t["o_ctx"])                   # -> [N, C]
    N, C = dyh.shape
    dq, dk, dv = causal_attention_backward(dyh.reshape(B, T, H, C // H).transpose(0, 2, 1, 3), t["att"])
    dqkv = np.empty((B, T, 3, H, C // H), dx.dtype)
    for j, d in enumerate((dq, dk, dv)):
        dqkv[:, :, j] = d.transpose(0, 2, 1, 3)                                  # [B, H, T, D] -> [B, T, H, D]
    da = lin["attn.c_attn"].backward(dqkv.reshape(N, 3 * C), t["a"], t["qkv_ctx"])   # -> [N, C]
    dx += layer_norm_backward(da, t["ln_1"], *ln_scratch)
    return dx
