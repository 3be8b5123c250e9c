"""`numgpt sql ...` (issue 12): the commands' output, and every bad input as one line `numgpt: error: ...`
with exit status 2 and no traceback: missing, foreign, non-DuckDB and other-version databases, a wrong
DSN, a refused connection, an interrupted export, a prompt longer than the context, options out of range.
"""

import json
import shutil

import pytest

from test_sql_support import exported


def _builtin():
    import numgpt
    return numgpt.load()


@pytest.fixture(scope="module")
def db(request, tmp_path_factory):
    return exported(request, tmp_path_factory, "duckdb", "builtin", _builtin)


def run(capsys, *argv):
    from numgpt.cli import main
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.startswith("numgpt: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_next_tokenize_show(capsys, db):
    code, out, _ = run(capsys, "sql", "next", "--db", db, "--top", "3", "--json", "ROMEO: I")
    rows = json.loads(out)
    assert code == 0 and [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["probability"] >= rows[1]["probability"] >= rows[2]["probability"] > 0
    code, out, _ = run(capsys, "sql", "tokenize", "--db", db, "--json", "ROMEO: Hello")
    import numgpt
    assert code == 0 and json.loads(out)["ids"] == numgpt.load().encode("ROMEO: Hello")
    code, out, _ = run(capsys, "sql", "tokenize", "--db", db, "--explain", "Hello")
    assert code == 0 and "step 1: merge rank" in out and out.strip().splitlines()[-1].startswith("ids:")
    code, out, _ = run(capsys, "sql", "show", "--db", db, "--step", "attention_mlp")
    assert code == 0 and "-- attention_mlp:" in out and "numgpt_kv" in out and "list_sum(e)" in out
    code, out, _ = run(capsys, "sql", "show", "--db", db)
    assert code == 0 and all(f"-- {s}:" in out for s in ("tokenize", "embed", "attn_qkv", "attention_mlp",
                                                         "logits", "sample"))


def test_help_teaches_with_examples(capsys):
    from numgpt.cli import main
    for command in ("export", "generate", "next", "tokenize", "show"):
        with pytest.raises(SystemExit):
            main(["sql", command, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_export_refuses_an_existing_export_without_force(capsys, db, tmp_path):
    copy = tmp_path / "copy.duckdb"
    shutil.copy(db, copy)
    err = one_line_error(capsys, "sql", "export", "--db", str(copy))
    assert "already holds a numgpt export" in err and "--force" in err


def _edit(path, sql):
    import duckdb
    con = duckdb.connect(str(path))
    con.execute(sql)
    con.close()


def test_interrupted_and_other_version_exports_are_refused(capsys, db, tmp_path):
    interrupted = tmp_path / "interrupted.duckdb"
    shutil.copy(db, interrupted)
    _edit(interrupted, "UPDATE numgpt_meta SET value = 'exporting' WHERE key = 'state'")
    assert "was interrupted" in one_line_error(capsys, "sql", "next", "--db", str(interrupted), "x")
    assert "interrupted numgpt export" in one_line_error(capsys, "sql", "export", "--db", str(interrupted))
    other = tmp_path / "other.duckdb"
    shutil.copy(db, other)
    _edit(other, "UPDATE numgpt_meta SET value = '999' WHERE key = 'schema_version'")
    assert "schema version 999" in one_line_error(capsys, "sql", "generate", "--db", str(other), "x")


def _stop_at(stage):
    """An export's progress callback that stops it (as Ctrl-C would) when it reaches `stage`."""
    def progress(what):
        if what.startswith(stage):
            raise KeyboardInterrupt
    return progress


@pytest.mark.parametrize("stage", ["embeddings", "numgpt_c_fc", "tokenizer"])
def test_an_export_stopped_anywhere_leaves_the_database_as_it_was(capsys, db, tmp_path, stage):
    """Stopped midway, a first export leaves no file, and an export --force over one leaves the old export
    whole and working; no staging file is left beside it."""
    import numgpt.sql
    fresh = tmp_path / "fresh.duckdb"
    with pytest.raises(KeyboardInterrupt):
        numgpt.sql.export(_builtin(), str(fresh), progress=_stop_at(stage))
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.duckdb"
    shutil.copy(db, old)
    code, before, _ = run(capsys, "sql", "next", "--db", str(old), "ROMEO:")
    assert code == 0
    with pytest.raises(KeyboardInterrupt):
        numgpt.sql.export(_builtin(), str(old), force=True, progress=_stop_at(stage))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.duckdb"]
    code, after, _ = run(capsys, "sql", "next", "--db", str(old), "ROMEO:")
    assert code == 0 and after == before


def test_an_export_stopped_in_a_shared_file_keeps_the_old_export_and_the_users_tables(capsys, db, tmp_path):
    """A file that holds a user's table too is written in place, in one transaction: stopped, it rolls back."""
    import duckdb
    import numgpt.sql
    shared = tmp_path / "shared.duckdb"
    shutil.copy(db, shared)
    _edit(shared, "CREATE TABLE sales AS SELECT range AS id FROM range(5)")
    code, before, _ = run(capsys, "sql", "next", "--db", str(shared), "ROMEO:")
    with pytest.raises(KeyboardInterrupt):
        numgpt.sql.export(_builtin(), str(shared), force=True, progress=_stop_at("tokenizer"))
    code, after, _ = run(capsys, "sql", "next", "--db", str(shared), "ROMEO:")
    assert code == 0 and after == before
    con = duckdb.connect(str(shared), read_only=True)
    assert con.execute("SELECT sum(id) FROM sales").fetchall() == [(10,)]
    con.close()
    numgpt.sql.export(_builtin(), str(shared), force=True)      # and completes in place
    code, again, _ = run(capsys, "sql", "next", "--db", str(shared), "ROMEO:")
    assert code == 0 and again == before
    con = duckdb.connect(str(shared), read_only=True)
    assert con.execute("SELECT sum(id) FROM sales").fetchall() == [(10,)]
    con.close()


def test_bad_databases(capsys, tmp_path):
    assert "no such database" in one_line_error(capsys, "sql", "next", "--db", str(tmp_path / "none.duckdb"), "x")
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    assert "cannot open" in one_line_error(capsys, "sql", "next", "--db", str(text), "x")
    import duckdb
    foreign = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE sales (id INTEGER)")
    con.close()
    assert "holds no numgpt export" in one_line_error(capsys, "sql", "generate", "--db", str(foreign), "x")
    assert "not a valid PostgreSQL URL" in one_line_error(capsys, "sql", "next", "--db",
                                                          "postgresql://u@h/db?bogus_option=1", "x")
    err = one_line_error(capsys, "sql", "next", "--db", "postgresql://u:secret@127.0.0.1:1/db", "x")
    assert "cannot connect to PostgreSQL" in err and "secret" not in err
    assert "unknown database URL" in one_line_error(capsys, "sql", "next", "--db", "mysql://x/y", "x")


@pytest.mark.parametrize("flags", [["--top-p", "0"], ["--top-p", "1.5"], ["--temperature", "-1"],
                                   ["--top-k", "-1"], ["--max-new-tokens", "-1"], ["--repetition-penalty", "0"],
                                   ["--greedy", "--temperature", "0.5"]])
def test_options_out_of_range(capsys, db, flags):
    one_line_error(capsys, "sql", "generate", "--db", db, *flags, "ROMEO:")


@pytest.mark.parametrize("flag", ["--min-p", "--presence-penalty", "--frequency-penalty", "--num-samples",
                                  "--sliding-window"])
def test_generate_offers_only_the_decoding_flags_the_sql_computes(capsys, db, flag):
    """sql generate's decoding flags are numgpt generate's group (cli/options.py) limited to SQL_OPTIONS:
    the same names, help and checks, and argparse refuses the others by name."""
    from numgpt.cli import main
    with pytest.raises(SystemExit) as e:
        main(["sql", "generate", "--db", db, flag, "1", "ROMEO:"])
    assert e.value.code == 2 and f"unrecognized arguments: {flag}" in capsys.readouterr().err
    code, out, _ = run(capsys, "sql", "generate", "--db", db, "--greedy", "-n", "5", "--stop", "\\n", "--ignore-eos",
                       "ROMEO:")
    assert code == 0 and "\n" not in out.rstrip("\n")


def test_prompt_longer_than_the_context(capsys, db):
    err = one_line_error(capsys, "sql", "generate", "--db", db, "ROMEO: " * 200)
    assert "context" in err
    err = one_line_error(capsys, "sql", "generate", "--db", db, "--max-new-tokens", "120", "ROMEO: " * 5)
    assert "context" in err and "--max-new-tokens" in err and "max_new_tokens" not in err


def test_show_unknown_step(capsys, db):
    assert "no stage named" in one_line_error(capsys, "sql", "show", "--db", db, "--step", "nope")
