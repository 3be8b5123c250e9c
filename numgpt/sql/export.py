"""`numgpt sql export`: a model and its tokenizer into a database -- weights, vocabulary, merges, and
the SQL that runs them (statements.py, tokenize.py), generated from the model's config.

Schema (the tables named numgpt_*; DuckDB types, PostgreSQL's are the same names):

    numgpt_meta(key, value)            format, schema_version, state, engine, precision, product, config, source
    numgpt_sql(position, name, description, sql)   the statements a session runs, in order
    numgpt_wte, numgpt_wpe             embeddings, one row per token / position (j)
    numgpt_c_attn, numgpt_attn_proj,   each block's linear layers, one row per (layer, output j):
    numgpt_c_fc, numgpt_mlp_proj         DuckDB  (layer, j, w FLOAT8[n_in], b), uncompressed
                                         PostgreSQL (layer, j, chunk, b, c1 .. cK) -- wide rows;
                                         product="cube": (layer, j, chunk, b, sq, c1 .. cP cube),
                                         wte too (not wpe)
    numgpt_ln(layer, name, i, weight, bias)   ln_1, ln_2 per block; ln_f with layer = n_layer
                                         (DuckDB: (layer, name, weight FLOAT8[C], bias FLOAT8[C]))
    numgpt_heads(j, part, h, d)        which of q/k/v (part 0/1/2), head and element each c_attn output is
    numgpt_vocab(id, bytes), numgpt_bytes(byte, id), numgpt_merges(rank, left_id, right_id, merged_id),
    numgpt_special(token, id), numgpt_unicode(lo, hi, cls)   the tokenizer (unicode: PostgreSQL only)

An export is one transaction: it drops an earlier export's tables (--force), writes everything, and last
numgpt_meta with state 'complete'. Stopped anywhere (an error, Ctrl-C, SIGTERM), it
leaves the database as it was. On DuckDB, a file that holds nothing but an export (or nothing) is not
written in place: the export goes into a fresh file beside it, which replaces it when complete (one
rename), so the file never holds two exports' blocks. A file with other tables too is written in place,
and the old export's space is free again only after the commit: that file grows by up to one export. An
export of schema version 3 or older could die between its two transactions and leave 'exporting'; the
next run still reports that (and --force replaces it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import GPTConfig
from ..errors import NumgptError
from ..lm import LanguageModel
from ..model import check_finite_weights
from .dialects import Dialect
from .engines import DamagedDatabase, Engine, Progress, is_postgres, open_engine, shown
from .statements import MATRICES
from .tokenize import explain_sql, tokenize_sql, unicode_classes

FORMAT = "numgpt-sql"
SCHEMA_VERSION = 4   # 4: DuckDB's attention and MLP as one stage (attention_mlp); 3: PostgreSQL's wide-row attention state and (layer, chunk, j) indexes; 2: DuckDB's weights always FLOAT8, LayerNorm parameters as arrays, the array stages
PRECISIONS = ("float32", "float64")
PRODUCTS = ("auto", "wide", "cube")   # PostgreSQL's matrix product (export's `product`; auto: the engine's best)
TABLES = ["numgpt_meta", "numgpt_sql", "numgpt_wte", "numgpt_wpe", *MATRICES, "numgpt_ln", "numgpt_heads",
          "numgpt_vocab", "numgpt_bytes", "numgpt_merges", "numgpt_special", "numgpt_unicode"]


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote, for the CLI to print and the benchmark to record."""

    db: str
    engine: str
    target: str   # where it went, as the CLI says it: "duckdb model.duckdb", "postgresql database"
    precision: str
    parameters: int
    seconds: float
    size_bytes: int
    product: str = "wide"   # the matrix product written ("auto" resolved)
    product_note: str = ""  # how the CLI names it after the precision (", cube products"; "" for DuckDB)


