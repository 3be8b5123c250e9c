"""The model in SQL (issue 12) against numgpt's NumPy forward, on DuckDB and PostgreSQL: logits at every
step of a 64-token greedy run (the KV cache in tables: each decode step computes one position), within
1e-5 in float32 and within 1e-9 of a float64 NumPy forward written here with a float64 export; the
built-in model and a small random transformers checkpoint of an odd shape (n_embd 36, 3 heads of 12,
3 layers), so the config-driven SQL is exercised beyond the presets; greedy text identical to
`numgpt generate --greedy`."""

import numpy as np
import pytest

from conftest import _hf_checkpoint
from test_sql_support import ENGINES, exported, new_database, postgres_server

STEPS = 64


@pytest.fixture(scope="session")
def hf_odd_ckpt(tmp_path_factory):
    """GPT-2's vocabulary (so its tokenizer applies) on an odd small shape; init scaled up (0.2) so
    greedy paths have no near-ties."""
    return _hf_checkpoint(tmp_path_factory, "sql_odd", 12, vocab_size=50257, n_positions=96, n_embd=36,
                          n_layer=3, n_head=3, initializer_range=0.2)


def _builtin():
    import numgpt
    return numgpt.load()


def forward64(params, config, ids):
    """GPT-2's forward in float64, written out plainly (the reference for --precision float64: numgpt's
    own forward is float32, with float32 constants)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    T, H = len(ids), config.n_head

    def ln(x, name):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + config.layer_norm_epsilon) * p[name + ".weight"] + p[name + ".bias"]

    x = p["wte.weight"][ids] + p["wpe.weight"][np.arange(T)]
    for i in range(config.n_layer):
        h = f"h.{i}."
        qkv = ln(x, h + "ln_1") @ p[h + "attn.c_attn.weight"] + p[h + "attn.c_attn.bias"]
        q, k, v = (a.reshape(T, H, -1).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
        s = np.where(np.tri(T, dtype=bool), s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        y = (w @ v).transpose(1, 0, 2).reshape(T, -1)
        x = x + y @ p[h + "attn.c_proj.weight"] + p[h + "attn.c_proj.bias"]
        f = ln(x, h + "ln_2") @ p[h + "mlp.c_fc.weight"] + p[h + "mlp.c_fc.bias"]
        f = 0.5 * f * (1 + np.tanh(np.sqrt(2 / np.pi) * (f + 0.044715 * f ** 3)))
        x = x + f @ p[h + "mlp.c_proj.weight"] + p[h + "mlp.c_proj.bias"]
    return ln(x[-1], "ln_f") @ p["wte.weight"].T


def _greedy_run_logits(m, prompt_ids, steps):
    """The SQL greedy run: the logits at every step and the tokens chosen (in SQL)."""
    m.start(prompt_ids)
    logits, tokens = [], []
    for step in range(steps):
        logits.append(m.logits())
        tokens.append(m.pick(greedy=True))
        if step < steps - 1:
            m.feed(tokens[-1])
    return np.array(logits), tokens


def _numpy_logits(lm, prompt_ids, tokens):
    """NumPy's logits at every step of the same run: the prompt, then each token but the last fed back."""
    from numgpt.kvcache import KVCache
    from numgpt.model import forward
    cache = KVCache.allocate(lm.config, 1, len(prompt_ids) + len(tokens))
    want = [forward(lm.params, lm.config, np.array([prompt_ids]), cache=cache)[0]]
    for t in tokens[:-1]:
        want.append(forward(lm.params, lm.config, np.array([[t]]), cache=cache)[0])
    return np.array(want)




@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model", ["builtin", "odd"])
def test_float32_logits_at_every_step_of_a_greedy_run(request, tmp_path_factory, engine, model):
    import numgpt
    import numgpt.sql
    load = _builtin if model == "builtin" else (lambda: numgpt.load(request.getfixturevalue("hf_odd_ckpt").folder))
    lm = load()
    db = exported(request, tmp_path_factory, engine, model, load)
    prompt = lm.encode("ROMEO: I will")
    steps = min(STEPS, lm.config.n_positions - len(prompt))
    with numgpt.sql.connect(db) as m:
        got, tokens = _greedy_run_logits(m, prompt, steps)
    want = _numpy_logits(lm, prompt, tokens)
    # 1e-5: the bar for float32; both sides round to float32 in different orders (DuckDB's
    # array_inner_product, PostgreSQL's double sums of float32 weights, NumPy's BLAS)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert tokens == [int(np.argmax(w)) for w in want]


