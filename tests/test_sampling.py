"""Sampling rules against transformers' logits processors, and sampled frequencies against the distribution.

References no one here wrote: transformers' RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
TopKLogitsWarper, TopPLogitsWarper (one by one, on random logits), and the processed scores that
transformers' own `generate(do_sample=True, output_scores=True)` reports for a real (random-weight) GPT-2,
which pins down the order in which generate applies them.
"""

import math

import numpy as np
import pytest
from references import reference

from numgpt import NumgptError
from numgpt.sampling import (
    SamplingOptions, apply_logit_bias, apply_min_p, apply_presence_frequency_penalty,
    apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p, greedy,
    next_tokens, process_logits, sample, softmax, stable_argsort,
)

torch = reference("torch")
pytestmark = pytest.mark.usefixtures("torch_one_thread")  # see conftest: torch threads under load
lp = reference("transformers.generation.logits_process")


def hf(processor, logits, input_ids=None):
    """Run a transformers logits processor on numpy logits [B, V]."""
    if input_ids is None:
        input_ids = np.zeros((logits.shape[0], 1), dtype=np.int64)
    out = processor(torch.from_numpy(np.asarray(input_ids, dtype=np.int64)), torch.from_numpy(logits.copy()))
    return out.numpy()


def random_logits(rng, b, v, scale=3.0):
    return (rng.standard_normal((b, v)) * scale).astype(np.float32)


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.0, 1.9])
def test_temperature_equals_transformers(temperature):
    logits = random_logits(np.random.default_rng(1), 3, 1000)
    ours = apply_temperature(logits, temperature)
    ref = hf(lp.TemperatureLogitsWarper(temperature), logits)
    np.testing.assert_array_equal(ours, ref)  # one float32 division on both sides: bit-identical


@pytest.mark.parametrize("k", [1, 5, 40, 999, 1000, 5000])
def test_top_k_equals_transformers(k):
    logits = random_logits(np.random.default_rng(2), 4, 1000)
    np.testing.assert_array_equal(apply_top_k(logits, k), hf(lp.TopKLogitsWarper(k), logits))


def test_top_k_keeps_ties_like_transformers():
    logits = np.array([[1, 3, 3, 3, 0, 2], [5, 5, 5, 5, 5, 5]], dtype=np.float32)
    ours = apply_top_k(logits, 2)
    np.testing.assert_array_equal(ours, hf(lp.TopKLogitsWarper(2), logits))
    assert np.isfinite(ours).sum(axis=1).tolist() == [3, 6]  # all tokens tied with the 2nd are kept


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.95, 0.999, 1.0])
@pytest.mark.parametrize("v", [50, 50257])
def test_top_p_equals_transformers(p, v):
    logits = random_logits(np.random.default_rng(3), 4, v)
    np.testing.assert_array_equal(apply_top_p(logits, p), hf(lp.TopPLogitsWarper(p), logits))


def test_top_p_ties_and_filtered_inputs_like_transformers():
    uniform = np.zeros((1, 10), dtype=np.float32)
    for p in (0.25, 0.5, 0.55, 0.9):
        np.testing.assert_array_equal(apply_top_p(uniform, p), hf(lp.TopPLogitsWarper(p), uniform))
    # already-filtered (-inf) tokens, as after top-k, stay filtered and never turn into NaN
    logits = apply_top_k(random_logits(np.random.default_rng(4), 3, 100), 10)
    ours = apply_top_p(logits, 0.8)
    np.testing.assert_array_equal(ours, hf(lp.TopPLogitsWarper(0.8), logits))
    assert not np.isnan(ours).any()


def test_stable_argsort_equals_numpy_stable_argsort():
    rng = np.random.default_rng(10)
    for shape in [(3, 50257), (2, 10), (4, 7)]:
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        x[..., ::3] = np.round(x[..., ::3])  # many ties
        x[0, 1], x[0, 2], x[-1, 0], x[-1, -1] = -np.inf, -0.0, 0.0, np.inf
        np.testing.assert_array_equal(stable_argsort(x), np.argsort(x, axis=-1, kind="stable"))