def export(model, db: str, *, force: bool = False, precision: str = "float32", product: str = "auto",
           progress: Progress | None = None) -> ExportSummary:
    """Write `model` (a numgpt LanguageModel) into DB; see the module docstring. Refuses weights that
    are not finite (before DB is touched), a database that already holds an export unless force=True,
    and one that another export or a session is using (PostgreSQL's advisory lock, engine_postgres.py).

    product (PostgreSQL): "wide", the matrix products as expressions over wide rows of REAL columns
    (core PostgreSQL), or "cube", through the `cube` contrib module's distances in C (layers.py's
    linear_chunks_cube; 2-2.5x less CPU per multiply-add, the weights as float8, about twice the space;
    the role needs CREATE on the database for CREATE EXTENSION cube), or "auto": cube where the server
    has the module and the role may create it (or it is there already), else wide; DuckDB's is wide."""
    if precision not in PRECISIONS:
        raise NumgptError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if product not in PRODUCTS:
        raise NumgptError(f"product must be one of {', '.join(PRODUCTS)}, got {product!r}")
    if isinstance(db, str) and db.startswith(":memory:"):
        raise NumgptError(f"{db} is an in-memory DuckDB database, gone when the export ends; give a file path")
    if product == "cube" and not is_postgres(db):
        raise NumgptError(f"product must be 'auto' or 'wide' for DuckDB, which multiplies arrays; {product!r} is "
                          "PostgreSQL's (the cube module)")
    if not isinstance(model, LanguageModel):
        raise NumgptError(f"model must be a numgpt LanguageModel (numgpt.load(...)), got {type(model).__name__}")
    check_finite_weights(model.params, fix="export a model whose weights are numbers")
    progress = progress or (lambda _: None)
    start = time.perf_counter()
    empty = not is_postgres(db) and Path(db).is_file() and Path(db).stat().st_size == 0
    made = not is_postgres(db) and (empty or not Path(db).exists())   # a file this export makes
    engine = _open_for_export(db, force)
    staging = writer = None
    try:
        _check_target(engine, force)
        staging = engine.staging_file(TABLES)
        writer = engine if staging is None else open_engine(staging, create=True)
        product = writer.best_product() if product == "auto" else product
        dialect = writer.dialect(precision, product)
        writer.begin_export()
        with writer.transaction():   # all or nothing: an export stopped anywhere leaves the old one whole
            for table in TABLES:
                writer.execute(f"DROP TABLE IF EXISTS {table}")
            writer.execute(f"CREATE TABLE numgpt_meta (key {dialect.text} PRIMARY KEY, value {dialect.text})")
            count = _write_model(writer, dialect, model, progress)
            _put_meta(writer, {"format": FORMAT, "schema_version": str(SCHEMA_VERSION), "state": "complete",
                               "engine": writer.name, "precision": precision, "product": product,
                               "config": json.dumps(asdict(model.config)), "source": str(model.folder or "")})
        writer.finish_export(TABLES, progress)
        size = writer.database_size()
        if staging is not None:
            writer.close(detach=True)
            engine.close(detach=True)
            _move_over(staging, db)
    except BaseException:
        for w in (writer, engine):
            if w is not None:
                w.close(detach=True)
        if staging is not None:
            _remove_database(staging)
        if made:
            _remove_database(db)              # nothing of this export is left, and an empty file stays empty
            if empty:
                Path(db).touch()
        raise
    finally:
        engine.close()
    return ExportSummary(db=db, engine=engine.name, target=engine.export_label(), precision=precision,
                         parameters=count, seconds=time.perf_counter() - start, size_bytes=size, product=product,
                         product_note=engine.product_note(product))


def _move_over(staging: str, db: str) -> None:
    """The complete export in `staging` takes db's place (one rename: a reader sees the old file or the
    new one). db's write-ahead log goes first: left beside the new file, DuckDB would replay it there."""
    Path(db + ".wal").unlink(missing_ok=True)
    os.replace(staging, db)
    Path(staging + ".wal").unlink(missing_ok=True)


def _remove_database(db: str) -> None:
    """A DuckDB file and its write-ahead log, if there."""
    for path in (Path(db), Path(db + ".wal")):
        path.unlink(missing_ok=True)


