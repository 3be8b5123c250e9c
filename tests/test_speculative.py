"""Speculative decoding (numgpt/speculative.py, a stage of generate.decode_steps): greedy output token for
token equal to plain decoding on every model the tests use (tiny random ones, transformers-saved ones, the
built-in and chat models), batches and samples, penalties, logprobs; sampled output distributed exactly as
the target's (chi-square over many seeds against probabilities computed from the plain forward); the KV
cache's rollback and compaction; the drafters; bad input."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

import numgpt
from numgpt import NumgptError
from numgpt.config import GPTConfig
from numgpt.formats.hf import load_checkpoint
from numgpt.generate import GenerationOptions, generate_ids
from numgpt.kvcache import KVCache
from numgpt.model import forward, reference_forward
from numgpt.ops import softmax
from numgpt.params import init_params
from numgpt.sampling import GREEDY, SamplingOptions, process_logits
from numgpt.speculative import (DraftLengths, SpeculativeStats, accept_or_resample, next_draft_length, ngram_draft,
                                ngram_draft_fast, speculation)

VOCAB = 40


@pytest.fixture(scope="module")
def pair():
    """A tiny target and a tinier draft model with the same vocabulary (random weights, init scaled up so
    that greedy paths are far from ties)."""
    target = GPTConfig(vocab_size=VOCAB, n_positions=96, n_embd=32, n_layer=2, n_head=4)
    draft = GPTConfig(vocab_size=VOCAB, n_positions=96, n_embd=16, n_layer=1, n_head=2)
    return (init_params(target, np.random.default_rng(0)), target), (init_params(draft, np.random.default_rng(1)), draft)


def spec(method, k, config, draft=None, max_new_tokens=64, adaptive=True, min_ngram=1, draft_confidence=0.0):
    """min_ngram 1 and draft_confidence 0: prompt lookup drafts from any repeated token and the draft model
    every token, so that on these tiny random models they draft (and are rejected) often, which is what the
    exactness tests need."""
    return speculation(method, k, config, draft=draft if method == "draft" else None, headroom=max_new_tokens,
                       adaptive=adaptive, min_ngram=min_ngram, draft_confidence=draft_confidence)


PROMPTS = [[5, 17, 3, 5, 17, 3, 5], list(range(1, 13)), [7, 9], [30, 31, 30, 31, 30]]


# ---- the drafters ---------------------------------------------------------------------------------

def test_ngram_draft_copies_what_followed_the_longest_suffix():
    tokens = [1, 2, 3, 4, 9, 2, 3, 7, 8, 1, 2, 3]
    assert ngram_draft(tokens, 3) == [4, 9, 2]            # "1 2 3" occurred at 0: what followed it
    assert ngram_draft([5, 6, 7, 6], 2, min_ngram=1) == [7, 6]   # only the 1-gram "6" occurred before
    assert ngram_draft([1, 2, 3], 4, min_ngram=1) == []   # nothing repeats
    assert ngram_draft([4, 4, 4, 4, 4], 3) == [4, 4]      # no match has 3 after it: the earliest (2 after)
    assert ngram_draft([1, 2, 8, 1, 2, 9, 1, 2], 1, min_ngram=1) == [9]  # the latest match with k tokens after it


def test_ngram_draft_drafts_only_from_a_match_of_min_ngram_tokens():
    tokens = [5, 1, 2, 8, 1, 2]                           # "1 2" occurred before, "8 1 2" did not
    assert ngram_draft(tokens, 2, min_ngram=2) == [8, 1] and ngram_draft(tokens, 2) == []   # default: 3 tokens
    assert ngram_draft([7, 1, 2, 3, 9, 1, 2, 3], 2) == [9, 1]


def test_ngram_draft_fast_equals_the_loop():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        tokens = rng.integers(0, 4, size=rng.integers(1, 30)).tolist()
        k, low = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        assert ngram_draft_fast(np.array(tokens), k, min_ngram=low) == ngram_draft(tokens, k, min_ngram=low), \
            (tokens, k, low)


# ---- the KV cache's rollback ------------------------------------------------------------------------

def test_truncate_and_compact_keep_the_logits(pair):
    """A cache rolled back past rejected tokens, or with holes squeezed out, continues as if the rejected
    tokens had never been fed (against the plain forward of the kept sequence)."""
    (params, config), _ = pair
    cache = KVCache.allocate(config, 2, 40)
    rows = np.array([[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    forward(params, config, rows, cache=cache)
    cache.mask[1, 4:6] = False                             # row 1 rejected its last 2, row 0 its last 1
    cache.truncate(5)
    kept = [[3, 4, 5, 6, 7], [9, 10, 11, 12]]
    for compact in (False, True):
        c = KVCache(cache.keys.copy(), cache.values.copy(), cache.mask.copy(), cache.length)
        if compact:
            c.compact()
            assert c.length == 5 and c.mask[1].tolist()[:5] == [False, True, True, True, True]
        got = forward(params, config, np.array([[20], [21]]), cache=c)                  # [2, V]
        for b, nxt in enumerate((20, 21)):
            want = reference_forward(params, config, np.array([kept[b] + [nxt]]))[0, -1]
            np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)  # float32 rounding only


# ---- greedy: the tokens of plain decoding -------------------------------------------------------------

@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("method", ["ngram", "draft"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_equals_plain_on_tiny_models(pair, method, k, adaptive):
    (params, config), draft = pair
    for prompts in ([PROMPTS[0]], PROMPTS):               # alone, and a left-padded batch
        plain = generate_ids(params, config, prompts, max_new_tokens=50, sampling=GREEDY)
        s = spec(method, k, config, draft, adaptive=adaptive)
        assert generate_ids(params, config, prompts, max_new_tokens=50, sampling=GREEDY, speculative=s) == plain
        assert sum(x.accepted for x in s.stats) > 0       # it did speculate


def test_next_draft_length_doubles_after_a_full_round_and_follows_a_rejection():
    assert next_draft_length(4, 4, 4) == 8        # all kept: twice as far (num_draft still caps it)
    assert next_draft_length(2, 2, 2) == 4
    assert next_draft_length(6, 0, 6) == 1        # the first draft rejected: draft one next time
    assert next_draft_length(6, 3, 6) == 4        # three kept: one more than that
    assert next_draft_length(0, 0, 5) == 5        # nothing drafted (no match): unchanged


def test_draft_lengths_follow_how_far_drafts_held():
    lengths = DraftLengths(6)
    lengths.start(2)
    assert lengths.caps([6, 6]) == [6, 6]                  # the first round drafts the caps
    lengths.update([6, 6], [0, 6])                         # row 0's first draft was wrong, row 1 kept all
    assert lengths.caps([6, 6]) == [1, 6]                  # row 1: 12, capped at num_draft 6
    lengths.update([1, 6], [1, 2])
    assert lengths.caps([6, 6]) == [2, 3]
    assert lengths.caps([1, 6]) == [1, 3]                  # the caller's cap (near max_new_tokens) still bounds
    lengths.select(np.array([1]))                          # row 0 finished
    assert lengths.caps([6]) == [3]
    fixed = DraftLengths(6, adaptive=False)
    fixed.start(1)
    fixed.update([6], [0])
    assert fixed.caps([6]) == [6]


def test_a_draft_model_drafts_fewer_where_its_drafts_fail_and_gives_the_same_tokens(pair):
    """A random draft model: most of its drafts are rejected, so adaptive rows draft less than K; the
    tokens are plain decoding's either way."""
    (params, config), draft = pair
    kw = dict(max_new_tokens=50, sampling=GREEDY)
    plain = generate_ids(params, config, PROMPTS, **kw)
    runs = {}
    for adaptive in (True, False):
        s = spec("draft", 6, config, draft, adaptive=adaptive)
        assert generate_ids(params, config, PROMPTS, speculative=s, **kw) == plain
        runs[adaptive] = SpeculativeStats()
        for x in s.stats:
            runs[adaptive].add(x)
    assert runs[False].acceptance_rate < 0.5
    assert runs[True].drafted < 0.7 * runs[False].drafted
    assert runs[True].acceptance_rate > runs[False].acceptance_rate











