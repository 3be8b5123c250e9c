"""numgpt.load and LanguageModel against transformers on a GPT-2-vocabulary checkpoint: logits, the
next-token distribution, greedy text equal to GPT2LMHeadModel.generate, stop strings, streaming, samples."""

import json

import numpy as np
import pytest
from references import reference

import numgpt
from numgpt import NumgptError

torch = reference("torch")
pytestmark = pytest.mark.usefixtures("torch_one_thread")  # see conftest: torch threads under load


@pytest.fixture(scope="module")
def lm(hf_gpt2_vocab_ckpt):
    return numgpt.load(hf_gpt2_vocab_ckpt.folder)


@pytest.fixture(scope="module")
def hf(hf_gpt2_vocab_ckpt):
    return hf_gpt2_vocab_ckpt.model


# float32 logits of two implementations of the same weights: a few ulps of values of order 1-10
ATOL = 2e-5


def test_logits_equal_transformers_1d_and_2d(lm, hf):
    ids = [464, 3290, 318, 257, 1332, 13, 632]
    with torch.no_grad():
        ref = hf(torch.tensor([ids, ids[::-1]])).logits.numpy()
    got = lm.logits(ids)
    assert got.dtype == np.float32 and got.shape == (7, 50257)
    np.testing.assert_allclose(got, ref[0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(lm.logits(np.array([ids, ids[::-1]])), ref, rtol=0, atol=ATOL)


def test_load_mmap_keeps_every_weight_memory_mapped_with_the_same_results(lm, hf_gpt2_vocab_ckpt):
    mapped = numgpt.load(hf_gpt2_vocab_ckpt.folder, mmap=True)
    assert all(not a.flags.writeable and a.flags.c_contiguous for a in mapped.params.values())
    assert lm.params["h.0.mlp.c_proj.weight"].T.flags.c_contiguous      # the default: the decode layout,
    assert lm.params["wte.weight"].T.flags.c_contiguous                 # c_proj and wte stored transposed
    prompts = ["Hello there", "The quick brown fox jumps"]                # decode steps of 2 rows
    assert mapped.generate_batch(prompts, do_sample=False, max_new_tokens=12) == \
        lm.generate_batch(prompts, do_sample=False, max_new_tokens=12)
    np.testing.assert_allclose(mapped.logits([464, 3290, 318]), lm.logits([464, 3290, 318]), rtol=0, atol=ATOL)


def test_next_token_distribution_equals_transformers_softmax(lm, hf):
    prompt = "I wish you a happy New"
    ids = lm.tokenizer.encode(prompt)
    with torch.no_grad():
        probs = torch.softmax(hf(torch.tensor([ids])).logits[0, -1].double(), -1).numpy()
    best = lm.next_tokens(prompt, top=20)
    ref_ids = np.argsort(-probs, kind="stable")[:20]
    assert [t.id for t in best] == ref_ids.tolist()
    np.testing.assert_allclose([t.probability for t in best], probs[ref_ids], rtol=1e-4)  # float32 logits
    assert [t.token for t in best] == [lm.tokenizer.decode([i]) for i in ref_ids]
    pairs = lm.next(prompt, top=5)
    assert pairs == [(t.token, t.probability) for t in best[:5]]
    assert all(p >= q for (_, p), (_, q) in zip(pairs, pairs[1:]))


def hf_greedy_text(lm, hf, prompt, n):
    ids = lm.tokenizer.encode(prompt)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=n, pad_token_id=50256)
    new = out[0, len(ids):].tolist()
    return lm.tokenizer.decode(new[:new.index(50256)] if 50256 in new else new)


def test_greedy_text_equals_transformers_generate(lm, hf):
    # (id-level 64-token and padded-batch comparisons are in test_generate.py; this checks the text path)
    assert lm.generate("Once upon a time", max_new_tokens=40, do_sample=False) == hf_greedy_text(
        lm, hf, "Once upon a time", 40)
    assert lm.generate_batch(["The capital of France is", "Hello"], max_new_tokens=20, temperature=0) == [
        [hf_greedy_text(lm, hf, "The capital of France is", 20)], [hf_greedy_text(lm, hf, "Hello", 20)]]


def test_stop_string_cuts_the_text_even_inside_a_token(lm):
    prompt = "Once upon a time"
    full = lm.generate(prompt, max_new_tokens=40, do_sample=False, stop_at_eos=False)
    ids = lm.completions(prompt, max_new_tokens=40, do_sample=False, stop_at_eos=False)[0].token_ids
    # a stop string from the 3rd token's second character into the 4th token: spans a token boundary
    # and ends inside a token
    starts = np.cumsum([0] + [len(lm.tokenizer.decode([i])) for i in ids])
    assert all(len(lm.tokenizer.decode([i])) >= 2 for i in ids[2:4]), "pick tokens of >= 2 characters"
    stop = full[starts[2] + 1:starts[3] + 1]
    expected = full[:full.find(stop)]
    got = lm.completions(prompt, max_new_tokens=40, do_sample=False, stop_at_eos=False, stop=[stop, "zzzz"])[0]
    assert got.text == expected and got.finish_reason == "stop"
    assert got.token_ids == ids[:4]  # the token that completed the stop string is the last one kept
    assert "".join(lm.stream(prompt, max_new_tokens=40, do_sample=False, stop_at_eos=False, stop=stop)) == expected


@pytest.mark.parametrize("options", [
    dict(max_new_tokens=60, temperature=0.9, top_k=100, seed=3),
    dict(max_new_tokens=60, temperature=1.5, top_p=0.9, seed=4, stop=["e", ", "]),
    dict(max_new_tokens=30, do_sample=False, repetition_penalty=1.3, stop=[" the"]),
])
def test_streamed_pieces_concatenate_to_the_generated_text(lm, options):
    pieces = list(lm.stream("It was a dark and", **options))
    assert "".join(pieces) == lm.generate("It was a dark and", **options)
    assert all(pieces)


def test_text_is_the_utf8_decoding_of_the_tokens(lm):
    # a random model over GPT-2's vocabulary emits many byte-fragment tokens: streaming must not split them
    completion = lm.completions("ü", max_new_tokens=80, temperature=2.0, seed=5, stop_at_eos=False)[0]
    assert completion.finish_reason == "length" and len(completion.token_ids) == 80
    pieces = list(lm.stream("ü", max_new_tokens=80, temperature=2.0, seed=5, stop_at_eos=False))
    assert "".join(pieces) == completion.text == lm.tokenizer.decode(completion.token_ids)


def test_samples_seeds_and_shapes(lm):
    [three] = lm.generate_batch(["Hello"], max_new_tokens=10, num_return_sequences=3, seed=1)
    assert isinstance(three, list) and len(three) == 3 and len(set(three)) == 3
    assert [three] == lm.generate_batch(["Hello"], max_new_tokens=10, num_return_sequences=3, seed=1)
    batch = lm.generate_batch(["Hello", "A much longer prompt than the first"], max_new_tokens=10,
                              num_return_sequences=3, seed=1)
    assert batch[0] == three and len(batch[1]) == 3 and lm.generate("Hello", max_new_tokens=10, seed=1) == three[0]
    assert isinstance(lm.generate("Hello", max_new_tokens=3, seed=1), str)
    assert lm.generate("Hello", max_new_tokens=0) == ""


def with_likely_eos(lm, target=0.3):
    """A copy of the model whose <|endoftext|> has probability ~target after "Hello": the final LayerNorm
    gets a bias direction u and eos's embedding (= its output row, tied) k * u, k found by bisection."""
    params = dict(lm.params)
    u = np.zeros(lm.config.n_embd, np.float32)
    u[0] = 1.0
    params["ln_f.bias"] = np.asarray(lm.params["ln_f.bias"]) + u
    wte = np.array(lm.params["wte.weight"])
    params["wte.weight"] = wte
    eos_lm = numgpt.LanguageModel(lm.config, params, lm.tokenizer)
    lo, hi = 0.0, 100.0
    for _ in range(20):
        k = (lo + hi) / 2
        wte[50256] = k * u
        logits = eos_lm.logits(lm.tokenizer.encode("Hello"))[-1].astype(np.float64)
        p = np.exp(logits[50256] - logits.max()) / np.exp(logits - logits.max()).sum()
        lo, hi = (k, hi) if p < target else (lo, k)
    return eos_lm


def test_eos_ends_a_completion_and_is_not_in_its_text(lm):
    eos_lm = with_likely_eos(lm)
    for seed in range(2):
        completion = eos_lm.completions("Hello", max_new_tokens=100, seed=seed)[0]
        assert completion.finish_reason == "eos" and len(completion.token_ids) < 100
        assert 50256 not in completion.token_ids
        assert completion.text == lm.tokenizer.decode(completion.token_ids)
        assert "".join(eos_lm.stream("Hello", max_new_tokens=100, seed=seed)) == completion.text
        no_stop = eos_lm.completions("Hello", max_new_tokens=100, seed=seed, stop_at_eos=False)[0]
        assert no_stop.finish_reason == "length" and 50256 in no_stop.token_ids


def test_perplexity_and_logprobs_are_consistent(lm, hf):
    text = "The quick brown fox jumps over the lazy dog."
    pairs = lm.logprobs(text)
    ids = [50256] + lm.tokenizer.encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1).numpy()
    np.testing.assert_allclose([p for _, p in pairs], logp[np.arange(len(ids) - 1), ids[1:]], atol=ATOL)
    assert "".join(t for t, _ in pairs) == text
    assert lm.perplexity(text) == pytest.approx(np.exp(-np.mean([p for _, p in pairs])), rel=1e-12)
    score = lm.score(text)
    assert score.n_bytes == len(text.encode()) and score.n_tokens == len(pairs)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(NumgptError) as e:
        numgpt.load(tmp_path / "missing")
    assert "config.json" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(NumgptError):
        numgpt.load(tmp_path)  # a folder without config.json


