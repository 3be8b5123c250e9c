"""Every hand-written backward against central finite differences, in float64.

The trick (llm.c, micrograd): for an op out = f(x), the scalar L = sum(out * G) with a fixed random G has
dL/dx = the op's backward applied to G, so one scalar finite difference per input entry checks it.
Central differences with eps=1e-6 in float64 are accurate to ~1e-9 relative (truncation ~eps^2, round-off
~1e-16/eps), so a 1e-6 tolerance passes any correct backward and fails any wrong term.
"""

import numpy as np
import pytest

from numgpt import backprop, ops
from numgpt.config import GPTConfig
from numgpt.params import init_params, param_shapes

RTOL, ATOL = 1e-6, 1e-8  # float64 central differences: see the module docstring
EPS = 1e-6


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def numerical_grad(f, x: np.ndarray, *, entries=None) -> np.ndarray:
    """d f() / d x by central differences, perturbing x in place (all entries, or the listed ones)."""
    g = np.zeros_like(x)
    for idx in (np.ndindex(x.shape) if entries is None else entries):
        old = x[idx]
        x[idx] = old + EPS
        up = f()
        x[idx] = old - EPS
        down = f()
        x[idx] = old
        g[idx] = (up - down) / (2 * EPS)
    return g


def assert_grad(analytic, f, x, **kw):
    np.testing.assert_allclose(analytic, numerical_grad(f, x, **kw), rtol=RTOL, atol=ATOL)


def test_layer_norm_backward(rng):
    x = rng.standard_normal((2, 3, 8)) * 2 + 0.5
    w, b = rng.standard_normal(8), rng.standard_normal(8)
    G = rng.standard_normal((2, 3, 8))
    loss = lambda: float(np.sum(ops.layer_norm_forward(x, w, b, 1e-5)[0] * G))
    out, ctx = ops.layer_norm_forward(x, w, b, 1e-5)
    np.testing.assert_allclose(out, ops.layer_norm(x, w, b, 1e-5), rtol=1e-12)  # same math as the plain op
    dw, db = np.zeros(8), np.zeros(8)
    dx = ops.layer_norm_backward(G, ctx, dw, db)
    assert_grad(dx, loss, x)
    assert_grad(dw, loss, w)
    assert_grad(db, loss, b)


def test_gelu_backward(rng):
    x = np.concatenate([rng.standard_normal(40) * 3, [0.0, -6.0, 6.0]])
    G = rng.standard_normal(x.shape)
    y, h = ops.gelu_forward(x)
    # the plain op with sqrt(2/pi) * 0.044715 folded into one float32 constant (rounded once, ~6e-8):
    # the results differ by ~1e-7 relative in float64, float32 rounding of a constant, not of the math
    np.testing.assert_allclose(y, ops.gelu(x), rtol=1e-6, atol=1e-12)
    assert_grad(ops.gelu_backward(G, x, h), lambda: float(np.sum(ops.gelu(x) * G)), x)


def test_linear_backward_accumulates(rng):
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    G = rng.standard_normal((2, 3, 4))
    loss = lambda: float(np.sum(ops.linear(x, w, b) * G))
    dw0, db0 = rng.standard_normal((5, 4)), rng.standard_normal(4)   # gradients already there: must add
    dw, db = dw0.copy(), db0.copy()
    dx = ops.linear_backward(G, x, w, dw, db)
    assert dx.shape == x.shape
    x2 = x.reshape(6, 5)
    np.testing.assert_array_equal(ops.linear_forward(x2, w, b), ops.linear(x2, w, b))   # same sums, in place
    assert_grad(dx, loss, x)
    assert_grad(dw - dw0, loss, w)
    assert_grad(db - db0, loss, b)


def test_softmax_backward(rng):
    x = rng.standard_normal((3, 7)) * 3
    G = rng.standard_normal((3, 7))
    assert_grad(ops.softmax_backward(G, ops.softmax(x)), lambda: float(np.sum(ops.softmax(x) * G)), x)
    np.testing.assert_allclose(ops.softmax_backward_(G.copy(), ops.softmax(x)), ops.softmax_backward(G, ops.softmax(x)),
                               rtol=1e-12, atol=1e-15)   # the in-place twin: same math, same order


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_causal_attention_backward(rng, dropout):
    B, H, T, D = 2, 2, 5, 4
    q, k, v = (rng.standard_normal((B, H, T, D)) for _ in range(3))
    G = rng.standard_normal((B, H, T, D))

    def fwd():  # the same dropout mask every call: a fixed seed
        return ops.causal_attention_forward(q, k, v, dropout=dropout, rng=np.random.default_rng(7))

    out, ctx = fwd()
    mask = ops.causal_mask(T, T)
    if dropout == 0:
        np.testing.assert_allclose(out, ops.attention(q, k, v, mask), rtol=1e-12)  # the inference op's math
    dq, dk, dv = ops.causal_attention_backward(G, ctx)
    loss = lambda: float(np.sum(fwd()[0] * G))
    assert_grad(dq, loss, q)
    assert_grad(dk, loss, k)
    assert_grad(dv, loss, v)


def test_causal_attention_ignores_the_future(rng):
    q, k, v = (rng.standard_normal((1, 1, 4, 3)) for _ in range(3))
    out, _ = ops.causal_attention_forward(q, k, v)
    k2, v2 = k.copy(), v.copy()
    k2[..., 3, :] += 5
    v2[..., 3, :] -= 5
    out2, _ = ops.causal_attention_forward(q, k2, v2)
    np.testing.assert_array_equal(out[..., :3, :], out2[..., :3, :])


