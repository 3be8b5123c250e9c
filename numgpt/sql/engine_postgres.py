"""PostgreSQL: DB is a postgresql:// or postgres:// URL (psycopg 3). A connection to the server, and
PostgreSQL's way of holding a model -- each weight row *wide* (one column per input, at most WIDE_MAX,
dialects.py), or with export's product="cube" as points of the `cube` contrib module (wpe stays wide),
the stages on rows (layers.py), a session's state keyed by position, in temporary tables or, when
several connections split each product, UNLOGGED tables of a schema made for the session."""

from __future__ import annotations

import secrets
from contextlib import contextmanager

import numpy as np

from ..errors import NumgptError
from .dialects import PostgresDialect, chunk_width, cube_width
from .engines import INSTALL_HINT, PARAMETER, DatabaseError, Engine, first_line, shown, used_parameters
from .statements import (MATRICES, layer_norms, row_forward_stages, row_model_statements, row_state_tables,
                         weight_tables)

STATE = ["numgpt_seq", "numgpt_resid", "numgpt_heads_out", "numgpt_mid", "numgpt_hidden", "numgpt_q", "numgpt_kv",
         "numgpt_logits"]
STEP_STATE = ["numgpt_resid", "numgpt_heads_out", "numgpt_mid", "numgpt_hidden", "numgpt_q"]
CLEANUP_EVERY = 32   # decode steps between dropping the rows of old positions
EXPORT_LOCK = 0x6E756D677074   # "numgpt": the advisory lock an export holds alone and sessions share
RUN_SCHEMA = "numgpt_run_"   # + the backend pid + random hex: a multi-connection session's state


