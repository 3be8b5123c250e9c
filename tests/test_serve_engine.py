"""The continuous-batching engine (numgpt/serve/engine.py) without HTTP: sequences join and leave at any
step, a seeded sequence's tokens do not depend on what runs beside it, cancel and a full queue."""

import threading
import time

import numpy as np
import pytest

import numgpt
from numgpt.sampling import GREEDY, SamplingOptions

engine_mod = pytest.importorskip("numgpt.serve.engine", reason="the serve extra is not installed")
Engine, SequenceRequest, Finished, Generated, Prefilled, QueueFull = (
    engine_mod.Engine, engine_mod.SequenceRequest, engine_mod.Finished, engine_mod.Generated,
    engine_mod.Prefilled, engine_mod.QueueFull)


@pytest.fixture(scope="module")
def lm():
    return numgpt.load()


class Collector:
    """Events of one sequence, and a way to wait for its end."""

    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, ev):
        self.events.append(ev)
        if isinstance(ev, Finished):
            self.done.set()

    @property
    def tokens(self):
        return [e.token for e in self.events if isinstance(e, Generated)]

    @property
    def text(self):
        return "".join(e.text for e in self.events if isinstance(e, (Generated, Finished)))

    @property
    def reason(self):
        return self.events[-1].reason


def seeded(lm, prompt, seed, n=40, **kw):
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    return SequenceRequest(lm.encode(prompt), n, SamplingOptions(temperature=1.0, **kw), rng=rng, seeded=True)


def run_all(engine, requests, *, stagger=0.0):
    out = [Collector() for _ in requests]
    for r, c in zip(requests, out):
        engine.submit([r], [c])
        time.sleep(stagger)
    for c in out:
        assert c.done.wait(60)
    return out


def test_seeded_tokens_do_not_depend_on_company(lm):
    prompts = ["ROMEO:", "JULIET:", "KING HENRY:", "Nurse:", "First Citizen:", "MENENIUS:"]
    engine = Engine(lm.params, lm.config, lm.tokenizer, max_batch=4).start()
    try:
        alone = [run_all(engine, [seeded(lm, p, i)])[0].tokens for i, p in enumerate(prompts)]
        together = run_all(engine, [seeded(lm, p, i) for i, p in enumerate(prompts)], stagger=0.01)
        assert [c.tokens for c in together] == alone          # 6 sequences through 4 slots, joining late
        assert engine.stats.steps > 0 and engine.running == 0
    finally:
        engine.stop()


def test_seeded_sequence_equals_numgpt_generate(lm):
    engine = Engine(lm.params, lm.config, lm.tokenizer, max_batch=2).start()
    try:
        got = run_all(engine, [seeded(lm, "ROMEO:", 9, n=30, top_k=40)])[0]
        want = lm.generate("ROMEO:", max_new_tokens=30, temperature=1.0, top_k=40, seed=9)
        assert got.text == want and got.reason == "length"
    finally:
        engine.stop()


def test_greedy_alone_equals_generate_and_eos_and_stop_strings(lm):
    engine = Engine(lm.params, lm.config, lm.tokenizer, max_batch=3).start()
    try:
        r = SequenceRequest(lm.encode("JULIET:"), 50, GREEDY)
        s = SequenceRequest(lm.encode("JULIET:"), 50, GREEDY, stop=(" the",))
        a, b = run_all(engine, [r, s])
        assert a.text == lm.generate("JULIET:", max_new_tokens=50, do_sample=False)
        assert b.text == lm.generate("JULIET:", max_new_tokens=50, do_sample=False, stop=[" the"])
        assert b.reason == ("stop" if " the" in a.text else "length")
    finally:
        engine.stop()


def test_prompt_logprobs_and_scoring_only(lm):
    engine = Engine(lm.params, lm.config, lm.tokenizer).start()
    try:
        ids = lm.encode("ROMEO: what light")
        c = run_all(engine, [SequenceRequest(ids, 0, GREEDY, prompt_logprobs=2)])[0]
        pre = c.events[0]
        assert isinstance(pre, Prefilled) and c.reason == "length" and c.tokens == []
        want = lm.prompt_logprobs(ids, top=2)
        assert pre.prompt_logprobs[0] is None
        np.testing.assert_allclose([p.logprob for p in pre.prompt_logprobs[1:]], [w.logprob for w in want[1:]],
                                   atol=1e-5, rtol=0)
    finally:
        engine.stop()


def test_cancel_frees_the_slot_and_a_full_queue_refuses(lm):
    engine = Engine(lm.params, lm.config, lm.tokenizer, max_batch=1, max_queue=1).start()
    try:
        long = Collector()
        (ticket,) = engine.submit([SequenceRequest(lm.encode("ROMEO:"), 120, GREEDY)], [long])
        waiting = Collector()
        engine.submit([SequenceRequest(lm.encode("KING:"), 3, GREEDY)], [waiting])
        with pytest.raises(QueueFull):
            engine.submit([SequenceRequest(lm.encode("x"), 3, GREEDY)], [Collector()])
        ticket.cancel()
        assert long.done.wait(10) and long.reason == "cancelled"
        assert waiting.done.wait(10) and waiting.reason == "length" and len(waiting.tokens) == 3
    finally:
        engine.stop()


def test_too_long_and_deadline(lm):
    engine = Engine(lm.params, lm.config, lm.tokenizer).start()
    try:
        with pytest.raises(numgpt.NumgptError, match="context of 128"):
            engine.submit([SequenceRequest(list(range(100)), 29, GREEDY)], [Collector()])
        c = Collector()
        engine.submit([SequenceRequest(lm.encode("ROMEO:"), 120, GREEDY, deadline=time.monotonic() + 0.02)], [c])
        assert c.done.wait(10) and c.reason == "timeout" and len(c.tokens) < 120
    finally:
        engine.stop()


