"""Slots (numgpt/slots.py): rows at different cache lengths decode as each would alone, and -- with
batch_invariant -- bit for bit the same whatever runs beside them."""

import numpy as np
import pytest

import numgpt
from numgpt import NumgptError
from numgpt.kvcache import KVCache
from numgpt.model import forward
from numgpt.slots import SlotCache, decode_slots, prefill_slot, prefill_slots, vocabulary_head


@pytest.fixture(scope="module")
def builtin():
    return numgpt.load()


def alone(lm, prompt, continuation):
    """Logits after each token of `continuation`, the row decoded alone with model.forward. [K, V]"""
    cache = KVCache.allocate(lm.config, 1)
    out = [forward(lm.params, lm.config, np.asarray([prompt]), cache=cache)[0]]
    for t in continuation[:-1]:
        out.append(forward(lm.params, lm.config, np.asarray([[t]]), cache=cache)[0])
    return np.stack(out)


def test_rows_at_different_lengths_equal_each_row_alone(builtin):
    """Three prompts of different lengths; the third joins two steps late and the first leaves early:
    every logit row equals that sequence decoded alone."""
    lm, rng = builtin, np.random.default_rng(0)
    prompts = [rng.integers(0, 1024, n).tolist() for n in (5, 17, 2)]
    conts = [rng.integers(0, 1024, 6).tolist() for _ in prompts]
    cache = SlotCache.allocate(lm.config, 4)
    got = {0: [prefill_slot(lm.params, lm.config, cache, 3, prompts[0])],
           1: [prefill_slot(lm.params, lm.config, cache, 0, prompts[1])]}
    slot_of = {0: 3, 1: 0, 2: 1}
    for step in range(5):
        if step == 2:
            got[2] = [prefill_slot(lm.params, lm.config, cache, 1, prompts[2])]
        running = [r for r in got if len(got[r]) < len(conts[r])]
        if not running:
            break
        logits = decode_slots(lm.params, lm.config, cache, [slot_of[r] for r in running],
                              [conts[r][len(got[r]) - 1] for r in running])
        for r, row in zip(running, logits):
            got[r].append(row)
    for r in got:
        want = alone(lm, prompts[r], conts[r])[:len(got[r])]             # float32 rounding of other sums
        np.testing.assert_allclose(np.stack(got[r]), want, atol=1e-5, rtol=2e-6)
    assert cache.lengths[3] == len(prompts[0]) + len(got[0]) - 1


def run_in_company(lm, prompt, tokens, company: int, slot: int, slots: int = 8, *, invariant=True, head=None):
    """Decode `tokens` after `prompt` in slot `slot`, beside `company` other random rows; its logits."""
    rng = np.random.default_rng(100 + company + slot)
    cache = SlotCache.allocate(lm.config, slots)
    prefill_slot(lm.params, lm.config, cache, slot, prompt)
    others = [s for s in range(slots) if s != slot][:company]
    for s in others:
        prefill_slot(lm.params, lm.config, cache, s, rng.integers(0, lm.config.vocab_size, rng.integers(1, 30)).tolist())
    out = []
    for t in tokens:
        order = [slot] + others
        rng.shuffle(order)
        ids = [t if s == slot else int(rng.integers(0, lm.config.vocab_size)) for s in order]
        logits = decode_slots(lm.params, lm.config, cache, order, ids, batch_invariant=invariant, head=head)
        out.append(logits[order.index(slot)])
    return np.stack(out)


@pytest.mark.parametrize("mmap", [False, True], ids=["weights [out, in]", "weights as stored (mmap)"])
def test_batch_invariant_bit_for_bit(hf_gpt2_vocab_ckpt, mmap):
    """The same row, in any slot, alone or beside 1..7 others in shuffled order: identical bits."""
    lm = numgpt.load(hf_gpt2_vocab_ckpt.folder, mmap=mmap)
    prompt, tokens = [3, 14, 15, 92, 65], [35, 89, 79, 32, 38, 46]
    want = run_in_company(lm, prompt, tokens, company=0, slot=0)
    for company, slot in [(1, 0), (1, 5), (3, 2), (7, 7), (5, 1)]:
        got = run_in_company(lm, prompt, tokens, company, slot)
        assert np.array_equal(got, want), (company, slot)


@pytest.mark.parametrize("mmap", [False, True], ids=["weights [out, in]", "weights as stored (mmap)"])
def test_batch_invariant_on_the_builtin_model(mmap):
    builtin = numgpt.load(mmap=mmap)
    prompt = builtin.encode("ROMEO: what light")
    tokens = builtin.encode(" through yonder window breaks")
    want = run_in_company(builtin, prompt, tokens, company=0, slot=2)
    for company in (1, 4, 7):
        assert np.array_equal(run_in_company(builtin, prompt, tokens, company, slot=company % 8), want)