def _open_for_export(db: str, force: bool) -> Engine:
    """The engine to export into. A DuckDB file that cannot be read (cut short, corrupt: it fails by the
    catalog read at the latest) is refused, or with force deleted, with its write-ahead log, and made anew --
    what its error message advises."""
    if Path(db).is_file() and Path(db).stat().st_size == 0:   # an empty file (touch, mktemp) holds nothing
        Path(db).unlink()                                       # to lose; DuckDB refuses to open it
    try:
        engine = open_engine(db, create=True)
        try:
            engine.has_table("numgpt_meta")
        except BaseException:
            engine.close()
            raise
        return engine
    except DamagedDatabase:
        if not force:
            raise
    _remove_database(db)
    return open_engine(db, create=True)


def _check_target(engine: Engine, force: bool) -> None:
    """Refuse to overwrite an export (complete or not) without force, or tables of numgpt's names that no
    export wrote (the export drops each of its tables first: a user's own numgpt_wte was replaced)."""
    if force:
        return
    if not engine.has_table("numgpt_meta"):
        taken = [t for t in TABLES if engine.has_table(t)]
        if taken:
            raise NumgptError(f"{shown(engine.db)} holds {', '.join(taken[:3])}{', ...' if len(taken) > 3 else ''}, "
                              "which no numgpt export wrote; export into another database, or pass force=True to "
                              "replace them")
        return
    state = dict(engine.rows("SELECT key, value FROM numgpt_meta")).get("state")
    what = "an interrupted numgpt export" if state == "exporting" else "a numgpt export"
    raise NumgptError(f"{shown(engine.db)} already holds {what}; pass force=True to replace it")


def _put_meta(engine: Engine, values: dict[str, str]) -> None:
    for key, value in values.items():
        engine.execute("INSERT INTO numgpt_meta VALUES (:key, :value)", {"key": key, "value": value})


def _write_model(engine: Engine, d: Dialect, model, progress: Progress) -> int:
    """Every table but numgpt_meta; returns the number of parameters written."""
    config, params = model.config, model.params
    C = config.n_embd
    _create_tables(engine, d, config)
    engine.load_weights(params, config, d, progress)
    j = np.arange(3 * C, dtype=np.int32)
    engine.load("numgpt_heads", {"j": j, "part": j // C, "h": (j % C) // config.head_size,
                                 "d": (j % C) % config.head_size})
    progress("tokenizer")
    specials = _write_tokenizer(engine, d, model.tokenizer)
    _write_statements(engine, d, config, specials)
    engine.index_weights()
    return int(sum(np.asarray(v).size for v in params.values()))


def _create_tables(engine: Engine, d: Dialect, config: GPTConfig) -> None:
    t = d.text
    engine.create_weight_tables(config, d)
    engine.execute("CREATE TABLE numgpt_heads (j INTEGER PRIMARY KEY, part INTEGER, h INTEGER, d INTEGER)")
    engine.execute(f"CREATE TABLE numgpt_vocab (id INTEGER PRIMARY KEY, bytes {d.blob})")
    engine.execute("CREATE TABLE numgpt_bytes (byte INTEGER PRIMARY KEY, id INTEGER)")
    engine.execute("CREATE TABLE numgpt_merges (rank INTEGER PRIMARY KEY, left_id INTEGER, right_id INTEGER, "
                   "merged_id INTEGER)")
    engine.execute(f"CREATE TABLE numgpt_special (token {t} PRIMARY KEY, id INTEGER)")
    engine.execute(f"CREATE TABLE numgpt_unicode (lo INTEGER PRIMARY KEY, hi INTEGER, cls {t})")
    engine.execute(f"CREATE TABLE numgpt_sql (position INTEGER PRIMARY KEY, name {t}, description {t}, sql {t})")


def _write_tokenizer(engine: Engine, d: Dialect, tok) -> list[str]:
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
    if d.unicode_table:
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
              *engine.model_statements(config, d)]
    for position, s in enumerate(stages):
        engine.execute("INSERT INTO numgpt_sql VALUES (:position, :name, :description, :sql)",
                       {"position": position, "name": s.name, "description": s.description, "sql": s.sql})
