"""What a new user hit in `numgpt sql` (issue 20, newcomer report round 2): Ctrl-C on DuckDB, damaged
weights and files, a role without SELECT, concurrent exports and sessions, the Python API's vocabulary.
Each bad case is one line (NumgptError; `numgpt: error: ...` and exit status 2 on the command line)."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from test_sql_support import exported, new_database, postgres_server


def _builtin():
    import numgpt
    return numgpt.load()


@pytest.fixture(scope="module")
def db(request, tmp_path_factory):
    return exported(request, tmp_path_factory, "duckdb", "builtin", _builtin)


@pytest.fixture(scope="module")
def pg_db(request, tmp_path_factory):
    return exported(request, tmp_path_factory, "postgresql", "builtin", _builtin)


def one_line_error(capsys, *argv) -> str:
    from numgpt.cli import main
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert err.startswith("numgpt: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def numgpt_error(call) -> str:
    from numgpt.errors import NumgptError
    with pytest.raises(NumgptError) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- Ctrl-C on DuckDB -----------------------------------------------------------------------------------

def test_ctrl_c_inside_a_duckdb_statement_is_a_keyboard_interrupt(db):
    """DuckDB's client turns a SIGINT that arrives during a statement into RuntimeError('Query
    interrupted'); the engine gives KeyboardInterrupt, which the CLI reports as `numgpt: interrupted`."""
    from numgpt.sql.engines import open_engine
    engine = open_engine(db)
    # a real SIGINT, as Ctrl-C sends (interrupt_main only sets Python's flag, which DuckDB's C loop may
    # not look at before the statement ends: the test could then run for minutes). Python's own SIGINT
    # handler, as in a fresh `numgpt` process: DuckDB raises only when that handler raises, and a handler
    # another test or library left behind (one that records the signal) made this test hang in CI.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGINT))
    # never a hang: if the statement still runs after 60 s, stop it through DuckDB's own interrupt and fail
    watchdog = threading.Timer(60, engine._con.interrupt)
    timer.start()
    watchdog.start()
    try:
        with pytest.raises(KeyboardInterrupt):   # a statement of minutes, interrupted after 0.3 s
            engine.rows("SELECT count(*) FROM range(100000000000) AS r(i) WHERE i % 7 = 3")
        assert watchdog.is_alive(), "the SIGINT did not stop the statement; the watchdog did, 60 s later"
    finally:
        timer.cancel()
        watchdog.cancel()
        signal.signal(signal.SIGINT, before)
        engine.close()