def test_a_draft_model_stops_drafting_at_a_doubtful_token():
    """With draft_confidence, a row stops drafting at a token the draft model gives less than that: fewer
    drafts, fewer of them rejected, and the same tokens as plain decoding. The built-in model drafts for
    itself with its first layer only (the tiny random pair's distributions are too flat to be confident)."""
    lm = numgpt.load()
    params, config = lm.params, lm.config
    draft = (params, dataclasses.replace(config, n_layer=1))
    prompts = [lm.encode(p) for p in ("ROMEO:\nI will", "First Citizen:\nWe are")]
    plain = generate_ids(params, config, prompts, max_new_tokens=40, sampling=GREEDY)
    stats = {}
    for confidence in (0.0, 0.5):
        s = spec("draft", 6, config, draft, adaptive=False, draft_confidence=confidence)
        assert generate_ids(params, config, prompts, max_new_tokens=40, sampling=GREEDY, speculative=s) == plain
        stats[confidence] = (sum(x.drafted for x in s.stats), sum(x.drafted - x.accepted for x in s.stats))
    assert 0 < stats[0.5][0] < stats[0.0][0] and stats[0.5][1] < stats[0.0][1], stats


def test_greedy_with_the_target_as_its_own_draft_keeps_every_draft(pair):
    (params, config), _ = pair
    s = spec("draft", 4, config, (params, config))
    out = generate_ids(params, config, [PROMPTS[1]], max_new_tokens=41, sampling=GREEDY, speculative=s)
    assert out == generate_ids(params, config, [PROMPTS[1]], max_new_tokens=41, sampling=GREEDY)
    st = s.stats[0]
    assert st.acceptance_rate == 1.0 and st.tokens == 41 and st.forwards == 1 + 8   # 1 + 8 rounds of 5 tokens


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_greedy_with_penalties_and_bias_per_position(pair, method):
    """The repetition, presence and frequency penalties need each position's own history: verify gives it."""
    (params, config), draft = pair
    sampling = SamplingOptions(do_sample=False, repetition_penalty=1.3, presence_penalty=0.5,
                               frequency_penalty=0.3, logit_bias=((3, 2.0),))
    plain = generate_ids(params, config, PROMPTS, max_new_tokens=40, sampling=sampling)
    s = spec(method, 3, config, draft)
    assert generate_ids(params, config, PROMPTS, max_new_tokens=40, sampling=sampling, speculative=s) == plain


