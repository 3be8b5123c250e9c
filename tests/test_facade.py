"""The LanguageModel facade: every bad argument is a one-line NumgptError naming it; token-id prompts,
per-token log-probabilities (of the prompt and of each generated token, with top alternatives) equal
transformers' log_softmax; cancel ends generation between steps."""

import numpy as np
import pytest

import numgpt
from numgpt import NumgptError

ATOL = 2e-5  # float32 logits of two implementations of the same weights (as test_lm.py)


@pytest.fixture(scope="module")
def lm(hf_gpt2_vocab_ckpt):
    return numgpt.load(hf_gpt2_vocab_ckpt.folder)


@pytest.fixture(scope="module")
def builtin():
    return numgpt.load()


@pytest.mark.parametrize("call, names", [
    (lambda lm: lm.generate(None), ["prompt", "NoneType"]),
    (lambda lm: lm.generate(5), ["prompt", "5"]),
    (lambda lm: lm.generate_batch(["a", 5]), ["prompt[1]", "5"]),
    (lambda lm: lm.generate_batch(["a", None]), ["prompt[1]", "None"]),
    (lambda lm: lm.generate(b"ROMEO:"), ["prompt", "bytes"]),
    (lambda lm: lm.generate([]), ["prompt", "empty list"]),
    (lambda lm: lm.generate("a", max_new_tokens="3"), ["max_new_tokens", "'3' (str)"]),
    (lambda lm: lm.generate("a", max_new_tokens=3.0), ["max_new_tokens", "3.0"]),
    (lambda lm: lm.generate("a", temperature="hot"), ["temperature", "'hot' (str)"]),
    (lambda lm: lm.generate("a", seed="x"), ["seed", "'x' (str)"]),
    (lambda lm: lm.generate("a", top_k=True), ["top_k", "True (bool)"]),
    (lambda lm: lm.generate("a", stop=5), ["stop", "5"]),
    (lambda lm: lm.generate_batch([[10, 99999]]), ["prompt[0]", "0..1023"]),
    (lambda lm: lm.generate(["a", "b"]), ["generate()", "generate_batch()"]),
    (lambda lm: lm.generate("a", num_return_sequences=2), ["generate_batch([prompt]"]),
    (lambda lm: lm.generate_batch("a"), ["generate_batch()", "generate()"]),
    (lambda lm: lm.generate_ids([1, 2]), ["prompts", "token-id lists"]),
    (lambda lm: lm.generate_ids([[1, 2]], stop="x"), ["generate_ids()", "completions()"]),
    (lambda lm: lm.next("x", top=None), ["top", "None"]),
    (lambda lm: lm.next("x", top=2.5), ["top", "2.5"]),
    (lambda lm: lm.next(None), ["prompt", "NoneType"]),
    (lambda lm: lm.perplexity(None), ["text", "NoneType"]),
    (lambda lm: lm.encode(None), ["text", "NoneType"]),
    (lambda lm: lm.logits([]), ["empty"]),
    (lambda lm: lm.logits("To be"), ["token ids", "lm.encode"]),
    (lambda lm: lm.tokenizer.encode(None), ["str", "NoneType"]),
    (lambda lm: numgpt.load(5), ["load()", "5"]),
])
def test_bad_arguments_are_numgpt_errors_naming_the_argument(builtin, call, names):
    with pytest.raises(NumgptError) as e:
        call(builtin)
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in names), message
    assert isinstance(e.value, ValueError)   # code written for tiktoken's ValueErrors keeps working


def test_token_id_prompts_equal_text_prompts(builtin):
    ids = builtin.encode("ROMEO:")
    text = builtin.generate("ROMEO:", do_sample=False, max_new_tokens=12)
    assert builtin.generate(ids, do_sample=False, max_new_tokens=12) == text
    assert builtin.generate_batch([ids, "ROMEO:"], do_sample=False, max_new_tokens=12) == [[text], [text]]


def test_prompt_logprobs_equal_transformers_log_softmax(lm, hf_gpt2_vocab_ckpt):
    torch = pytest.importorskip("torch")
    text = "The quick brown fox jumps over the lazy dog."
    ids = lm.encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(hf_gpt2_vocab_ckpt.model(torch.tensor([ids])).logits[0].double(), -1).numpy()
    got = lm.prompt_logprobs(text, top=3)
    assert got[0] is None and [t.id for t in got[1:]] == ids[1:]
    np.testing.assert_allclose([t.logprob for t in got[1:]], logp[np.arange(len(ids) - 1), ids[1:]], atol=ATOL)
    for t, row in zip(got[1:], logp):
        ref = np.argsort(-row, kind="stable")[:3]
        assert [i for i, _ in t.top] == ref.tolist()
        np.testing.assert_allclose([v for _, v in t.top], row[ref], atol=ATOL)


