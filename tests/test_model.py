"""The GPT-2 forward and the KV cache against transformers' GPT2LMHeadModel, and against themselves:
cached decode == full forward, padded batch == prompts alone, float32 throughout.

The golden tests run without transformers (tests/data, made by dev/make_golden.py); the live ones
compare against transformers when it is installed.
"""

from pathlib import Path

import numpy as np
import pytest

from numgpt import GPTConfig, KVCache, NumgptError
from numgpt.formats.hf import load_checkpoint
from numgpt.model import (BlockBuffers, _one_row_step, block, block_, decode_block_, decode_row_, embed, forward, reference_forward,
                          token_positions)
from numgpt.ops import causal_mask
from numgpt.params import init_params, layer

DATA = Path(__file__).parent / "data"

# Tolerances. Two float32 implementations of the same model sum in different orders; the differences
# grow with depth and width: ~1e-6 on the small models, ~1e-5 on the 124M one (logits of size ~5).
# 1e-4 is the bar; a wrong formula (a missing scale, a swapped weight) is off by > 1e-2.
ATOL_HF = 1e-4
# The cached path does the same float32 products as the full forward, in a different grouping.
ATOL_CACHE = 1e-5


# ---------------------------------------------------------------- helpers

def numpy_model(ckpt, for_inference=False):
    return load_checkpoint(ckpt.folder, for_inference=for_inference)


# The two layouts forward runs on: as stored ([in, out], memory-mapped) and numgpt.load's (linear weights
# stored [out, in]; decode steps then multiply w.T @ x.T).
LAYOUTS = pytest.mark.parametrize("for_inference", [False, True], ids=["as-stored", "for-inference"])


def hf_logits(ckpt, ids, *, mask=None, position_ids=None):
    torch = pytest.importorskip("torch")
    kw = {}
    if mask is not None:
        kw["attention_mask"] = torch.from_numpy(np.asarray(mask, np.int64))
    if position_ids is not None:
        kw["position_ids"] = torch.from_numpy(position_ids)
    with torch.inference_mode():
        return ckpt.model(torch.from_numpy(np.asarray(ids, np.int64)), **kw).logits.numpy()


def greedy(params, config, prompt, n):
    """The simplest greedy loop over forward + KV cache: prefill, then one token per step."""
    cache = KVCache.allocate(config, prompt.shape[0], prompt.shape[1] + n)
    logits = forward(params, config, prompt, cache=cache)
    out = [prompt]
    for _ in range(n):
        nxt = logits.argmax(-1)[:, None]                      # [B, V] -> [B, 1]
        out.append(nxt)
        logits = forward(params, config, nxt, cache=cache)
    return np.concatenate(out, axis=1)


def left_pad(prompts, pad_id=0):
    T = max(len(p) for p in prompts)
    ids = np.full((len(prompts), T), pad_id, np.int64)
    mask = np.zeros((len(prompts), T), bool)
    for row, p in enumerate(prompts):
        ids[row, T - len(p):] = p
        mask[row, T - len(p):] = True
    return ids, mask