@pytest.mark.parametrize("product", ["wide", "cube"])
@pytest.mark.parametrize("model", ["builtin", "odd"])
def test_each_postgresql_product_gives_numpys_logits_at_every_step(request, tmp_path_factory, model, product):
    """PostgreSQL with each product, named (the other tests' exports take the default, auto: cube on the
    tests' server): the wide rows of REAL columns, and the cube module's distances (layers.py): logits
    within 1e-5 of NumPy's at every step of a greedy run and the same tokens, on the built-in model and
    the odd shape (36 inputs: one point per chunk; c_fc's 144: two of 72)."""
    import numgpt
    import numgpt.sql
    lm = _builtin() if model == "builtin" else numgpt.load(request.getfixturevalue("hf_odd_ckpt").folder)
    db = new_database(request, "postgresql", tmp_path_factory)
    numgpt.sql.export(lm, db, product=product)
    prompt = lm.encode("ROMEO: I will")
    steps = 16
    with numgpt.sql.connect(db) as m:
        assert m.meta["product"] == product
        got, tokens = _greedy_run_logits(m, prompt, steps)
    want = _numpy_logits(lm, prompt, tokens)
    # 1e-5 as for the wide products: the distance identity adds ~1e-13 (bench/bench_sql_cube.py)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert tokens == [int(np.argmax(w)) for w in want]


def test_cube_products_are_postgresqls_and_an_unknown_product_is_refused(tmp_path):
    import numgpt.sql
    from numgpt.errors import NumgptError
    lm = _builtin()
    db = tmp_path / "model.duckdb"
    with pytest.raises(NumgptError, match="product must be 'auto' or 'wide' for DuckDB, which multiplies arrays; "
                                          "'cube' is PostgreSQL's") as e:
        numgpt.sql.export(lm, str(db), product="cube")
    assert "\n" not in str(e.value) and not db.exists()   # refused before the file is made
    with pytest.raises(NumgptError, match="product must be one of auto, wide, cube, got 'dense'"):
        numgpt.sql.export(lm, str(db), product="dense")
    assert numgpt.sql.export(lm, str(db)).product == "wide"              # auto, on DuckDB
    with numgpt.sql.connect(str(db)) as m:
        assert m.meta["product"] == "wide"


def test_auto_product_is_cube_where_the_role_may_create_it_and_wide_where_not(request, tmp_path_factory, capsys):
    """export's default product="auto": the cube products for the tests' superuser (the server has the
    contrib module), the wide rows for a role without CREATE on the database; both compute the same tokens."""
    import psycopg

    import numgpt.sql
    lm = _builtin()
    db = new_database(request, "postgresql", tmp_path_factory)
    name = db.split("?")[0].rsplit("/", 1)[1]
    role = "numgpt_nocreate"
    with psycopg.connect(db, autocommit=True) as con:
        con.execute(f"DROP ROLE IF EXISTS {role}")
        con.execute(f"CREATE ROLE {role} LOGIN")
        con.execute(f"GRANT CREATE ON SCHEMA public TO {role}")     # tables, but no schema or extension
    try:
        limited = db.replace("postgresql://postgres@", f"postgresql://{role}@")
        summary = numgpt.sql.export(lm, limited)
        assert summary.product == "wide"
        with numgpt.sql.connect(limited) as m:
            assert m.meta["product"] == "wide"
            wide = m.generate("ROMEO:", max_new_tokens=6, do_sample=False)
        with psycopg.connect(db, autocommit=True) as con:
            _wait_for_backends_to_exit(con, role)   # an exiting backend drops its temp tables as REASSIGN reads them
            con.execute(f"REASSIGN OWNED BY {role} TO postgres")
            con.execute(f"DROP OWNED BY {role}")
        from numgpt.cli import main
        assert main(["sql", "export", "--db", db, "--force"]) == 0              # the CLI says which it wrote
        assert "parameters (float32, cube products) into postgresql" in capsys.readouterr().out
        with numgpt.sql.connect(db) as m:
            assert m.meta["product"] == "cube"
            assert m.generate("ROMEO:", max_new_tokens=6, do_sample=False) == wide
    finally:
        with psycopg.connect(postgres_server(request).dsn(name), autocommit=True) as con:
            _wait_for_backends_to_exit(con, role)
            con.execute(f"DROP OWNED BY {role}")
            con.execute(f"DROP ROLE {role}")


def _wait_for_backends_to_exit(con, role: str, timeout: float = 30.0) -> None:
    """Poll until no server process of `role` is left: a closed connection's backend exits (and drops its
    temporary tables) after the client has moved on, and REASSIGN OWNED fails on a table dropped under it
    ("could not open relation with OID ...", seen once in CI)."""
    import time
    deadline = time.monotonic() + timeout
    while con.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)).fetchone()[0]:
        assert time.monotonic() < deadline, f"{role}'s server processes did not exit in {timeout:.0f} s"
        time.sleep(0.05)