def test_top_p_always_keeps_the_most_likely_token():
    logits = np.array([[10.0, 0.0, 0.0, 0.0]], dtype=np.float32)  # top token has p ~ 0.9999
    assert np.isfinite(apply_top_p(logits, 0.01)).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(penalty):
    rng = np.random.default_rng(5)
    logits = random_logits(rng, 3, 200)
    previous = rng.integers(0, 200, size=(3, 30))  # with repeats: the penalty applies once per token
    ours = apply_repetition_penalty(logits, previous, penalty)
    ref = hf(lp.RepetitionPenaltyLogitsProcessor(penalty), logits, previous)
    np.testing.assert_array_equal(ours, ref)
    assert not np.shares_memory(ours, logits)  # the caller's logits are not modified


def test_repetition_penalty_rows_of_different_lengths():
    logits = np.array([[2.0, -2.0, 1.0], [2.0, -2.0, 1.0]], dtype=np.float32)
    out = apply_repetition_penalty(logits, [[0, 1], [2]], 2.0)
    np.testing.assert_array_equal(out, [[1.0, -4.0, 1.0], [2.0, -2.0, 0.5]])  # x/2 if x >= 0 else x*2


def processors_in_generate_order(o: SamplingOptions):
    """What transformers' generate builds for these options (greedy: only the penalty)."""
    procs = []
    if o.repetition_penalty != 1.0:
        procs.append(lp.RepetitionPenaltyLogitsProcessor(o.repetition_penalty))
    if not o.greedy:
        if o.temperature != 1.0:
            procs.append(lp.TemperatureLogitsWarper(o.temperature))
        if o.top_k:
            procs.append(lp.TopKLogitsWarper(o.top_k))
        if o.top_p < 1.0:
            procs.append(lp.TopPLogitsWarper(o.top_p))
        if o.min_p > 0:
            procs.append(lp.MinPLogitsWarper(o.min_p))
    return lp.LogitsProcessorList(procs)


@pytest.mark.parametrize("options", [
    SamplingOptions(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.3),
    SamplingOptions(temperature=1.5, top_p=0.5),
    SamplingOptions(top_k=3, repetition_penalty=0.8),
    SamplingOptions(do_sample=False, repetition_penalty=1.2),
    SamplingOptions(temperature=0.8, top_k=200, min_p=0.05),
])
def test_process_logits_equals_transformers_chain(options):
    rng = np.random.default_rng(6)
    logits = random_logits(rng, 5, 3000)
    previous = rng.integers(0, 3000, size=(5, 40))
    ours = process_logits(logits, options, previous=previous)
    ref = processors_in_generate_order(options)(torch.from_numpy(previous), torch.from_numpy(logits.copy()))
    np.testing.assert_array_equal(ours, ref.numpy())
    np.testing.assert_allclose(softmax(ours), torch.softmax(ref, -1).numpy(), rtol=0, atol=1e-7)  # float32 ulps


@pytest.fixture(scope="module")
def hf_tiny_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     initializer_range=0.3)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.4),
    dict(temperature=1.3, top_k=0, top_p=0.7, repetition_penalty=1.0),
    dict(temperature=0.6, top_k=7, top_p=1.0, repetition_penalty=0.7),
])
def test_process_logits_equals_scores_of_transformers_generate(hf_tiny_model, kwargs):
    """generate(output_scores, output_logits) gives the raw and the processed logits of every step:
    our pipeline on the raw ones must give the processed ones, which also checks the order of the rules."""
    torch.manual_seed(1)
    prompt = torch.tensor([[5, 17, 17, 200, 3, 5], [9, 9, 9, 1, 2, 250]])
    with torch.no_grad():
        out = hf_tiny_model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=12,
            output_scores=True, output_logits=True, return_dict_in_generate=True, pad_token_id=0, **kwargs)
    options = SamplingOptions(**kwargs)
    for step, (raw, processed) in enumerate(zip(out.logits, out.scores)):
        previous = out.sequences[:, :prompt.shape[1] + step].numpy()
        ours = process_logits(raw.numpy(), options, previous=previous)
        np.testing.assert_array_equal(ours, processed.numpy())
        assert np.isfinite(ours[np.arange(2), out.sequences[:, prompt.shape[1] + step].numpy()]).all()


