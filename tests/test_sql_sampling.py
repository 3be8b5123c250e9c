"""Sampling in SQL (issue 12) against numgpt.sampling on the same logits, on DuckDB and PostgreSQL:
top-k and top-p keep the same sets, the repetition penalty moves the same argmax, the seeded draw
follows numgpt's distribution (a chi-square test over many seeds), the same seed gives the same text on
both engines, and <|endoftext|> ends generation with the text so far."""

import numpy as np
import pytest

from test_sql_support import ENGINES, exported


def _builtin():
    import numgpt
    return numgpt.load()


@pytest.fixture(scope="module", params=ENGINES)
def sql_builtin(request, tmp_path_factory):
    import numgpt.sql
    db = exported(request, tmp_path_factory, request.param, "builtin", _builtin)
    with numgpt.sql.connect(db) as m:
        yield m


@pytest.mark.parametrize("options", [dict(top_k=1), dict(top_k=40), dict(top_k=40, temperature=0.7),
                                     dict(top_p=0.9), dict(top_p=0.5, temperature=1.3),
                                     dict(top_k=50, top_p=0.8), dict(repetition_penalty=1.3, top_p=0.9)])
def test_kept_sets_equal_numgpts(sql_builtin, options):
    from numgpt.sampling import SamplingOptions, process_logits
    prompt = "ROMEO: I will not"
    sql_builtin.start(prompt)
    logits = sql_builtin.logits().astype(np.float32)
    ids = sql_builtin.tokenize(prompt)
    processed = process_logits(logits[None], SamplingOptions(**options), previous=[ids])[0]
    assert sql_builtin.kept(**options) == np.flatnonzero(np.isfinite(processed)).tolist()


def test_repetition_penalty_in_greedy_matches_numgpt(sql_builtin):
    import numgpt
    lm = _builtin()
    want = lm.generate("ROMEO:", max_new_tokens=24, do_sample=False, repetition_penalty=1.5)
    assert sql_builtin.generate("ROMEO:", max_new_tokens=24, do_sample=False, repetition_penalty=1.5) == want
    assert want != lm.generate("ROMEO:", max_new_tokens=24, do_sample=False)   # the penalty mattered
    del numgpt


def chi2_sf(x: float, k: int) -> float:
    """P(chi-square with k degrees of freedom > x), by the Wilson-Hilferty cube-root normal
    approximation (no scipy here); within a few percent of the exact tail at these k, ample for a
    1e-3 bar."""
    import math
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_seeded_draw_follows_numgpts_distribution(sql_builtin):
    """Chi-square of the first token over 600 seeds against numgpt's probabilities after top-k 8
    (temperature 1.2 spreads them), pooling expected counts < 5; p > 1e-3."""
    from numgpt.ops import softmax
    from numgpt.sampling import SamplingOptions, process_logits
    sql_builtin.start("JULIET:")
    logits = sql_builtin.logits().astype(np.float32)
    options = SamplingOptions(temperature=1.2, top_k=8)
    probs = softmax(process_logits(logits[None], options)[0].astype(np.float64))
    n = 600
    counts = np.zeros_like(probs)
    for seed in range(n):
        counts[sql_builtin.pick(greedy=False, temperature=1.2, top_k=8, seed=seed, step=0)] += 1
    assert counts[probs == 0].sum() == 0                       # never a filtered token
    expected = probs * n
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expect = np.append(expected[big], expected[~big].sum())
    keep = expect > 0
    stat = float((((observed - expect) ** 2)[keep] / expect[keep]).sum())
    assert chi2_sf(stat, int(keep.sum()) - 1) > 1e-3, (stat, observed, expect)


def test_same_seed_same_text_and_another_seed_differs(sql_builtin):
    a = sql_builtin.generate("KING:", max_new_tokens=20, seed=7, temperature=0.9, top_k=40)
    assert sql_builtin.generate("KING:", max_new_tokens=20, seed=7, temperature=0.9, top_k=40) == a
    assert sql_builtin.generate("KING:", max_new_tokens=20, seed=8, temperature=0.9, top_k=40) != a


def test_a_top_past_the_vocabulary_keeps_every_token(sql_builtin):
    # 10**20 overflowed the database's INT64 (a raw "Conversion Error"); numgpt next and generate take it
    assert len(sql_builtin.next("KING:", top=10**20)) == sql_builtin.config.vocab_size
    off = sql_builtin.generate("KING:", max_new_tokens=6, seed=3, temperature=0.9)
    assert sql_builtin.generate("KING:", max_new_tokens=6, seed=3, temperature=0.9, top_k=10**20) == off


