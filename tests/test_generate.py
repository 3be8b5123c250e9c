"""Generation against transformers: greedy continuations equal to GPT2LMHeadModel.generate (single and
left-padded batches), sampling equal to a cache-free loop over transformers' forward, the sliding window
equal to a manual re-prefill, stopping, samples per prompt, seeds; and the text layer (stop strings,
streaming) on a scripted decoder."""

import pytest
from references import reference

from numgpt import NumgptError
from numgpt.formats.hf import load_checkpoint
from numgpt.finish import FINISH_REASONS, Finisher, TextStopper
from numgpt.generate import (
    GenerationOptions, decode_steps, generate_ids, sequence_rngs,
)
from numgpt.errors import UnknownOptionError
from numgpt.sampling import GREEDY, SamplingOptions, next_tokens

torch = reference("torch")
pytestmark = pytest.mark.usefixtures("torch_one_thread")  # see conftest: torch threads under load


@pytest.fixture(scope="module")
def tiny(hf_tiny_vocab_ckpt):
    config, params = load_checkpoint(hf_tiny_vocab_ckpt.folder)
    return hf_tiny_vocab_ckpt.model, config, params


def hf_greedy(model, prompts, max_new_tokens):
    """transformers' greedy generate on left-padded prompts; the new ids of each row, cut after eos."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=0)
    rows = []
    for row in out[:, width:].tolist():
        eos = model.config.eos_token_id
        rows.append(row[:row.index(eos) + 1] if eos in row else row)
    return rows


def test_greedy_64_tokens_equal_transformers(tiny):
    model, config, params = tiny
    prompt = [5, 17, 42, 42, 8, 120, 3]
    ours = generate_ids(params, config, [prompt], max_new_tokens=64, sampling=GREEDY, stop_ids=[299])
    ref = hf_greedy(model, [prompt], 64)
    assert len(ref[0]) == 64  # the comparison covers all 64 steps (eos not hit on this prompt)
    assert ours == ref


def test_greedy_left_padded_batch_equals_transformers(tiny):
    model, config, params = tiny
    prompts = [[5, 17, 42, 42, 8], list(range(100, 111)), [7, 9], [250]]
    ours = generate_ids(params, config, prompts, max_new_tokens=64, sampling=GREEDY, stop_ids=[299])
    assert ours == hf_greedy(model, prompts, 64)
    alone = [generate_ids(params, config, [p], max_new_tokens=64, sampling=GREEDY, stop_ids=[299])[0]
             for p in prompts]
    assert ours == alone  # padding does not change a row


def test_greedy_with_repetition_penalty_equals_transformers(tiny):
    model, config, params = tiny
    prompt = [5, 17, 42, 42, 8]
    ours = generate_ids(params, config, [prompt], max_new_tokens=40,
                        sampling=SamplingOptions(do_sample=False, repetition_penalty=1.5))
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                             do_sample=False, repetition_penalty=1.5, max_new_tokens=40, pad_token_id=0,
                             eos_token_id=None)
    assert ours[0] == out[0, 5:].tolist()


def hf_sampling_loop(model, prompt, n_new, options, rng, window=None, n_positions=None):
    """Reference: no KV cache, transformers' forward on the whole (windowed) sequence at every step,
    our sampling rules on its logits. `window`: when the sequence outgrows n_positions, the model sees
    only its last `window` tokens from then on (until it outgrows again)."""
    seq = list(prompt)
    start = 0
    for _ in range(n_new):
        if window is not None and len(seq) - start > n_positions:
            start = len(seq) - window
        with torch.no_grad():
            logits = model(torch.tensor([seq[start:]])).logits[:, -1].numpy()
        seq += next_tokens(logits, options, [rng], previous=[seq]).tolist()
    return seq[len(prompt):]


def test_sampling_through_the_cache_equals_a_cache_free_loop(tiny):
    model, config, params = tiny
    options = SamplingOptions(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.2)
    prompts = [[5, 17, 42], [9, 9, 9, 9, 9, 9, 1]]
    ours = generate_ids(params, config, prompts, max_new_tokens=30, sampling=options, seed=123)
    rngs = sequence_rngs(2, 1, 123)
    assert ours == [hf_sampling_loop(model, p, 30, options, r) for p, r in zip(prompts, rngs)]


def test_sliding_window_equals_manual_reprefill(tiny):
    model, config, params = tiny  # n_positions 128
    prompt = [5, 17, 42, 8, 120, 3] * 15  # 90 tokens
    for stride, options in [(0, GREEDY), (50, SamplingOptions(temperature=1.2, top_k=40))]:
        ours = generate_ids(params, config, [prompt], max_new_tokens=110, sampling=options, seed=7,
                            sliding_window=True, window_stride=stride)  # 200 tokens: the window slides twice
        window = 128 - (stride or 64)
        ref = hf_sampling_loop(model, prompt, 110, options, sequence_rngs(1, 1, 7)[0], window=window,
                               n_positions=128)
        assert ours[0] == ref


def test_sliding_window_cuts_a_prompt_longer_than_the_context(tiny):
    model, config, params = tiny
    prompt = list(range(1, 200))  # 199 > 128 positions
    ours = generate_ids(params, config, [prompt], max_new_tokens=5, sampling=GREEDY, sliding_window=True)
    ref = hf_sampling_loop(model, prompt[-64:], 5, GREEDY, None)
    assert ours[0] == ref


def test_context_overflow_is_a_one_line_error_with_the_numbers(tiny):
    _, config, params = tiny
    with pytest.raises(NumgptError) as e:
        generate_ids(params, config, [[1] * 100], max_new_tokens=40, sampling=GREEDY)
    msg = str(e.value)
    assert "\n" not in msg and "100" in msg and "128" in msg and "lower max_new_tokens to 28" in msg
    assert "pass sliding_window=True" in msg and "--" not in msg     # the library speaks Python (flags: the CLI)
    generate_ids(params, config, [[1] * 100], max_new_tokens=28, sampling=GREEDY)  # exactly fits


def test_samples_per_prompt_prefill_once_and_seeds(tiny):
    _, config, params = tiny
    options = SamplingOptions(temperature=1.0)
    p, q = [5, 17, 42], [1, 2, 3, 4, 5, 6, 7, 8]
    both = generate_ids(params, config, [p, q], max_new_tokens=20, sampling=options, seed=1,
                        num_return_sequences=3)
    assert len(both) == 6
    assert both == generate_ids(params, config, [p, q], max_new_tokens=20, sampling=options, seed=1,
                                num_return_sequences=3)  # same seed, same samples
    assert both[:3] == generate_ids(params, config, [p], max_new_tokens=20, sampling=options, seed=1,
                                    num_return_sequences=3)  # independent of the other prompts
    assert len({tuple(s) for s in both[:3]}) == 3  # the samples of one prompt differ
    other = generate_ids(params, config, [p, q], max_new_tokens=20, sampling=options, seed=2,
                         num_return_sequences=3)
    assert other != both


def test_n_samples_from_repeated_cache_rows_equal_prefilling_each(tiny):
    """Prefill once + cache.select must equal prefilling the repeated prompt batch (greedy: identical)."""
    _, config, params = tiny
    prompts = [[5, 17, 42], [1, 2, 3, 4, 5, 6, 7, 8]]
    once = generate_ids(params, config, prompts, max_new_tokens=20, sampling=GREEDY, num_return_sequences=2)
    each = generate_ids(params, config, [p for p in prompts for _ in range(2)], max_new_tokens=20,
                        sampling=GREEDY)
    assert once == each


def test_a_stopped_row_does_not_change_the_others(tiny):
    _, config, params = tiny
    prompts = [[5, 17, 42], [1, 2, 3, 4, 5, 6, 7, 8], [77]]
    full = generate_ids(params, config, prompts, max_new_tokens=25, sampling=GREEDY)
    stop = full[0][4]
    assert stop not in full[0][:4]
    cut = generate_ids(params, config, prompts, max_new_tokens=25, sampling=GREEDY, stop_ids=[stop])
    assert cut[0] == full[0][:5]
    for got, ref in zip(cut[1:], full[1:]):
        assert got == (ref[:ref.index(stop) + 1] if stop in ref else ref)


def test_decode_steps_protocol_and_progress(tiny):
    _, config, params = tiny
    calls = []
    steps = decode_steps(params, config, [[1, 2], [3]], max_new_tokens=4, sampling=GREEDY, rngs=None,
                         progress=lambda done, total: calls.append((done, total)))
    running, _, logits = next(steps)
    assert running.tolist() == [0, 1] and logits.shape == (2, config.vocab_size)
    running, _, _ = steps.send([0])  # stop sequence 0
    assert running.tolist() == [1]
    assert [step.sequences.tolist() for step in steps] == [[1], [1]]
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert list(decode_steps(params, config, [[1]], max_new_tokens=0, sampling=GREEDY, rngs=None)) == []


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=-1), dict(num_return_sequences=0), dict(stop=("",)),
                                    dict(window_stride=-2), dict(seed=-1)])
def test_invalid_generation_options(kwargs):
    with pytest.raises(NumgptError) as e:
        GenerationOptions(**kwargs)
    assert "\n" not in str(e.value)


class ScriptedDecoder:
    """A stream decoder for given token texts (id -> text), to test the text layer without a tokenizer."""

    def __init__(self, pieces):
        self.pieces = pieces

    def push(self, i):
        return self.pieces[i]

    def flush(self):
        return ""


def run_stopper(pieces, stop):
    stopper = TextStopper(ScriptedDecoder(pieces), stop)
    released = []
    for i in range(len(pieces)):
        stopper.push(i)
        released.append(stopper.release())
        if stopper.finished:
            break
    stopper.flush()
    stopper.finished = True
    released.append(stopper.release())
    return stopper, released


def test_stop_string_spanning_tokens_and_ending_inside_a_token():
    stopper, released = run_stopper(["Hello", " wor", "ld", "!\nBye", " now"], ["world!"])
    assert stopper.text == "Hello " and "".join(released) == "Hello "
    assert released[:2] == ["Hello", " "]  # "wor" is held back: it could start "world!"
    stopper, released = run_stopper(["a", "b", "c\n\nd", "e"], ["\n\n", "zz"])
    assert stopper.text == "abc" and released == ["a", "b", "c", ""]


def test_held_back_text_is_released_when_it_cannot_be_a_stop():
    stopper, released = run_stopper(["x ", "wo", "rk", "s"], ["world"])
    assert released == ["x ", "", "work", "s", ""] and stopper.text == "x works"
    stopper, released = run_stopper(["ab", "ab", "c"], ["abd", "bc"])  # earliest of several stops
    assert stopper.text == "aba"


def run_finisher(pieces, *, max_new_tokens=10, stop=(), eos_id=None):
    """Drive a Finisher as a decode loop does, over scripted token texts; (finisher, kept ids, released)."""
    finisher = Finisher(ScriptedDecoder(pieces), max_new_tokens=max_new_tokens, stop=stop, eos_id=eos_id)
    kept, released = [], []
    for token in range(len(pieces)):
        if finisher.reason:
            break
        if finisher.add(token):
            kept.append(token)
        released.append(finisher.release())
    return finisher, kept, released


def test_finisher_ends_for_each_reason_with_its_text():
    f, kept, released = run_finisher(["a", "b", "c", "d"], eos_id=2)
    assert (f.reason, kept, "".join(released), f.text) == ("eos", [0, 1], "ab", "ab")   # eos is not kept
    f, kept, released = run_finisher(["a", "b", "c", "d"], stop=("bc",))
    assert (f.reason, kept, released) == ("stop", [0, 1, 2], ["a", "", ""])             # the token that completed it is kept
    f, kept, released = run_finisher(["a", "b", "c", "d"], max_new_tokens=3, stop=("cd",))
    assert (f.reason, kept, released) == ("length", [0, 1, 2], ["a", "b", "c"])       # held-back "c" released at the end
    f = Finisher(ScriptedDecoder([]), max_new_tokens=0)
    assert f.reason == "length"                                                       # nothing to generate
    f = Finisher(ScriptedDecoder(["x"]), max_new_tokens=5, stop=("xy",), deadline=10.0)
    f.add(0)
    assert not f.poll(now=9.0) and f.release() == "" and f.poll(now=10.5) and f.reason == "timeout"
    assert f.release() == "x"
    f.end("length")
    assert f.reason == "timeout"                                                      # the first reason stays
    f = Finisher(ScriptedDecoder(["x"]), max_new_tokens=5)
    assert f.poll(cancelled=True) and f.reason == "cancelled"
    assert set(FINISH_REASONS) == {"length", "eos", "stop", "cancelled", "timeout", "error"}


def test_options_from_a_mapping_refuse_unknown_names_and_round_trip():
    opts = GenerationOptions.from_mapping({"max_new_tokens": 5, "temperature": 0.5, "stop": "\n", "min_p": 0.1})
    assert opts.max_new_tokens == 5 and opts.sampling.temperature == 0.5 and opts.stop == ("\n",)
    assert GenerationOptions.from_mapping(opts.as_mapping()) == opts
    assert SamplingOptions.from_mapping(opts.sampling.as_mapping()) == opts.sampling
    for cls, key, what in ((GenerationOptions, "max_tokens", "generation"), (SamplingOptions, "max_new_tokens", "sampling")):
        with pytest.raises(UnknownOptionError, match=f"unknown {what} option '{key}'; the options are ") as e:
            cls.from_mapping({key: 3})
        assert isinstance(e.value, NumgptError) and isinstance(e.value, TypeError)
    with pytest.raises(NumgptError, match="window_stride applies only with sliding_window=True"):
        GenerationOptions.from_mapping({"window_stride": 10})
    with pytest.raises(NumgptError, match="window_stride must be >= 1"):
        GenerationOptions.from_mapping({"window_stride": 0, "sliding_window": True})