@pytest.mark.parametrize("engine", ENGINES)
def test_float64_logits_within_1e_9_of_a_float64_forward(request, tmp_path_factory, engine):
    import numgpt.sql
    lm = _builtin()
    db = exported(request, tmp_path_factory, engine, "builtin", _builtin, precision="float64")
    prompt = lm.encode("JULIET: O Romeo")
    steps = STEPS
    with numgpt.sql.connect(db) as m:
        assert m.precision == "float64"
        got, tokens = _greedy_run_logits(m, prompt, steps)
    ids = list(prompt)
    for step in range(steps):
        np.testing.assert_allclose(got[step], forward64(lm.params, lm.config, ids), rtol=0, atol=1e-9)
        ids.append(tokens[step])


@pytest.mark.parametrize("engine", ENGINES)
def test_greedy_text_equals_numgpt_generate_greedy(request, tmp_path_factory, engine, capsys):
    from numgpt.cli import main
    db = exported(request, tmp_path_factory, engine, "builtin", _builtin)
    assert main(["generate", "--greedy", "-q", "--max-new-tokens", "40", "ROMEO:"]) == 0
    want = capsys.readouterr().out
    assert main(["sql", "generate", "--db", db, "--greedy", "--max-new-tokens", "40", "ROMEO:"]) == 0
    got = capsys.readouterr().out
    assert got == want and len(got) > 40
    if engine == "duckdb":           # no -n: the same default as numgpt generate, cut to what fits after the prompt
        long = " ".join(["ROMEO: to be or not to be,"] * 11)
        assert len(_builtin().encode(long)) + 64 > 128            # the plain default of 64 would not fit
        assert main(["generate", "--greedy", "-q", long]) == 0
        want = capsys.readouterr().out
        assert main(["sql", "generate", "--db", db, "--greedy", long]) == 0
        assert capsys.readouterr().out == want


def test_prefill_in_one_statement_equals_token_by_token(request, tmp_path_factory):
    """The slow obvious twin of a prefill: feeding the prompt one token at a time through the cache."""
    import numgpt.sql
    lm = _builtin()
    db = exported(request, tmp_path_factory, "duckdb", "builtin", _builtin)
    prompt = lm.encode("KING RICHARD: Now is")
    with numgpt.sql.connect(db) as m:
        m.start(prompt)
        whole = m.logits()
        m.start(prompt[:1])
        for t in prompt[1:]:
            m.feed(t)
        np.testing.assert_allclose(m.logits(), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_124m_logits_at_every_step_of_a_greedy_run(request, tmp_path_factory, hf_gpt2_124m_ckpt, engine):
    """The 124M shape (12 layers, 12 heads, 768 channels, GPT-2's vocabulary): logits within 1e-5 of
    NumPy's at every step of a 64-token greedy run, on both engines (PostgreSQL with its default two
    connections sharing each product)."""
    import numgpt
    import numgpt.sql
    lm = numgpt.load(hf_gpt2_124m_ckpt.folder)
    db = new_database(request, engine, tmp_path_factory)
    numgpt.sql.export(lm, db)
    prompt = [15496, 11, 616, 3290, 318, 13779, 290]   # "Hello, my dog is cute and"
    with numgpt.sql.connect(db) as m:
        assert m.connections == (2 if engine == "postgresql" else 1)
        got, tokens = _greedy_run_logits(m, prompt, STEPS)
    want = _numpy_logits(lm, prompt, tokens)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)   # 1e-5: the float32 bar
    assert tokens == [int(np.argmax(w)) for w in want]


def test_two_sessions_on_one_duckdb_file_in_one_process(request, tmp_path_factory):
    """DuckDB attaches the file to one in-memory instance per process (engines.py): two sessions are two
    connections to it, each with its own temporary state, and compute the same logits. (The same to the
    last ulps, not bit for bit: with two threads the rows of a scan reach an aggregate's sum in either
    order.)"""
    import numgpt.sql
    lm = _builtin()
    db = exported(request, tmp_path_factory, "duckdb", "builtin", _builtin)
    with numgpt.sql.connect(db) as a, numgpt.sql.connect(db) as b:
        a.start(lm.encode("ROMEO:"))
        b.start(lm.encode("JULIET: O"))      # b's state must not reach a's
        first = a.logits()
        a.start(lm.encode("JULIET: O"))
        np.testing.assert_allclose(a.logits(), b.logits(), rtol=0, atol=1e-12)
        b.start(lm.encode("ROMEO:"))
        np.testing.assert_allclose(b.logits(), first, rtol=0, atol=1e-12)
        assert np.abs(first - a.logits()).max() > 0.1   # different prompts, different logits
