"""The statements that run GPT-2 in SQL, generated from the model's config: one named statement per
stage, each a chain of CTEs named after the layers they compute (array_layers.py, layers.py). Export
stores them in the database (numgpt_sql), `numgpt sql show` prints them, and a session runs them in
this order (array_forward_stages on DuckDB, row_forward_stages on PostgreSQL; the engine picks, engines.py):

    prompt       tokenize the text into numgpt_seq (tokenize.py)
    embed        wte[id] + wpe[pos] for the new positions            -> numgpt_resid (layer 0)
    per block L, DuckDB:
      attn_qkv       ln_1, then c_attn: the new positions' q, k, v    -> numgpt_kv (the cache)
      attention_mlp  softmax(q k^T / sqrt(D)) v over the cache, c_proj, + residual; ln_2, c_fc, GELU,
                     c_proj, + residual                               -> numgpt_resid (layer L + 1)
    per block L, PostgreSQL (each stage's outputs :lo .. :hi, split over the session's connections):
      attn_qkv   ln_1, c_attn, one row per (position, head)          -> numgpt_q, numgpt_kv (the cache)
      attention  softmax(q k^T / sqrt(D)) v over the cache           -> numgpt_heads_out
      attn_proj  c_proj + residual                                    -> numgpt_mid
      mlp_fc     ln_2, c_fc, GELU                                     -> numgpt_hidden
      mlp_proj   c_proj + residual                                    -> numgpt_resid (layer L + 1)
    logits       ln_f and the tied projection of the last position   -> numgpt_logits
    next         softmax of the logits, the most likely tokens
    greedy       the repetition penalty, then the most likely token
    sample       repetition penalty, temperature, top-k, top-p (numgpt's order), softmax, the seeded draw

A decode step runs embed .. logits for one new position: the KV cache (numgpt_kv) already holds every
earlier position's keys and values, so the cost of a step does not grow with the sequence except in
attention's S cached rows.

The stages are written twice: on arrays for DuckDB (array_layers.py: an activation is one row per
position, `x FLOAT8[C]`) and on rows for PostgreSQL (layers.py: one row per element, wide rows for the
products and for attention's heads).

State lives in a session's own tables: numgpt_seq(pos, id) the tokens so far, numgpt_logits(id, v), and
    DuckDB      numgpt_resid(layer, t, x), numgpt_kv(layer, pos, h, q, k, v) the cache
                (x FLOAT8[C]; q, k, v FLOAT8[D]); temporary
    PostgreSQL  numgpt_resid / numgpt_heads_out / numgpt_mid(layer, t, i, v), numgpt_hidden(layer, t,
                chunk, a), numgpt_q(layer, t, h, e1 .. eD), numgpt_kv(layer, part, pos, h, e1 .. eD)
                the cache (part 1 keys, 2 values); UNLOGGED tables in the session's schema when several
                connections share them, temporary with one (session.py)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import GPTConfig
from . import array_layers, layers
from .dialects import Dialect, chunk_width

MATRICES = {  # table -> (GPT-2 parameter name per block, inputs, outputs as a function of C)
    "numgpt_c_attn": ("attn.c_attn", 1, 3),
    "numgpt_attn_proj": ("attn.c_proj", 1, 1),
    "numgpt_c_fc": ("mlp.c_fc", 1, 4),
    "numgpt_mlp_proj": ("mlp.c_proj", 4, 1),
}


@dataclass(frozen=True)
class Statement:
    """One stage: its name, what it computes (one line), and its SQL with :name parameters."""

    name: str
    description: str
    sql: str


@dataclass(frozen=True)
class Stage:
    """One stage of a forward pass as the session runs it: per block or once, and for a product stage
    the number of outputs it computes (`outputs`, in multiples of `align`), which the session may split
    into ranges :lo .. :hi run on several connections at once (0: not split)."""

    name: str
    per_layer: bool = False
    outputs: int = 0
    align: int = 1


def array_forward_stages(config: GPTConfig) -> list[Stage]:
    """DuckDB's stages of one forward pass, in order (a block's stages once per layer)."""
    block = [Stage("attn_qkv", True), Stage("attention_mlp", True)]
    return [Stage("embed"), *block, Stage("logits")]


def row_forward_stages(config: GPTConfig) -> list[Stage]:
    """PostgreSQL's stages of one forward pass, each product's outputs to split over connections."""
    C, D = config.n_embd, config.head_size
    block = [Stage("attn_qkv", True, 3 * C, D), Stage("attention", True, config.n_head),
             Stage("attn_proj", True, C), Stage("mlp_fc", True, 4 * C, chunk_width(4 * C)),
             Stage("mlp_proj", True, C)]
    return [Stage("embed"), *block, Stage("logits", False, config.vocab_size)]


def array_state_tables(config: GPTConfig) -> list[str]:
    """DuckDB's CREATE statements for a session's state (see the module docstring): one array per
    position (or per head), temporary."""
    f8, C, D = "FLOAT8", config.n_embd, config.head_size
    return [
        "CREATE TEMP TABLE numgpt_seq (pos INTEGER, id INTEGER)",
        f"CREATE TEMP TABLE numgpt_resid (layer INTEGER, t INTEGER, x {f8}[{C}])",
        # the KV cache, each position's query beside its key and value (attention reads the new ones')
        f"CREATE TEMP TABLE numgpt_kv (layer INTEGER, pos INTEGER, h INTEGER, q {f8}[{D}], k {f8}[{D}], v {f8}[{D}])",
        f"CREATE TEMP TABLE numgpt_logits (id INTEGER, v {f8})",
    ]


def row_state_tables(config: GPTConfig, kind: str = "TEMP") -> list[str]:
    """PostgreSQL's CREATE statements for a session's state, on rows. `kind` is TEMP (one connection) or
    UNLOGGED (tables that a session's several connections share, in a schema of its own)."""
    f8 = "FLOAT8"
    heads = ", ".join(f"e{d} {f8}" for d in range(1, config.head_size + 1))
    create = f"CREATE {kind} TABLE"
    return [
        f"{create} numgpt_seq (pos INTEGER, id INTEGER)",
        f"{create} numgpt_resid (layer INTEGER, t INTEGER, i INTEGER, v {f8})",
        f"{create} numgpt_heads_out (layer INTEGER, t INTEGER, i INTEGER, v {f8})",
        f"{create} numgpt_mid (layer INTEGER, t INTEGER, i INTEGER, v {f8})",
        # the MLP's hidden layer as the chunks mlp_proj multiplies, stored inline (PLAIN: not TOASTed)
        f"{create} numgpt_hidden (layer INTEGER, t INTEGER, chunk INTEGER, a {f8}[])",
        "ALTER TABLE numgpt_hidden ALTER COLUMN a SET STORAGE PLAIN",
        f"{create} numgpt_q (layer INTEGER, t INTEGER, h INTEGER, {heads})",
        f"{create} numgpt_kv (layer INTEGER, part INTEGER, pos INTEGER, h INTEGER, {heads})",
        f"{create} numgpt_logits (id INTEGER, v {f8})",
        # a stage reads one layer's new positions (t >= :past), and attention one layer's keys of a head
        "CREATE INDEX ON numgpt_resid (layer, t)",
        "CREATE INDEX ON numgpt_heads_out (layer, t)",
        "CREATE INDEX ON numgpt_mid (layer, t)",
        "CREATE INDEX ON numgpt_hidden (layer, t)",
        "CREATE INDEX ON numgpt_q (layer, t)",
        "CREATE INDEX ON numgpt_kv (layer, part, h, pos)",
    ]


def array_model_statements(config: GPTConfig, d: Dialect) -> list[Statement]:
    """DuckDB's stages for this config, on arrays (see array_forward_stages for their order), then next,
    greedy, sample."""
    return [embed_arrays(config, d), attn_qkv_arrays(config, d), attention_mlp_arrays(config, d),
            logits_arrays(config, d), *pick_statements(d)]


def row_model_statements(config: GPTConfig, d: Dialect) -> list[Statement]:
    """PostgreSQL's stages for this config, on rows (see row_forward_stages), then next, greedy, sample."""
    return [embed(config, d), attn_qkv(config, d), attention(config, d), attn_proj(config, d),
            mlp_fc(config, d), mlp_proj(config, d), logits(config, d), *pick_statements(d)]


def pick_statements(d: Dialect) -> list[Statement]:
    """The statements that read the logits, the same on both engines: next, greedy, sample."""
    return [next_tokens(d), greedy(), sample(d)]


def weight_tables(config: GPTConfig) -> list[tuple[str, int]]:
    """(table, inputs per output row) of every matrix: the embeddings and each block's linear layers."""
    C = config.n_embd
    return [("numgpt_wte", C), ("numgpt_wpe", C)] + [(t, a * C) for t, (_, a, _) in MATRICES.items()]


def layer_norms(config: GPTConfig) -> list[tuple[int, str, str]]:
    """(layer, name, parameter prefix) of every LayerNorm: ln_1, ln_2 per block, ln_f as layer n_layer."""
    L = config.n_layer
    return [(layer, name, f"h.{layer}.{name}") for layer in range(L) for name in ("ln_1", "ln_2")] + [(L, "ln_f", "ln_f")]


def _with(ctes: list[tuple[str, str]]) -> str:
    """A WITH clause of named CTEs, one per layer, in order."""
    return "WITH " + ",\n".join(f"{name} AS ({body}\n)" for name, body in ctes)


# ---- PostgreSQL: the stages on rows (layers.py) ----------------------------------------------------------

def _linear(d: Dialect, x: str, table: str, n_in: int, layer: str) -> str:
    """(x @ W + b)[:, lo:hi] with the export's product (layers.PRODUCTS: wide rows or cubes)."""
    return layers.PRODUCTS[d.product](layers.chunks(x, n_in), table, n_in, layer)


def _new(table: str, layer: str = ":layer") -> str:
    """The new positions' rows of one layer in a state table (t >= :past: earlier ones are the cache's)."""
    return f"\n    SELECT t, i, v FROM {table} WHERE layer = {layer} AND t >= :past"


def embed(config: GPTConfig, d: Dialect) -> Statement:
    C = config.n_embd
    sql = ("INSERT INTO numgpt_resid\n" + _with([
        ("tokens", "\n    SELECT pos AS t, id FROM numgpt_seq WHERE pos >= :past"),
        ("token_embedding", (layers.embedding_cube if d.product == "cube" else layers.embedding)(
            "numgpt_wte", C, "tokens", "id")),
        ("position_embedding", layers.embedding("numgpt_wpe", C, "tokens", "t")),
        ("x", layers.residual("token_embedding", "position_embedding")),
    ]) + "\nSELECT 0, t, i, v FROM x")
    return Statement("embed", "x = wte[id] + wpe[pos] for the new positions (pos >= :past)", sql)


def attn_qkv(config: GPTConfig, d: Dialect) -> Statement:
    C = config.n_embd
    cols = layers.head_columns(config)
    sql = (_with([
        ("x", _new("numgpt_resid")),
        ("ln_1", layers.layer_norm("x", "ln_1", ":layer", config.layer_norm_epsilon)),
        ("c_attn", _linear(d, "ln_1", "numgpt_c_attn", C, ":layer")),
        ("heads", layers.split_heads("c_attn", config)),
        ("queries", f"\n    INSERT INTO numgpt_q SELECT CAST(:layer AS INTEGER), t, h, {cols} FROM heads WHERE part = 0"),
    ]) + f"\nINSERT INTO numgpt_kv SELECT CAST(:layer AS INTEGER), part, t, h, {cols} FROM heads WHERE part > 0")
    return Statement("attn_qkv", "block :layer: ln_1, then c_attn's outputs :lo .. :hi -> one row per (position, "
                     "head) of q (numgpt_q) and of k and v (part 1, 2: the KV cache, numgpt_kv)", sql)


def attention(config: GPTConfig, d: Dialect) -> Statement:
    sql = ("INSERT INTO numgpt_heads_out\n" + _with([
        ("scores", layers.attention_scores(config, ":layer", "q.t >= :past AND q.h >= :lo AND q.h < :hi")),
        ("weights", "\n    SELECT t, h, pos, p FROM (" + layers.softmax(d, "scores", "t, h", "score", "p")
         + "\n    ) AS softmax"),
        ("heads", layers.attention_values("weights", config, ":layer")),
    ]) + "\nSELECT CAST(:layer AS INTEGER), t, i, v FROM heads")
    return Statement("attention", "block :layer: causal self-attention of the new positions over the "
                     "KV cache, heads :lo .. :hi", sql)


def attn_proj(config: GPTConfig, d: Dialect) -> Statement:
    C = config.n_embd
    sql = ("INSERT INTO numgpt_mid\n" + _with([
        ("heads", _new("numgpt_heads_out")),
        ("c_proj", _linear(d, "heads", "numgpt_attn_proj", C, ":layer")),
        ("x", _new("numgpt_resid")),
        ("x_attn", layers.residual("x", "c_proj")),
    ]) + "\nSELECT CAST(:layer AS INTEGER), t, i, v FROM x_attn")
    return Statement("attn_proj", "block :layer: attention's c_proj, outputs :lo .. :hi, plus the residual", sql)


def mlp_fc(config: GPTConfig, d: Dialect) -> Statement:
    C = config.n_embd
    sql = ("INSERT INTO numgpt_hidden\n" + _with([
        ("x", _new("numgpt_mid")),
        ("ln_2", layers.layer_norm("x", "ln_2", ":layer", config.layer_norm_epsilon)),
        ("c_fc", _linear(d, "ln_2", "numgpt_c_fc", C, ":layer")),
        ("gelu", layers.gelu("c_fc")),
    ]) + f"\nSELECT CAST(:layer AS INTEGER), t, chunk, a FROM {layers.chunks('gelu', 4 * C)} AS hidden")
    return Statement("mlp_fc", "block :layer: ln_2, then c_fc's outputs :lo .. :hi and GELU, kept as the "
                     "chunks mlp_proj multiplies", sql)


def mlp_proj(config: GPTConfig, d: Dialect) -> Statement:
    C = config.n_embd
    sql = ("INSERT INTO numgpt_resid\n" + _with([
        ("hidden", "\n    SELECT t, chunk, a FROM numgpt_hidden WHERE layer = :layer AND t >= :past"),
        ("c_proj", layers.PRODUCTS[d.product]("hidden", "numgpt_mlp_proj", 4 * C, ":layer")),
        ("x", _new("numgpt_mid")),
        ("x_mlp", layers.residual("x", "c_proj")),
    ]) + "\nSELECT CAST(:layer AS INTEGER) + 1, t, i, v FROM x_mlp")
    return Statement("mlp_proj", "block :layer: the MLP's c_proj, outputs :lo .. :hi, plus the residual", sql)


def logits(config: GPTConfig, d: Dialect) -> Statement:
    C = config.n_embd
    sql = ("INSERT INTO numgpt_logits\n" + _with([
        ("x", f"\n    SELECT t, i, v FROM numgpt_resid WHERE layer = {config.n_layer} AND t = :last"),
        ("ln_f", layers.layer_norm("x", "ln_f", str(config.n_layer), config.layer_norm_epsilon)),
        ("lm_head", _linear(d, "ln_f", "numgpt_wte", C, "0")),
    ]) + "\nSELECT i AS id, v FROM lm_head")
    return Statement("logits", "ln_f of the last position, then the logits of tokens :lo .. :hi (x @ wte^T, "
                     "the tied projection)", sql)


def next_tokens(d: Dialect) -> Statement:
    # the most likely rows are picked first and only they are joined to their bytes (joining all V rows
    # before the sort took ~15 ms of a 124M step on PostgreSQL)
    sql = ("SELECT probs.id, vocab.bytes, probs.p FROM (SELECT * FROM (" + layers.softmax(d, "numgpt_logits", "", "v", "p")
           + "\n) AS probs ORDER BY p DESC, id LIMIT :top) AS probs JOIN numgpt_vocab AS vocab ON vocab.id = probs.id"
           "\nORDER BY probs.p DESC, probs.id")
    return Statement("next", "softmax of the logits (temperature 1, nothing filtered): the :top most "
                     "likely next tokens", sql)


def _penalized() -> tuple[str, str]:
    """The repetition penalty (transformers' rule): a token already in the sequence has its logit
    multiplied by :penalty when negative, divided by it otherwise; 1 leaves every logit as it is."""
    return ("penalized", """
    SELECT l.id, CASE WHEN seen.id IS NULL THEN l.v WHEN l.v < 0 THEN l.v * :penalty ELSE l.v / :penalty END AS logit
    FROM numgpt_logits AS l LEFT JOIN (SELECT DISTINCT id FROM numgpt_seq) AS seen ON seen.id = l.id""")


def greedy() -> Statement:
    sql = (_with([_penalized(), ("best", "\n    SELECT id FROM penalized ORDER BY logit DESC, id LIMIT 1")])
           + "\nSELECT best.id, vocab.bytes FROM best JOIN numgpt_vocab AS vocab ON vocab.id = best.id")
    return Statement("greedy", "the repetition penalty, then the most likely token (the lowest id on a tie, "
                     "as numpy's argmax)", sql)


def sample(d: Dialect) -> Statement:
    """numgpt.sampling's rules in its order, on rows: a filtered token is a row left out (probability
    exactly 0), never a -inf."""
    ctes = [
        _penalized(),
        ("scaled", "\n    SELECT id, logit / :temperature AS logit FROM penalized"),
        ("top_k", """
    SELECT id, logit FROM scaled
    WHERE :top_k = 0 OR logit >= (SELECT min(logit) FROM (SELECT logit FROM scaled ORDER BY logit DESC LIMIT :top_k) AS best)"""),
        ("top_p_sorted", f"""
    SELECT id, logit,
           sum(e) OVER (ORDER BY logit, id ROWS UNBOUNDED PRECEDING) / sum(e) OVER () AS cumulative,
           row_number() OVER (ORDER BY logit DESC, id DESC) AS from_top
    FROM (SELECT id, logit, {d.exp("logit - max(logit) OVER ()")} AS e FROM top_k) AS probs"""),
        ("top_p", """
    SELECT id, logit FROM top_p_sorted WHERE :top_p >= 1 OR cumulative > 1 - :top_p OR from_top = 1"""),
        ("cdf", f"""
    SELECT id, sum(e) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING) AS c
    FROM (SELECT id, {d.exp("logit - max(logit) OVER ()")} AS e FROM top_p) AS probs"""),
        ("draw", f"""
    SELECT id FROM cdf
    WHERE c > {d.uniform(":seed", ":step")} * (SELECT max(c) FROM cdf)
    ORDER BY id LIMIT 1"""),
    ]
    sql = (_with(ctes) + "\nSELECT draw.id, vocab.bytes FROM draw JOIN numgpt_vocab AS vocab ON vocab.id = draw.id")
    return Statement("sample", "repetition penalty, temperature, top-k (ties kept), top-p (the smallest "
                     "most likely set with probability >= :top_p), then the inverse-CDF draw of "
                     "u = md5(':seed::step') in [0, 1)", sql)


# ---- DuckDB: the same stages on arrays (array_layers.py) -----------------------------------------------

def embed_arrays(config: GPTConfig, d: Dialect) -> Statement:
    sql = ("INSERT INTO numgpt_resid\n" + _with([
        ("tokens", "\n    SELECT pos AS t, id FROM numgpt_seq WHERE pos >= :past"),
        ("x", array_layers.embedding("tokens", config.n_embd)),
    ]) + "\nSELECT 0, t, x FROM x")
    return Statement("embed", "x = wte[id] + wpe[pos] for the new positions (pos >= :past)", sql)


def attn_qkv_arrays(config: GPTConfig, d: Dialect) -> Statement:
    C = config.n_embd
    sql = ("INSERT INTO numgpt_kv\n" + _with([
        ("x", "\n    SELECT t, x FROM numgpt_resid WHERE layer = :layer"),
        ("ln_1", array_layers.layer_norm("x", "ln_1", ":layer", config.layer_norm_epsilon, C)),
        ("c_attn", array_layers.linear("ln_1", "numgpt_c_attn", C, 3 * C, ":layer")),
        ("heads", array_layers.split_heads("c_attn", config)),
    ]) + "\nSELECT CAST(:layer AS INTEGER), t, h, q, k, v FROM heads")
    return Statement("attn_qkv", "block :layer: ln_1, then c_attn -> q, k, v of the new positions, "
                     "one row per head, into the KV cache", sql)


def attention_mlp_arrays(config: GPTConfig, d: Dialect) -> Statement:
    """The rest of block :layer after attn_qkv, as one statement: attention, c_proj and the residual, then
    the MLP and its residual. Measured on 124M (BENCHMARKS.md): each DuckDB statement costs several
    milliseconds beyond its operators' work, so a block runs as two statements, not three."""
    C = config.n_embd
    sql = ("INSERT INTO numgpt_resid\n" + _with([
        ("q", "\n    SELECT pos AS t, h, q FROM numgpt_kv WHERE layer = :layer AND pos >= :past"),
        ("scores", array_layers.attention_scores("q", config, ":layer")),
        ("weights", array_layers.softmax("scores", "t, h", "s", "p")),
        ("heads", array_layers.attention_values("weights", config, ":layer")),
        ("x", "\n    SELECT t, x FROM numgpt_resid WHERE layer = :layer"),
        ("x_attn", array_layers.linear_residual("heads", "numgpt_attn_proj", C, C, ":layer", "x")),
        ("ln_2", array_layers.layer_norm("x_attn", "ln_2", ":layer", config.layer_norm_epsilon, C)),
        ("c_fc", array_layers.linear("ln_2", "numgpt_c_fc", C, 4 * C, ":layer")),
        ("gelu", array_layers.gelu("c_fc", 4 * C)),
        ("x_mlp", array_layers.linear_residual("gelu", "numgpt_mlp_proj", 4 * C, C, ":layer", "x_attn")),
    ]) + "\nSELECT CAST(:layer AS INTEGER) + 1, t, x FROM x_mlp")
    return Statement("attention_mlp", "block :layer: causal self-attention of the new positions over the "
                     "KV cache, c_proj, plus the residual; then ln_2, c_fc, GELU, c_proj, plus the residual", sql)


def logits_arrays(config: GPTConfig, d: Dialect) -> Statement:
    C = config.n_embd
    sql = ("INSERT INTO numgpt_logits\n" + _with([
        ("x", f"\n    SELECT t, x FROM numgpt_resid WHERE layer = {config.n_layer} AND t = :last"),
        ("ln_f", array_layers.layer_norm("x", "ln_f", str(config.n_layer), config.layer_norm_epsilon, C)),
        ("lm_head", array_layers.lm_head("ln_f", C)),
    ]) + "\nSELECT i AS id, v FROM lm_head")
    return Statement("logits", "ln_f of the last position, then the logits over the whole vocabulary "
                     "(x @ wte^T, the tied projection)", sql)
