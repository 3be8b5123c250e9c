"""Support for the SQL tests (issue 12): a PostgreSQL 15 server the tests start themselves, and exports
made once per session. No tests of its own.

The server: `initdb` into a temporary folder, `pg_ctl start` listening only on a unix socket in that
folder (no TCP), stopped when the session ends; shared_buffers 1 GB, so a 124M export's weights (650 MB)
stay in the server's cache as on a tuned server (the default, 128 MB, rereads them every step). PostgreSQL refuses to run as root, so as root the folder
belongs to the `postgres` user and the server runs as that user (runuser). Where the binaries are absent
the PostgreSQL tests skip with the reason (-rs prints it); .ci/run installs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER = pytest.StashKey()
EXPORTS = pytest.StashKey()


class PostgresServer:
    """A throwaway cluster on a unix socket; `dsn(db)` is the URL of one of its databases."""

    def __init__(self, settings: dict[str, str] | None = None):
        """settings: more server settings (name -> value, as `-c name=value`), e.g. the benchmark's
        pg_stat_statements; the tests use none."""
        self.folder = Path(tempfile.mkdtemp(prefix="numgpt-pg-"))
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.folder, "postgres")
        self.data = self.folder / "data"
        self._run(PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8")
        options = {"jit": "off", "fsync": "off", "shared_buffers": "1GB", **(settings or {})}
        extra = " ".join(f"-c {name}={value}" for name, value in options.items())
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.folder / "log", "-w", "-o",
                  f"-c listen_addresses='' -k {self.folder} {extra}", "start")

    def _run(self, *argv) -> None:
        argv = [str(a) for a in argv]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        subprocess.run(argv, check=True, capture_output=True, text=True)

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@/{db}?host={self.folder}"

    def create_database(self) -> str:
        import psycopg
        name = "numgpt_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.dsn(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        try:
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def postgres_server(request) -> PostgresServer:
    """The session's server, started on first use."""
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL 15 server binaries are absent ({PG_BIN}/initdb): apt-get install postgresql "
                    "(.ci/run does)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    config = request.config
    if SERVER not in config.stash:
        server = PostgresServer()
        config.stash[SERVER] = server
        config.add_cleanup(server.stop)
    return config.stash[SERVER]


def new_database(request, engine: str, tmp_path_factory) -> str:
    """An empty database of the engine: a DuckDB file path, or a new PostgreSQL database's URL."""
    if engine == "duckdb":
        pytest.importorskip("duckdb", reason="duckdb is not installed (pip install -e '.[test]')")
        return str(tmp_path_factory.mktemp("sql") / "model.duckdb")
    return postgres_server(request).create_database()


def exported(request, tmp_path_factory, engine: str, key: str, model_factory, precision: str = "float32") -> str:
    """The database of `model_factory()` exported once per session for (engine, key, precision)."""
    config = request.config
    cache = config.stash.setdefault(EXPORTS, {})
    k = (engine, key, precision)
    if k not in cache:
        import numgpt.sql
        db = new_database(request, engine, tmp_path_factory)
        numgpt.sql.export(model_factory(), db, precision=precision)
        cache[k] = db
    return cache[k]


ENGINES = ["duckdb", "postgresql"]