def test_a_submit_that_can_never_fit_is_not_busy_and_busy_counts_are_real(lm):
    """More sequences than slots + queue is NeverFits (the server's 400) even when idle, not QueueFull
    (429, "retry"); QueueFull's message counts the sequences really running (round 2 printed --max-batch)."""
    engine = Engine(lm.params, lm.config, lm.tokenizer, max_batch=2, max_queue=0).start()
    try:
        with pytest.raises(engine_mod.NeverFits, match="2 slots \\+ 0 waiting = 2") as e:
            engine.submit([SequenceRequest(lm.encode("x"), 3, GREEDY)] * 3, [Collector() for _ in range(3)])
        assert not isinstance(e.value, QueueFull)
        hold, first = threading.Event(), threading.Event()

        seen = []

        def held(ev):           # the model thread waits at the second token (a decode step): the slot stays taken
            seen.append(ev)
            if sum(isinstance(e, Generated) for e in seen) == 2:
                first.set()
                hold.wait(30)
        (ticket,) = engine.submit([SequenceRequest(lm.encode("ROMEO:"), 50, GREEDY)], [held])
        assert first.wait(30) and engine.running == 1
        with pytest.raises(QueueFull, match="busy \\(1 running, 0 waiting\\)"):
            engine.submit([SequenceRequest(lm.encode("x"), 3, GREEDY)] * 2, [Collector(), Collector()])
        ticket.cancel()
        hold.set()
    finally:
        hold.set()
        engine.stop()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_an_overflow_after_the_first_tokens_ends_that_sequence_and_the_engine_goes_on(lm):
    """Logits that turn non-finite mid-reply (finite weights, an overflow at one position) end that
    sequence with an error; the model thread keeps serving (it used to die, leaving every request waiting)."""
    prompt = lm.encode("ROMEO:")
    params = dict(lm.params)
    wpe = np.array(params["wpe.weight"])
    wpe[len(prompt) + 2] = 3e38                   # finite, but LayerNorm's variance overflows at this position
    params["wpe.weight"] = wpe
    engine = Engine(params, lm.config, lm.tokenizer, max_batch=2).start()
    try:
        bad, = run_all(engine, [SequenceRequest(prompt, 10, GREEDY)])
        assert bad.reason == "error" and "non-finite" in bad.events[-1].error and len(bad.tokens) == 3
        good, = run_all(engine, [SequenceRequest(prompt, 3, GREEDY)])   # never reaches that position
        assert good.reason == "length" and good.text == lm.generate("ROMEO:", max_new_tokens=3, do_sample=False)
    finally:
        engine.stop()


def test_one_sequence_failing_as_it_enters_its_slot_fails_alone(lm, monkeypatch):
    """Newcomers are prefilled together, then each enters its slot: one that fails there (here its finisher,
    made to fail for one stop string) ends with its own error, and the others of its group decode on (a
    draft model too short for one request once failed the whole group with that request's error)."""
    real = engine_mod.Finisher

    def finisher(*args, stop=None, **kw):
        if stop and "BOOM" in stop:
            raise numgpt.NumgptError("this one cannot start")
        return real(*args, stop=stop, **kw)
    monkeypatch.setattr(engine_mod, "Finisher", finisher)
    engine = Engine(lm.params, lm.config, lm.tokenizer, max_batch=4).start()
    try:
        prompts = ["ROMEO:", "JULIET:", "KING:"]
        requests = [SequenceRequest(lm.encode(p), 5, GREEDY, stop=("BOOM",) if i == 1 else ())
                    for i, p in enumerate(prompts)]
        out = [Collector() for _ in requests]
        engine.submit(requests, out)                      # one submit: one group, one prefill
        for c in out:
            assert c.done.wait(30)
        assert out[1].reason == "error" and out[1].events[-1].error == "this one cannot start"
        for i in (0, 2):
            assert out[i].reason == "length" and out[i].text == lm.generate(prompts[i], max_new_tokens=5, do_sample=False)
        assert engine.running == 0 and engine.waiting == 0
    finally:
        engine.stop()


def test_stop_without_waiting_cancels_what_runs_and_waits_and_refuses_what_comes(lm):
    """What a server told to quit does first (`numgpt serve`'s Ctrl-C): stop(wait=False) ends the running and
    the waiting sequences as "cancelled" at once, so their responses go out before the server closes, and
    anything submitted or called after it is ShuttingDown (the server's 503)."""
    engine = Engine(lm.params, lm.config, lm.tokenizer, max_batch=1, max_queue=2).start()
    hold, first, seen = threading.Event(), threading.Event(), []

    def held(ev):               # the model thread waits at the second token: the sequence is running
        seen.append(ev)
        if sum(isinstance(e, Generated) for e in seen) == 2:
            first.set()
            hold.wait(30)
    try:
        engine.submit([SequenceRequest(lm.encode("ROMEO:"), 100, GREEDY)], [held])
        assert first.wait(30)
        waiting = Collector()
        engine.submit([SequenceRequest(lm.encode("KING:"), 5, GREEDY)], [waiting])
        engine.stop(wait=False)
        hold.set()
        assert waiting.done.wait(30) and waiting.reason == "cancelled" and waiting.tokens == []
        engine._thread.join(30)
        assert isinstance(seen[-1], Finished) and seen[-1].reason == "cancelled"
        assert sum(isinstance(e, Generated) for e in seen) < 100
        with pytest.raises(engine_mod.ShuttingDown, match="shutting down"):
            engine.submit([SequenceRequest(lm.encode("x"), 3, GREEDY)], [Collector()])
        with pytest.raises(engine_mod.ShuttingDown):
            engine.call(lambda: 1)
    finally:
        hold.set()
        engine.stop()
