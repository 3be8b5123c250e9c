"""The engine as an object: one class per database engine with the same methods, so nothing else in
numgpt/sql asks which engine it has.

    DuckDB      engine_duckdb.py: DB is a file path (the embedded default; `pip install "numgpt[sql]"`)
    PostgreSQL  engine_postgres.py: DB is a postgresql:// or postgres:// URL (psycopg 3), e.g.
                postgresql://user@localhost/dbname or postgresql:///dbname?host=/path/to/socket

An engine is a connection (run a statement with :name parameters, fetch rows, run a transaction,
bulk-load numpy columns) and the engine's own way of holding a model: its SQL dialect (dialects.py),
how the weights are stored, which statements compute a forward pass and what state they keep between
steps. duckdb and psycopg are imported only when a connection is opened, so `import numgpt` never
needs them. Every failure to open or use a database becomes a one-line NumgptError that says what to do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..config import GPTConfig
from ..errors import NumgptError
from .dialects import Dialect
from .statements import Stage, Statement

PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z_0-9]*)")   # :name, not ::type
INSTALL_HINT = 'pip install "numgpt[sql]"'
Progress = Callable[[str], None]


def is_postgres(db: str) -> bool:
    return str(db).startswith(("postgresql://", "postgres://"))


def shown(db: str) -> str:
    """The DB as error messages show it: a URL without its password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", str(db))


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0].strip() if text else type(error).__name__


class Engine:
    """A connection to one database and its engine's way of holding a model (DuckDBEngine,
    PostgresEngine)."""

    name: str                      # "duckdb" or "postgresql", for messages and numgpt_meta
    db: str
    dialect_class: type[Dialect]
    default_connections = 1        # a session's connections unless told otherwise
    run_schema: str | None = None  # a multi-connection session's own schema (PostgreSQL)

    # ---- the connection ---------------------------------------------------------------------------

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

    def close(self, *, detach: bool = False) -> None:
        """Close the connection; closing again does nothing. detach: see DuckDBEngine.close."""
        raise NotImplementedError

    def best_product(self) -> str:
        """The matrix product export's product="auto" writes here (PostgresEngine's may be "cube")."""
        return "wide"

    def product_note(self, product: str) -> str:
        """What the export's summary line says of its products: nothing where there is no choice."""
        return ""

    def dialect(self, precision: str, product: str = "wide") -> Dialect:
        if product != "wide" and self.name != "postgresql":
            raise NumgptError(f"product {product!r} is PostgreSQL's (the cube module); {self.name} multiplies "
                              "arrays: leave product at 'wide'")
        return self.dialect_class(precision, product)

    def has_table(self, table: str) -> bool:
        """Whether the current schema holds this table (whatever the role may do with it)."""
        return bool(self.rows("SELECT 1 FROM information_schema.tables WHERE table_name = :name "
                              "AND table_schema = current_schema() AND table_catalog = current_database()",
                              {"name": table}))

    def unreadable(self, tables: list[str]) -> list[str]:
        """Those of `tables` that this connection's role may not SELECT from."""
        return []

    def hold_for_reading(self) -> None:
        """A session's claim on the export, for its lifetime: refused (NumgptError) while an export into
        this database is under way."""

    def database_size(self) -> int:
        """Bytes the database takes (file or server-side)."""
        raise NotImplementedError

    # ---- the model: export ------------------------------------------------------------------------

    def begin_export(self) -> None:
        """Before anything is written: the export's claim on the database (refused while another export
        or a session holds it) and its settings."""

    def staging_file(self, tables: list[str]) -> str | None:
        """Where an export is written before it takes this database's place (DuckDB: a fresh file beside
        it, when it holds nothing but `tables`); None: the export replaces its tables in place, in one
        transaction (PostgreSQL; a DuckDB file that holds other things too)."""
        return None

    def create_weight_tables(self, config: GPTConfig, d: Dialect) -> None:
        """The matrices' tables and numgpt_ln, in the engine's layout (export.py's schema)."""
        raise NotImplementedError

    def load_weights(self, params: Mapping[str, np.ndarray], config: GPTConfig, d: Dialect,
                     progress: Progress) -> None:
        """Every matrix and LayerNorm of the model into the tables of create_weight_tables."""
        raise NotImplementedError

    def index_weights(self) -> None:
        """Indexes on the weights, once they are loaded."""

    def finish_export(self, tables: list[str], progress: Progress) -> None:
        """Work after the export's last transaction."""

    def export_label(self) -> str:
        """Where an export went, as `numgpt sql export` prints it."""
        raise NotImplementedError

    # ---- the model: a session ---------------------------------------------------------------------

    def model_statements(self, config: GPTConfig, d: Dialect) -> list[Statement]:
        """The model's statements for this engine (statements.py), stored by export."""
        raise NotImplementedError

    def forward_stages(self, config: GPTConfig) -> list[Stage]:
        """The stages of one forward pass, in order, as a session runs them."""
        raise NotImplementedError

    def open_workers(self, count: int) -> list["Engine"]:
        """Up to `count` more connections that share the session's state and split each product's
        outputs; none where the engine (or the role, or the server) cannot."""
        return []

    def state_tables(self, config: GPTConfig, shared: bool) -> list[str]:
        """CREATE statements for a session's state (statements.py); shared: other connections read it."""
        raise NotImplementedError

    def clear_sequence(self) -> None:
        """Forget a session's sequence and KV cache."""
        raise NotImplementedError

    def clear_step(self, past: int) -> None:
        """Before a forward pass of positions past ..: empty what the last step left for this one."""
        raise NotImplementedError


def used_parameters(sql: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters a statement names (DuckDB refuses extra ones); a missing one is a bug here."""
    names = set(PARAMETER.findall(sql))
    params = dict(params or {})
    missing = names - set(params)
    if missing:
        raise KeyError(f"statement parameters not given: {sorted(missing)}")
    return {k: params[k] for k in names}


class DamagedDatabase(NumgptError):
    """A database file its engine cannot read (cut short, or corrupt): `export(..., force=True)` replaces it."""


class DatabaseError(NumgptError):
    """An error the engine reported for a statement: one line naming the engine and the error."""

    def __init__(self, engine: Engine, error: BaseException):
        super().__init__(f"{engine.name} error on {shown(engine.db)}: {first_line(error)}")


def open_engine(db: str, *, create: bool = False, threads: int | None = None) -> Engine:
    """The engine for DB: PostgreSQL for a postgresql:// URL, else DuckDB on a file path."""
    if not isinstance(db, str) or not db:
        raise NumgptError(f"db must be a DuckDB file path or a postgresql:// URL, got {db!r}")
    if is_postgres(db):
        from .engine_postgres import PostgresEngine
        return PostgresEngine(db)
    if "://" in db:
        raise NumgptError(f"unknown database URL {shown(db)}: use a DuckDB file path or postgresql://...")
    from .engine_duckdb import DuckDBEngine
    return DuckDBEngine(db, create=create, threads=threads)