def test_greedy_with_stop_ids_and_samples(pair):
    (params, config), draft = pair
    kw = dict(max_new_tokens=30, sampling=GREEDY, stop_ids=[5, 17], num_return_sequences=2)
    plain = generate_ids(params, config, PROMPTS, **kw)
    assert any(len(p) < 30 for p in plain)                 # a row stopped early
    for method in ("ngram", "draft"):
        assert generate_ids(params, config, PROMPTS, speculative=spec(method, 4, config, draft), **kw) == plain


@pytest.fixture(scope="module")
def hf_models(hf_tiny_vocab_ckpt, hf_gpt2_vocab_ckpt):
    """transformers-saved random checkpoints: (params, config) of the 300-token one (no tokenizer files),
    and the LanguageModel of the one with GPT-2's vocabulary."""
    return load_checkpoint(hf_tiny_vocab_ckpt.folder)[::-1], numgpt.load(hf_gpt2_vocab_ckpt.folder)


@pytest.mark.parametrize("fixture", ["hf_tiny_vocab_ckpt", "hf_small_ckpt"])  # 124M: bench_speculative checks it
def test_greedy_equals_plain_on_transformers_checkpoints(fixture, request):
    config, params = load_checkpoint(request.getfixturevalue(fixture).folder)
    prompts = [[5, 17, 42, 42, 8, 120, 3, 5, 17, 42], [250, 7, 250, 7, 250]]
    new = 40
    plain = generate_ids(params, config, prompts, max_new_tokens=new, sampling=GREEDY)
    for method in ("ngram", "draft"):
        s = spec(method, 5, config, (params, config), max_new_tokens=new)
        assert generate_ids(params, config, prompts, max_new_tokens=new, sampling=GREEDY, speculative=s) == plain