def test_a_temperature_too_small_to_divide_by_is_greedy(sql_builtin):
    # logit / 1e-320 overflowed to infinities in SQL, and the draw found no row (an IndexError)
    greedy = sql_builtin.generate("KING:", max_new_tokens=8, do_sample=False)
    assert sql_builtin.generate("KING:", max_new_tokens=8, seed=1, temperature=1e-320) == greedy


def test_stop_string_ends_the_text(request, tmp_path_factory):
    """Stop strings are applied by the session in Python (numgpt's Finisher, finish.py) on the tokens the
    SQL chose, the same code for both engines: DuckDB only."""
    import numgpt.sql
    with numgpt.sql.connect(exported(request, tmp_path_factory, "duckdb", "builtin", _builtin)) as m:
        text = m.generate("ROMEO:", max_new_tokens=40, do_sample=False)
        cut = text[5:8]
        assert m.generate("ROMEO:", max_new_tokens=40, do_sample=False, stop=[cut]) == text[:text.index(cut)]
        assert m.finish_reason == "stop"
        assert m.generate("ROMEO:", max_new_tokens=7, do_sample=False) == text[:len(m.generate(
            "ROMEO:", max_new_tokens=7, do_sample=False))] and m.finish_reason == "length"


def _eot_model(folder):
    """The GPT-2-vocabulary random checkpoint with <|endoftext|>'s embedding row scaled up until some
    short greedy path reaches it after a few tokens: (model, prompt ids, tokens before <|endoftext|>)."""
    import dataclasses

    import numgpt
    from numgpt.model import forward
    lm = numgpt.load(folder)
    eot = lm.tokenizer.eot_id
    for factor in (2.0, 3.0, 4.0, 6.0, 8.0):
        params = dict(lm.params)
        wte = np.array(params["wte.weight"])
        wte[eot] *= factor
        params["wte.weight"] = wte
        model = dataclasses.replace(lm, params=params)
        for start in range(200):
            ids = [start]
            for _ in range(12):
                nxt = int(np.argmax(forward(params, lm.config, np.array([ids]))[0]))
                if nxt == eot:
                    break
                ids.append(nxt)
            if nxt == eot and len(ids) >= 3:
                return model, [start], len(ids) - 1
    pytest.fail("no scaling of <|endoftext|> made a short greedy path reach it")


@pytest.mark.parametrize("engine", ENGINES)
def test_stops_at_endoftext_with_the_text_so_far(request, tmp_path_factory, engine, hf_gpt2_vocab_ckpt):
    """A greedy path that reaches <|endoftext|> before the token limit: SQL returns exactly the text
    before it, as numgpt does (the original returned NULL there)."""
    import numgpt.sql
    model, prompt, before = _eot_model(hf_gpt2_vocab_ckpt.folder)
    want = model.generate(prompt, max_new_tokens=30, do_sample=False)
    db = exported(request, tmp_path_factory, engine, "gpt2_vocab_eot", lambda: model)
    with numgpt.sql.connect(db) as m:
        got = m.generate(prompt, max_new_tokens=30, do_sample=False)
        ids = greedy_ids(m, prompt, before + 1)
        assert m.finish_reason == "eos"
    assert got == want and got
    assert ids[-1] == model.tokenizer.eot_id and len(ids) == before + 1


@pytest.mark.parametrize("options", [dict(min_p=0.1), dict(presence_penalty=0.5), dict(frequency_penalty=-1.0),
                                     dict(logit_bias={5: 10.0}), dict(num_return_sequences=2),
                                     dict(sliding_window=True), dict(logprobs=3)])
def test_options_the_sql_does_not_compute_are_refused_by_name(request, tmp_path_factory, options):
    """SqlModel.stream took min_p, the OpenAI penalties and logit_bias and ignored them: each option of
    numgpt's generate that the SQL does not compute is refused by its name; one numgpt's generate would
    refuse is refused with generate's own message."""
    import numgpt.sql
    from numgpt.errors import NumgptError
    db = exported(request, tmp_path_factory, "duckdb", "builtin", _builtin)
    with numgpt.sql.connect(db) as m:
        with pytest.raises(NumgptError, match=f"numgpt sql does not compute {next(iter(options))}"):
            m.generate("ROMEO:", max_new_tokens=3, **options)
        with pytest.raises(NumgptError, match="unknown generation option 'top_q'"):
            m.generate("ROMEO:", top_q=0.5)
        assert m.generate("ROMEO:", max_new_tokens=3, min_p=0.0, do_sample=False)   # the default: no effect to lose


def greedy_ids(m, prompt, n: int) -> list[int]:
    """The session's next n greedy ids, picked and fed one by one, with no stopping rule (not even at
    <|endoftext|>): what the SQL computes, below generate's Finisher."""
    m.start(prompt)
    out = []
    for step in range(n):
        out.append(m.pick(greedy=True, step=step))
        if step < n - 1:
            m.feed(out[-1])
    return out
