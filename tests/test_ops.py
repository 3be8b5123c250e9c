"""Forward ops against PyTorch's own layers, and the in-place inference twins against the plain ones."""

import warnings

import numpy as np
import pytest
from references import reference

from numgpt import ops

torch = reference("torch")
F = reference("torch.nn.functional")

# float32 ops of a few hundred terms agree with torch's float32 kernels to a few ulps of values ~1-10:
# 1e-5 absolute leaves room for different summation orders, and fails on any real formula error.
ATOL = 1e-5


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def test_layer_norm_matches_torch(rng):
    x = rng.standard_normal((3, 5, 64), dtype=np.float32) * 3 + 1
    w = rng.standard_normal(64, dtype=np.float32)
    b = rng.standard_normal(64, dtype=np.float32)
    y = ops.layer_norm(x, w, b, 1e-5)
    ref = F.layer_norm(t(x), (64,), t(w), t(b), eps=1e-5).numpy()
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, atol=ATOL, rtol=0)


def test_layer_norm_into_equals_plain(rng):
    x = rng.standard_normal((7, 48), dtype=np.float32) * 2 - 1
    w = rng.standard_normal(48, dtype=np.float32)
    b = rng.standard_normal(48, dtype=np.float32)
    out = np.empty_like(x)
    got = ops.layer_norm_into(x, w, b, 1e-5, out)
    assert got is out and got.dtype == np.float32
    np.testing.assert_allclose(got, ops.layer_norm(x, w, b, 1e-5), atol=ATOL, rtol=0)


def test_layer_norm_row_equals_plain(rng):
    for c in (48, 768):
        x = rng.standard_normal(c, dtype=np.float32) * 3 + 1
        w = rng.standard_normal(c, dtype=np.float32)
        b = rng.standard_normal(c, dtype=np.float32)
        out = np.empty_like(x)
        got = ops.layer_norm_row_(x, w, b, 1e-5, out)
        assert got is out and got.dtype == np.float32
        np.testing.assert_allclose(got, ops.layer_norm(x, w, b, 1e-5), atol=ATOL, rtol=0)


def test_gelu_matches_torch_tanh_form(rng):
    x = np.concatenate([rng.standard_normal(1000, dtype=np.float32) * 4,
                        np.array([-30, -5, 0, 5, 30], np.float32)])
    y = ops.gelu(x)
    ref = F.gelu(t(x), approximate="tanh").numpy()
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, atol=ATOL, rtol=1e-6)


def test_gelu_inplace_equals_plain(rng):
    x = rng.standard_normal((4, 96), dtype=np.float32) * 3
    expected = ops.gelu(x)
    got = ops.gelu_(x.copy(), np.empty_like(x))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)  # same formula, reordered float32 ops


def test_gelu_sigmoid_forms_match_torch_at_the_extremes(rng):
    """gelu_ and gelu_forward compute h = 1 / (1 + exp(-2u)): exp overflows to inf below x ~ -10, which
    must give exactly 0 (not NaN) and no warning."""
    x = np.concatenate([rng.standard_normal(1000, dtype=np.float32) * 4,
                        np.array([-1e4, -100, -30, -10.2, -10, -5, 0, 5, 30, 100], np.float32)])
    ref = F.gelu(t(x), approximate="tanh").numpy()
    with warnings.catch_warnings():                            # NumPy's default error settings:
        warnings.simplefilter("error")                         # an overflow warning would raise here
        inplace = ops.gelu_(x.copy(), np.empty_like(x))
        forward, h = ops.gelu_forward(x)
    for got in (inplace, forward):
        assert got.dtype == np.float32 and np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=1e-6)
    assert np.all((h >= 0) & (h <= 1))


def test_linear_matches_torch(rng):
    x = rng.standard_normal((2, 3, 16), dtype=np.float32)
    w = rng.standard_normal((16, 24), dtype=np.float32)  # [in, out]
    b = rng.standard_normal(24, dtype=np.float32)
    ref = F.linear(t(x), t(w.T), t(b)).numpy()           # torch stores [out, in]
    np.testing.assert_allclose(ops.linear(x, w, b), ref, atol=ATOL, rtol=0)
    out = np.empty((6, 24), np.float32)
    np.testing.assert_allclose(ops.linear_into(x.reshape(6, 16), w, b, out), ref.reshape(6, 24),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("rows", [1, 3, ops.FEW_ROWS - 1, ops.FEW_ROWS, 40])
def test_linear_into_with_a_weight_stored_out_in_matches_torch(rng, rows):
    x = rng.standard_normal((rows, 16), dtype=np.float32)
    w_out_in = rng.standard_normal((24, 16), dtype=np.float32)   # torch's layout, row-major
    b = rng.standard_normal(24, dtype=np.float32)
    ref = F.linear(t(x), t(w_out_in), t(b)).numpy()
    out = np.empty((rows, 24), np.float32)
    np.testing.assert_allclose(ops.linear_into(x, w_out_in.T, b, out), ref, atol=ATOL, rtol=0)  # [in, out] view


def test_softmax_matches_torch_and_survives_large_and_masked_inputs(rng):
    x = rng.standard_normal((4, 10), dtype=np.float32) * 50 + 1000   # exp(1000) overflows without the max
    np.testing.assert_allclose(ops.softmax(x), F.softmax(t(x), dim=-1).numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(ops.softmax(x, axis=0), F.softmax(t(x), dim=0).numpy(), atol=1e-6, rtol=0)
    masked = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf]], np.float32)
    p = ops.softmax(masked)
    assert not np.isnan(p).any()
    np.testing.assert_allclose(p[0], [1 / (1 + np.e), 0, np.e / (1 + np.e)], rtol=1e-6)
    np.testing.assert_array_equal(p[1], 0)