def test_ctrl_c_during_sql_generate_on_duckdb_is_rc_130_without_traceback(db):
    """A real SIGINT to `numgpt sql generate` once it has printed its first text (mid-generation: it
    was a RuntimeError traceback nearly every time)."""
    proc = subprocess.Popen([sys.executable, "-m", "numgpt", "sql", "generate", "--db", db, "-n", "120",
                             "--seed", "1", "ROMEO:"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.read(1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, err) == (130, "numgpt: interrupted\n")


def test_a_failed_load_in_a_transaction_reports_its_own_error(tmp_path):
    """An INSERT that fails (or is interrupted) inside the export's transaction aborts it: the load's
    clean-up then raised DuckDB's TransactionException over the real error."""
    from numgpt.sql.engines import DatabaseError, open_engine
    engine = open_engine(str(tmp_path / "t.duckdb"), create=True)
    try:
        engine.execute("CREATE TABLE t (a INTEGER)")
        with pytest.raises(DatabaseError) as e:
            with engine.transaction():
                engine.load("t", {"a": np.array(["not a number"], object)})
        assert "Conversion Error" in str(e.value) and "Transaction" not in str(e.value)
        engine.load("t", {"a": np.array([7], np.int32)})   # the connection is usable again
        assert engine.rows("SELECT a FROM t") == [(7,)]
    finally:
        engine.close()


# ---- what export refuses ---------------------------------------------------------------------------------

def test_export_refuses_nan_weights_naming_the_tensor_and_leaves_no_file(tmp_path):
    import numgpt.sql
    model = _builtin()
    model.params["h.1.mlp.c_fc.weight"] = model.params["h.1.mlp.c_fc.weight"].copy()
    model.params["h.1.mlp.c_fc.weight"][3, 5] = np.inf
    target = tmp_path / "nan.duckdb"
    err = numgpt_error(lambda: numgpt.sql.export(model, str(target)))
    assert "h.1.mlp.c_fc.weight has 1 NaN/inf" in err and not target.exists()


def test_export_of_something_not_a_model_is_a_numgpt_error_and_leaves_no_file(tmp_path):
    import numgpt.sql
    target = tmp_path / "y.duckdb"
    assert "model must be a numgpt LanguageModel" in numgpt_error(lambda: numgpt.sql.export("notamodel", str(target)))
    assert not target.exists()


def test_export_into_an_in_memory_database_is_refused_before_the_work():
    """`--db :memory:` ran the whole export into a database gone at its end, then said "no such file"."""
    import numgpt.sql
    for db in (":memory:", ":memory:named"):
        err = numgpt_error(lambda: numgpt.sql.export(_builtin(), db))
        assert err == f"{db} is an in-memory DuckDB database, gone when the export ends; give a file path"


def test_the_python_api_names_parameters_and_the_cli_flags(capsys, db, tmp_path):
    import numgpt.sql
    copy = tmp_path / "copy.duckdb"
    shutil.copy(db, copy)
    err = numgpt_error(lambda: numgpt.sql.export(_builtin(), str(copy)))
    assert "pass force=True" in err and "--" not in err
    err = one_line_error(capsys, "sql", "export", "--db", str(copy))
    assert "pass --force" in err and "force=True" not in err
    err = numgpt_error(lambda: numgpt.sql.connect(5))
    assert err.startswith("db must be a DuckDB file path") and "--db" not in err


def test_unwritable_and_missing_places_to_export_into(capsys, tmp_path):
    err = one_line_error(capsys, "sql", "export", "--db", str(tmp_path / "no" / "x.duckdb"))
    assert "no such folder" in err
    err = one_line_error(capsys, "sql", "export", "--db", "/proc/numgpt-test.duckdb")   # procfs takes no file
    assert "/proc is not writable" in err


def test_export_force_again_keeps_the_size_and_an_empty_file_is_exported_into(tmp_path):
    # each other --force doubled the file (the dropped tables' blocks were not free yet), and a 0-byte file
    # (touch, mktemp) was refused as "not a valid DuckDB database file", --force or not
    import numgpt.sql
    lm = _builtin()
    path = tmp_path / "m.duckdb"
    path.write_bytes(b"")
    sizes = [numgpt.sql.export(lm, str(path), force=i > 0).size_bytes for i in range(3)]
    assert sizes[1] == sizes[2] and sizes[1] <= sizes[0] * 1.05, sizes
    with numgpt.sql.connect(str(path)) as m:
        assert m.generate("ROMEO:", max_new_tokens=5, do_sample=False) == lm.generate(
            "ROMEO:", max_new_tokens=5, do_sample=False)


def test_export_refuses_a_table_of_its_name_that_no_export_wrote(tmp_path):
    # the export dropped each of its tables first: a user's own numgpt_wte was replaced without a word
    import duckdb
    import numgpt.sql
    from numgpt import NumgptError
    path = tmp_path / "theirs.duckdb"
    with duckdb.connect(str(path)) as c:
        c.execute("CREATE TABLE numgpt_wte (invoice INTEGER, amount DOUBLE)")
        c.execute("INSERT INTO numgpt_wte VALUES (1, 9.5)")
    with pytest.raises(NumgptError, match="holds numgpt_wte, which no numgpt export wrote; export into another "
                                          "database, or pass force=True to replace them"):
        numgpt.sql.export(_builtin(), str(path))
    with duckdb.connect(str(path)) as c:
        assert c.execute("SELECT * FROM numgpt_wte").fetchall() == [(1, 9.5)]
    numgpt.sql.export(_builtin(), str(path), force=True)
    with numgpt.sql.connect(str(path)) as m:
        assert m.generate("ROMEO:", max_new_tokens=4, do_sample=False) == _builtin().generate(
            "ROMEO:", max_new_tokens=4, do_sample=False)


# ---- what a session refuses ------------------------------------------------------------------------------

def test_a_folder_is_not_a_database(capsys, tmp_path):
    err = one_line_error(capsys, "sql", "tokenize", "--db", str(tmp_path), "x")
    assert "is a folder, not a database" in err and "no such database" not in err


def test_a_truncated_duckdb_file_is_called_damaged(capsys, db, tmp_path):
    for size in (os.path.getsize(db) // 6, os.path.getsize(db) * 2 // 3):   # at attach, at a later read
        cut = tmp_path / f"cut{size}.duckdb"
        shutil.copy(db, cut)
        os.truncate(cut, size)
        err = one_line_error(capsys, "sql", "next", "--db", str(cut), "x")
        assert "is damaged or truncated" in err and f"`numgpt sql export --force --db {cut}`, which replaces it" in err
    corrupt = tmp_path / "corrupt.duckdb"                   # a block overwritten: its checksum fails
    shutil.copy(db, corrupt)
    with open(corrupt, "r+b") as f:
        f.seek(3 * 4096)
        f.write(np.random.default_rng(0).bytes(4096))
    err = one_line_error(capsys, "sql", "next", "--db", str(corrupt), "x")
    # DuckDB 2.0 says "Corrupt database file: ...", 1.x "IO Error: Corrupt database file: ..."
    assert "is damaged or truncated (" in err and "Corrupt database file" in err
    from numgpt.cli import main
    for broken in (tmp_path / f"cut{os.path.getsize(db) // 6}.duckdb", corrupt):   # the advice works
        assert main(["sql", "export", "--force", "--db", str(broken)]) == 0
        assert main(["sql", "next", "--db", str(broken), "ROMEO: I"]) == 0
        assert "'ll" in capsys.readouterr().out


def test_a_dropped_weight_table_says_export_again(capsys, db, tmp_path):
    import duckdb
    broken = tmp_path / "nosql.duckdb"
    shutil.copy(db, broken)
    con = duckdb.connect(str(broken))
    con.execute("DROP TABLE numgpt_c_fc")
    con.close()
    err = one_line_error(capsys, "sql", "generate", "--db", str(broken), "x")
    assert "table numgpt_c_fc is missing" in err and "export --force" in err


def test_text_that_is_not_utf8_is_one_line(capsys, db):
    import numgpt.sql
    with numgpt.sql.connect(db) as m:
        assert "not valid UTF-8" in numgpt_error(lambda: m.tokenize("caf\udcff"))
        assert "not valid UTF-8" in numgpt_error(lambda: m.generate("caf\udcff", max_new_tokens=2))
    proc = subprocess.run([os.fsencode(sys.executable), b"-m", b"numgpt", b"sql", b"tokenize", b"--db",
                           os.fsencode(db), b"caf\xff"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "UTF-8" in proc.stderr, proc.stderr


def test_two_processes_read_one_duckdb_file_at_once(db):
    """A session attaches the file read-only, so a second process can read it at the same time (it got
    DuckDB's lock error, the file being open read-write)."""
    import numgpt.sql
    with numgpt.sql.connect(db) as m:
        m.start("ROMEO:")
        proc = subprocess.run([sys.executable, "-m", "numgpt", "sql", "next", "--db", db, "--top", "1", "ROMEO:"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert m.pick(greedy=True) == int(proc.stdout.splitlines()[1].split()[1])


# ---- PostgreSQL: privileges and concurrent exports ---------------------------------------------------------

def _export_lock_holder(pg_db):
    """A connection holding the export lock alone, as a running export does (begin_export)."""
    import psycopg
    from numgpt.sql.engine_postgres import EXPORT_LOCK
    con = psycopg.connect(pg_db, autocommit=True)
    taken = con.execute("SELECT pg_try_advisory_lock(%s)", [EXPORT_LOCK]).fetchone()[0]
    assert taken, "a session or export of another test still holds the export lock"
    return con


def test_a_role_without_select_is_told_so(request, pg_db, capsys):
    import psycopg
    server = postgres_server(request)
    name = pg_db.split("?")[0].rsplit("/", 1)[1]
    with psycopg.connect(pg_db, autocommit=True) as con:
        con.execute("DROP ROLE IF EXISTS numgpt_lowpriv")
        con.execute("CREATE ROLE numgpt_lowpriv LOGIN")
    try:
        lowpriv = pg_db.replace("postgresql://postgres@", "postgresql://numgpt_lowpriv@")
        err = one_line_error(capsys, "sql", "next", "--db", lowpriv, "x")
        assert "may not read" in err and "SELECT on numgpt_meta" in err and "holds no numgpt export" not in err
    finally:
        with psycopg.connect(server.dsn(name), autocommit=True) as con:
            con.execute("REVOKE ALL ON DATABASE " + name + " FROM numgpt_lowpriv")
            con.execute("DROP ROLE numgpt_lowpriv")


def test_an_export_while_another_export_runs_is_refused_by_name(pg_db, capsys):
    holder = _export_lock_holder(pg_db)
    try:
        err = one_line_error(capsys, "sql", "export", "--db", pg_db, "--force")
        assert "another numgpt sql export is writing" in err
        err = one_line_error(capsys, "sql", "generate", "--db", pg_db, "-n", "3", "x")
        assert "is under way" in err
    finally:
        holder.close()


def test_export_force_under_a_running_session_is_refused_and_the_session_goes_on(pg_db, capsys):
    import numgpt.sql
    with numgpt.sql.connect(pg_db) as m:
        m.start("ROMEO:")
        err = one_line_error(capsys, "sql", "export", "--db", pg_db, "--force")
        assert "in use by a numgpt session" in err
        m.feed(m.pick(greedy=True))   # the tables are all still there
        assert np.isfinite(m.logits()).all()


def test_an_export_force_stopped_midway_leaves_the_old_postgresql_export_whole(pg_db):
    """One transaction: stopped in its weights or its tokenizer, the export rolls back to the old one (it was
    two, and the first had already dropped the old export's tables)."""
    import numgpt.sql
    with numgpt.sql.connect(pg_db) as m:
        before = m.generate("ROMEO:", max_new_tokens=4, do_sample=False)
    for stage in ("block 1/", "tokenizer"):
        def progress(what, stage=stage):
            if what.startswith(stage):
                raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            numgpt.sql.export(_builtin(), pg_db, force=True, progress=progress)
        with numgpt.sql.connect(pg_db) as m:
            assert m.generate("ROMEO:", max_new_tokens=4, do_sample=False) == before


def test_a_closed_engine_gives_back_its_advisory_locks_before_it_hangs_up(pg_db):
    """PostgreSQL ends a closed connection's server process, and with it the locks that process held, a
    moment after the client hangs up: a session opened right after an export was refused ("an export ...
    is under way"). close() gives the export's and a session's lock back first. Seen here on a connection
    that close() is kept from hanging up, so its server process is certainly still there."""
    from numgpt.sql.engines import open_engine
    for take in ("begin_export", "hold_for_reading"):
        engine = open_engine(pg_db)
        con = engine._con
        getattr(engine, take)()
        engine._con = _StaysOpen(con)
        engine.close()
        held = con.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                           ).fetchone()[0]
        con.close()
        assert held == 0, take


class _StaysOpen:
    """A connection whose close() does nothing (everything else passes through)."""

    def __init__(self, con):
        self._con = con

    def close(self):
        pass

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_an_export_holds_the_export_lock_while_it_writes(request, tmp_path_factory):
    import psycopg
    import numgpt.sql
    target = new_database(request, "postgresql", tmp_path_factory)
    seen = []

    def progress(what):
        with psycopg.connect(target, autocommit=True) as con:
            seen.append(con.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                    "AND mode = 'ExclusiveLock'").fetchone()[0])
    numgpt.sql.export(_builtin(), target, progress=progress)
    assert seen and all(n == 1 for n in seen)
    with numgpt.sql.connect(target) as m:   # released at the end
        assert m.tokenize("ROMEO:")


def test_ctrl_c_during_sql_export_on_duckdb_is_rc_130_and_leaves_the_file_as_it_was(tmp_path):
    """A real SIGINT to `numgpt sql export` at a few moments after it starts writing the embeddings (a
    model of 4 x 384, so the writes last): before, a signal that landed inside DuckDB's INSERT gave a
    RuntimeError or TransactionException traceback (here: the later moments, 2 runs in 4). A first export
    stopped leaves no file; an export --force stopped leaves the old export working (it used to leave an
    'exporting' database: the old export's tables were dropped first)."""
    import dataclasses

    import numgpt
    import numgpt.sql
    from numgpt.formats.hf import save_checkpoint
    from numgpt.params import init_params
    builtin = numgpt.load()
    config = dataclasses.replace(builtin.config, n_layer=4, n_embd=384, n_head=6)
    folder = save_checkpoint(tmp_path / "m", config, init_params(config, np.random.default_rng(0)),
                             tokenizer=builtin.tokenizer)
    full = tmp_path / "full.duckdb"
    numgpt.sql.export(numgpt.load(folder), str(full))

    def next_token(db):
        return subprocess.run([sys.executable, "-m", "numgpt", "sql", "next", "--db", db, "x"],
                              capture_output=True, text=True)
    expected = next_token(str(full)).stdout
    for k, delay in enumerate((0.05, 0.1, 0.15, 0.2)):
        for force in (False, True):
            target = str(tmp_path / f"int{k}.duckdb")
            if force:
                shutil.copy(full, target)
            proc = subprocess.Popen([sys.executable, "-m", "numgpt", "sql", "export", "--model", str(folder), "--db",
                                     target, *(["--force"] if force else [])],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                while "embeddings" not in proc.stderr.readline():   # progress: the weights are being written
                    assert proc.poll() is None
                time.sleep(delay)
                proc.send_signal(signal.SIGINT)
                err = proc.stderr.read()
                proc.wait(timeout=60)
            finally:
                proc.kill()
            assert (proc.returncode, err.splitlines()[-1:]) == (130, ["numgpt: interrupted"]), err
            assert "Traceback" not in err
            left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"int{k}") or "export" in p.name)
            if force:
                assert left == [f"int{k}.duckdb"]
                proc = next_token(target)
                assert proc.returncode == 0 and proc.stdout == expected, proc.stderr
                Path(target).unlink()
            else:
                assert left == []
                proc = next_token(target)
                assert proc.returncode == 2 and "no such database" in proc.stderr, proc.stderr