class PostgresEngine(Engine):
    name = "postgresql"
    dialect_class = PostgresDialect
    default_connections = 2   # a server runs one statement on one core: two connections, two cores

    def __init__(self, db: str):
        try:
            import psycopg
        except ImportError:
            raise NumgptError(f"the PostgreSQL engine needs psycopg 3: {INSTALL_HINT}") from None
        self._psycopg = psycopg
        self.db = str(db)
        self._names: dict[str, list[str]] = {}   # SQL text -> its parameter names (_stage_parameters)
        self._placeholders: dict[str, str] = {}  # SQL text -> its psycopg form, for the prepared stages
        self.run_schema: str | None = None
        self._steps_since_cleanup = 0
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

    # ---- the connection ---------------------------------------------------------------------------

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

    def close(self, *, detach=False):
        if self._con.closed:
            return
        try:
            if self.run_schema is not None:
                self.execute(f'DROP SCHEMA IF EXISTS "{self.run_schema}" CASCADE')
            # subtle: the export's and the sessions' advisory locks are given back here, not left to the
            # connection's end: the server process ends a moment after the client hangs up, and a session
            # opened right after an export was told (in CI, 1 run in ~20) "an export ... is under way"
            self.execute("SELECT pg_advisory_unlock_all()")
        except NumgptError:
            pass   # a connection already gone: the next multi-connection session drops the schema
        finally:
            self._con.close()

    def database_size(self):
        return int(self.rows("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class AS c "
                             "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                             "WHERE c.relname LIKE 'numgpt%' AND c.relkind = 'r' AND n.nspname = current_schema()")[0][0] or 0)

    def has_table(self, table):
        """pg_class, not information_schema: information_schema lists only the tables a role has some
        privilege on, so a role without SELECT was told the database held no export."""
        return bool(self.rows("SELECT 1 FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                              "WHERE c.relname = :name AND n.nspname = current_schema()", {"name": table}))

    def unreadable(self, tables):
        return [t for (t,) in self.rows(
            "SELECT t FROM unnest(CAST(:tables AS TEXT[])) WITH ORDINALITY AS u(t, k) WHERE to_regclass(t) IS NOT NULL "
            "AND NOT has_table_privilege(t, 'SELECT') ORDER BY k", {"tables": list(tables)})]

    def hold_for_reading(self):
        """A shared advisory lock until the connection closes: exports take it alone (begin_export), so
        an export --force cannot drop the tables under a running session, and a session that starts
        during an export is told so."""
        if not self.rows("SELECT pg_try_advisory_lock_shared(:key)", {"key": EXPORT_LOCK})[0][0]:
            raise NumgptError(f"an export into {shown(self.db)} is under way (numgpt sql export); try again "
                              "when it has finished")

    # ---- the model: export ------------------------------------------------------------------------

    def begin_export(self):
        """The export lock, alone (sessions share it: hold_for_reading): two exports into one database
        at once, or an export under a running session, are refused by name."""
        if self.rows("SELECT pg_try_advisory_lock(:key)", {"key": EXPORT_LOCK})[0][0]:
            return
        exclusive = self.rows("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                              "database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND "
                              "mode = 'ExclusiveLock' AND (classid::bigint << 32 | objid::bigint) = :key",
                              {"key": EXPORT_LOCK})[0][0]
        if exclusive:
            raise NumgptError(f"another numgpt sql export is writing into {shown(self.db)}; wait for it to finish")
        raise NumgptError(f"{shown(self.db)} is in use by a numgpt session (sql generate, next, tokenize or a "
                          "Python connect()); replace its export when the sessions have closed")

    def create_weight_tables(self, config, d):
        if d.product == "cube":
            self._create_cube_extension()
        for table, n_in in weight_tables(config):
            k = chunk_width(n_in)
            if d.product == "cube" and table != "numgpt_wpe":   # wpe is only read, never multiplied
                self._create_cube_table(table, k)
                continue
            cols = ", ".join(f"c{n} {d.float_type}" for n in range(1, k + 1))
            self.execute(f"CREATE TABLE {table} (layer INTEGER, j INTEGER, chunk INTEGER, b FLOAT8, {cols})")
        self.execute(f"CREATE TABLE numgpt_ln (layer INTEGER, name {d.text}, i INTEGER, weight FLOAT8, bias FLOAT8)")

    def best_product(self):
        """"cube" when the cube module is installed in the database, or available to the server and the role
        may create it (CREATE on the database: cube is a trusted extension); "wide" otherwise."""
        installed, available, may_create = self.rows(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'cube'), "
            "EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'cube'), "
            "has_database_privilege(current_database(), 'CREATE')")[0]
        return "cube" if installed or (available and may_create) else "wide"

    def product_note(self, product):
        return f", {product} products"

    def _create_cube_extension(self) -> None:
        try:
            self.execute("CREATE EXTENSION IF NOT EXISTS cube")
        except NumgptError as e:
            raise NumgptError(f"product 'cube' needs PostgreSQL's cube module (contrib) in {shown(self.db)}, and "
                              f"the right to create it (CREATE on the database): {e}") from None

    def _create_cube_table(self, table: str, k: int) -> None:
        """product="cube": a weight row's chunk of k inputs as k / M points of M dimensions, c1 .. cP, and
        its squared norm sq (layers.linear_chunks_cube); stored inline (PLAIN), never compressed."""
        parts = k // cube_width(k)
        cols = ", ".join(f"c{p} cube" for p in range(1, parts + 1))
        self.execute(f"CREATE TABLE {table} (layer INTEGER, j INTEGER, chunk INTEGER, b FLOAT8, sq FLOAT8, {cols})")
        for p in range(1, parts + 1):
            self.execute(f"ALTER TABLE {table} ALTER COLUMN c{p} SET STORAGE PLAIN")

    def load_weights(self, params, config, d, progress):
        f, C, L = d.numpy_float, config.n_embd, config.n_layer
        load = self._load_cube_matrix if d.product == "cube" else self._load_matrix
        progress("embeddings")
        load("numgpt_wte", 0, params["wte.weight"], None, f)
        self._load_matrix("numgpt_wpe", 0, params["wpe.weight"], None, f)
        for layer in range(L):
            progress(f"block {layer + 1}/{L}")
            for table, (name, _, _) in MATRICES.items():
                weight = params[f"h.{layer}.{name}.weight"]                       # [in, out]
                load(table, layer, weight.T, params[f"h.{layer}.{name}.bias"], f)
        for layer, name, key in layer_norms(config):   # one row per element
            self.load("numgpt_ln", {"layer": np.full(C, layer, np.int32), "name": np.array([name] * C, object),
                                    "i": np.arange(C, dtype=np.int32),
                                    "weight": params[key + ".weight"].astype(np.float64),
                                    "bias": params[key + ".bias"].astype(np.float64)})

    def _load_matrix(self, table: str, layer: int, rows: np.ndarray, bias, f) -> None:
        """rows [n_out, n_in] (output j's weights over the inputs, W^T of an [in, out] weight) as wide
        rows of chunk_width(n_in) columns, the bias in chunk 0's row."""
        n_out, n_in = rows.shape
        bias = np.zeros(n_out) if bias is None else np.asarray(bias, np.float64)
        j = np.arange(n_out, dtype=np.int32)
        k = chunk_width(n_in)
        chunks = n_in // k
        wide = np.asarray(rows, f).reshape(n_out * chunks, k)                  # [n_out, n_in] -> [n_out * chunks, K]
        chunk = np.tile(np.arange(chunks, dtype=np.int32), n_out)
        self.load(table, {"layer": np.full(n_out * chunks, layer, np.int32), "j": np.repeat(j, chunks),
                          "chunk": chunk, "b": np.where(chunk == 0, np.repeat(bias, chunks), 0.0), "c": wide})

    def _load_cube_matrix(self, table: str, layer: int, rows: np.ndarray, bias, f) -> None:
        """_load_matrix's rows, as cubes: written wide into a temporary table by binary COPY, then each
        chunk's columns made into points (and their squared norm) by the server."""
        n_in = rows.shape[1]
        k = chunk_width(n_in)
        m = cube_width(k)
        cols = ", ".join(f"c{n} {'FLOAT4' if f == np.float32 else 'FLOAT8'}" for n in range(1, k + 1))
        self.execute("DROP TABLE IF EXISTS numgpt_staging")
        self.execute(f"CREATE TEMP TABLE numgpt_staging (layer INTEGER, j INTEGER, chunk INTEGER, b FLOAT8, {cols})")
        self._load_matrix("numgpt_staging", layer, rows, bias, f)
        points = ", ".join(f"cube(CAST(ARRAY[{', '.join(f'c{p * m + n}' for n in range(1, m + 1))}] AS FLOAT8[]))"
                           for p in range(k // m))
        squares = " + ".join(f"CAST(c{n} AS FLOAT8) * CAST(c{n} AS FLOAT8)" for n in range(1, k + 1))
        self.execute(f"INSERT INTO {table} SELECT layer, j, chunk, b, {squares}, {points} FROM numgpt_staging")
        self.execute("DROP TABLE numgpt_staging")

    def index_weights(self):
        # a product reads one layer's rows of one chunk, outputs :lo .. :hi (and embed one token's row):
        # without an index PostgreSQL scanned all n_layer layers' wide rows for each product (32 ms of a
        # 124M c_fc), and all of wte for one id
        for table in ["numgpt_wte", *MATRICES]:
            self.execute(f"CREATE INDEX {table}_layer_chunk_j ON {table} (layer, chunk, j)")
        for table in ["numgpt_wte", "numgpt_wpe"]:
            self.execute(f"CREATE INDEX {table}_layer_j ON {table} (layer, j)")
        self.execute("CREATE INDEX numgpt_ln_layer_i ON numgpt_ln (layer, i)")

    def finish_export(self, tables, progress):
        # subtle: done here, not left to autovacuum: a fresh bulk load is vacuumed (and every row's
        # hint bits written) by the first scans and by autovacuum, which ran on the second core
        # through the first minutes of generation (a 124M step: 1.0 s instead of 0.9 s)
        progress("vacuum and analyze")
        for table in tables:
            self.execute(f"VACUUM (ANALYZE) {table}")

    def export_label(self):
        return "postgresql database"

    # ---- the model: a session ---------------------------------------------------------------------

    def model_statements(self, config, d):
        return row_model_statements(config, d)

    def forward_stages(self, config):
        return row_forward_stages(config)

    def open_workers(self, count):
        """A schema of the session's own for state that several connections share, and the other
        connections, all with it first on their search_path; none where the role may not create a
        schema or the server takes no more connections. Schemas left by sessions whose server process
        is gone are dropped first."""
        if count < 1:
            return []
        self._drop_stale_schemas()
        pid = int(self.rows("SELECT pg_backend_pid()")[0][0])
        name = f"{RUN_SCHEMA}{pid}_{secrets.token_hex(4)}"
        try:
            self.execute(f'CREATE SCHEMA "{name}"')
        except NumgptError:
            return []
        original = self.rows("SELECT current_setting('search_path')")[0][0]
        path = f'"{name}", {original}'
        workers: list[Engine] = []
        try:
            for _ in range(count):
                workers.append(PostgresEngine(self.db))
                workers[-1].execute(f"SET search_path TO {path}")
        except NumgptError:   # e.g. the server's max_connections reached: one connection, temporary tables
            for worker in workers:
                worker.close()
            self.execute(f'DROP SCHEMA "{name}" CASCADE')
            return []
        self.execute(f"SET search_path TO {path}")
        self.run_schema = name
        return workers

    def _drop_stale_schemas(self) -> None:
        stale = self.rows("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, :prefix) AND NOT EXISTS "
                          "(SELECT 1 FROM pg_stat_activity WHERE pid::text = split_part(nspname, '_', 3))",
                          {"prefix": RUN_SCHEMA})
        for (name,) in stale:
            try:
                self.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            except NumgptError:
                pass   # another role's: not ours to drop

    def state_tables(self, config, shared):
        return row_state_tables(config, "UNLOGGED" if shared else "TEMP")

    def clear_sequence(self):
        self.execute(f"TRUNCATE {', '.join(STATE)}")
        self._steps_since_cleanup = 0

    def clear_step(self, past):
        """The state is keyed by position and read with t >= :past, so nothing is deleted between steps:
        emptying it (TRUNCATE) would make every prepared stage plan again (~10 ms each), and DELETE
        leaves dead rows. Rows of old positions are deleted and vacuumed every CLEANUP_EVERY steps;
        only the logits are emptied every step.
        subtle: that TRUNCATE invalidates the cached plans naming numgpt_logits, so the logits stage is
        planned again at every step on every connection (8 ms each, pg_stat_statements, bench_sql's
        profile): ~1% of a 124M token, kept (DELETE would leave 50,257 dead rows a step for the pick)."""
        self._steps_since_cleanup += 1
        if self._steps_since_cleanup > CLEANUP_EVERY:
            for table in STEP_STATE:
                self.execute(f"DELETE FROM {table} WHERE t < :past", {"past": past})
                self.execute(f"VACUUM {table}")
            self._steps_since_cleanup = 0
        self.execute("TRUNCATE numgpt_logits")
