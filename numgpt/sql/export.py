"""`numgpt sql export`: a model and its tokenizer into a database -- weights, vocabulary, merges, and
the SQL that runs them (statements.py, tokenize.py), generated from the model's config.

Schema (the tables named numgpt_*; DuckDB types, PostgreSQL's are the same names):

    numgpt_meta(key, value)            format, schema_version, state, engine, precision, config, source
    numgpt_sql(position, name, description, sql)   the statements a session runs, in order
    numgpt_wte, numgpt_wpe             embeddings, one row per token / position (j)
    numgpt_c_attn, numgpt_attn_proj,   each block's linear layers, one row per (layer, output j):
    numgpt_c_fc, numgpt_mlp_proj         DuckDB  (layer, j, w FLOAT8[n_in], b), uncompressed
                                         PostgreSQL (layer, j, chunk, b, c1 .. cK) -- wide rows
    numgpt_ln(layer, name, i, weight, bias)   ln_1, ln_2 per block; ln_f with layer = n_layer
                                         (DuckDB: (layer, name, weight FLOAT8[C], bias FLOAT8[C]))
    numgpt_heads(j, part, h, d)        which of q/k/v (part 0/1/2), head and element each c_attn output is
    numgpt_vocab(id, bytes), numgpt_bytes(byte, id), numgpt_merges(rank, left_id, right_id, merged_id),
    numgpt_special(token, id), numgpt_unicode(lo, hi, cls)   the tokenizer (unicode: PostgreSQL only)

An export runs in two transactions: the first writes numgpt_meta with state 'exporting', the second
everything else and then state 'complete'. An export that dies in between leaves 'exporting', which the
next run reports (and --force replaces); nothing half-written is ever read as a model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..config import GPTConfig
from ..errors import NumgptError
from .dialects import Dialect, chunk_width
from .engines import Engine, open_engine, shown
from .statements import MATRICES, model_statements
from .tokenize import explain_sql, tokenize_sql, unicode_classes

FORMAT = "numgpt-sql"
SCHEMA_VERSION = 3   # 3: PostgreSQL's wide-row attention state and (layer, chunk, j) indexes; 2: DuckDB's weights always FLOAT8, LayerNorm parameters as arrays, the array stages
PRECISIONS = ("float32", "float64")
TABLES = ["numgpt_meta", "numgpt_sql", "numgpt_wte", "numgpt_wpe", *MATRICES, "numgpt_ln", "numgpt_heads",
          "numgpt_vocab", "numgpt_bytes", "numgpt_merges", "numgpt_special", "numgpt_unicode"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote, for the CLI to print and the benchmark to record."""

    db: str
    engine: str
    precision: str
    parameters: int
    seconds: float
    size_bytes: int


def export(model, db: str, *, force: bool = False, precision: str = "float32",
           progress: Progress | None = None) -> ExportSummary:
    """Write `model` (a numgpt LanguageModel) into DB; see the module docstring. Refuses a database that
    already holds an export unless force=True."""
    if precision not in PRECISIONS:
        raise NumgptError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    progress = progress or (lambda _: None)
    start = time.perf_counter()
    engine = open_engine(db, create=True)
    try:
        _check_target(engine, force)
        dialect = engine.dialect(precision)
        if engine.name == "duckdb":
            # subtle: DuckDB compresses FLOAT8 columns (ALP) when it checkpoints, and decompressing the
            # weights at every product cost ~30% of a matrix product (3.3 ms of an 11 ms 768x3072 one,
            # measured); uncompressed they take ~10% more space
            engine.execute("SET force_compression = 'uncompressed'")
        with engine.transaction():
            for table in TABLES:
                engine.execute(f"DROP TABLE IF EXISTS {table}")
            engine.execute(f"CREATE TABLE numgpt_meta (key {dialect.text} PRIMARY KEY, value {dialect.text})")
            _put_meta(engine, {"format": FORMAT, "schema_version": str(SCHEMA_VERSION), "state": "exporting"})
        with engine.transaction():
            count = _write_model(engine, dialect, model, progress)
            _put_meta(engine, {"engine": engine.name, "precision": precision,
                               "config": json.dumps(asdict(model.config)), "source": str(model.folder or "")})
            engine.execute("UPDATE numgpt_meta SET value = 'complete' WHERE key = 'state'")
        if engine.name == "postgresql":
            # subtle: done here, not left to autovacuum: a fresh bulk load is vacuumed (and every row's
            # hint bits written) by the first scans and by autovacuum, which ran on the second core
            # through the first minutes of generation (a 124M step: 1.0 s instead of 0.9 s)
            progress("vacuum and analyze")
            for table in TABLES:
                engine.execute(f"VACUUM (ANALYZE) {table}")
        size = engine.database_size()
    finally:
        engine.close()
    return ExportSummary(db=db, engine=engine.name, precision=precision, parameters=count,
                         seconds=time.perf_counter() - start, size_bytes=size)