@pytest.fixture(autouse=True, scope="module")
def torch_one_thread():
    """transformers on one thread: on a shared 2-core machine torch's spinning OpenMP threads can make a
    64-token generate 10x slower when another process holds a core. Restored after this module."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny():
    config = GPTConfig(vocab_size=97, n_positions=32, n_embd=24, n_layer=2, n_head=3)
    return config, init_params(config, np.random.default_rng(0))


# ---------------------------------------------------------------- golden files (no transformers needed)

def test_golden_single_prompt_logits():
    config, params = load_checkpoint(DATA / "golden_tiny")
    expected = np.load(DATA / "golden_tiny_expected.npz")
    got = forward(params, config, expected["single_ids"], all_logits=True)
    np.testing.assert_allclose(got, expected["single_logits"], atol=ATOL_HF, rtol=0)
    np.testing.assert_allclose(forward(params, config, expected["single_ids"]),
                               expected["single_logits"][:, -1], atol=ATOL_HF, rtol=0)


def test_golden_left_padded_batch():
    config, params = load_checkpoint(DATA / "golden_tiny")
    expected = np.load(DATA / "golden_tiny_expected.npz")
    got = forward(params, config, expected["batch_ids"], attention_mask=expected["batch_mask"])
    np.testing.assert_allclose(got, expected["batch_logits"], atol=ATOL_HF, rtol=0)


def test_golden_greedy_continuation():
    config, params = load_checkpoint(DATA / "golden_tiny")
    expected = np.load(DATA / "golden_tiny_expected.npz")
    prompt, ref = expected["greedy_prompt"], expected["greedy_ids"]
    np.testing.assert_array_equal(greedy(params, config, prompt, ref.shape[1] - prompt.shape[1]), ref)


# ---------------------------------------------------------------- self-consistency

def test_float32_end_to_end(tiny):
    config, params = tiny
    ids = np.array([[1, 2, 3, 4]])
    positions = token_positions(np.ones_like(ids, bool))
    x = embed(params, ids, positions)
    assert x.dtype == np.float32
    assert block(layer(params, 0), config, x, causal_mask(4, 4)).dtype == np.float32
    buffers = BlockBuffers.allocate(config, 1, 4)
    assert block_(layer(params, 0), config, x.copy(), None, None, buffers).dtype == np.float32
    assert reference_forward(params, config, ids).dtype == np.float32
    cache = KVCache.allocate(config, 1, 8)
    assert forward(params, config, ids, cache=cache).dtype == np.float32
    assert forward(params, config, ids[:, :1], cache=cache).dtype == np.float32
    assert forward(params, config, ids, all_logits=True).dtype == np.float32
    assert cache.keys.dtype == cache.values.dtype == np.float32


def test_fast_block_equals_plain_block(tiny):
    config, params = tiny
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 9, config.n_embd), dtype=np.float32)
    valid = np.ones((2, 9), bool)
    valid[1, :4] = False                                      # left padding in row 1
    plain = block(layer(params, 1), config, x, causal_mask(9, 9)[None, None] & valid[:, None, None, :])
    fast = block_(layer(params, 1), config, x.copy(), valid, None, BlockBuffers.allocate(config, 2, 9))
    # same float32 math in a different order (q pre-scaled, in-place GELU/LayerNorm): ~1e-7
    np.testing.assert_allclose(fast, plain, atol=1e-6, rtol=0)


def test_slot_decode_block_equals_plain_block(tiny):
    """decode_block_ (slots.decode_slots' step): rows whose slots hold 5, 0 and 11 cached positions, plus a
    padding row, each give what `block` gives at the last position of that row's whole sequence."""
    config, params = tiny
    rng = np.random.default_rng(11)
    lengths, slots = [5, 0, 11], np.array([2, 0, 3])
    seqs = [rng.standard_normal((n + 1, config.n_embd), dtype=np.float32) for n in lengths]  # [n + 1, C] each
    p = layer(params, 1)
    keys = np.zeros((4, config.n_head, 16, config.head_size), np.float32)  # [S, H, M, D]
    values = np.zeros_like(keys)
    for slot, seq, n in zip(slots, seqs, lengths):             # the cached positions, written by block_
        if n:
            block_(p, config, seq[None, :n].copy(), None, (keys[slot:slot + 1], values[slot:slot + 1], 0),
                   BlockBuffers.allocate(config, 1, n))
    x = np.zeros((4, config.n_embd), np.float32)               # [W, C]: row 3 is padding
    x[:3] = [seq[-1] for seq in seqs]
    decode_block_(p, config, x, keys, values, slots, np.array(lengths))
    for row, seq in enumerate(seqs):
        T = len(seq)
        plain = block(p, config, seq[None], causal_mask(T, T)[None, None])[0, -1]
        # same float32 math in another grouping (q pre-scaled, products by columns): ~1e-7
        np.testing.assert_allclose(x[row], plain, atol=1e-6, rtol=0)
    assert [int(np.abs(keys[s, :, n]).max() > 0) for s, n in zip(slots, lengths)] == [1, 1, 1]  # new keys stored


def test_one_row_decode_block_equals_plain_block(tiny):
    """decode_row_ (a batch-1 decode step): one position after 0, 1 and 12 cached ones gives what `block`
    gives at the last position of the whole sequence, and stores its key and value at that position."""
    config, params = tiny
    rng = np.random.default_rng(12)
    p = layer(params, 1)
    C = config.n_embd
    for n in (0, 1, 12):
        seq = rng.standard_normal((n + 1, C), dtype=np.float32)            # [n + 1, C]
        keys = np.zeros((1, config.n_head, 16, config.head_size), np.float32)  # [1, H, M, D]
        values = np.zeros_like(keys)
        if n:
            block_(p, config, seq[None, :n].copy(), None, (keys, values, 0), BlockBuffers.allocate(config, 1, n))
        x = seq[-1].copy()
        buf = (np.empty(C, np.float32), np.empty(3 * C, np.float32), np.empty(4 * C, np.float32),
               np.empty(4 * C, np.float32), np.empty((config.n_head, config.head_size), np.float32))
        decode_row_(p, config, x, keys[0], values[0], n, buf)
        plain = block(p, config, seq[None], causal_mask(n + 1, n + 1)[None, None])[0, -1]
        # same float32 math in another grouping (LayerNorm's statistics as Python floats): ~1e-7
        np.testing.assert_allclose(x, plain, atol=1e-6, rtol=0)
        assert np.abs(keys[0, :, n]).max() > 0 and np.abs(values[0, :, n]).max() > 0


def test_rows_after_an_unpadded_cache_equal_the_reference(tiny):
    """1, 2 and 5 new tokens of one sequence after a cached prefix without padding (a speculative
    verification: positions past .. past+T-1, no mask built) give the reference forward's logits at those
    positions, and the cache then marks every position real."""
    config, params = tiny
    ids = np.random.default_rng(13).integers(0, config.vocab_size, (1, 17))
    ref = reference_forward(params, config, ids)               # [1, 17, V]
    for T in (1, 2, 5):
        cache = KVCache.allocate(config, 1, 17)
        forward(params, config, ids[:, :9], cache=cache)
        got = forward(params, config, ids[:, 9:9 + T], cache=cache, all_logits=True)
        np.testing.assert_allclose(got, ref[:, 9:9 + T], atol=ATOL_CACHE, rtol=0)
        assert cache.length == 9 + T and cache.mask[0, :9 + T].all() and not cache.mask[0, 9 + T:].any()


def test_one_row_steps_take_the_vector_path_only_where_it_applies(tiny):
    """forward goes through decode_row exactly when one in-range token of one sequence follows a cache
    without padding that has room for it; the other cases go the general way, with the same errors."""
    config, params = tiny
    cache = KVCache.allocate(config, 1, 8)
    forward(params, config, np.array([[3, 4, 5]]), cache=cache)
    assert _one_row_step(config, np.array([[6]]), cache, None)
    assert not _one_row_step(config, np.array([[6, 7]]), cache, None)             # two tokens
    assert not _one_row_step(config, np.array([[6], [7]]), cache, None)           # two sequences
    assert not _one_row_step(config, np.array([[6]]), KVCache.allocate(config, 1, 8), None)  # a prefill
    assert not _one_row_step(config, np.array([[6]]), cache, np.ones((1, 1), bool))   # a mask given
    assert not _one_row_step(config, np.array([[config.vocab_size]]), cache, None)    # out of range
    with pytest.raises(NumgptError, match="token ids must be in"):
        forward(params, config, np.array([[config.vocab_size]]), cache=cache)
    padded = KVCache.allocate(config, 1, 8)
    forward(params, config, np.array([[0, 4, 5]]), cache=padded, attention_mask=np.array([[False, True, True]]))
    assert not _one_row_step(config, np.array([[6]]), padded, None)                   # left padding in the cache
    full = KVCache.allocate(config, 1, 3)
    forward(params, config, np.array([[3, 4, 5]]), cache=full)
    assert not _one_row_step(config, np.array([[6]]), full, None)
    with pytest.raises(NumgptError, match="KV cache full"):
        forward(params, config, np.array([[6]]), cache=full)


def test_forward_equals_reference_forward(tiny):
    config, params = tiny
    rng = np.random.default_rng(9)
    ids, mask = left_pad([rng.integers(0, config.vocab_size, n) for n in (17, 5, 11)])
    ref = reference_forward(params, config, ids, attention_mask=mask)
    np.testing.assert_allclose(forward(params, config, ids, attention_mask=mask, all_logits=True)[mask], ref[mask],
                               atol=ATOL_CACHE, rtol=0)
    np.testing.assert_allclose(forward(params, config, ids, attention_mask=mask), ref[:, -1], atol=ATOL_CACHE, rtol=0)


def test_a_recorder_sees_every_layers_attention_and_changes_nothing(tiny):
    """reference_forward(record=...) hands the recorder each block's attention probabilities once, in
    order, and returns the same bits as without it (what teach's traced forward stands on)."""
    config, params = tiny
    ids, mask = left_pad([[5, 6, 7, 8], [9, 10]])
    seen = []
    got = reference_forward(params, config, ids, attention_mask=mask,
                            record=lambda layer, name, value: seen.append((layer, name, value)))
    assert np.array_equal(got, reference_forward(params, config, ids, attention_mask=mask))
    assert [(layer, name) for layer, name, _ in seen] == [(i, "attn.probs") for i in range(config.n_layer)]
    for _, _, probs in seen:
        assert probs.shape == (2, config.n_head, 4, 4)
        np.testing.assert_allclose(probs.sum(-1)[1, :, 2:], 1, atol=1e-6)   # real queries: distributions
        assert np.all(probs[1, :, :, :2] == 0)                              # nobody attends to padding


def test_full_context_prefill_equals_reference(tiny):
    config, params = tiny
    ids = np.random.default_rng(10).integers(0, config.vocab_size, (1, config.n_positions))
    np.testing.assert_allclose(forward(params, config, ids, all_logits=True), reference_forward(params, config, ids),
                               atol=ATOL_CACHE, rtol=0)


def test_cached_decode_equals_full_forward(tiny):
    config, params = tiny
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (2, 20))
    full = forward(params, config, ids, all_logits=True)       # [B, T, V]
    cache = KVCache.allocate(config, 2, 20)
    steps = [forward(params, config, ids[:, :7], cache=cache, all_logits=True)]
    for t in range(7, 20):
        steps.append(forward(params, config, ids[:, t:t + 1], cache=cache)[:, None])
    assert cache.length == 20
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=ATOL_CACHE, rtol=0)


