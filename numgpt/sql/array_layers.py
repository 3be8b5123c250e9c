"""The layers of GPT-2 as DuckDB SQL on arrays: the twins of layers.py (same names, same math), for the
engine that has fixed-size arrays and a vectorised `array_inner_product`.

Here an activation is one row per position, (t, x FLOAT8[n]), not one row per element: a decode step then
moves a few rows between stages instead of thousands, and the elementwise layers (LayerNorm, GELU, the
residual) are one `list_transform` per row. Measured on 124M (BENCHMARKS.md): the row form spent more time
joining and regrouping its (t, i, v) rows than multiplying; the array form leaves the matrix products as
most of the step. Attention works on (t, h, q/k/v FLOAT8[D]) rows: one inner product per (query, key).

All arithmetic is FLOAT8 (double), as in layers.py. DuckDB's weights are stored as FLOAT8 arrays whatever
the precision (a float32 export holds float32 values, widened once at export), so no product casts.
subtle: the products must accumulate in double: summed in float32 they were 20 float32 ulps off NumPy's
(1.2e-5 on logits of 10, measured), beyond the 1e-5 bar; in double only NumPy's own float32 error is left.
DuckDB's lambda index `i` is 1-based, as its array subscripts are.

Shape legend (as in model.py): T new positions, S attended positions, C n_embd, H heads, D head size,
V vocabulary.
"""

from __future__ import annotations

from ..config import GPTConfig
from .layers import GELU_CUBIC, GELU_SQRT_2_OVER_PI


def layer_norm(x: str, name: str, layer: str, eps: float, n: int) -> str:
    """(x - mean) / sqrt(var + eps) * weight + bias over each position's array (biased variance, as
    ops.layer_norm); numgpt_ln holds weight and bias as arrays. [T, C] -> [T, C]."""
    return f"""
    SELECT s.t, CAST(list_transform(s.x, lambda v, i: (v - s.mean) / sqrt(s.var + {eps!r}) * g.weight[i] + g.bias[i])
                     AS FLOAT8[{n}]) AS x
    FROM (SELECT t, x, list_avg(x) AS mean, list_var_pop(x) AS var FROM {x}) AS s
    JOIN numgpt_ln AS g ON g.layer = {layer} AND g.name = '{name}'"""


def linear(x: str, table: str, n_in: int, n_out: int, layer: str) -> str:
    """x @ W + b: [T, n_in] -> [T, n_out], W stored one row per output j (W^T): one inner product per
    (position, output), gathered back into one array per position in j's order."""
    return f"""
    SELECT xs.t, CAST(list(array_inner_product(w.w, xs.x) + w.b ORDER BY w.j)
                      AS FLOAT8[{n_out}]) AS x
    FROM {x} AS xs, {table} AS w
    WHERE w.layer = {layer}
    GROUP BY xs.t"""


def linear_residual(x: str, table: str, n_in: int, n_out: int, layer: str, residual: str) -> str:
    """residual + (x @ W + b): a block's c_proj and the residual connection in one pass over W's rows
    (element j of the residual is added to output j before the outputs are gathered). Measured: a
    separate `residual` join of two arrays cost 2.5 ms a stage, 60 ms of a 124M decode step.
    [T, n_in] -> [T, n_out]"""
    return f"""
    SELECT xs.t, CAST(list(r.x[w.j + 1] + (array_inner_product(w.w, xs.x) + w.b) ORDER BY w.j)
                      AS FLOAT8[{n_out}]) AS x
    FROM {x} AS xs JOIN {residual} AS r ON r.t = xs.t, {table} AS w
    WHERE w.layer = {layer}
    GROUP BY xs.t"""


def lm_head(x: str, n_in: int) -> str:
    """x @ wte^T, the tied projection, left as rows (t, i = token id, v): the sampling statements read the
    logits as rows. [T, C] -> [T, V]"""
    return f"""
    SELECT xs.t, w.j AS i, array_inner_product(w.w, xs.x) AS v
    FROM {x} AS xs, numgpt_wte AS w
    WHERE w.layer = 0"""