def _check_target(engine: Engine, force: bool) -> None:
    """Refuse to overwrite an export (complete or not) without force."""
    if not engine.has_table("numgpt_meta") or force:
        return
    state = dict(engine.rows("SELECT key, value FROM numgpt_meta")).get("state")
    what = "an interrupted numgpt export" if state == "exporting" else "a numgpt export"
    raise NumgptError(f"{shown(engine.db)} already holds {what}; pass --force to replace it")


def _put_meta(engine: Engine, values: dict[str, str]) -> None:
    for key, value in values.items():
        engine.execute("INSERT INTO numgpt_meta VALUES (:key, :value)", {"key": key, "value": value})


def _write_model(engine: Engine, d: Dialect, model, progress: Progress) -> int:
    """Every table but numgpt_meta; returns the number of parameters written."""
    config, params = model.config, model.params
    C, L = config.n_embd, config.n_layer
    f = np.float32 if d.precision == "float32" else np.float64
    _create_tables(engine, d, config)
    progress("embeddings")
    _load_matrix(engine, d, "numgpt_wte", 0, params["wte.weight"], None, f)
    _load_matrix(engine, d, "numgpt_wpe", 0, params["wpe.weight"], None, f)
    if d.name == "duckdb":
        for table, (name, _, _) in MATRICES.items():
            progress(f"{table} ({L} blocks)")
            _load_matrices_interleaved(engine, table, [params[f"h.{layer}.{name}.weight"].T for layer in range(L)],
                                       [params[f"h.{layer}.{name}.bias"] for layer in range(L)], f)
    else:
        for layer in range(L):
            progress(f"block {layer + 1}/{L}")
            for table, (name, _, _) in MATRICES.items():
                weight = params[f"h.{layer}.{name}.weight"]                       # [in, out]
                _load_matrix(engine, d, table, layer, weight.T, params[f"h.{layer}.{name}.bias"], f)
    ln = [(layer, name, f"h.{layer}.{name}") for layer in range(L) for name in ("ln_1", "ln_2")]
    ln.append((L, "ln_f", "ln_f"))
    for layer, name, key in ln:
        weight, bias = params[key + ".weight"].astype(np.float64), params[key + ".bias"].astype(np.float64)
        if d.name == "duckdb":   # one row per LayerNorm, weight and bias as FLOAT8[C] arrays
            engine.load("numgpt_ln", {"layer": np.array([layer], np.int32), "name": np.array([name], object),
                                      "weight": weight[None], "bias": bias[None]})
        else:
            engine.load("numgpt_ln", {"layer": np.full(C, layer, np.int32), "name": np.array([name] * C, object),
                                      "i": np.arange(C, dtype=np.int32), "weight": weight, "bias": bias})
    j = np.arange(3 * C, dtype=np.int32)
    engine.load("numgpt_heads", {"j": j, "part": j // C, "h": (j % C) // config.head_size,
                                 "d": (j % C) % config.head_size})
    progress("tokenizer")
    specials = _write_tokenizer(engine, model.tokenizer)
    _write_statements(engine, d, config, specials)
    if d.name == "postgresql":
        # a product reads one layer's rows of one chunk, outputs :lo .. :hi (and embed one token's row):
        # without an index PostgreSQL scanned all n_layer layers' wide rows for each product (32 ms of a
        # 124M c_fc), and all of wte for one id
        for table in ["numgpt_wte", *MATRICES]:
            engine.execute(f"CREATE INDEX {table}_layer_chunk_j ON {table} (layer, chunk, j)")
        for table in ["numgpt_wte", "numgpt_wpe"]:
            engine.execute(f"CREATE INDEX {table}_layer_j ON {table} (layer, j)")
        engine.execute("CREATE INDEX numgpt_ln_layer_i ON numgpt_ln (layer, i)")
    return int(sum(np.asarray(v).size for v in params.values()))


