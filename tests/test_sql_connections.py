"""PostgreSQL sessions that split each matrix product over several connections (issue 12's speed lever,
numgpt/sql/session.py): the split changes no number, the session's shared state lives in a schema of
its own that close() drops, schemas left by dead sessions are dropped, and a role that may not create
a schema gets one connection and temporary tables."""

from contextlib import contextmanager

import numpy as np
import pytest

from test_sql_support import exported, postgres_server


def _builtin():
    import numgpt
    return numgpt.load()


@pytest.fixture(scope="module")
def pg_db(request, tmp_path_factory):
    return exported(request, tmp_path_factory, "postgresql", "builtin", _builtin)


def _schemas(db, prefix="numgpt_run_"):
    import psycopg
    with psycopg.connect(db, autocommit=True) as con:
        return [r[0] for r in con.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
                                          [prefix]).fetchall()]


def _run(m, prompt, steps):
    m.start(prompt)
    logits, tokens = [m.logits()], []
    for _ in range(steps):
        tokens.append(m.pick(greedy=True))
        m.feed(tokens[-1])
        logits.append(m.logits())
    return np.array(logits), tokens


def test_output_ranges_cover_every_output_once_on_aligned_bounds():
    from numgpt.sql.session import output_ranges
    for n, align, parts in [(2304, 64, 2), (768, 1, 2), (3072, 768, 3), (50257, 1, 2), (12, 1, 5), (36, 12, 2),
                            (100, 1, 1), (64, 64, 2)]:
        r = output_ranges(n, align, parts)
        assert r[0][0] == 0 and r[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(r, r[1:])) and all(lo < hi for lo, hi in r)
        assert all(lo % align == 0 for lo, _ in r)
        assert len(r) == min(parts, n // align)
        sizes = [hi - lo for lo, hi in r[:-1]]
        assert not sizes or max(sizes) - min(sizes) <= align


def test_two_and_three_connections_give_the_same_logits_as_one(pg_db):
    """Every output of a product is the same expression whichever connection computes it; what can
    differ is the order in which an aggregate (LayerNorm's mean and variance, a softmax's sum) meets its
    rows, which follows the order the connections wrote them in: a few ulps of double (measured on logits
    of ~8: 1.6e-14 with the wide products, 2.1e-12 with the cube products, whose distance identity
    cancels digits), against the 1e-5 the float32 export is held to."""
    import numgpt.sql
    lm = _builtin()
    prompt = lm.encode("ROMEO: Is the day so young?")
    runs = {}
    for n in (1, 2, 3):
        with numgpt.sql.connect(pg_db, connections=n) as m:
            assert m.connections == n
            runs[n] = _run(m, prompt, 6)
    for n in (2, 3):
        np.testing.assert_allclose(runs[n][0], runs[1][0], rtol=0, atol=1e-11)
        assert runs[n][1] == runs[1][1]


def test_the_session_schema_is_dropped_at_close_and_dead_sessions_schemas_are_cleaned(pg_db):
    import psycopg

    import numgpt.sql
    with psycopg.connect(pg_db, autocommit=True) as con:
        con.execute('CREATE SCHEMA "numgpt_run_999999_deadbeef"')    # a session whose server process is gone
        con.execute('CREATE TABLE "numgpt_run_999999_deadbeef".numgpt_seq (pos int, id int)')
    with numgpt.sql.connect(pg_db, connections=2) as m:
        assert m.run_schema in _schemas(pg_db)
        assert "numgpt_run_999999_deadbeef" not in _schemas(pg_db)
        assert m.generate("ROMEO:", max_new_tokens=4, do_sample=False)
    assert _schemas(pg_db) == []


@contextmanager
def _role(request, pg_db, role, options="", grants=()):
    """A login role made for one test, with SELECT on the export's tables and `grants` (SQL statements,
    {db} the database's name); yields its URL of the database and drops the role afterwards."""
    import psycopg
    server = postgres_server(request)
    name = pg_db.split("?")[0].rsplit("/", 1)[1]
    with psycopg.connect(pg_db, autocommit=True) as con:
        con.execute(f"DROP ROLE IF EXISTS {role}")
        con.execute(f"CREATE ROLE {role} LOGIN {options}")
        for grant in grants:
            con.execute(grant.format(db=name))
        con.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        yield pg_db.replace("postgresql://postgres@", f"postgresql://{role}@")
    finally:
        with psycopg.connect(server.dsn(name), autocommit=True) as con:
            con.execute(f"REVOKE ALL ON DATABASE {name} FROM {role}")
            con.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
            con.execute(f"DROP ROLE {role}")


def test_a_role_that_may_not_create_a_schema_gets_one_connection(request, pg_db):
    """A read-only role: CONNECT and SELECT only (no CREATE on the database, none on public), so the
    session falls back to one connection and temporary tables, and computes the same logits (to the
    last few ulps, as above)."""
    import numgpt.sql
    lm = _builtin()
    prompt = lm.encode("JULIET:")
    with _role(request, pg_db, "numgpt_reader", grants=["REVOKE CREATE ON DATABASE {db} FROM PUBLIC"]) as reader:
        with numgpt.sql.connect(reader, connections=2) as m:
            assert m.connections == 1 and m.run_schema is None
            got = _run(m, prompt, 3)
    with numgpt.sql.connect(pg_db, connections=2) as m:
        want = _run(m, prompt, 3)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-11)


def test_connections_out_of_range_is_a_one_line_error(pg_db, capsys):
    from numgpt.cli import main
    assert main(["sql", "next", "--db", pg_db, "--connections", "0", "ROMEO:"]) != 0
    err = capsys.readouterr().err.strip()
    assert "connections must be >= 1, got 0" in err and "\n" not in err


def test_a_server_that_takes_no_second_connection_gets_one(request, pg_db):
    """A role limited to one connection (CONNECTION LIMIT 1) that may create a schema: the second
    connection is refused, the session drops the schema it made and goes on with one connection."""
    import numgpt.sql
    with _role(request, pg_db, "numgpt_single", "CONNECTION LIMIT 1",
               ["GRANT CREATE ON DATABASE {db} TO numgpt_single"]) as single:
        with numgpt.sql.connect(single, connections=2) as m:
            assert m.connections == 1 and m.run_schema is None
            assert _schemas(pg_db) == []
            assert m.generate("ROMEO:", max_new_tokens=3, do_sample=False)
