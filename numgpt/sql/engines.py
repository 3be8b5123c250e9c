"""The two engines behind one small interface: open a connection, run a statement with :name
parameters, fetch rows, run a transaction, bulk-load numpy columns. duckdb and psycopg are imported
here only, when a connection is opened, so `import numgpt` never needs them.

    DuckDB      DB is a file path (the embedded default; `pip install "numgpt[sql]"`)
    PostgreSQL  DB is a postgresql:// or postgres:// URL (psycopg 3), e.g.
                postgresql://user@localhost/dbname or postgresql:///dbname?host=/path/to/socket

Every failure to open or use a database becomes a one-line NumgptError that says what to do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NumgptError
from .dialects import Dialect, quote

PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z_0-9]*)")   # :name, not ::type
INSTALL_HINT = 'pip install "numgpt[sql]"'
ROW_GROUP_SIZE = 2048   # DuckDB: rows per row group of the weight tables (its minimum, the vector size)


def is_postgres(db: str) -> bool:
    return str(db).startswith(("postgresql://", "postgres://"))


def shown(db: str) -> str:
    """The DB as error messages show it: a URL without its password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", str(db))


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0].strip() if text else type(error).__name__


class Engine:
    """A connection to one database; `name` is "duckdb" or "postgresql"."""

    name: str
    db: str

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        raise NotImplementedError

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        raise NotImplementedError

    def execute_prepared(self, sql: str, params: Mapping[str, int]) -> None:
        """`execute` for a statement run many times (the model's stages): planned once per connection,
        then run with these integer parameters."""
        self.execute(sql, params)

    def _stage_parameters(self, sql: str) -> list[str]:
        """The :names a stage uses, found once per statement text: scanning a 124M stage's text (27 kB)
        at every call cost ~1 ms of Python, under the GIL that a session's connections share."""
        names = self._names.get(sql)
        if names is None:
            names = self._names[sql] = sorted(set(PARAMETER.findall(sql)))
        return names

    @contextmanager
    def transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    def load(self, table: str, columns: Mapping[str, np.ndarray]) -> None:
        """Append rows to `table`: one numpy array per column, in the table's column order (2-D arrays
        [rows, n] fill n consecutive columns, or one fixed-size array column on DuckDB)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def dialect(self, precision: str) -> Dialect:
        return Dialect(self.name, precision)

    def has_table(self, table: str) -> bool:
        return bool(self.rows("SELECT 1 FROM information_schema.tables WHERE table_name = :name "
                              "AND table_schema = current_schema() AND table_catalog = current_database()",
                              {"name": table}))

    def database_size(self) -> int:
        """Bytes the database takes (file or server-side)."""
        raise NotImplementedError


def used_parameters(sql: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters a statement names (DuckDB refuses extra ones); a missing one is a bug here."""
    names = set(PARAMETER.findall(sql))
    params = dict(params or {})
    missing = names - set(params)
    if missing:
        raise KeyError(f"statement parameters not given: {sorted(missing)}")
    return {k: params[k] for k in names}


# ---- DuckDB -------------------------------------------------------------------------------------------