def test_chunked_prefill_equals_one_prefill(tiny):
    config, params = tiny
    ids = np.random.default_rng(2).integers(0, config.vocab_size, (1, 12))
    cache = KVCache.allocate(config, 1, 12)
    forward(params, config, ids[:, :5], cache=cache)
    got = forward(params, config, ids[:, 5:], cache=cache, all_logits=True)
    np.testing.assert_allclose(got, forward(params, config, ids, all_logits=True)[:, 5:], atol=ATOL_CACHE, rtol=0)


def test_left_padded_batch_equals_each_prompt_alone(tiny):
    config, params = tiny
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, config.vocab_size, n) for n in (6, 2, 4)]
    ids, mask = left_pad(prompts)
    cache = KVCache.allocate(config, 3, 12)
    batch_logits = forward(params, config, ids, cache=cache, attention_mask=mask)
    nxt = batch_logits.argmax(-1)[:, None]
    batch_step = forward(params, config, nxt, cache=cache)     # decode after a padded prefill: no mask needed
    for row, p in enumerate(prompts):
        alone = forward(params, config, np.append(p, nxt[row])[None], all_logits=True)[0]
        np.testing.assert_allclose(batch_logits[row], alone[-2], atol=ATOL_CACHE, rtol=0)
        np.testing.assert_allclose(batch_step[row], alone[-1], atol=ATOL_CACHE, rtol=0)