def _create_tables(engine: Engine, d: Dialect, config: GPTConfig) -> None:
    C, t, ft = config.n_embd, d.text, d.float_type
    for table, n_in in [("numgpt_wte", C), ("numgpt_wpe", C)] + [(tb, a * C) for tb, (_, a, _) in MATRICES.items()]:
        if d.name == "duckdb":
            # subtle: FLOAT8 arrays even for float32 weights (their values rounded to float32, then
            # widened): widening FLOAT4[n] inside every product cost ~0.85 ns per weight, about 100 ms of
            # a 124M decode step (BENCHMARKS.md), for twice the file size
            engine.execute(f"CREATE TABLE {table} (layer INTEGER, j INTEGER, w FLOAT8[{n_in}], b FLOAT8)")
        else:
            k = chunk_width(n_in)
            cols = ", ".join(f"c{n} {ft}" for n in range(1, k + 1))
            engine.execute(f"CREATE TABLE {table} (layer INTEGER, j INTEGER, chunk INTEGER, b FLOAT8, {cols})")
    if d.name == "duckdb":
        engine.execute(f"CREATE TABLE numgpt_ln (layer INTEGER, name {t}, weight FLOAT8[{C}], bias FLOAT8[{C}])")
    else:
        engine.execute(f"CREATE TABLE numgpt_ln (layer INTEGER, name {t}, i INTEGER, weight FLOAT8, bias FLOAT8)")
    engine.execute("CREATE TABLE numgpt_heads (j INTEGER PRIMARY KEY, part INTEGER, h INTEGER, d INTEGER)")
    engine.execute(f"CREATE TABLE numgpt_vocab (id INTEGER PRIMARY KEY, bytes {d.blob})")
    engine.execute("CREATE TABLE numgpt_bytes (byte INTEGER PRIMARY KEY, id INTEGER)")
    engine.execute("CREATE TABLE numgpt_merges (rank INTEGER PRIMARY KEY, left_id INTEGER, right_id INTEGER, "
                   "merged_id INTEGER)")
    engine.execute(f"CREATE TABLE numgpt_special (token {t} PRIMARY KEY, id INTEGER)")
    engine.execute(f"CREATE TABLE numgpt_unicode (lo INTEGER PRIMARY KEY, hi INTEGER, cls {t})")
    engine.execute(f"CREATE TABLE numgpt_sql (position INTEGER PRIMARY KEY, name {t}, description {t}, sql {t})")