class DuckDBEngine(Engine):
    name = "duckdb"

    def __init__(self, db: str, *, create: bool, threads: int | None = None):
        try:
            import duckdb
        except ImportError:
            raise NumgptError(f"the DuckDB engine needs the duckdb package: {INSTALL_HINT}") from None
        self._duckdb = duckdb
        self.db = str(db)
        path = Path(db)
        if not create and not path.is_file():
            raise NumgptError(f"no such database: {db}; make one with `numgpt sql export --db {db}`")
        if path.is_dir():
            raise NumgptError(f"{db} is a folder; --db takes a DuckDB file path or a postgresql:// URL")
        self._prepared: dict[str, str] = {}   # SQL text -> the name it is PREPAREd under
        self._names: dict[str, list[str]] = {}   # SQL text -> its parameter names (_stage_parameters)
        try:
            # subtle: attached with small row groups. DuckDB splits a scan between its threads by row
            # group (122,880 rows by default), so a layer's weights (768-3072 rows) ran on one thread
            # and a second core did nothing; written and read in groups of 2048 rows, the 124M logits
            # product (wte, 50,257 rows) took 55 ms on two threads instead of 101 ms
            # (ROW_GROUP_SIZE is an ATTACH option, so the file is attached to an in-memory database,
            # one named instance per process: DuckDB refuses to attach a file to two instances at once,
            # and two sessions on one file are two connections to the instance)
            self._con = duckdb.connect(":memory:numgpt")
            self._alias = "numgpt_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
            self._con.execute(f"ATTACH IF NOT EXISTS {quote(str(path))} AS {self._alias} "
                              f"(ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
            self._con.execute(f"USE {self._alias}")
            if threads:
                self._con.execute(f"SET threads = {int(threads)}")
        except duckdb.Error as e:
            raise NumgptError(f"cannot open {db} as a DuckDB database: {first_line(e)}") from None

    def _sql(self, sql: str) -> str:
        return PARAMETER.sub(r"$\1", sql)

    def execute(self, sql, params=None):
        self._run(sql, params)

    def rows(self, sql, params=None):
        return self._run(sql, params).fetchall()

    def _run(self, sql, params):
        try:
            return self._con.execute(self._sql(sql), used_parameters(sql, params))
        except self._duckdb.Error as e:
            raise DatabaseError(self, e) from None

    def execute_prepared(self, sql, params):
        """SQL PREPARE once, then EXECUTE name(k := v): planning a stage took ~1 ms of its run, ~50 ms of
        a 124M decode step (the Python API plans a statement at every execute)."""
        name = self._prepared.get(sql)
        try:
            if name is None:
                name = self._prepared[sql] = f"numgpt_stage_{len(self._prepared)}"
                self._con.execute(f"PREPARE {name} AS {self._sql(sql)}")
            args = ", ".join(f"{k} := {int(params[k])}" for k in self._stage_parameters(sql))
            self._con.execute(f"EXECUTE {name}({args})" if args else f"EXECUTE {name}")
        except self._duckdb.Error as e:
            raise DatabaseError(self, e) from None

    @contextmanager
    def transaction(self):
        self._con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def load(self, table, columns):
        names = [r[0] for r in self._con.execute(f"DESCRIBE {table}").fetchall()]
        types = {r[0]: r[1] for r in self._con.execute(f"DESCRIBE {table}").fetchall()}
        frame: dict[str, np.ndarray] = {}
        select = []
        for name, values in zip(names, columns.values()):
            if values.ndim == 2:   # one fixed-size array column, built from n plain columns
                parts = [f"{name}_{k}" for k in range(values.shape[1])]
                frame.update({p: np.ascontiguousarray(values[:, k]) for k, p in enumerate(parts)})
                select.append(f"CAST([{', '.join(parts)}] AS {types[name]})")
            else:
                frame[name] = values
                select.append(f"CAST({name} AS {types[name]})")
        self._con.register("numgpt_load", frame)
        try:
            self._con.execute(f"INSERT INTO {table} SELECT {', '.join(select)} FROM numgpt_load")
        finally:
            self._con.unregister("numgpt_load")

    def close(self):
        self._con.close()

    def database_size(self):
        self._con.execute(f"CHECKPOINT {self._alias}")
        return Path(self.db).stat().st_size


# ---- PostgreSQL ---------------------------------------------------------------------------------------

class PostgresEngine(Engine):
    name = "postgresql"

    def __init__(self, db: str):
        try:
            import psycopg
        except ImportError:
            raise NumgptError(f"the PostgreSQL engine needs psycopg 3: {INSTALL_HINT}") from None
        self._psycopg = psycopg
        self.db = str(db)
        self._names: dict[str, list[str]] = {}   # SQL text -> its parameter names (_stage_parameters)
        self._placeholders: dict[str, str] = {}  # SQL text -> its psycopg form, for the prepared stages
        try:
            self._con = psycopg.connect(self.db, autocommit=True, connect_timeout=10)
        except psycopg.ProgrammingError as e:
            raise NumgptError(f"not a valid PostgreSQL URL: {shown(db)} ({first_line(e)})") from None
        except psycopg.Error as e:
            raise NumgptError(f"cannot connect to PostgreSQL at {shown(db)}: {first_line(e)}") from None
        # jit recompiles the long wide-row expressions on every execution; the session's work is small
        # enough that it only costs (measured: BENCHMARKS.md)
        self._con.execute("SET jit = off")
        # subtle: the session's state tables are temporary, so autovacuum never gathers their statistics,
        # and without them the planner picks nested loops for the equi-joins of attention (100x slower)
        self._con.execute("SET enable_nestloop = off")
        # the stages are planned once (server-side prepared, below) and the plan kept: a custom plan per
        # execution spent up to 66 ms planning a 124M stage, more than running it
        self._con.execute("SET plan_cache_mode = force_generic_plan")
        # sorts and hashes of a step (x's chunks, the 124M logits) stay in memory instead of on disk
        self._con.execute("SET work_mem = '256MB'")

    def _sql(self, sql: str) -> str:
        return PARAMETER.sub(r"%(\1)s", sql.replace("%", "%%"))

    def execute(self, sql, params=None):
        self._run(sql, params, fetch=False)

    def rows(self, sql, params=None):
        return self._run(sql, params, fetch=True)

    def execute_prepared(self, sql, params):
        """Server-side prepared (psycopg's prepare=True) with a generic plan (see __init__); the text's
        psycopg form and its parameters are worked out once per statement."""
        text = self._placeholders.get(sql)
        if text is None:
            text = self._placeholders[sql] = self._sql(sql)
        try:
            self._con.execute(text, {k: params[k] for k in self._stage_parameters(sql)}, prepare=True)
        except self._psycopg.OperationalError as e:
            raise NumgptError(f"the PostgreSQL connection to {shown(self.db)} failed: {first_line(e)}") from None
        except self._psycopg.Error as e:
            raise DatabaseError(self, e) from None

    def _run(self, sql, params, *, fetch, prepare=None):
        try:
            cur = self._con.execute(self._sql(sql), used_parameters(sql, params), prepare=prepare)
            return cur.fetchall() if fetch else None
        except self._psycopg.OperationalError as e:
            raise NumgptError(f"the PostgreSQL connection to {shown(self.db)} failed: {first_line(e)}") from None
        except self._psycopg.Error as e:
            raise DatabaseError(self, e) from None

    @contextmanager
    def transaction(self):
        with self._con.transaction():
            yield

    def load(self, table, columns):
        """COPY ... FROM STDIN in PostgreSQL's binary format, built by numpy (no per-value Python);
        columns of Python objects (text, bytes) go as COPY's text rows instead."""
        if any(v.dtype == object or v.dtype.kind == "U" for v in columns.values()):
            with self._con.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as copy:
                for row in zip(*(v.tolist() for v in columns.values())):
                    copy.write_row(row)
            return
        fields = []
        for values in columns.values():
            values = values if values.ndim == 2 else values[:, None]
            fields.extend(values[:, k] for k in range(values.shape[1]))
        n = len(fields[0])
        dtype = [("count", ">i2")]
        for k, f in enumerate(fields):
            if f.dtype.kind in "iu":
                code = ">i4"
            elif f.dtype == np.float32:
                code = ">f4"
            elif f.dtype == np.float64:
                code = ">f8"
            else:
                raise TypeError(f"binary COPY of {f.dtype} is not written here")
            dtype += [(f"len{k}", ">i4"), (f"v{k}", code)]
        rows = np.empty(n, dtype=dtype)
        rows["count"] = len(fields)
        for k, f in enumerate(fields):
            rows[f"len{k}"] = rows.dtype[f"v{k}"].itemsize
            rows[f"v{k}"] = f
        header = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
        with self._con.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(header)
            step = max(1, (1 << 24) // rows.dtype.itemsize)
            for start in range(0, n, step):
                copy.write(rows[start:start + step].tobytes())
            copy.write((-1).to_bytes(2, "big", signed=True))

    def close(self):
        self._con.close()

    def database_size(self):
        return int(self.rows("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class AS c "
                             "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                             "WHERE c.relname LIKE 'numgpt%' AND c.relkind = 'r' AND n.nspname = current_schema()")[0][0] or 0)


class DatabaseError(NumgptError):
    """An error the engine reported for a statement: one line naming the engine and the error."""

    def __init__(self, engine: Engine, error: BaseException):
        super().__init__(f"{engine.name} error on {shown(engine.db)}: {first_line(error)}")


def open_engine(db: str, *, create: bool = False, threads: int | None = None) -> Engine:
    """The engine for DB: PostgreSQL for a postgresql:// URL, else DuckDB on a file path."""
    if not isinstance(db, str) or not db:
        raise NumgptError("--db needs a DuckDB file path or a postgresql:// URL")
    if is_postgres(db):
        return PostgresEngine(db)
    if "://" in db:
        raise NumgptError(f"unknown database URL {shown(db)}: use a DuckDB file path or postgresql://...")
    return DuckDBEngine(db, create=create, threads=threads)