def test_padding_token_values_do_not_matter(tiny):
    config, params = tiny
    ids, mask = left_pad([[5, 6, 7], [8]])
    other = np.where(mask, ids, 42)
    np.testing.assert_array_equal(forward(params, config, ids, attention_mask=mask),
                                  forward(params, config, other, attention_mask=mask))


def test_full_length_mask_with_cache(tiny):
    """attention_mask may cover cached + new positions (Hugging Face's convention) or only the new ones."""
    config, params = tiny
    ids, mask = left_pad([[5, 6, 7], [8]])
    c1, c2 = KVCache.allocate(config, 2, 4), KVCache.allocate(config, 2, 4)
    forward(params, config, ids, cache=c1, attention_mask=mask)
    forward(params, config, ids, cache=c2, attention_mask=mask)
    new = np.array([[9], [10]])
    np.testing.assert_array_equal(
        forward(params, config, new, cache=c1, attention_mask=np.concatenate([mask, [[True], [True]]], axis=1)),
        forward(params, config, new, cache=c2))


def test_cache_select_repeats_rows(tiny):
    config, params = tiny
    ids = np.array([[3, 4, 5], [6, 7, 8]])
    cache = KVCache.allocate(config, 2, 6)
    forward(params, config, ids, cache=cache)
    picked = cache.select([1, 1, 0])
    assert picked.length == 3 and picked.batch_size == 3
    got = forward(params, config, np.array([[9], [9], [9]]), cache=picked)
    want = forward(params, config, np.array([[6, 7, 8, 9], [3, 4, 5, 9]]))
    np.testing.assert_allclose(got, want[[0, 0, 1]], atol=ATOL_CACHE, rtol=0)
    assert cache.length == 3 and cache.batch_size == 2        # the original is untouched