def test_embedding_backward_adds_repeated_ids(rng):
    w = rng.standard_normal((6, 3))
    ids = np.array([[1, 4, 1], [0, 1, 5]])
    G = rng.standard_normal((2, 3, 3))
    dw = np.zeros_like(w)
    ops.embedding_backward(G, ids, dw)
    assert_grad(dw, lambda: float(np.sum(w[ids] * G)), w)


def test_embedding_backward_accumulates_like_add_at(rng):
    ids = rng.integers(0, 50, (4, 33))                         # repeats, in no order
    G = rng.standard_normal((4, 33, 8))
    start = rng.standard_normal((50, 8))                       # adds into what is there
    dw, expected = start.copy(), start.copy()
    ops.embedding_backward(G, ids, dw)
    np.add.at(expected, ids.reshape(-1), G.reshape(-1, 8))
    np.testing.assert_allclose(dw, expected, rtol=1e-12, atol=1e-12)
    ops.embedding_backward(G[:, :0], ids[:, :0], dw)          # no rows: nothing changes
    np.testing.assert_allclose(dw, expected, rtol=1e-12, atol=1e-12)


def test_cross_entropy_forward_backward(rng):
    logits = rng.standard_normal((5, 9)) * 4
    targets = np.array([0, 8, 3, 3, 1])

    def reference_loss():
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(5), targets].mean())

    loss, probs = ops.cross_entropy_forward(logits.copy(), targets)
    assert loss == pytest.approx(reference_loss(), rel=1e-12)
    dlogits = ops.cross_entropy_backward(probs, targets, scale=0.5)
    assert_grad(dlogits, lambda: 0.5 * reference_loss(), logits)


def test_cross_entropy_stays_finite_when_a_probability_underflows():
    logits = np.array([[0.0, 200.0], [0.0, 0.0]], np.float32)  # p[0] of row 0 is exp(-200): 0 in float32
    loss, _ = ops.cross_entropy_forward(logits.copy(), np.array([0, 1]))
    assert loss == pytest.approx((200 + np.log(2)) / 2, rel=1e-6)


def test_dropout_mask_keeps_expected_fraction_and_scales(rng):
    keep = ops.dropout_mask((200, 500), 0.25, rng)
    assert set(np.unique(keep)) == {0.0, np.float32(1 / 0.75)}
    # 100000 Bernoulli(0.75) draws: the kept fraction is 0.75 +- 0.0014 (1 sd); 0.01 is ~7 sd
    assert abs((keep > 0).mean() - 0.75) < 0.01


TINY = GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2)


def float64_params(config, seed=0):
    params = init_params(config, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    # non-trivial biases and gains, so their gradients are exercised through every path
    return {k: v.astype(np.float64) + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_whole_model_gradients_match_finite_differences(dropout):
    config = TINY
    params = float64_params(config)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, config.vocab_size, (2, 6))
    targets = rng.integers(0, config.vocab_size, (2, 6))
    loss_of = lambda: backprop.loss_and_grads(params, config, ids, targets, dropout=dropout,
                                              rng=np.random.default_rng(5))[0]
    loss, grads = backprop.loss_and_grads(params, config, ids, targets, dropout=dropout,
                                          rng=np.random.default_rng(5))
    assert set(grads) == set(param_shapes(config))
    pick = np.random.default_rng(9)
    for name, p in params.items():
        assert grads[name].dtype == np.float64 and grads[name].shape == p.shape
        # a few entries per tensor keep this fast; every tensor, so every backward path is covered
        entries = {tuple(int(pick.integers(0, s)) for s in p.shape) for _ in range(4)}
        if name == "wte.weight":
            entries |= {(int(ids[0, 0]), 0), (int(targets[1, 2]), 1)}   # rows used as input and output
        entries = sorted(entries)
        numeric = numerical_grad(loss_of, p, entries=entries)
        got = np.array([grads[name][e] for e in entries])
        want = np.array([numeric[e] for e in entries])
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def test_training_forward_equals_inference_forward():
    config = GPTConfig(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=4)
    params = init_params(config, np.random.default_rng(1))
    ids = np.random.default_rng(2).integers(0, 50, (3, 10))
    from numgpt.model import forward
    logits, _ = backprop.forward_for_training(params, config, ids)
    assert logits.dtype == np.float32
    # the same float32 math in a different order (2-D rows vs 3-D): a few ulps of logits ~0.1
    np.testing.assert_allclose(logits.reshape(3, 10, 50), forward(params, config, ids, all_logits=True),
                               rtol=0, atol=1e-5)


def test_gradients_accumulate_over_micro_batches():
    config = GPTConfig(vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    params = init_params(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ids, targets = rng.integers(0, 20, (4, 8)), rng.integers(0, 20, (4, 8))
    full_loss, full = backprop.loss_and_grads(params, config, ids, targets)
    acc = {k: np.zeros_like(v) for k, v in params.items()}
    losses = [backprop.accumulate_grads(params, config, ids[i:i + 2], targets[i:i + 2], acc, scale=0.5)
              for i in (0, 2)]
    assert np.mean(losses) == pytest.approx(full_loss, rel=1e-6)  # float32 sums in another order
    for k in params:
        np.testing.assert_allclose(acc[k], full[k], rtol=1e-4, atol=1e-7, err_msg=k)  # float32 reordering


def test_workspace_reuse_gives_the_same_gradients():
    config = GPTConfig(vocab_size=30, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    params = init_params(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ws = backprop.Workspace()
    for _ in range(2):                                   # the second call reuses the first call's buffers
        ids, targets = rng.integers(0, 30, (3, 8)), rng.integers(0, 30, (3, 8))
        ref_loss, ref = backprop.loss_and_grads(params, config, ids, targets)
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        loss = backprop.accumulate_grads(params, config, ids, targets, grads, workspace=ws)
        assert loss == ref_loss and all(np.array_equal(grads[k], ref[k]) for k in params)