def test_a_missing_builtin_model_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(numgpt.formats.hub.BUILTIN_MODELS, "builtin", tmp_path / "model")  # a broken installation
    for name in (None, "builtin"):
        with pytest.raises(NumgptError, match="built-in model is missing") as e:
            numgpt.load(name)
        assert "\n" not in str(e.value) and "--model" not in str(e.value)    # the Python API speaks Python


def test_builtin_is_the_name_of_the_builtin_model(tmp_path, monkeypatch, capsys):
    from numgpt.cli import main
    assert numgpt.load("builtin").folder == numgpt.load().folder == numgpt.lm.BUILTIN_MODEL
    assert main(["next", "--model", "builtin", "--json", "ROMEO:"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert main(["next", "--json", "ROMEO:"]) == 0
    assert json.loads(capsys.readouterr().out) == by_name
    monkeypatch.chdir(tmp_path)                      # a local folder of that name wins, as over hub names
    (tmp_path / "builtin").mkdir()
    with pytest.raises(NumgptError, match="config.json"):
        numgpt.load("builtin")


def test_info_without_model_describes_the_builtin_model(capsys, monkeypatch, tmp_path):
    from numgpt.cli import main
    from numgpt.params import count_params
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    lm = numgpt.load()
    assert info["folder"] == str(lm.folder)
    assert info["n_params"] == count_params(lm.config) == sum(a.size for a in lm.params.values())
    monkeypatch.setitem(numgpt.formats.hub.BUILTIN_MODELS, "builtin", tmp_path / "model")  # a broken installation
    assert main(["info"]) != 0
    assert "built-in model is missing" in capsys.readouterr().err


def test_bad_options_raise_numgpt_errors(lm):
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-3), dict(max_new_tokens=-1)):
        with pytest.raises(NumgptError):
            lm.generate("Hi", **bad)
    with pytest.raises(TypeError, match="unknown generation option 'max_tokens'") as e:
        lm.generate("Hi", max_tokens=3)  # a misspelt option is not silently ignored
    assert isinstance(e.value, NumgptError)
    with pytest.raises(NumgptError, match="context overflow"):
        lm.generate("Hi", max_new_tokens=300)  # 256 positions