def test_cache_reset_allows_sliding_window_reprefill(tiny):
    config, params = tiny
    ids = np.random.default_rng(4).integers(0, config.vocab_size, (1, config.n_positions))
    cache = KVCache.allocate(config, 1)
    forward(params, config, ids, cache=cache)
    with pytest.raises(NumgptError, match="n_positions"):
        forward(params, config, ids[:, :1], cache=cache)
    cache.reset()
    window = ids[:, -16:]
    np.testing.assert_allclose(forward(params, config, window, cache=cache), forward(params, config, window),
                               atol=ATOL_CACHE, rtol=0)


def test_context_overflow_and_bad_inputs_raise_one_line_errors(tiny):
    config, params = tiny
    too_long = np.zeros((1, config.n_positions + 1), np.int64)
    for call, pattern in [
        (lambda: forward(params, config, too_long), "n_positions=32"),
        (lambda: forward(params, config, np.zeros((1, 5), int), cache=KVCache.allocate(config, 1, 4)),
         "max_len 4"),
        (lambda: forward(params, config, np.zeros((2, 3), int), cache=KVCache.allocate(config, 1, 4)),
         "batch size 2"),
        (lambda: forward(params, config, np.array([[config.vocab_size]])), "token ids"),
        (lambda: forward(params, config, np.array([1, 2])), "2-D"),
        (lambda: forward(params, config, np.array([[1, 2]]), attention_mask=np.ones((1, 3), bool)),
         "attention_mask"),
    ]:
        with pytest.raises(NumgptError, match=pattern) as e:
            call()
        assert "\n" not in str(e.value)


def test_left_padding_does_not_count_towards_context(tiny):
    """Positions come from the mask: a padded row of n real tokens uses positions 0..n-1 only."""
    config, params = tiny
    short = np.arange(1, 6)
    ids, mask = left_pad([np.arange(1, config.n_positions + 1) % config.vocab_size, short])
    got = forward(params, config, ids, attention_mask=mask)
    np.testing.assert_allclose(got[1], forward(params, config, short[None])[0], atol=ATOL_CACHE, rtol=0)


# ---------------------------------------------------------------- against transformers

@LAYOUTS
def test_logits_match_transformers_small(hf_small_ckpt, for_inference):
    config, params = numpy_model(hf_small_ckpt, for_inference)
    ids = np.random.default_rng(5).integers(0, config.vocab_size, (3, 30))
    np.testing.assert_allclose(forward(params, config, ids, all_logits=True), hf_logits(hf_small_ckpt, ids),
                               atol=ATOL_HF, rtol=0)