def _load_matrices_interleaved(engine: Engine, table: str, rows: list[np.ndarray], biases: list[np.ndarray], f,
                               parts: int = 6) -> None:
    """DuckDB: every layer's rows [n_out, n_in] of one matrix, in an order that spreads each layer over
    several row groups. DuckDB shares a scan between threads by row group (ROW_GROUP_SIZE rows, engines.py),
    and a stage reads one layer: stored layer after layer, a layer's 3072 c_fc rows filled one and a half
    groups, one thread doing twice the other's work. Here each layer is cut into `parts` blocks of j and
    the blocks of G layers alternate, (layer // G, j // block, layer, j), G * block ~ a row group: each
    group holds one block of G layers, so a layer's rows are spread evenly over `parts` groups (measured,
    124M c_fc: 6.8 ms -> 4.9 ms on two threads)."""
    from .engines import ROW_GROUP_SIZE
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
        engine.load(table, {"layer": layer_col, "j": j, "w": w, "b": b})


def _load_matrix(engine: Engine, d: Dialect, table: str, layer: int, rows: np.ndarray, bias, f) -> None:
    """rows [n_out, n_in]: output j's weights over the inputs (W^T of an [in, out] weight)."""
    n_out, n_in = rows.shape
    bias = np.zeros(n_out) if bias is None else np.asarray(bias, np.float64)
    j = np.arange(n_out, dtype=np.int32)
    if d.name == "duckdb":
        engine.load(table, {"layer": np.full(n_out, layer, np.int32), "j": j,
                            "w": np.asarray(rows, f).astype(np.float64), "b": bias})
        return
    k = chunk_width(n_in)
    chunks = n_in // k
    wide = np.asarray(rows, f).reshape(n_out * chunks, k)                  # [n_out, n_in] -> [n_out * chunks, K]
    chunk = np.tile(np.arange(chunks, dtype=np.int32), n_out)
    engine.load(table, {"layer": np.full(n_out * chunks, layer, np.int32), "j": np.repeat(j, chunks),
                        "chunk": chunk, "b": np.where(chunk == 0, np.repeat(bias, chunks), 0.0), "c": wide})


def _write_tokenizer(engine: Engine, tok) -> list[str]:
    """Vocabulary, byte tokens, merges by rank, special tokens (and PostgreSQL's code-point classes).
    subtle: the merge list is read from the Tokenizer's own rank tables (_pairs, _merged), the same
    ones its reference `_merge_steps` uses; numgpt's Tokenizer has no public accessor for them."""
    ids = np.arange(tok.vocab_size, dtype=np.int32)
    engine.load("numgpt_vocab", {"id": ids, "bytes": np.array([tok.token_bytes(int(i)) for i in ids], object)})
    engine.load("numgpt_bytes", {"byte": np.arange(256, dtype=np.int32),
                                 "id": np.asarray(tok._byte_ids, np.int32)})
    pairs = np.asarray(tok._pairs, np.int32).reshape(-1, 2)
    engine.load("numgpt_merges", {"rank": np.arange(len(pairs), dtype=np.int32), "left_id": pairs[:, 0],
                                  "right_id": pairs[:, 1], "merged_id": np.asarray(tok._merged, np.int32)})
    specials = tok.special_tokens
    if specials:
        engine.load("numgpt_special", {"token": np.array(list(specials), object),
                                       "id": np.array(list(specials.values()), np.int32)})
    if engine.name == "postgresql":
        classes = unicode_classes()
        engine.load("numgpt_unicode", {"lo": np.array([c[0] for c in classes], np.int32),
                                       "hi": np.array([c[1] for c in classes], np.int32),
                                       "cls": np.array([c[2] for c in classes], object)})
    return list(specials)


def _write_statements(engine: Engine, d: Dialect, config: GPTConfig, specials: list[str]) -> None:
    from .statements import Statement
    stages = [Statement("tokenize", "text -> token ids: special tokens, GPT-2's pre-tokenizer, bytes, "
                        "merges by rank (tokenize.py)", tokenize_sql(d, specials)),
              Statement("tokenize_explain", "every merge step of every piece of :text", explain_sql(d, specials)),
              *model_statements(config, d)]
    for position, s in enumerate(stages):
        engine.execute("INSERT INTO numgpt_sql VALUES (:position, :name, :description, :sql)",
                       {"position": position, "name": s.name, "description": s.description, "sql": s.sql})