def gelu(x: str, n: int) -> str:
    """GPT-2's GELU, 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))), on every element."""
    return f"""
    SELECT t, CAST(list_transform(x, lambda v: 0.5 * v * (1 + tanh({GELU_SQRT_2_OVER_PI!r} * (v + {GELU_CUBIC!r} * v * v * v))))
                   AS FLOAT8[{n}]) AS x
    FROM {x}"""


def split_heads(qkv: str, config: GPTConfig) -> str:
    """c_attn's [T, 3C] -> q, k, v of each head: (t, h, q, k, v FLOAT8[D]); [T, 3C] -> [T, H, 3, D]."""
    C, D = config.n_embd, config.head_size
    part = [f"CAST(x[{p * C + 1} + h * {D}:{p * C + D} + h * {D}] AS FLOAT8[{D}]) AS {name}"
            for p, name in enumerate("qkv")]
    return f"""
    SELECT t, CAST(h AS INTEGER) AS h, {', '.join(part)}
    FROM {qkv}, range({config.n_head}) AS heads(h)"""


def attention_scores(q: str, config: GPTConfig, layer: str) -> str:
    """q k^T / sqrt(D) for every new query t over the cached keys pos <= t (the causal mask is the join
    condition), gathered into one list per (t, h) in pos order: (t, h, q) and numgpt_kv -> (t, h, s
    FLOAT8[] over pos 0 .. t); [H, T, D] x [H, S, D] -> [H, T, S]."""
    return f"""
    SELECT q.t, q.h, list(array_inner_product(q.q, kv.k) * {1.0 / config.head_size ** 0.5!r} ORDER BY kv.pos) AS s
    FROM {q} AS q
    JOIN numgpt_kv AS kv ON kv.layer = {layer} AND kv.h = q.h AND kv.pos <= q.t
    GROUP BY q.t, q.h"""


def softmax(rows: str, keys: str, scores: str, out: str) -> str:
    """exp(x - max) / sum(exp(x - max)) over each row's list `scores`, by list functions (the twin of
    layers.softmax, which works over groups of rows). Measured on 124M: as two window functions over
    (t, h, pos) rows, DuckDB's attention cost more (BENCHMARKS.md). subtle: the max and the sum are
    computed once a row, below the lambda that uses them: list_max(s) written inside the lambda is
    evaluated for every element (a 4,000-element list: 12.8 s against 0.016 s, measured)."""
    return f"""
    SELECT {keys}, list_transform(e, lambda v: v / total) AS {out}
    FROM (SELECT {keys}, e, list_sum(e) AS total
          FROM (SELECT {keys}, list_transform({scores}, lambda v: exp(v - top)) AS e
                FROM (SELECT *, list_max({scores}) AS top FROM {rows}) AS tops) AS shifted) AS totals"""


def attention_values(weights_: str, config: GPTConfig, layer: str) -> str:
    """softmax(scores) v, heads merged back into one array: (t, h, p over pos 0 .. t) and numgpt_kv ->
    (t, x); [H, T, S] x [H, S, D] -> [T, C]. The cached v arrays are unnested to (d, value) for the sum
    over pos, each weighted by p[pos + 1] (lists are 1-based)."""
    D = config.head_size
    return f"""
    SELECT t, CAST(list(v ORDER BY h, d) AS FLOAT8[{config.n_embd}]) AS x
    FROM (SELECT t, h, d, sum(p * v) AS v
          FROM (SELECT w.t, w.h, w.p[kv.pos + 1] AS p, unnest(kv.v) AS v, unnest(range({D})) AS d
                FROM {weights_} AS w
                JOIN numgpt_kv AS kv ON kv.layer = {layer} AND kv.h = w.h AND kv.pos <= w.t) AS terms
          GROUP BY t, h, d) AS heads
    GROUP BY t"""


def embedding(rows: str, n: int) -> str:
    """wte[id] + wpe[pos] for each row (t, id) of `rows`: (t, x). [T] -> [T, C]"""
    return f"""
    SELECT r.t, CAST(list_transform(te.w, lambda v, i: v + pe.w[i]) AS FLOAT8[{n}]) AS x
    FROM {rows} AS r
    JOIN numgpt_wte AS te ON te.layer = 0 AND te.j = r.id
    JOIN numgpt_wpe AS pe ON pe.layer = 0 AND pe.j = r.t"""