def test_greedy_equals_plain_through_language_model(hf_models):
    _, lm = hf_models
    prompts = [[5, 17, 42, 42, 8, 120, 3, 5, 17, 42], [250, 7, 250, 7, 250]]
    plain = lm.generate_ids(prompts, max_new_tokens=48, do_sample=False)
    for method, extra in (("ngram", {}), ("draft", {"draft_model": lm})):
        assert lm.generate_ids(prompts, max_new_tokens=48, do_sample=False, speculative=method, num_draft=5,
                               **extra) == plain


@pytest.mark.parametrize("name", [None, "chat"])
def test_greedy_equals_plain_on_the_builtin_models(name):
    lm = numgpt.load(name)
    prompt = ("ROMEO:\nRepeat after me: to be or not to be, that is the question. To be or not"
              if name is None else lm.tokenizer.decode(lm.encode("Repeat after me: the cat sat on the mat.")))
    plain = lm.completions(prompt, max_new_tokens=40, do_sample=False)[0]
    for method in ("ngram", "draft"):
        got = lm.completions(prompt, max_new_tokens=40, do_sample=False, speculative=method, num_draft=4,
                             **({"draft_model": lm} if method == "draft" else {}))[0]
        assert got.token_ids == plain.token_ids and got.text == plain.text
        assert got.speculative.tokens == len(got.token_ids) + (got.finish_reason == "eos")


def test_logprobs_equal_plain(hf_models):
    _, lm = hf_models
    prompt = [250, 7, 250, 7, 250, 7]
    plain = lm.completions(prompt, max_new_tokens=20, do_sample=False, logprobs=3)[0]
    got = lm.completions(prompt, max_new_tokens=20, do_sample=False, logprobs=3, speculative="ngram")[0]
    assert got.token_ids == plain.token_ids
    for a, b in zip(got.logprobs, plain.logprobs):
        assert a.id == b.id and [t for t, _ in a.top] == [t for t, _ in b.top]
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)   # a K+1-row forward rounds differently


def test_stop_strings_end_inside_an_accepted_run():
    """A stop string met at a token in the middle of an accepted draft ends the text there, as plain."""
    lm = numgpt.load()
    prompt = "ROMEO:\nTo be or not to be, that is the question. To be or not to be, that is"
    plain = lm.completions(prompt, max_new_tokens=30, do_sample=False, stop=["question"])[0]
    got = lm.completions(prompt, max_new_tokens=30, do_sample=False, stop=["question"], speculative="ngram",
                         num_draft=8)[0]
    assert (got.text, got.finish_reason, got.token_ids) == (plain.text, plain.finish_reason, plain.token_ids)


def test_drafts_after_a_stop_are_not_counted_as_accepted():
    """The built-in model repeats "I'll tell thee," here, and prompt lookup copies it; the stop string ends
    the text in the middle of a kept run of drafts. Drafts after the stop were never output, so they are not
    `accepted`: the output is the accepted drafts plus each forward's own token, except the last forward's,
    which the stop dropped (forwards + accepted = tokens + 1; 3 accepted were counted before, one too many)."""
    lm = numgpt.load()
    prompt, stop = "ROMEO:\nI will", "ee, I'll t"
    plain = lm.completions(prompt, max_new_tokens=60, do_sample=False, stop=[stop])[0]
    got = lm.completions(prompt, max_new_tokens=60, do_sample=False, stop=[stop], speculative="ngram", num_draft=8)[0]
    assert (got.text, got.finish_reason, got.token_ids) == (plain.text, plain.finish_reason, plain.token_ids)
    s = got.speculative
    assert s.tokens == len(got.token_ids) and s.forwards + s.accepted == s.tokens + 1
    # the serving engine counts the same way (its usage.speculative showed 3 accepted too)
    import threading
    from numgpt.serve.engine import Engine, Finished, SequenceRequest
    engine = Engine(lm.params, lm.config, lm.tokenizer, max_batch=1, speculative="ngram", num_draft=8).start()
    done, finals = threading.Semaphore(0), []
    try:
        engine.submit([SequenceRequest(lm.encode(prompt), 60, GREEDY, stop=(stop,))],
                      [lambda ev: (finals.append(ev), done.release()) if isinstance(ev, Finished) else None])
        assert done.acquire(timeout=120)
    finally:
        engine.stop()
    assert finals[0].speculative == s