def wilson_hilferty_chi2_quantile(df: int, z: float) -> float:
    """Upper quantile of chi-square(df) for a standard-normal quantile z (Wilson-Hilferty, relative error
    < 1% for df >= 3), so the test needs no scipy."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


Z_1E4 = 3.719  # standard normal upper quantile for p = 1e-4


@pytest.mark.parametrize("options", [
    SamplingOptions(),
    SamplingOptions(temperature=0.7, top_k=12),
    SamplingOptions(temperature=1.3, top_p=0.8),
])
def test_sampled_frequencies_fit_the_processed_distribution(options):
    rng = np.random.default_rng(7)
    logits = random_logits(rng, 1, 30, scale=1.5)
    probs = softmax(process_logits(logits, options).astype(np.float64))[0]
    n = 40_000
    draws = next_tokens(np.repeat(logits, n, axis=0), options, [rng] * n)
    counts = np.bincount(draws, minlength=30)
    assert counts[probs == 0].sum() == 0  # filtered tokens are never drawn
    kept = probs > 0
    expected = n * probs[kept]
    assert expected.min() > 5  # the chi-square approximation needs >= 5 expected per cell
    chi2 = float(np.sum((counts[kept] - expected) ** 2 / expected))
    df = int(kept.sum()) - 1
    assert chi2 < wilson_hilferty_chi2_quantile(df, Z_1E4), (chi2, df)


def test_chi_square_test_detects_a_wrong_distribution():
    """The goodness-of-fit check above can fail: draws from a temperature-1 distribution do not fit
    the temperature-0.7 one."""
    rng = np.random.default_rng(8)
    logits = random_logits(rng, 1, 30, scale=1.5)
    n = 40_000
    draws = sample(np.repeat(logits, n, axis=0), [rng] * n)
    probs = softmax(apply_temperature(logits, 0.7).astype(np.float64))[0]
    counts = np.bincount(draws, minlength=30)
    chi2 = float(np.sum((counts - n * probs) ** 2 / (n * probs)))
    assert chi2 > wilson_hilferty_chi2_quantile(29, Z_1E4)


def test_each_row_draws_from_its_own_generator():
    logits = random_logits(np.random.default_rng(9), 3, 500)
    seeds = [11, 12, 13]
    together = sample(logits, [np.random.default_rng(s) for s in seeds])
    alone = [sample(logits[i:i + 1], [np.random.default_rng(s)])[0] for i, s in enumerate(seeds)]
    assert together.tolist() == alone
    with pytest.raises(ValueError):
        sample(logits, [np.random.default_rng(0)])


def test_greedy_rule_and_argmax():
    logits = np.array([[0.0, 2.0, 2.0, -1.0]], dtype=np.float32)
    assert greedy(logits).tolist() == [1]  # lowest id wins a tie, as torch.argmax
    assert SamplingOptions(temperature=0).greedy and SamplingOptions(do_sample=False).greedy
    assert not SamplingOptions().greedy
    # greedy ignores temperature/top-k/top-p but not the repetition penalty (as transformers' generate)
    o = SamplingOptions(do_sample=False, repetition_penalty=10.0, top_k=1, temperature=0.1)
    assert next_tokens(logits, o, None, previous=[[1]]).tolist() == [2]


@pytest.mark.parametrize("temperature", [1e-6, 1e-39, 1e-45, 5e-324])
def test_a_temperature_too_small_to_divide_by_is_greedy(temperature):
    # logits / 1e-39 overflowed float32 into noise, and / 1e-45 (0 in float32) into NaN and an IndexError
    logits = random_logits(np.random.default_rng(5), 3, 500)
    o = SamplingOptions(temperature=temperature, top_k=40)
    assert o.greedy and not SamplingOptions(temperature=1e-4).greedy
    rngs = [np.random.default_rng(i) for i in range(3)]
    assert next_tokens(logits, o, rngs).tolist() == np.argmax(logits, axis=-1).tolist()


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5, 1.0])
def test_min_p_equals_transformers(min_p):
    logits = random_logits(np.random.default_rng(11), 4, 5000)
    np.testing.assert_array_equal(apply_min_p(logits, min_p), hf(lp.MinPLogitsWarper(min_p), logits))


def test_logit_bias_and_openai_penalties_by_their_documented_formula():
    """OpenAI's formula (API reference, "Parameter details"): mu[j] - c[j] * frequency - (c[j] > 0) * presence,
    counted over the generated tokens only; logit_bias adds to the raw logit."""
    logits = random_logits(np.random.default_rng(12), 2, 50)
    generated = [[3, 3, 7], []]
    out = apply_presence_frequency_penalty(logits, generated, presence=0.5, frequency=0.25)
    want = logits.copy()
    want[0, 3] -= 2 * 0.25 + 0.5
    want[0, 7] -= 0.25 + 0.5
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)
    biased = apply_logit_bias(logits, [(5, -100.0), (9, 2.5)])
    assert biased[:, 5].tolist() == (logits[:, 5] - 100).tolist() and np.allclose(biased[:, 9], logits[:, 9] + 2.5)
    o = SamplingOptions(do_sample=False, logit_bias={9: 100})
    assert next_tokens(logits, o, None).tolist() == [9, 9]      # applies to greedy decoding too
    with pytest.raises(NumgptError, match="generated tokens"):
        process_logits(logits, SamplingOptions(presence_penalty=1.0))
    with pytest.raises(NumgptError, match="vocabulary has 50"):
        apply_logit_bias(logits, [(50, 1.0)])


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-3), dict(top_k=2.5),
    dict(repetition_penalty=0), dict(repetition_penalty=-1.0), dict(temperature=float("nan")),
    dict(min_p=-0.1), dict(min_p=2), dict(presence_penalty=3), dict(frequency_penalty=-2.5),
    dict(logit_bias={1: 101}), dict(logit_bias={-1: 1}), dict(logit_bias=((1, 2, 3),)),
])
def test_invalid_options_raise_one_line_errors(kwargs):
    with pytest.raises(NumgptError) as e:
        SamplingOptions(**kwargs)
    assert "\n" not in str(e.value) and next(iter(kwargs)) in str(e.value)


def test_process_logits_runs_the_rules_in_their_documented_order():
    """RULES is the one ordered list: process_logits equals the rules written out by hand in the order
    the module docstring gives (bias, presence/frequency, repetition; temperature, top-k, top-p, min-p
    only when sampling), and the sampling-only rules are the options --greedy refuses."""
    from numgpt.sampling import (RULES, SAMPLING_ONLY_OPTIONS, apply_logit_bias, apply_min_p,
                                 apply_presence_frequency_penalty, apply_repetition_penalty, apply_temperature,
                                 apply_top_k, apply_top_p, process_logits)
    assert [r.name for r in RULES] == ["constraint", "logit_bias", "presence_frequency_penalty", "repetition_penalty",
                                       "temperature", "top_k", "top_p", "min_p"]
    assert SAMPLING_ONLY_OPTIONS == ("temperature", "top_k", "top_p", "min_p")
    logits = np.random.default_rng(0).normal(size=(2, 50)).astype(np.float32)
    previous, generated = [[1, 2, 3], [4, 4]], [[3], [4]]
    o = SamplingOptions(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3,
                        presence_penalty=0.5, frequency_penalty=0.25, logit_bias={7: 3.0})
    by_hand = apply_repetition_penalty(apply_presence_frequency_penalty(apply_logit_bias(logits, ((7, 3.0),)),
                                                                        generated, 0.5, 0.25), previous, 1.3)
    greedy_options = SamplingOptions(**{**o.as_mapping(), "do_sample": False})
    np.testing.assert_array_equal(process_logits(logits, greedy_options, previous=previous, generated=generated),
                                  by_hand)
    by_hand = apply_min_p(apply_top_p(apply_top_k(apply_temperature(by_hand, 0.7), 20), 0.9), 0.05)
    np.testing.assert_array_equal(process_logits(logits, o, previous=previous, generated=generated), by_hand)