@pytest.mark.parametrize("with_head", [False, True], ids=["wte @ x.T", "x @ vocabulary_head"])
def test_batch_invariant_at_124m(hf_gpt2_124m_ckpt, with_head):
    """At GPT-2 small's shapes (the kernels' threaded paths), beside 0, 3 and 7 others; the logits through
    wte or the engine's separate [C, V] head, which agree to float rounding."""
    lm = numgpt.load(hf_gpt2_124m_ckpt.folder)
    head = vocabulary_head(lm.params) if with_head else None
    prompt, tokens = list(range(100, 132)), [7, 8, 9]
    want = run_in_company(lm, prompt, tokens, company=0, slot=0, head=head)
    for company in (3, 7):
        assert np.array_equal(run_in_company(lm, prompt, tokens, company, slot=4, head=head), want)
    np.testing.assert_allclose(want, run_in_company(lm, prompt, tokens, 0, 0), atol=1e-4, rtol=0)


def test_lone_row_without_invariance_is_model_forward_exactly(builtin):
    prompt, tokens = builtin.encode("JULIET:"), builtin.encode(" O Romeo")
    got = run_in_company(builtin, prompt, tokens, company=0, slot=1, invariant=False)
    cache = KVCache.allocate(builtin.config, 1)
    forward(builtin.params, builtin.config, np.asarray([prompt]), cache=cache, panels=True)   # as slots prefill
    want = np.stack([forward(builtin.params, builtin.config, np.asarray([[t]]), cache=cache)[0] for t in tokens])
    assert np.array_equal(got, want)


def test_prefill_all_logits_equal_forward(builtin):
    ids = builtin.encode("First Citizen:\nBefore we proceed")
    cache = SlotCache.allocate(builtin.config, 2)
    got = prefill_slot(builtin.params, builtin.config, cache, 1, ids, all_logits=True)
    want = forward(builtin.params, builtin.config, np.asarray([ids]), all_logits=True)[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert cache.lengths.tolist() == [0, len(ids)]


def test_batched_prefill_equals_each_prompt_alone(builtin):
    """Three prompts of different lengths prefilled in one padded forward into slots 4, 0, 2: the same
    logits and, decoding on, the same next logits as each prefilled alone (to float rounding)."""
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 1024, n).tolist() for n in (9, 3, 20)]
    together, alone = SlotCache.allocate(builtin.config, 5), SlotCache.allocate(builtin.config, 5)
    got = prefill_slots(builtin.params, builtin.config, together, [4, 0, 2], prompts, all_logits=True)
    for slot, p, g in zip([4, 0, 2], prompts, got):
        want = prefill_slot(builtin.params, builtin.config, alone, slot, p, all_logits=True)
        np.testing.assert_allclose(g, want, atol=1e-5, rtol=0)
    assert together.lengths.tolist() == alone.lengths.tolist() == [3, 0, 20, 0, 9]
    step = [decode_slots(builtin.params, builtin.config, c, [4, 0, 2], [7, 8, 9]) for c in (together, alone)]
    np.testing.assert_allclose(step[0], step[1], atol=1e-5, rtol=0)


def test_errors_are_one_line(builtin):
    cache = SlotCache.allocate(builtin.config, 2, max_len=8)
    with pytest.raises(numgpt.NumgptError, match="non-empty"):
        prefill_slot(builtin.params, builtin.config, cache, 0, [])
    with pytest.raises(numgpt.NumgptError, match="slot holds 8"):
        prefill_slot(builtin.params, builtin.config, cache, 0, list(range(9)))
    prefill_slot(builtin.params, builtin.config, cache, 0, list(range(8)))
    with pytest.raises(numgpt.NumgptError, match="full"):
        decode_slots(builtin.params, builtin.config, cache, [0], [1])
    with pytest.raises(numgpt.NumgptError, match="twice"):
        decode_slots(builtin.params, builtin.config, cache, [1, 1], [1, 2])


def test_a_slot_cache_beyond_the_machines_memory_is_refused_before_allocating(builtin, monkeypatch):
    import numgpt.machine as K
    monkeypatch.setattr(K, "available_memory", lambda: 10 * 2**20)              # 10 MiB to spare
    with pytest.raises(NumgptError, match="fewer slots") as e:
        SlotCache.allocate(builtin.config, 64)
    assert "\n" not in str(e.value)
    small = SlotCache.allocate(builtin.config, 1, max_len=8)                    # what fits is made
    assert small.keys.nbytes + small.values.nbytes < 10 * 2**20


def test_the_engine_starts_with_its_cache_touched_and_panels_made_where_batches_use_them(monkeypatch):
    from numgpt import panels as P
    from numgpt.serve.engine import Engine
    monkeypatch.setattr(P, "panels_pay_off", lambda: True)
    for max_batch, made in ((1, False), (4, True)):
        lm = numgpt.load("builtin")
        Engine(lm.params, lm.config, lm.tokenizer, max_batch=max_batch)
        assert all((p._data is not None) == made for p in lm.params.panels.values()), max_batch


def test_a_kv_cache_beyond_the_machines_memory_is_refused_before_allocating(builtin, monkeypatch):
    import numgpt.machine as K
    monkeypatch.setattr(K, "available_memory", lambda: 10 * 2**20)              # 10 MiB to spare
    with pytest.raises(NumgptError, match="fewer sequences"):
        KVCache.allocate(builtin.config, 256)
    one = KVCache.allocate(builtin.config, 1, max_len=16)
    assert one.select([0, 0]).batch_size == 2                                   # what fits is made
    with pytest.raises(NumgptError, match="100000 sequences of 16 positions"):
        one.select(np.zeros(100_000, np.intp))                                  # a selection that grows