# ---- sampling: the target's distribution ---------------------------------------------------------------

def exact_joint(params, config, prompt, sampling, n_tokens):
    """{(t1..tn): probability} of the first n tokens under the processed distribution, by enumeration."""
    out = {(): 1.0}
    for _ in range(n_tokens):
        nxt = {}
        for seq, p in out.items():
            full = prompt + list(seq)
            logits = reference_forward(params, config, np.array([full]))[:, -1]         # [1, V]
            probs = softmax(process_logits(logits, sampling, previous=[full], generated=[list(seq)])
                            .astype(np.float64))[0]
            for t in np.flatnonzero(probs > 1e-12):
                nxt[seq + (int(t),)] = p * probs[t]
        out = nxt
    return out


@pytest.mark.parametrize("penalty", [1.2, 1.0])
@pytest.mark.parametrize("method, confidence", [("ngram", 0.0), ("draft", 0.0), ("draft", 0.257)])
def test_sampled_tokens_follow_the_target_distribution(pair, method, confidence, penalty):
    """4000 sequences (one seed each: sample j of the call), 3 tokens each: the first is drawn from the
    prefill, the second verifies a draft, the third is kept or the bonus. Chi-square of the joint counts
    against the exact joint distribution; top-k and a repetition penalty make the distribution processed
    (without the penalty, verify processes every position in one call). confidence 0.257: the draft model
    stops drafting a row where its likeliest token has less than that (top-k 4 over nearly flat logits:
    the likeliest has 0.25-0.28, so about half the rows), which must not change the distribution
    (stopping at a drawn token of small q did: p-value 4e-39)."""
    (params, config), draft = pair
    prompt = [5, 17, 3, 5, 17, 3, 5]
    sampling = SamplingOptions(temperature=1.5, top_k=4, repetition_penalty=penalty)
    n = 4000
    s = spec(method, 2, config, draft, max_new_tokens=3, draft_confidence=confidence)
    out = generate_ids(params, config, [prompt], max_new_tokens=3, sampling=sampling, seed=7,
                       num_return_sequences=n, speculative=s)
    drafted = sum(x.drafted for x in s.stats)
    assert drafted > n // 4 and 0 < sum(x.accepted for x in s.stats) < drafted   # drafts were kept and rejected
    exact = exact_joint(params, config, prompt, sampling, 3)
    cells = sorted(exact)
    counts = {c: 0 for c in cells}
    for seq in out:
        counts[tuple(seq)] += 1                              # a KeyError would be a token p gives 0
    expected = np.array([exact[c] for c in cells]) * n
    big = expected >= 5                                       # pool the rare cells (the chi-square rule of thumb)
    observed = np.array([counts[c] for c in cells])
    obs, exp = observed[big], expected[big]
    if not big.all():
        obs, exp = np.append(obs, observed[~big].sum()), np.append(exp, expected[~big].sum())
    p_value = scipy_stats.chisquare(obs, exp).pvalue
    assert p_value > 1e-3, p_value       # a false alarm 1 time in 1000; a wrong rule fails by far (see below)


def test_the_chi_square_catches_a_wrong_rule(pair, monkeypatch):
    """The test above can fail: keeping every draft (no acceptance test) is caught."""
    import numgpt.speculative as sp
    monkeypatch.setattr(sp, "accept_or_resample", lambda p, q, x, rng: (x, True))
    with pytest.raises(AssertionError):
        test_sampled_tokens_follow_the_target_distribution(pair, "ngram", 0.0, 1.0)


