"""The layers of GPT-2 as SQL, one function per layer with the name of its NumPy twin in numgpt/ops.py
and numgpt/model.py: each returns the text of one common table expression (a CTE body) that reads the
rows of an earlier one.

This is the row form, which PostgreSQL runs (core SQL has no vectorised inner product of arrays);
DuckDB runs the same layers on arrays, array_layers.py, with the same names. A vector lives in SQL as
rows: an activation is (t, i, v) -- position t, element i, value v -- and attention works on
(t, h, d, v) and (t, h, pos, score). The matrix product uses wide rows (dialects.py).

All arithmetic is FLOAT8 (double); --precision chooses how the weights are stored (float32: rounded to
float32 like numgpt's own weights, widened to double where they are used).

Parameters are written :name (the engine turns them into its placeholders): :layer, :past (the first
new position), :last (the position whose logits are wanted).

Shape legend (as in model.py): T new positions, S attended positions, C n_embd, H heads, D head size,
V vocabulary.
"""

from __future__ import annotations

from ..config import GPTConfig
from .dialects import Dialect, chunk_width

GELU_SQRT_2_OVER_PI = 0.7978845608028654   # sqrt(2 / pi), to double precision (ops.py keeps a float32)
GELU_CUBIC = 0.044715


def layer_norm(x: str, name: str, layer: str, eps: float) -> str:
    """(x - mean) / sqrt(var + eps) * weight + bias over each position's C elements (biased variance,
    as ops.layer_norm). Reads x(t, i, v) and numgpt_ln; [T, C] -> [T, C]. `name` is ln_1, ln_2, ln_f."""
    return f"""
    SELECT x.t, x.i, (x.v - s.mean) / sqrt(s.var + {eps!r}) * g.weight + g.bias AS v
    FROM {x} AS x
    JOIN (SELECT t, avg(v) AS mean, var_pop(v) AS var FROM {x} GROUP BY t) AS s ON s.t = x.t
    JOIN numgpt_ln AS g ON g.layer = {layer} AND g.name = '{name}' AND g.i = x.i"""


def linear(x: str, table: str, n_in: int, layer: str) -> str:
    """x @ W + b: [T, n_in] -> [T, n_out], W stored as wide rows (see below: W^T, [n_out, n_in], cut
    into chunks). Reads x(t, i, v); returns (t, i, v) with i the output element."""
    return _linear_wide(x, table, n_in, layer)


def _linear_wide(x: str, table: str, n_in: int, layer: str) -> str:
    """PostgreSQL: x is cut into chunks of K elements, each chunk one row with columns x1 .. xK; each
    weight row (j, chunk) holds c1 .. cK, and the product of a chunk is c1 * x1 + ... + cK * xK. The
    bias sits on chunk 0's rows (0 on the others), so the sum over chunks is x @ W + b.
    subtle: the products are computed below an `OFFSET 0` fence, so only (t, i, v) rows reach the GROUP
    BY: without it PostgreSQL sorted the joined wide rows (2K columns each) for the aggregate, spilling
    450 MB to disk on the 124M logits (2.2 s of a 7 s decode step), and the next layer's chunking
    aggregate likewise. One chunk needs no sum."""
    k = chunk_width(n_in)
    columns = ", ".join(f"a[{n}] AS x{n}" for n in range(1, k + 1))
    product = " + ".join(f"w.c{n} * xs.x{n}" for n in range(1, k + 1))
    products = f"""
    SELECT xs.t, w.j AS i, w.b + {product} AS v
    FROM (SELECT t, chunk, {columns}
          FROM (SELECT t, i / {k} AS chunk, array_agg(v ORDER BY i) AS a FROM {x} GROUP BY t, i / {k}) AS c
         ) AS xs
    JOIN {table} AS w ON w.chunk = xs.chunk
    WHERE w.layer = {layer}
    OFFSET 0"""
    if n_in == k:
        return products
    return f"""
    SELECT t, i, sum(v) AS v FROM ({products}) AS products GROUP BY t, i"""


def gelu(x: str) -> str:
    """GPT-2's GELU, 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))), element by element."""
    return f"""
    SELECT t, i, 0.5 * v * (1 + tanh({GELU_SQRT_2_OVER_PI!r} * (v + {GELU_CUBIC!r} * v * v * v))) AS v
    FROM {x}"""


def attention_scores(q: str, config: GPTConfig, layer: str) -> str:
    """q k^T / sqrt(D) for every new query t and cached key pos <= t (the causal mask is the join
    condition): q(t, h, d, v) and numgpt_kv -> (t, h, pos, score); [H, T, D] x [H, S, D] -> [H, T, S]."""
    return f"""
    SELECT q.t, q.h, kv.pos, sum(q.v * kv.k) * {1.0 / config.head_size ** 0.5!r} AS score
    FROM {q} AS q
    JOIN numgpt_kv AS kv ON kv.layer = {layer} AND kv.h = q.h AND kv.d = q.d AND kv.pos <= q.t
    GROUP BY q.t, q.h, kv.pos"""


def softmax(dialect: Dialect, scores: str, group: str, value: str, out: str) -> str:
    """exp(x - max) / sum(exp(x - max)) over each `group` (a comma-separated list of columns; "" for
    all rows), the max subtracted first so exp never overflows."""
    over = f"PARTITION BY {group}" if group else ""
    shifted = dialect.exp(f"{value} - max({value}) OVER ({over})")
    return f"""
    SELECT *, e / sum(e) OVER ({over}) AS {out}
    FROM (SELECT *, {shifted} AS e FROM {scores}) AS shifted"""


def attention_values(weights: str, config: GPTConfig, layer: str) -> str:
    """softmax(scores) v, heads merged back: (t, h, pos, p) and numgpt_kv -> (t, i = h D + d, v);
    [H, T, S] x [H, S, D] -> [T, C]."""
    return f"""
    SELECT w.t, w.h * {config.head_size} + kv.d AS i, sum(w.p * kv.v) AS v
    FROM {weights} AS w
    JOIN numgpt_kv AS kv ON kv.layer = {layer} AND kv.h = w.h AND kv.pos = w.pos
    GROUP BY w.t, w.h, kv.d"""


def residual(x: str, y: str) -> str:
    """x + y, element by element (the residual stream)."""
    return f"""
    SELECT x.t, x.i, x.v + y.v AS v FROM {x} AS x JOIN {y} AS y ON y.t = x.t AND y.i = x.i"""


def embedding(table: str, n_in: int, rows: str, key: str) -> str:
    """The weight rows `table`.j = `key` (a column of `rows`, which also has t) unpacked into elements:
    (t, i, v) -- wte[ids] or wpe[positions]. [T] -> [T, C]"""
    # subtle: unnest in the select list, not LATERAL: a LATERAL join is a nested loop, which the session
    # disables (engines.py), and the planner then scanned all of wte per token (11 s of a 124M step)
    k = chunk_width(n_in)
    columns = ", ".join(f"w.c{n}" for n in range(1, k + 1))
    return f"""
    SELECT t, CAST(chunk * {k} + n - 1 AS INTEGER) AS i, CAST(v AS FLOAT8) AS v
    FROM (SELECT r.t, w.chunk, unnest(ARRAY[{columns}]) AS v, generate_series(1, {k}) AS n
          FROM {rows} AS r JOIN {table} AS w ON w.layer = 0 AND w.j = r.{key}) AS u"""
