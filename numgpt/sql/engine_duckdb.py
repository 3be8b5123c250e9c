"""DuckDB, the embedded default: DB is a file path. A connection to the file, and DuckDB's way of
holding a model -- each weight row a fixed-size FLOAT8[n] array multiplied by array_inner_product, the
stages on arrays (array_layers.py), a session's state in temporary tables emptied between steps."""

from __future__ import annotations

import hashlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import NumgptError
from .dialects import DuckDBDialect, quote
from .engines import INSTALL_HINT, PARAMETER, DamagedDatabase, DatabaseError, Engine, first_line, used_parameters
from .statements import (MATRICES, array_forward_stages, array_model_statements, array_state_tables,
                         layer_norms, weight_tables)

ROW_GROUP_SIZE = 2048   # rows per row group of the weight tables (DuckDB's minimum, the vector size)
CLEAR_STEP = ["DELETE FROM numgpt_resid", "DELETE FROM numgpt_logits"]
CLEAR_SEQUENCE = ["DELETE FROM numgpt_seq", "DELETE FROM numgpt_kv"]


class DuckDBEngine(Engine):
    name = "duckdb"
    dialect_class = DuckDBDialect

    def __init__(self, db: str, *, create: bool, threads: int | None = None):
        try:
            import duckdb
        except ImportError:
            raise NumgptError(f"the DuckDB engine needs the duckdb package: {INSTALL_HINT}") from None
        self._duckdb = duckdb
        self.db = str(db)
        path = Path(db)
        if path.is_dir():
            raise NumgptError(f"{db} is a folder, not a database: give a DuckDB file path or a postgresql:// URL")
        if not create and not path.is_file():
            raise NumgptError(f"no such database: {db}; make one with `numgpt sql export --db {db}`")
        if create and not path.exists():
            _check_writable(path)
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
            # a session only reads the file (its state is in temporary tables), so it attaches it
            # READ_ONLY: several processes may then read one file at once (one writer excludes them all)
            mode = "" if create else ", READ_ONLY"
            self._con.execute(f"ATTACH IF NOT EXISTS {quote(str(path))} AS {self._alias} "
                              f"(ROW_GROUP_SIZE {ROW_GROUP_SIZE}{mode})")
            self._con.execute(f"USE {self._alias}")
            if threads:
                self._con.execute(f"SET threads = {int(threads)}")
            self._sigint = SigintInterrupts(self._con)
        except duckdb.Error as e:
            damaged = self._damaged(e)
            raise (DamagedDatabase(damaged) if damaged else
                   NumgptError(f"cannot open {db} as a DuckDB database: {first_line(e)}")) from None

    # ---- the connection ---------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return PARAMETER.sub(r"$\1", sql)

    def execute(self, sql, params=None):
        self._run(sql, params)

    def rows(self, sql, params=None):
        return self._run(sql, params).fetchall()

    @contextmanager
    def _reported(self) -> Iterator[None]:
        """DuckDB's errors as one line; Ctrl-C as KeyboardInterrupt. subtle: a SIGINT that arrives while
        DuckDB runs a statement interrupts it, and the Python client then raises RuntimeError("Query
        interrupted"), InterruptException, or (inside its scan of a registered numpy frame) a duckdb
        error reading "KeyboardInterrupt: ...", never KeyboardInterrupt itself: `numgpt sql` printed a
        traceback or a database error. The SIGINT reaches DuckDB through SigintInterrupts."""
        try:
            with self._sigint.statement():
                yield
        except self._duckdb.InterruptException:
            raise KeyboardInterrupt from None
        except self._duckdb.Error as e:
            # a KeyboardInterrupt raised in Python code DuckDB called (a numpy scan) comes back as an error whose
            # text is "KeyboardInterrupt: ..." or a whole "Traceback (most recent call last): ..."
            if self._sigint.interrupted or "KeyboardInterrupt" in str(e):
                raise KeyboardInterrupt from None
            damaged = self._damaged(e)
            raise (DamagedDatabase(damaged) if damaged else DatabaseError(self, e)) from None
        except RuntimeError as e:
            if "interrupted" in str(e).lower():
                raise KeyboardInterrupt from None
            raise

    def _damaged(self, error: BaseException) -> str | None:
        """The message for a file cut short (a copy or download that stopped) or corrupt (a block whose
        checksum fails), else None."""
        text = str(error)
        if (isinstance(error, self._duckdb.IOException) and "read enough bytes" in text) or \
                "Corrupt database file" in text:
            return (f"{self.db} is damaged or truncated ({first_line(error)}); export again with "
                    f"`numgpt sql export --force --db {self.db}`, which replaces it")
        return None

    def _run(self, sql, params):
        with self._reported():
            return self._con.execute(self._sql(sql), used_parameters(sql, params))

    def execute_prepared(self, sql, params):
        """SQL PREPARE once, then EXECUTE name(k := v): planning a stage took ~1 ms of its run, ~50 ms of
        a 124M decode step (the Python API plans a statement at every execute)."""
        name = self._prepared.get(sql)
        with self._reported():
            if name is None:
                name = self._prepared[sql] = f"numgpt_stage_{len(self._prepared)}"
                self._con.execute(f"PREPARE {name} AS {self._sql(sql)}")
            args = ", ".join(f"{k} := {int(params[k])}" for k in self._stage_parameters(sql))
            self._con.execute(f"EXECUTE {name}({args})" if args else f"EXECUTE {name}")

    @contextmanager
    def transaction(self):
        self._run("BEGIN TRANSACTION", None)
        try:
            yield
        except BaseException:
            try:
                self._con.execute("ROLLBACK")
            except self._duckdb.Error:
                pass   # already rolled back (a failed statement aborts the transaction); the error below says why
            raise
        self._run("COMMIT", None)

    def load(self, table, columns):
        described = self.rows(f"DESCRIBE {table}")
        names, types = [r[0] for r in described], {r[0]: r[1] for r in described}
        frame: dict[str, np.ndarray] = {}
        select = []
        for name, values in zip(names, columns.values()):
            if values.ndim == 2:   # one fixed-size array column, built from n plain columns
                parts = [f"{name}_{k}" for k in range(values.shape[1])]
                frame.update({p: np.ascontiguousarray(values[:, k]) for k, p in enumerate(parts)})
                select.append(f"CAST([{', '.join(parts)}] AS {types[name]})")
            elif values.dtype == object and types[name] == "BLOB":
                # subtle: as hex text, unhexed in SQL: DuckDB 1.x's scan of a numpy column of bytes objects
                # reads each as its repr, "b'...'", which the cast to BLOB refuses (2.0 reads them as BLOBs)
                frame[name] = np.array([bytes(v).hex() for v in values], object)
                select.append(f"unhex({name})")
            else:
                frame[name] = values
                select.append(f"CAST({name} AS {types[name]})")
        with self._reported():
            self._con.register("numgpt_load", frame)
            self._con.execute(f"INSERT INTO {table} SELECT {', '.join(select)} FROM numgpt_load")
            # subtle: not in a `finally`: after a failed (or interrupted) INSERT the transaction is
            # aborted and unregister raises TransactionException over the real error; the next
            # register replaces the view
            self._con.unregister("numgpt_load")

    def close(self, *, detach: bool = False):
        """Close the connection (again: nothing). detach: let go of the file too (the process's instance
        keeps a file attached while any of its connections is open; an export detaches the file it is
        about to replace, so that the next open reads the new one)."""
        if self._con is None:
            return
        try:
            if detach:
                self._con.execute("USE memory")                 # DuckDB detaches no connection's default
                self._con.execute(f"DETACH DATABASE IF EXISTS {self._alias}")
        finally:
            self._sigint.close()
            self._con.close()
            self._con = None

    def staging_file(self, tables):
        """A fresh file beside this one when it holds nothing but `tables` (a numgpt export, or nothing):
        the export is written there and moved over this file when complete (export.py)."""
        ours = set(tables)
        found = self.rows(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = current_database() AND NOT internal "
            "UNION ALL SELECT index_name FROM duckdb_indexes() WHERE database_name = current_database() "
            "UNION ALL SELECT sequence_name FROM duckdb_sequences() WHERE database_name = current_database() "
            "UNION ALL SELECT function_name FROM duckdb_functions() WHERE database_name = current_database() "
            "AND NOT internal "
            "UNION ALL SELECT type_name FROM duckdb_types() WHERE database_name = current_database() AND NOT internal "
            "UNION ALL SELECT schema_name FROM duckdb_schemas() WHERE database_name = current_database() "
            "AND NOT internal")
        if any(name not in ours for (name,) in found):
            return None
        path = Path(self.db)
        fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".export")
        os.close(fd)
        os.unlink(staging)      # DuckDB makes its file itself (it refuses an empty one)
        return staging

    def database_size(self):
        self._run(f"CHECKPOINT {self._alias}", None)
        return Path(self.db).stat().st_size

    # ---- the model: export ------------------------------------------------------------------------

    def begin_export(self):
        # subtle: DuckDB compresses FLOAT8 columns (ALP) when it checkpoints, and decompressing the
        # weights at every product cost ~30% of a matrix product (3.3 ms of an 11 ms 768x3072 one,
        # measured); uncompressed they take ~10% more space
        self.execute("SET force_compression = 'uncompressed'")

    def create_weight_tables(self, config, d):
        for table, n_in in weight_tables(config):
            # subtle: FLOAT8 arrays even for float32 weights (their values rounded to float32, then
            # widened): widening FLOAT4[n] inside every product cost ~0.85 ns per weight, about 100 ms of
            # a 124M decode step (BENCHMARKS.md), for twice the file size
            self.execute(f"CREATE TABLE {table} (layer INTEGER, j INTEGER, w FLOAT8[{n_in}], b FLOAT8)")
        C = config.n_embd
        self.execute(f"CREATE TABLE numgpt_ln (layer INTEGER, name {d.text}, weight FLOAT8[{C}], bias FLOAT8[{C}])")

    def load_weights(self, params, config, d, progress):
        f, L = d.numpy_float, config.n_layer
        progress("embeddings")
        for table, key in (("numgpt_wte", "wte.weight"), ("numgpt_wpe", "wpe.weight")):
            rows = params[key]
            self.load(table, {"layer": np.zeros(len(rows), np.int32), "j": np.arange(len(rows), dtype=np.int32),
                              "w": np.asarray(rows, f).astype(np.float64), "b": np.zeros(len(rows))})
        for table, (name, _, _) in MATRICES.items():
            progress(f"{table} ({L} blocks)")
            self._load_interleaved(table, [params[f"h.{layer}.{name}.weight"].T for layer in range(L)],
                                   [params[f"h.{layer}.{name}.bias"] for layer in range(L)], f)
        for layer, name, key in layer_norms(config):   # one row per LayerNorm, weight and bias as FLOAT8[C]
            self.load("numgpt_ln", {"layer": np.array([layer], np.int32), "name": np.array([name], object),
                                    "weight": params[key + ".weight"].astype(np.float64)[None],
                                    "bias": params[key + ".bias"].astype(np.float64)[None]})

    def _load_interleaved(self, table: str, rows: list[np.ndarray], biases: list[np.ndarray], f,
                          parts: int = 6) -> None:
        """Every layer's rows [n_out, n_in] of one matrix, in an order that spreads each layer over
        several row groups. DuckDB shares a scan between threads by row group (ROW_GROUP_SIZE rows), and
        a stage reads one layer: stored layer after layer, a layer's 3072 c_fc rows filled one and a half
        groups, one thread doing twice the other's work. Here each layer is cut into `parts` blocks of j
        and the blocks of G layers alternate, (layer // G, j // block, layer, j), G * block ~ a row
        group: each group holds one block of G layers, so a layer's rows are spread evenly over `parts`
        groups (measured, 124M c_fc: 6.8 ms -> 4.9 ms on two threads)."""
        n_out = rows[0].shape[0]
        block = -(-n_out // parts)
        G = max(1, ROW_GROUP_SIZE // block)
        for first in range(0, len(rows), G):
            layers = range(first, min(first + G, len(rows)))
            order = [(layer, lo) for lo in range(0, n_out, block) for layer in layers]
            w = np.concatenate([np.asarray(rows[layer][lo:lo + block], f).astype(np.float64) for layer, lo in order])
            b = np.concatenate([np.asarray(biases[layer][lo:lo + block], np.float64) for layer, lo in order])
            layer_col = np.concatenate([np.full(min(block, n_out - lo), layer, np.int32) for layer, lo in order])
            j = np.concatenate([np.arange(lo, min(lo + block, n_out), dtype=np.int32) for _, lo in order])
            self.load(table, {"layer": layer_col, "j": j, "w": w, "b": b})

    def export_label(self):
        return f"duckdb {self.db}"

    # ---- the model: a session ---------------------------------------------------------------------

    def model_statements(self, config, d):
        return array_model_statements(config, d)

    def forward_stages(self, config):
        return array_forward_stages(config)

    def state_tables(self, config, shared):
        return array_state_tables(config)

    def clear_sequence(self):
        for sql in CLEAR_SEQUENCE + CLEAR_STEP:
            self.execute(sql)

    def clear_step(self, past):
        for sql in CLEAR_STEP:
            self.execute(sql)



def _check_writable(path: Path) -> None:
    """A new database file can be made at path: its folder exists and takes a file (DuckDB's own error
    for an unwritable place is "No such file or directory")."""
    folder = path.parent
    if not folder.is_dir():
        raise NumgptError(f"cannot make {path}: no such folder {folder}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise NumgptError(f"cannot make {path}: {folder} is not writable ({e.strerror or e})") from None


class SigintInterrupts:
    """Ctrl-C stops a running DuckDB statement: while one runs (in the main thread), a SIGINT wakes a
    watcher thread through signal.set_wakeup_fd, and the watcher calls the connection's interrupt().

    subtle: DuckDB's Python client polls Python's signal flag only between pieces of its work, and in a
    long statement it can miss a SIGINT altogether (about one try in three with DuckDB 2.0: Ctrl-C then
    did nothing until the statement ended, minutes later). Python's C-level handler writes the signal to
    the wakeup fd at once, even while the main thread waits inside DuckDB, so the watcher always sees it;
    the interrupted statement raises InterruptException, which _reported turns into KeyboardInterrupt."""

    def __init__(self, con) -> None:
        self._con = con
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)           # the signal handler must never block on a full pipe
        self._running = threading.Event()
        self.interrupted = False                      # a SIGINT arrived during the last statement
        self._watcher = threading.Thread(target=self._watch, name="numgpt-duckdb-sigint", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while True:
            got = os.read(self._read, 64)
            if not got:                                # the write end closed: the engine is closed
                return
            if signal.SIGINT in got and self._running.is_set():
                self.interrupted = True
                self._con.interrupt()

    @contextmanager
    def statement(self) -> Iterator[None]:
        """The block runs one statement; a SIGINT inside it interrupts it (main thread only, where Python
        takes signals; elsewhere the block runs as is)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self.interrupted = False
        self._running.set()
        try:
            yield
        finally:
            self._running.clear()
            signal.set_wakeup_fd(before)

    def close(self) -> None:
        os.close(self._write)
        self._watcher.join(timeout=5)
        os.close(self._read)