def test_accept_or_resample_is_exact_on_one_position():
    """The rule alone: with any q, the kept-or-resampled token is distributed as p (exact sums)."""
    p = np.array([0.5, 0.2, 0.3, 0.0])
    q = np.array([0.1, 0.6, 0.0, 0.3])
    # P(token = t) = q(t) min(1, p/q) + P(reject) * residual(t); computed from the definition
    accept = np.minimum(q, p)
    residual = np.maximum(p - q, 0) / np.maximum(p - q, 0).sum()
    assert np.allclose(accept + (1 - accept.sum()) * residual, p)
    rng = np.random.default_rng(0)
    counts = np.zeros(4)
    for _ in range(20000):
        x = int(rng.choice(4, p=q))
        counts[accept_or_resample(p, q, x, rng)[0]] += 1
    assert scipy_stats.chisquare(counts[:3], p[:3] * 20000).pvalue > 1e-3 and counts[3] == 0


def test_seeded_sampling_is_reproducible(pair):
    (params, config), draft = pair
    sampling = SamplingOptions(temperature=0.9, top_p=0.9)
    for method in ("ngram", "draft"):
        runs = [generate_ids(params, config, PROMPTS, max_new_tokens=30, sampling=sampling, seed=3,
                             speculative=spec(method, 3, config, draft)) for _ in range(2)]
        assert runs[0] == runs[1]


# ---- bad input ------------------------------------------------------------------------------------------

def test_bad_options_are_refused_by_name(pair):
    (params, config), _ = pair
    with pytest.raises(NumgptError, match="num_draft must be"):
        GenerationOptions(speculative="ngram", num_draft=0)
    with pytest.raises(NumgptError, match="num_draft applies only with speculative"):
        GenerationOptions(num_draft=3)
    with pytest.raises(NumgptError, match="speculative must be one of ngram, draft"):
        GenerationOptions(speculative="medusa")
    with pytest.raises(NumgptError, match="cannot be combined with sliding_window=True"):
        GenerationOptions(speculative="ngram", sliding_window=True)
    with pytest.raises(NumgptError, match="below the model's context of n_positions=96"):
        speculation("ngram", 96, config)
    with pytest.raises(NumgptError, match="needs a draft model"):
        speculation("draft", 2, config)