def test_attention_matches_torch_causal(rng):
    B, H, T, D = 2, 3, 7, 8
    q, k, v = (rng.standard_normal((B, H, T, D), dtype=np.float32) for _ in range(3))
    y = ops.attention(q, k, v, ops.causal_mask(T, T))
    ref = F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True).numpy()
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, atol=ATOL, rtol=0)


def test_attention_with_padding_mask_and_fully_masked_row(rng):
    B, H, T, S, D = 2, 2, 3, 5, 4
    q = rng.standard_normal((B, H, T, D), dtype=np.float32)
    k, v = (rng.standard_normal((B, H, S, D), dtype=np.float32) for _ in range(2))
    mask = np.ones((B, 1, T, S), bool)
    mask[0, :, :, :2] = False       # left padding of row 0
    mask[1, :, 0, :] = False        # a query that may attend to nothing
    y = ops.attention(q, k, v, mask)
    assert not np.isnan(y).any()
    np.testing.assert_array_equal(y[1, :, 0], 0)
    ref = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(mask)).numpy()
    np.testing.assert_allclose(y[0], ref[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(y[1, :, 1:], ref[1, :, 1:], atol=ATOL, rtol=0)  # torch gives NaN on row 0


def test_attention_probabilities_match_torch_and_are_attentions_weights(rng):
    """The weights the plain forward hands a recorder (teach's views): torch's softmax of the masked,
    scaled scores; rows of real keys sum to 1, a row that may attend to nothing is all 0, not NaN."""
    B, H, T, S, D = 2, 2, 3, 5, 4
    q = rng.standard_normal((B, H, T, D), dtype=np.float32)
    k, v = (rng.standard_normal((B, H, S, D), dtype=np.float32) for _ in range(2))
    mask = ops.causal_mask(T, S)[None, None] & np.ones((B, 1, 1, S), bool)
    mask[0, :, :, :2] = False       # left padding of row 0
    mask[1, :, 0, :] = False        # a query that may attend to nothing
    p = ops.attention_probabilities(q, k, mask)
    scores = (t(q) @ t(k).transpose(-1, -2) / np.sqrt(D)).masked_fill(~t(mask), float("-inf"))
    ref = torch.softmax(scores, dim=-1).numpy()
    np.testing.assert_allclose(p[0], ref[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(p[1, :, 1:], ref[1, :, 1:], atol=ATOL, rtol=0)   # torch gives NaN on row 0
    np.testing.assert_array_equal(p[1, :, 0], 0)
    np.testing.assert_array_equal(p[~np.broadcast_to(mask, p.shape)], 0)


def test_causal_mask_for_queries_at_the_end():
    np.testing.assert_array_equal(ops.causal_mask(2, 4), [[1, 1, 1, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize("B, H, T, S", [(1, 2, 1, 9), (2, 3, 5, 5), (2, 2, 3, 8), (1, 2, 40, 40)])
def test_causal_attention_into_equals_plain_attention(rng, B, H, T, S):
    """The inference twin (queries in blocks, in place, heads-last output) against `attention`."""
    D = 4
    q = rng.standard_normal((B, H, T, D), dtype=np.float32)
    k, v = (rng.standard_normal((B, H, S, D), dtype=np.float32) for _ in range(2))
    key_valid = np.ones((B, S), bool)
    key_valid[-1, :S // 2] = False          # left padding in the last row (fully masks its early queries)
    for valid in (None, key_valid):
        mask = ops.causal_mask(T, S) if valid is None else ops.causal_mask(T, S) & valid[:, None, None, :]
        want = ops.attention(q, k, v, mask).transpose(0, 2, 1, 3)          # -> [B, T, H, D]
        for block_mnk in (16, 800, 1 << 22):      # blocks of 1 row, of several rows, one block
            out = np.full((B, T, H, D), np.nan, np.float32)
            got = ops.causal_attention_into(q, k, v, valid, out, block_mnk=block_mnk)
            assert got is out and not np.isnan(got).any()
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)      # q pre-scaled: reordered float32