def test_generated_token_logprobs_equal_transformers_log_softmax(lm, hf_gpt2_vocab_ckpt):
    torch = pytest.importorskip("torch")
    prompt = "Once upon a time"
    c = lm.completions(prompt, max_new_tokens=10, seed=3, logprobs=5, stop_at_eos=False)[0]
    ids = lm.encode(prompt) + c.token_ids
    with torch.no_grad():
        logp = torch.log_softmax(hf_gpt2_vocab_ckpt.model(torch.tensor([ids])).logits[0].double(), -1).numpy()
    n = len(lm.encode(prompt))
    rows = logp[n - 1:len(ids) - 1]                                  # the rows that predicted each new token
    assert [t.id for t in c.logprobs] == c.token_ids
    np.testing.assert_allclose([t.logprob for t in c.logprobs], rows[np.arange(10), c.token_ids], atol=ATOL)
    for t, row in zip(c.logprobs, rows):
        assert [i for i, _ in t.top] == np.argsort(-row, kind="stable")[:5].tolist()
    # logprobs ask for nothing else: the same text with and without them
    assert c.text == lm.generate(prompt, max_new_tokens=10, seed=3, stop_at_eos=False)
    pieces = list(lm.stream_pieces(prompt, max_new_tokens=10, seed=3, logprobs=1, stop_at_eos=False))
    assert [p.token.id for p in pieces if p.token] == c.token_ids
    assert "".join(p.text for p in pieces) == c.text


def test_cancel_ends_generation_between_steps(builtin):
    asked = []
    cancel_after = 3

    def cancel() -> bool:                     # asked once before each step
        asked.append(1)
        return len(asked) > cancel_after

    c = builtin.completions("ROMEO:", max_new_tokens=50, seed=1, cancel=cancel)[0]
    assert c.finish_reason == "cancelled" and len(c.token_ids) == cancel_after
    full = builtin.completions("ROMEO:", max_new_tokens=50, seed=1)[0]
    assert full.token_ids[:cancel_after] == c.token_ids


def test_non_finite_weights_are_named_once(tmp_path, builtin):
    params = dict(builtin.params)
    params["h.1.mlp.c_fc.bias"] = np.full_like(params["h.1.mlp.c_fc.bias"], np.nan)
    numgpt.save_checkpoint(tmp_path, builtin.config, params, tokenizer=builtin.tokenizer)
    broken = numgpt.load(tmp_path)
    for call in (lambda: broken.generate("ROMEO:"), lambda: broken.next("ROMEO:"),
                 lambda: broken.perplexity("ROMEO: I am here"), lambda: broken.logits([1, 2])):
        with pytest.raises(NumgptError, match="h.1.mlp.c_fc.bias has 1024 NaN/inf values"):
            call()


def test_stop_strings_are_matched_in_the_completion_only(builtin):
    """'ROMEO' + ':' spells 'O:' across the prompt's end; numgpt (unlike transformers' StopStringCriteria)
    matches stop strings in the new text only, as its docstring and --help say."""
    free = builtin.generate("ROMEO", do_sample=False, max_new_tokens=30)
    assert free.startswith(":")                               # so a match across the boundary was possible
    stopped = builtin.completions("ROMEO", do_sample=False, max_new_tokens=30, stop=["O:"])[0]
    assert "O:" in free[1:] and stopped.text == free[:free.index("O:")]
    assert stopped.finish_reason == "stop"
    import numgpt.generate
    assert "completion only" in numgpt.generate.__doc__ and "completion only" in numgpt.lm.__doc__


def test_load_takes_its_thread_count_from_the_caller(builtin):
    one = numgpt.load(threads=1)
    np.testing.assert_array_equal(one.logits([10, 70, 476]), builtin.logits([10, 70, 476]))
    assert all(np.array_equal(one.params[k], builtin.params[k]) for k in builtin.params)


def test_stream_takes_one_prompt_and_one_sample_and_decode_takes_nothing(builtin):
    for call in (lambda: list(builtin.stream(["ROMEO:", "JULIET:"])),
                 lambda: list(builtin.stream("ROMEO:", num_return_sequences=2))):
        with pytest.raises(NumgptError, match="stream_pieces"):
            call()
    assert builtin.decode([]) == ""
    pieces = list(builtin.stream_pieces(["ROMEO:", "JULIET:"], max_new_tokens=5, seed=2))
    texts = ["".join(p.text for p in pieces if p.sequence == i) for i in range(2)]
    assert [[t] for t in texts] == builtin.generate_batch(["ROMEO:", "JULIET:"], max_new_tokens=5, seed=2)


def test_generate_ids_are_the_completions_token_ids(builtin):
    """The ids-level path (generate.generate_ids, used by the facade and the benchmark) draws what the text
    path draws: the same ids per sample, the end-of-text id included where the text path ended on it."""
    prompts = [builtin.encode("ROMEO:"), builtin.encode("JULIET:")]
    ids = builtin.generate_ids(prompts, max_new_tokens=12, seed=4, num_return_sequences=2)
    done = builtin.completions(prompts, max_new_tokens=12, seed=4, num_return_sequences=2)
    eot = builtin.tokenizer.eot_id
    assert [s for per_prompt in ids for s in per_prompt] == [
        c.token_ids + ([eot] if c.finish_reason == "eos" else []) for c in done]
    assert len(ids) == 2 and all(len(per_prompt) == 2 for per_prompt in ids)
