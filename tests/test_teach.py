"""numgpt.teach: the numbers behind each teaching view, checked against the model and the references.

Attention: rows sum to 1, nothing above the diagonal, equal to transformers' output_attentions (a random
checkpoint and the built-in model), and the logits of the same pass equal the forward's. Sampling: every
stage is numgpt.sampling's own rule applied to the stage before, the last stage is process_logits bit for
bit, and what `sample` draws is always in the final kept set. KV cache: the multiply-adds are exact,
position counts are exact, the tokens are greedy generation's own.
"""

import dataclasses
import json

import numpy as np
import pytest
from references import reference

import numgpt
from numgpt import NumgptError, SamplingOptions
from numgpt.formats import load_checkpoint
from numgpt.lm import BUILTIN_MODEL
from numgpt.model import forward, reference_forward
from numgpt.ops import causal_mask, softmax
from numgpt.sampling import (apply_logit_bias, apply_min_p, apply_presence_frequency_penalty,
                             apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p, process_logits,
                             sample)
from numgpt.teach import (STAGES, attention_view, attention_weights, forward_macs, kvcache_counts, kvcache_view,
                          sampling_stages, sampling_view, tokens_view, traced_forward)
from numgpt.teach.sampling_view import stage_logits

torch = reference("torch")
transformers = reference("transformers")

TEXT = "ROMEO: I will not go to bed tonight, good sir; the moon is up."


@pytest.fixture(scope="module")
def lm():
    return numgpt.load()


def hf_attentions(folder, ids) -> tuple[np.ndarray, np.ndarray]:
    """transformers' attention probabilities [L, H, T, T] and logits [T, V] for one row of ids
    (the eager implementation: the one that returns attention weights)."""
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    return np.stack([a[0].numpy() for a in out.attentions]), out.logits[0].numpy()


# ---- attention -----------------------------------------------------------------------------------------

def test_attention_rows_are_distributions_over_the_past(lm):
    ids = lm.encode(TEXT)
    w = attention_weights(lm.params, lm.config, ids)            # [L, H, T, T]
    T = len(ids)
    assert w.shape == (lm.config.n_layer, lm.config.n_head, T, T) and w.dtype == np.float32
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)       # float32 sums of up to T terms
    assert np.all(w[..., ~causal_mask(T, T)] == 0)              # upper triangle exactly 0
    assert np.all(w[..., 0, 0] == 1)                            # the first token sees only itself
    assert np.all(w >= 0)


