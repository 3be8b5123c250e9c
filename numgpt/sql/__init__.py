"""GPT-2 in SQL: the whole model, its tokenizer and its sampler as SQL statements, run by DuckDB
(embedded, the default) or a PostgreSQL server. A room of numgpt: it imports the core, the core never
imports it, and duckdb / psycopg are imported only when a database is opened (`pip install
"numgpt[sql]"`).

    export.py      a model and tokenizer into a database: weights, vocabulary, merges, the SQL
    statements.py  the model's statements, one per stage, generated from the config
    array_layers.py  each layer as DuckDB SQL on arrays (layer_norm, linear, attention, gelu), named as in ops.py
    layers.py      the same layers on rows, for PostgreSQL (wide-row products, softmax)
    tokenize.py    GPT-2's pre-tokenizer and BPE merges as one recursive statement
    dialects.py    what differs between DuckDB's and PostgreSQL's SQL spelling, one class per engine
    engines.py     the engine as an object: a connection and its engine's way of holding a model
    engine_duckdb.py, engine_postgres.py   the two engines (weights' layout, stages, session state)
    session.py     SqlModel: tokenize, next, generate -- Python sends statements, the database computes

    import numgpt, numgpt.sql
    numgpt.sql.export(numgpt.load(), "model.duckdb")
    with numgpt.sql.connect("model.duckdb") as m:
        print(m.generate("ROMEO:", max_new_tokens=20, do_sample=False))

docs/sql.md walks through the SQL of each stage.
"""

from .export import ExportSummary, export
from .session import MergeStepRow, SqlModel, connect

__all__ = ["export", "connect", "SqlModel", "ExportSummary", "MergeStepRow"]