@LAYOUTS
def test_left_padded_batch_matches_transformers_small(hf_small_ckpt, for_inference):
    config, params = numpy_model(hf_small_ckpt, for_inference)
    rng = np.random.default_rng(6)
    prompts = [rng.integers(1, config.vocab_size, n) for n in (11, 3, 7, 1)]
    ids, mask = left_pad(prompts)
    got = forward(params, config, ids, attention_mask=mask, all_logits=True)
    hf_batch = hf_logits(hf_small_ckpt, ids, mask=mask, position_ids=token_positions(mask))
    np.testing.assert_allclose(got[mask], hf_batch[mask], atol=ATOL_HF, rtol=0)   # real tokens only
    for row, p in enumerate(prompts):
        np.testing.assert_allclose(got[row, -1], hf_logits(hf_small_ckpt, p[None])[0, -1], atol=ATOL_HF, rtol=0)


@LAYOUTS
def test_last_position_prefill_matches_transformers_small(hf_small_ckpt, for_inference):
    """A forward that wants only the last position (a prefill) runs its last block for that row alone
    (model.last_block_): its logits equal transformers' there, and the cache it leaves equals the one a
    forward of every position leaves (the last block's keys and values are still every position's)."""
    config, params = numpy_model(hf_small_ckpt, for_inference)
    rng = np.random.default_rng(16)
    prompts = [rng.integers(1, config.vocab_size, n) for n in (12, 4, 9)]
    ids, mask = left_pad(prompts)
    caches = [KVCache.allocate(config, len(prompts), ids.shape[1] + 2) for _ in range(2)]
    last = forward(params, config, ids, attention_mask=mask, cache=caches[0])           # [B, V]
    every = forward(params, config, ids, attention_mask=mask, cache=caches[1], all_logits=True)  # [B, T, V]
    ref = hf_logits(hf_small_ckpt, ids, mask=mask, position_ids=token_positions(mask))[:, -1]
    np.testing.assert_allclose(last, ref, atol=ATOL_HF, rtol=0)
    np.testing.assert_allclose(last, every[:, -1], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(caches[0].keys, caches[1].keys)
    np.testing.assert_array_equal(caches[0].values, caches[1].values)
    no_cache = forward(params, config, prompts[0][None])                                # [1, V], no padding
    np.testing.assert_allclose(no_cache, hf_logits(hf_small_ckpt, prompts[0][None])[:, -1], atol=ATOL_HF, rtol=0)


@LAYOUTS
def test_batched_cached_decode_matches_transformers_small(hf_small_ckpt, for_inference):
    """Prefill a left-padded batch into the cache, then decode steps of one token per row (the rows < FEW_ROWS
    path of linear_into); every step's logits equal transformers' on the whole sequence so far."""
    config, params = numpy_model(hf_small_ckpt, for_inference)
    rng = np.random.default_rng(8)
    prompts = [rng.integers(1, config.vocab_size, n) for n in (9, 2, 5, 1, 7, 3, 8, 4)]
    ids, mask = left_pad(prompts)
    steps = 6
    cache = KVCache.allocate(config, len(prompts), ids.shape[1] + steps)
    logits = forward(params, config, ids, cache=cache, attention_mask=mask)
    for _ in range(steps):
        nxt = logits.argmax(-1)[:, None]                       # [B, V] -> [B, 1]
        ids, mask = np.concatenate([ids, nxt], axis=1), np.concatenate([mask, np.ones_like(nxt, bool)], axis=1)
        logits = forward(params, config, nxt, cache=cache)
        ref = hf_logits(hf_small_ckpt, ids, mask=mask, position_ids=token_positions(mask))[:, -1]
        np.testing.assert_allclose(logits, ref, atol=ATOL_HF, rtol=0)


@LAYOUTS
def test_batch1_cached_decode_matches_transformers_small(hf_small_ckpt, for_inference):
    """A prompt, then decode steps of one token (model.decode_row, the vector path): every step's logits
    equal transformers' on the whole sequence so far, and the cache holds what a prefill of it holds."""
    config, params = numpy_model(hf_small_ckpt, for_inference)
    ids = np.random.default_rng(9).integers(1, config.vocab_size, (1, 6))
    steps = 7
    cache = KVCache.allocate(config, 1, ids.shape[1] + steps)
    logits = forward(params, config, ids, cache=cache)
    for _ in range(steps):
        nxt = logits.argmax(-1)[:, None]                       # [1, V] -> [1, 1]
        assert _one_row_step(config, nxt, cache, None)
        ids = np.concatenate([ids, nxt], axis=1)
        logits = forward(params, config, nxt, cache=cache)
        np.testing.assert_allclose(logits, hf_logits(hf_small_ckpt, ids)[:, -1], atol=ATOL_HF, rtol=0)
    again = KVCache.allocate(config, 1, ids.shape[1])
    forward(params, config, ids[:, :-1], cache=again)
    n = again.length
    assert cache.length == n + 1 and cache.mask[0, :n + 1].all()
    np.testing.assert_allclose(cache.keys[:, :, :, :n], again.keys[:, :, :, :n], atol=ATOL_CACHE, rtol=0)
    np.testing.assert_allclose(cache.values[:, :, :, :n], again.values[:, :, :, :n], atol=ATOL_CACHE, rtol=0)


def greedy_against_transformers(ckpt, prompt, n, for_inference=False):
    torch = pytest.importorskip("torch")
    config, params = numpy_model(ckpt, for_inference)
    with torch.inference_mode():
        ref = ckpt.model.generate(torch.from_numpy(prompt), do_sample=False, max_new_tokens=n,
                                  eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(
                                      torch.from_numpy(prompt))).numpy()
    assert ref.shape[1] == prompt.shape[1] + n
    got = greedy(params, config, prompt, n)
    # The comparison is meaningful only if no step was a near-tie: check transformers' top-2 margins.
    logits = hf_logits(ckpt, ref[:, :-1])[:, prompt.shape[1] - 1:]
    top2 = np.sort(logits, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 10 * ATOL_HF
    np.testing.assert_array_equal(got, ref)


@LAYOUTS
def test_greedy_64_tokens_match_transformers_generate_small(hf_small_ckpt, for_inference):
    greedy_against_transformers(hf_small_ckpt, np.array([[5, 17, 42, 7]]), 59, for_inference)  # 4 + 59 < 64


@pytest.fixture(scope="module")
def gpt2_124m(hf_gpt2_124m_ckpt):
    return hf_gpt2_124m_ckpt


@LAYOUTS
def test_124m_logits_and_padded_batch_match_transformers(gpt2_124m, for_inference):
    ckpt = gpt2_124m
    config, params = numpy_model(ckpt, for_inference)
    assert (config.n_layer, config.n_head, config.n_embd, config.vocab_size) == (12, 12, 768, 50257)
    rng = np.random.default_rng(7)
    ids = rng.integers(0, config.vocab_size, (1, 48))
    np.testing.assert_allclose(forward(params, config, ids, all_logits=True), hf_logits(ckpt, ids),
                               atol=ATOL_HF, rtol=0)
    prompts = [rng.integers(0, config.vocab_size, n) for n in (20, 9)]
    ids, mask = left_pad(prompts)
    got = forward(params, config, ids, attention_mask=mask, all_logits=True)
    hf_batch = hf_logits(ckpt, ids, mask=mask, position_ids=token_positions(mask))
    np.testing.assert_allclose(got[mask], hf_batch[mask], atol=ATOL_HF, rtol=0)
    for row, p in enumerate(prompts):
        np.testing.assert_allclose(got[row, -1], hf_logits(ckpt, p[None])[0, -1], atol=ATOL_HF, rtol=0)


def test_124m_greedy_64_tokens_match_transformers_generate(gpt2_124m):
    greedy_against_transformers(gpt2_124m, np.array([[464, 3290, 318, 257, 1332, 286]]), 64,
                                for_inference=True)                                  # numgpt.load's layout