def test_a_draft_with_another_vocabulary_or_short_context_is_refused(pair, hf_models):
    (params, config), _ = pair
    other = GPTConfig(vocab_size=VOCAB + 1, n_positions=96, n_embd=16, n_layer=1, n_head=2)
    with pytest.raises(NumgptError, match="vocabulary has 41 tokens and the model's 40"):
        speculation("draft", 2, config, draft=(init_params(other, np.random.default_rng(0)), other))
    short = GPTConfig(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    s = speculation("draft", 2, config, draft=(init_params(short, np.random.default_rng(0)), short), headroom=20)
    with pytest.raises(NumgptError, match="draft model's context"):
        generate_ids(params, config, [[1, 2]], max_new_tokens=20, sampling=GREEDY, speculative=s)
    _, gpt2_vocab = hf_models
    with pytest.raises(NumgptError, match="has a vocabulary of 1024 tokens, the model 50257"):
        gpt2_vocab.generate("hello", speculative="draft", draft_model=numgpt.load(), max_new_tokens=3)
    with pytest.raises(NumgptError, match="draft_model applies only with speculative='draft'"):
        gpt2_vocab.generate("hello", speculative="ngram", draft_model=gpt2_vocab, max_new_tokens=3)


def test_a_draft_with_the_same_vocabulary_size_but_other_tokens_is_refused(tmp_path):
    """The built-in model's folder with two tokens' ids swapped in vocab.json: 1024 ids each, other tokens."""
    import shutil
    from numgpt.lm import check_draft_model
    folder = tmp_path / "swapped"
    shutil.copytree(Path(numgpt.__file__).parent / "assets" / "model", folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(NumgptError, match=r"the draft model \S+swapped has another tokenizer \(the same 1024 ids, "
                                          r"other tokens or merges\)"):
        check_draft_model(numgpt.load(), numgpt.load(folder))


def test_stats_add_up():
    s = SpeculativeStats(drafted=10, accepted=7, forwards=4, tokens=11)
    assert s.as_dict() == {"drafted": 10, "accepted": 7, "acceptance_rate": 0.7, "target_forwards": 4,
                           "tokens": 11, "tokens_per_forward": 2.75}


# ---- the command line -------------------------------------------------------------------------------------

def run_cli(capsys, *argv):
    from numgpt.cli import main
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_speculative_prints_the_same_text_and_statistics(capsys):
    prompt = "ROMEO:\nTo be or not to be, that is the question. To be or not"
    code, plain, _ = run_cli(capsys, "generate", "--greedy", "-n", "20", prompt)
    assert code == 0
    for extra in (["--speculative", "ngram"], ["--speculative", "draft", "--draft-model", "builtin"]):
        code, out, err = run_cli(capsys, "generate", "--greedy", "-n", "20", "--num-draft", "3", "--verbose",
                                 *extra, prompt)
        assert (code, out) == (0, plain)
        assert "sample 1: 20 tokens, finish reason length; speculative: drafted" in err
        assert "tokens per forward" in err
    code, out, _ = run_cli(capsys, "generate", "--greedy", "-n", "20", "--speculative", "ngram", "--json", prompt)
    stats = json.loads(out)[0]["speculative"]
    assert stats["tokens"] == 20 == stats["target_forwards"] + stats["accepted"]   # each forward: kept + 1


@pytest.mark.parametrize("argv, message", [
    (["--speculative", "ngram", "--num-draft", "0"], "--num-draft must be >= 1"),
    (["--speculative", "ngram", "--num-draft", "128"], "--num-draft must be below the model's context"),
    (["--speculative", "draft"], "--speculative draft needs --draft-model"),
    (["--draft-model", "builtin"], "--draft-model applies only with --speculative draft"),
    (["--num-draft", "3"], "--num-draft applies only with speculative decoding: add --speculative ngram"),
    (["--speculative", "ngram", "--sliding-window"], "cannot be combined with --sliding-window"),
    (["--speculative", "draft", "--draft-model", "chat"], "has a vocabulary of 2048 tokens, the model 1024"),
    (["--speculative", "draft", "--draft-model", "/nonexistent"], "--draft-model: /nonexistent: no such folder"),
])
def test_generate_bad_speculative_flags_are_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, "generate", "-n", "5", *argv, "ROMEO:")
    assert code == 2 and out == ""
    assert err.startswith("numgpt: error: ") and message in err and err.count("\n") == 1


# ---- numgpt serve ----------------------------------------------------------------------------------------

SERVE_PROMPTS = ["ROMEO:\nTo be or not to be, that is the question. To be or not", "First Citizen:\nWe are"]


def served(server, prompt, **kw):
    r = server.client.completions.create(model="numgpt", prompt=prompt, max_tokens=40, temperature=0, **kw)
    return r.choices[0].text, r.model_dump()["usage"]


def test_serve_speculative_gives_the_plain_server_s_greedy_text():
    """Real servers on free loopback ports, the official client: the same greedy text with and without
    speculation (prompt lookup; the draft model in the engine test below), and usage.speculative."""
    from test_serve import Server
    servers = {"plain": Server(), "ngram": Server("--speculative", "ngram", "--num-draft", "4")}
    try:
        for prompt in SERVE_PROMPTS:
            want, usage = served(servers["plain"], prompt)
            raw = servers["plain"].http.post("/v1/completions", json={"model": "numgpt", "prompt": prompt,
                                                                      "max_tokens": 3}).json()["usage"]
            assert usage.get("speculative") is None and "speculative" not in raw   # not even as null
            text, usage = served(servers["ngram"], prompt)
            assert text == want
            s = usage["speculative"]
            assert s["tokens"] == 40 and 0 <= s["accepted"] <= s["drafted"]
            assert s["tokens_per_forward"] == pytest.approx(40 / s["target_forwards"], abs=1e-4)
        assert s["accepted"] > 0
        chunks = servers["ngram"].client.completions.create(model="numgpt", prompt=SERVE_PROMPTS[0], max_tokens=40,
                                                            temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in chunks) == served(servers["plain"], SERVE_PROMPTS[0])[0]
        kw = dict(model="numgpt", prompt=SERVE_PROMPTS[1], max_tokens=30, temperature=0.9, seed=5)
        first = servers["ngram"].client.completions.create(**kw).choices[0].text
        assert servers["ngram"].client.completions.create(**kw).choices[0].text == first   # seeded: the same
        assert first == numgpt.load().generate(SERVE_PROMPTS[1], max_new_tokens=30, temperature=0.9, seed=5,
                                               speculative="ngram")    # what `numgpt generate --seed` draws
        chat = dict(model="numgpt", messages=[{"role": "user", "content": "Say: to be or not to be"}], max_tokens=30,
                    temperature=0)
        r = servers["ngram"].client.chat.completions.create(**chat)
        assert r.choices[0].message.content == \
            servers["plain"].client.chat.completions.create(**chat).choices[0].message.content
        assert r.model_dump()["usage"]["speculative"]["tokens"] >= r.usage.completion_tokens
    finally:
        for s in servers.values():
            assert s.stop() == 0
            assert not any("Traceback" in line for line in s.log), "".join(s.log)


def test_engine_with_a_draft_model_gives_the_plain_text():
    """The serving engine speculating with a draft model (here the model itself: every draft kept; it drafts
    where it is confident), several sequences at once, each in its own slot: the greedy text of plain
    decoding, and the statistics."""
    import threading
    from numgpt.serve.engine import Engine, Finished, Generated, SequenceRequest
    lm = numgpt.load()
    engine = Engine(lm.params, lm.config, lm.tokenizer, max_batch=4, speculative="draft", num_draft=3,
                    draft=(lm.params, lm.config)).start()
    done, texts, finals = threading.Semaphore(0), {}, {}

    def deliver(i):
        def take(ev):
            if isinstance(ev, Generated):
                texts[i] = texts.get(i, "") + ev.text
            elif isinstance(ev, Finished):
                texts[i] = texts.get(i, "") + ev.text
                finals[i] = ev
                done.release()
        return take
    try:
        engine.submit([SequenceRequest(lm.encode(p), 30, GREEDY) for p in SERVE_PROMPTS],
                      [deliver(i) for i in range(len(SERVE_PROMPTS))])
        for _ in SERVE_PROMPTS:
            assert done.acquire(timeout=120)
    finally:
        engine.stop()
    for i, p in enumerate(SERVE_PROMPTS):
        assert texts[i] == lm.generate(p, max_new_tokens=30, do_sample=False)
        s = finals[i].speculative
        assert s.tokens == 30 and s.drafted > 0 and s.acceptance_rate == 1.0   # the draft stops where it doubts
        assert s.forwards + s.accepted == s.tokens                         # a forward's own token, plus the kept


def test_the_serving_engine_refuses_a_draft_model_with_a_shorter_context():
    """A server takes any request that fits the model's context, so a draft model with less is refused at
    start, in one line: it used to fail such requests with a 500, and with them every request prefilled
    beside them."""
    from dataclasses import replace
    from numgpt.serve.engine import Engine
    lm = numgpt.load()
    short = replace(lm.config, n_positions=48)
    params = {**lm.params, "wpe.weight": lm.params["wpe.weight"][:48]}
    with pytest.raises(numgpt.NumgptError, match=r"draft model's context \(48 positions\) is shorter than the "
                                                 r"model's \(128\)") as e:
        Engine(lm.params, lm.config, lm.tokenizer, speculative="draft", draft=(params, short))
    assert "\n" not in str(e.value)
    Engine(lm.params, lm.config, lm.tokenizer, speculative="draft", draft=(lm.params, lm.config))   # equal: fine


def test_serve_refuses_a_draft_model_with_another_tokenizer():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "numgpt", "serve", "--port", "0", "--speculative", "draft",
                          "--draft-model", "chat"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "has a vocabulary of 2048 tokens, the model 1024" in out.stderr