def test_attention_equals_transformers_on_a_random_checkpoint(hf_small_ckpt, torch_one_thread):
    config, params = load_checkpoint(hf_small_ckpt.folder, for_inference=True)
    ids = list(np.random.default_rng(0).integers(0, config.vocab_size, 40))
    theirs, their_logits = hf_attentions(hf_small_ckpt.folder, ids)
    trace = traced_forward(params, config, ids)
    np.testing.assert_allclose(trace.weights, theirs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(trace.logits, their_logits, atol=1e-4, rtol=0)   # logits ~1, float32 drift


def test_attention_equals_transformers_on_the_builtin_model(lm, torch_one_thread):
    ids = lm.encode(TEXT)
    theirs, _ = hf_attentions(BUILTIN_MODEL, ids)
    np.testing.assert_allclose(attention_weights(lm.params, lm.config, ids), theirs, atol=1e-5, rtol=0)


def test_the_traced_pass_is_the_forward(lm):
    """The logits are computed from the kept probabilities, so equal logits mean the probabilities are
    the ones the model used: bit-equal to the plain forward, within float rounding of the fast one."""
    ids = lm.encode(TEXT)
    trace = traced_forward(lm.params, lm.config, ids)
    assert np.array_equal(trace.logits, reference_forward(lm.params, lm.config, np.array([ids]))[0])
    fast = forward(lm.params, lm.config, np.array([ids]), all_logits=True)[0]
    np.testing.assert_allclose(trace.logits, fast, atol=1e-4, rtol=0)  # blocked attention sums in another order


def test_attention_view_is_plain_data(lm):
    view = attention_view(lm, "ROMEO: I will", layer=1, head=2)
    data = json.loads(json.dumps(view.to_json()))
    assert data["heads"] == [2] and data["layer"] == 1 and data["tokens"] == ["ROMEO", ":", " I", " will"]
    w = attention_weights(lm.params, lm.config, lm.encode("ROMEO: I will"))
    np.testing.assert_array_equal(np.array(data["weights"], np.float32), w[1, [2]])
    assert len(attention_view(lm, [858, 58], layer=0).heads) == lm.config.n_head   # ids; head=None: all
    some = traced_forward(lm.params, lm.config, lm.encode("ROMEO: I will"), layers=[3, 1])
    assert np.array_equal(some.weights, w[[3, 1]])              # only the layers asked for, in that order
    with pytest.raises(NumgptError, match="layer 4 is out of range"):
        traced_forward(lm.params, lm.config, [1, 2], layers=[4])


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="x", layer=4), "layer 4 is out of range: the model has 4 layers (0..3)"),
    (dict(text="x", layer=-1), "layer must be >= 0"),
    (dict(text="x", head=4), "head 4 is out of range: the model has 4 heads (0..3)"),
    (dict(text="", layer=0), "the text is empty"),
    (dict(text="a " * 200, layer=0), "context overflow: 201 tokens > the model's context of n_positions=128; "
                                     "shorten the text"),
    (dict(text=[5000], layer=0), "token id 5000 is outside the model's vocabulary (0..1023)"),
])
def test_attention_view_refuses_bad_input(lm, kwargs, message):
    with pytest.raises(NumgptError) as e:
        attention_view(lm, kwargs.pop("text"), **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


# ---- sampling ------------------------------------------------------------------------------------------

OPTIONS = [
    SamplingOptions(),
    SamplingOptions(temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3),
    SamplingOptions(temperature=1.5, top_p=0.5),
    SamplingOptions(top_k=3),
    SamplingOptions(temperature=0.0, top_k=5, repetition_penalty=1.2),     # greedy: only the penalty
    SamplingOptions(do_sample=False, top_p=0.3),
    SamplingOptions(temperature=0.9, min_p=0.2, presence_penalty=0.8, frequency_penalty=0.5,
                    logit_bias=((321, -100.0), (44, 5.0))),
    SamplingOptions(top_k=30, top_p=0.95, min_p=0.05, repetition_penalty=1.2, frequency_penalty=-0.7),
    SamplingOptions(do_sample=False, min_p=0.5, logit_bias=((46, 3.0),), presence_penalty=2.0),  # greedy
]

GENERATED = 6   # the last tokens of TEXT stand for a completion's (the presence/frequency penalties' tokens)


@pytest.fixture(scope="module")
def next_logits(lm):
    ids = lm.encode(TEXT)
    return ids, forward(lm.params, lm.config, np.array([ids]))[0]   # [V]


@pytest.mark.parametrize("options", OPTIONS)
def test_the_last_stage_is_what_the_sampler_draws_from(next_logits, options):
    ids, logits = next_logits
    generated = ids[-GENERATED:]
    processed = process_logits(logits[None], options, previous=[ids], generated=[generated])[0]
    stages = sampling_stages(logits, ids, options, generated_ids=generated, top=8)
    assert [s.name for s in stages] == list(STAGES)
    final = stages[-1]
    kept = np.flatnonzero(np.isfinite(processed))
    assert (final.kept_ids is None and kept.size == logits.size) or final.kept_ids == kept.tolist()
    assert final.kept == kept.size
    assert np.array_equal(stage_logits(logits, ids, options, generated_ids=generated)[-1][2], processed)
    p = softmax(processed.astype(np.float64))                   # the distribution sample() inverts
    for t in final.top:
        assert t.probability == p[t.id]
    draws = sample(np.repeat(processed[None], 200, 0), [np.random.default_rng(s) for s in range(200)])
    assert set(draws.tolist()) <= set(kept.tolist())


def test_each_stage_is_the_samplers_rule_on_the_one_before(next_logits):
    ids, logits = next_logits
    generated = ids[-GENERATED:]
    o = SamplingOptions(temperature=1.3, top_k=20, top_p=0.99, repetition_penalty=1.3, min_p=0.1,
                        presence_penalty=0.6, frequency_penalty=0.4, logit_bias=((321, 2.0), (44, -3.0)))
    stages = stage_logits(logits, ids, o, generated_ids=generated)
    assert [name for name, _, _ in stages] == list(STAGES) and all(applied for _, applied, _ in stages)
    expected = [logits[None]]
    expected.append(apply_logit_bias(expected[-1], o.logit_bias))
    expected.append(apply_presence_frequency_penalty(expected[-1], [generated], o.presence_penalty,
                                                     o.frequency_penalty))
    expected.append(apply_repetition_penalty(expected[-1], [ids], o.repetition_penalty))
    expected.append(apply_temperature(expected[-1], o.temperature))
    expected.append(apply_top_k(expected[-1], o.top_k))
    expected.append(apply_top_p(expected[-1], o.top_p))
    expected.append(apply_min_p(expected[-1], o.min_p))
    for (_, _, got), want in zip(stages, expected, strict=True):
        assert np.array_equal(got, want[0])
    assert not np.array_equal(expected[1], expected[0]) and not np.array_equal(expected[2], expected[1])
    assert np.isfinite(expected[-1]).sum() < np.isfinite(expected[-2]).sum()   # min-p removed some


def test_stage_bookkeeping(next_logits, lm):
    ids, logits = next_logits
    stages = sampling_stages(logits, ids, OPTIONS[1], top=8, decode=lambda i: lm.tokenizer.decode([i]))
    raw, bias, presence, penalty, temperature, top_k, top_p, min_p = stages
    assert [s.applied for s in stages] == [True, False, False, True, True, True, True, False]
    assert raw.kept == logits.size and raw.kept_ids is None and raw.kept_mass == pytest.approx(1.0)
    assert top_k.kept == 20 and top_p.kept <= 20
    assert top_p.kept_mass >= 0.9 - 1e-6                        # the nucleus holds at least p
    p_in = softmax(top_k_logits := stage_logits(logits, ids, OPTIONS[1])[5][2].astype(np.float64))
    assert top_p.kept_mass == pytest.approx(p_in[top_p.kept_ids].sum(), abs=1e-12)
    assert np.isfinite(top_k_logits).sum() == 20
    shown = [t.id for t in raw.top]
    assert all([t.id for t in s.top] == shown for s in stages)  # one shared list of tokens
    raw_p = [t.probability for t in raw.top]
    assert raw_p == sorted(raw_p, reverse=True)
    assert raw.top[0].token == lm.tokenizer.decode([shown[0]])
    removed = [t for t in top_p.top if t.logit is None]
    assert all(t.probability == 0 for t in removed)


def test_greedy_and_neutral_stages_are_listed_as_off(next_logits):
    ids, logits = next_logits
    stages = sampling_stages(logits, ids, OPTIONS[4])
    assert [s.applied for s in stages] == [True, False, False, True, False, False, False, False]
    assert "greedy" in stages[5].note and stages[5].setting == 5
    assert [s.applied for s in sampling_stages(logits, ids, OPTIONS[0])] == [True] + [False] * 7
    greedy = sampling_stages(logits, ids, OPTIONS[8], generated_ids=ids[-GENERATED:])
    assert [s.applied for s in greedy] == [True, True, True, False, False, False, False, False]
    assert greedy[1].setting == [[46, 3.0]] and greedy[2].setting == [2.0, 0.0] and "greedy" in greedy[7].note


def test_sampling_view_is_plain_data(lm):
    view = sampling_view(lm, "ROMEO: I will", temperature=0.8, top_k=8, top_p=0.9, top=5)
    data = json.loads(json.dumps(view.to_json()))
    assert data["options"]["top_k"] == 8 and [s["name"] for s in data["stages"]] == list(STAGES)
    assert data["prompt_ids"] == lm.encode("ROMEO: I will")
    with pytest.raises(NumgptError, match="top_p must be in"):
        sampling_view(lm, "x", top_p=0)
    with pytest.raises(NumgptError, match="the prompt is empty"):
        sampling_view(lm, "")


def test_sampling_view_penalises_only_the_generated_tokens(lm):
    """A position inside a completion: prompt + generated so far; the presence/frequency penalties see the
    generated tokens, the repetition penalty every token, as the engine's sampler does."""
    prompt, generated = lm.encode("ROMEO: I will"), lm.encode(" not go, not")
    view = sampling_view(lm, prompt, generated=generated, presence_penalty=1.0, frequency_penalty=0.5,
                         repetition_penalty=1.2, min_p=0.05, top=1024)
    ids = prompt + generated
    assert view.prompt_ids == ids and view.generated == len(generated)
    logits = forward(lm.params, lm.config, np.array([ids]))
    options = SamplingOptions(presence_penalty=1.0, frequency_penalty=0.5, repetition_penalty=1.2, min_p=0.05)
    processed = process_logits(logits, options, previous=[ids], generated=[generated])[0]
    assert view.stages[-1].kept_ids == np.flatnonzero(np.isfinite(processed)).tolist()
    presence = {t.id: t.logit for t in view.stages[2].top}
    raw = {t.id: t.logit for t in view.stages[0].top}
    not_id = lm.encode(" not")[0]
    assert presence[not_id] == pytest.approx(raw[not_id] - 1.0 - 0.5 * 2, abs=1e-5)   # twice in the completion
    assert presence[prompt[0]] == raw[prompt[0]]                                      # prompt only: untouched
    with pytest.raises(NumgptError, match="logit_bias names token 5000"):
        sampling_view(lm, "x", logit_bias=[(5000, 1.0)])


def test_kvcache_counts_are_the_measured_views(lm):
    view = kvcache_view(lm, "ROMEO: I will", max_new_tokens=5)
    counts = kvcache_counts(lm.config, len(view.prompt_ids), 5)
    assert [(s["computed"], s["reused"], s["computed_full"], s["macs_cached"], s["macs_full"]) for s in counts.steps] \
        == [(s.computed_cached, s.reused_cached, s.computed_full, s.macs_cached, s.macs_full) for s in view.steps]
    P = len(view.prompt_ids)
    assert counts.computed == P + 4 and counts.reused == sum(range(P, P + 4))
    assert counts.computed_without_cache == sum(range(P, P + 5)) and counts.macs_cached == view.macs_cached
    assert kvcache_counts(lm.config, 3, 0).computed == 0
    with pytest.raises(NumgptError, match="context overflow"):
        kvcache_counts(lm.config, 100, 29)


# ---- KV cache ------------------------------------------------------------------------------------------

def test_forward_macs_exact():
    c = numgpt.PRESETS["tiny"]                                  # C 32, L 2, V 512
    # prefill 3 positions: block 0 12 C^2 per position and 2 C per attended key (1 + 2 + 3 keys); the last
    # block c_attn (3 C^2) for the 3, the rest (9 C^2) and attention (3 keys) for the last position alone
    assert forward_macs(c, 3) == (12 * 32 * 32 * 3 + 2 * 32 * 6) + (3 * 32 * 32 * 3 + 9 * 32 * 32 + 2 * 32 * 3) \
        + 32 * 512 == 72256
    # one decode step after 3 cached positions: 4 keys
    assert forward_macs(c, 1, 3) == 2 * (12 * 32 * 32 + 2 * 32 * 4) + 32 * 512 == 41472
    gpt2 = numgpt.PRESETS["gpt2"]                               # the 124M decode step at 1023 cached
    assert forward_macs(gpt2, 1, 1023) == 12 * (12 * 768 ** 2 + 2 * 768 * 1024) + 768 * 50257


def test_forward_macs_matches_a_position_by_position_count():
    c = numgpt.GPTConfig(vocab_size=100, n_positions=64, n_embd=24, n_layer=3, n_head=3)
    for new, past in [(1, 0), (5, 0), (1, 9), (4, 7)]:
        count = c.vocab_size * c.n_embd
        for layer in range(c.n_layer):
            for p in range(past, past + new):                   # the position at index p sees p + 1 keys
                count += 3 * 24 * 24                            # c_attn: every position's keys and values
                if layer < c.n_layer - 1 or p == past + new - 1:   # the last block: the last position only
                    count += 24 * 24 + 4 * 24 * 24 + 4 * 24 * 24 + c.n_head * (p + 1) * 2 * 8
        assert forward_macs(c, new, past) == count


def test_kvcache_view_counts_and_tokens(lm):
    prompt = lm.encode("ROMEO: I will")
    P, N = len(prompt), 6
    view = kvcache_view(lm, "ROMEO: I will", max_new_tokens=N)
    greedy = lm.completions("ROMEO: I will", max_new_tokens=N, do_sample=False, stop_at_eos=False)[0]
    assert [s.token_id for s in view.steps] == greedy.token_ids
    assert [s.computed_cached for s in view.steps] == [P] + [1] * (N - 1)
    assert [s.reused_cached for s in view.steps] == [0] + list(range(P, P + N - 1))
    assert [s.computed_full for s in view.steps] == list(range(P, P + N))
    assert [s.macs_cached for s in view.steps] == [forward_macs(lm.config, P)] + \
        [forward_macs(lm.config, 1, P + i - 1) for i in range(1, N)]
    assert [s.macs_full for s in view.steps] == [forward_macs(lm.config, P + i) for i in range(N)]
    assert view.macs_cached == sum(s.macs_cached for s in view.steps) < view.macs_full
    assert view.steps[0].macs_cached == view.steps[0].macs_full and view.steps[0].max_logit_difference == 0
    assert all(s.max_logit_difference < 1e-4 for s in view.steps)   # float rounding only
    assert all(s.seconds_cached > 0 and s.seconds_full > 0 for s in view.steps)
    json.dumps(view.to_json())


def test_kvcache_view_refuses_too_many_tokens(lm):
    with pytest.raises(NumgptError, match="context overflow: 4 tokens \\+ max_new_tokens 125"):
        kvcache_view(lm, "ROMEO: I will", max_new_tokens=125)
    with pytest.raises(NumgptError, match="max_new_tokens must be >= 1"):
        kvcache_view(lm, "ROMEO", max_new_tokens=0)


# ---- tokens --------------------------------------------------------------------------------------------

def test_tokens_view_is_the_tokenizers_explain(lm):
    text = "ROMEO: Mississippi, thou art"
    view = tokens_view(lm.tokenizer, text)
    assert view.ids == lm.encode(text)
    traces = lm.tokenizer.explain(text, allowed_special="all")
    assert [p.piece for p in view.pieces] == [t.piece for t in traces]
    assert [[s.rank for s in p.steps] for p in view.pieces] == [[s.rank for s in t.steps] for t in traces]
    json.dumps(view.to_json())
    with pytest.raises(NumgptError, match="empty"):
        tokens_view(lm.tokenizer, "")


def test_an_empty_prompt_starts_from_endoftext_as_in_generate(hf_gpt2_vocab_ckpt):
    gpt2_vocab = numgpt.load(hf_gpt2_vocab_ckpt.folder)
    assert sampling_view(gpt2_vocab, "", top=3).prompt_ids == [50256]
    assert kvcache_view(gpt2_vocab, "", max_new_tokens=2).prompt_ids == [50256]
    with pytest.raises(NumgptError, match="the text is empty"):
        attention_view(gpt2_vocab, "")


def test_sampling_view_overflow_names_the_prompt_and_the_generated_tokens(lm):
    """Newcomer report: 200 generated tokens said "shorten the generated"; prompt + generated share the
    context, and the message says both."""
    n = len(lm.encode("ROMEO:"))
    with pytest.raises(NumgptError) as e:
        sampling_view(lm, "ROMEO:", generated=[10] * 200)
    assert str(e.value) == (f"context overflow: {n + 200} tokens > the model's context of n_positions=128; "
                            "shorten the prompt or pass fewer generated tokens")
    view = sampling_view(lm, "ROMEO:", generated=[10] * (128 - n), top=2)      # exactly fills it
    assert len(view.prompt_ids) == 128 and view.generated == 128 - n


def test_sampling_view_takes_the_samplers_options_by_name(lm):
    """The view reads its options through SamplingOptions.from_mapping (no second list of them): a
    misspelt one is refused by name."""
    with pytest.raises(NumgptError, match="unknown sampling option 'topk'; the options are temperature, top_k"):
        sampling_view(lm, "x", topk=3)
    assert sampling_view(lm, "x", top_k=3, top=2).options == dataclasses.asdict(SamplingOptions(top_k=3))
