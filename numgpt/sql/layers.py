"""The layers of GPT-2 as PostgreSQL SQL, one function per layer with the name of its NumPy twin in
numgpt/ops.py and numgpt/model.py: each returns the text of one common table expression (a CTE body)
that reads the rows of an earlier one.

This is the row form: core PostgreSQL has no vectorised inner product of arrays, so a vector lives as
rows, an activation being (t, i, v) -- position t, element i, value v -- and each matrix product is a
long arithmetic expression over *wide* rows (dialects.py). DuckDB runs the same layers on arrays,
array_layers.py, with the same names.

An export with product="cube" stores the weights instead as points of the `cube` contrib module and
multiplies through its distances, computed in C (linear_chunks_cube, embedding_cube): 2-2.5x less CPU
per multiply-add than the interpreted expression (BENCHMARKS.md).

Attention keeps one wide row per (position, head): q, k and v as columns e1 .. eD, so a score is one
D-term expression and the weighted sum of values D sum() aggregates (numgpt_q, numgpt_kv).

All arithmetic is FLOAT8 (double); --precision chooses how the weights are stored (float32: rounded to
float32 like numgpt's own weights, widened to double where they are used).

Parameters are written :name (the engine turns them into its placeholders): :layer, :past (the first
new position), :last (the position whose logits are wanted), and :lo, :hi -- the range of outputs j a
product computes, so that two connections can each compute half of a layer's outputs on their own core
(session.py).

Shape legend (as in model.py): T new positions, S attended positions, C n_embd, H heads, D head size,
V vocabulary.
"""

from __future__ import annotations

from ..config import GPTConfig
from .dialects import Dialect, chunk_width, cube_width

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
    """(x @ W + b)[:, lo:hi]: [T, n_in] -> [T, hi - lo]. Reads x(t, i, v), returns (t, i, v); see
    linear_chunks for how W is stored and multiplied."""
    return linear_chunks(chunks(x, n_in), table, n_in, layer)


def chunks(x: str, n: int) -> str:
    """x(t, i, v) -> (t, chunk, a): each position's n elements cut into chunks of chunk_width(n), each an
    array in i's order. [T, n] -> [T, n / K, K]"""
    k = chunk_width(n)
    return f"(SELECT t, i / {k} AS chunk, array_agg(v ORDER BY i) AS a FROM {x} GROUP BY t, i / {k})"


def linear_chunks(xs: str, table: str, n_in: int, layer: str) -> str:
    """(x @ W + b)[:, lo:hi] from x's chunks xs(t, chunk, a). W is stored as wide rows: W^T, [n_out,
    n_in], cut into chunks of K inputs, row (layer, j, chunk) holding c1 .. cK and the bias b on chunk 0
    (0 on the others). Each (x chunk, weight row) pair computes b + c1 * x1 + ... + cK * xK with x1 ..
    xK the chunk's elements; the sum over chunks is x @ W + b. Returns (t, i, v).

    subtle: the plan is what makes this fast (PostgreSQL evaluates the expression ~12 ns per term).
    x's wide rows sit below an OFFSET 0 fence, so x1 .. xK are computed once, and the weight rows are
    read in a LATERAL subquery (also fenced) that references them: a nested loop, x's row fixed while
    the weights stream past, x1 .. xK passed in as parameters. A hash join (the planner's choice
    otherwise) took 1.3x as long, unpacking x's stored row again at every weight row; without the
    fences x1 .. xK became a[n] subscripts evaluated at every term, 2x as long. The last fence keeps
    the next join (the residual's, on i) above the products: the planner had moved it below, into the
    nested loop, computing every output once per element of x (a 32-token prefill ran for minutes)."""
    k = chunk_width(n_in)
    columns = ", ".join(f"a[{n}] AS x{n}" for n in range(1, k + 1))
    product = " + ".join(f"w.c{n} * xs.x{n}" for n in range(1, k + 1))
    return _chunk_products(xs, table, n_in, layer, columns, product)


def linear_chunks_cube(xs: str, table: str, n_in: int, layer: str) -> str:
    """linear_chunks' twin for an export with product="cube": each weight row's chunk of K inputs is
    stored as K / M points of M dimensions of the `cube` module (c1 .. cP, M = cube_width(K)) with its
    squared norm sq, and w . x = (|w|^2 + |x|^2 - |w - x|^2) / 2, the distances computed in C by
    cube_distance. Measured (bench/bench_sql_cube.py): 6-8.5 ns of CPU per multiply-add against 14-21
    for the wide rows' expression; the identity's rounding is ~1e-13 at these norms. The plan's fences
    are linear_chunks' (see there). Returns (t, i, v)."""
    k = chunk_width(n_in)
    m = cube_width(k)
    points = ", ".join(f"cube(a[{p * m + 1}:{(p + 1) * m}]) AS x{p + 1}" for p in range(k // m))
    squared = " + ".join(f"power(cube_distance(w.c{p + 1}, xs.x{p + 1}), 2)" for p in range(k // m))
    columns = f"{points}, (SELECT sum(e * e) FROM unnest(a) AS e) AS sq"
    return _chunk_products(xs, table, n_in, layer, columns, f"(w.sq + xs.sq - ({squared})) / 2")


def _chunk_products(xs: str, table: str, n_in: int, layer: str, columns: str, product: str) -> str:
    """The fenced nested loop both products share (linear_chunks says why each fence): x's chunk rows
    as `columns`, each meeting its weight rows, whose output is b + `product`; summed over the chunks
    when there is more than one. Returns (t, i, v)."""
    products = f"""
    SELECT xs.t, p.i, p.v
    FROM (SELECT t, chunk, {columns} FROM {xs} AS c OFFSET 0) AS xs,
         LATERAL (SELECT w.j AS i, w.b + {product} AS v
                  FROM {table} AS w
                  WHERE w.layer = {layer} AND w.chunk = xs.chunk AND w.j >= :lo AND w.j < :hi
                  OFFSET 0) AS p
    OFFSET 0"""
    if n_in == chunk_width(n_in):
        return products
    return f"""
    SELECT t, i, sum(v) AS v FROM ({products}) AS products GROUP BY t, i"""


PRODUCTS = {"wide": linear_chunks, "cube": linear_chunks_cube}   # Dialect.product -> the product


def gelu(x: str) -> str:
    """GPT-2's GELU, 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))), element by element."""
    return f"""
    SELECT t, i, 0.5 * v * (1 + tanh({GELU_SQRT_2_OVER_PI!r} * (v + {GELU_CUBIC!r} * v * v * v))) AS v
    FROM {x}"""


def head_columns(config: GPTConfig) -> str:
    """e1, ..., eD: the columns of one head's q, k or v in a wide row."""
    return ", ".join(f"e{d}" for d in range(1, config.head_size + 1))


def split_heads(qkv: str, config: GPTConfig) -> str:
    """c_attn's outputs (t, j, v), j in 0 .. 3C-1, into one wide row per (position, part, head): part 0/1/2
    is q/k/v, columns e1 .. eD. [T, 3C] -> [T, 3, H, D]"""
    D = config.head_size
    C = config.n_embd
    columns = ", ".join(f"a[{d}] AS e{d}" for d in range(1, D + 1))
    return f"""
    SELECT t, part, h, {columns}
    FROM (SELECT t, i / {C} AS part, (i % {C}) / {D} AS h, array_agg(v ORDER BY i) AS a
          FROM {qkv} GROUP BY t, i / {C}, (i % {C}) / {D}) AS heads"""


def attention_scores(config: GPTConfig, layer: str, queries: str = "TRUE") -> str:
    """q k^T / sqrt(D) for every query of numgpt_q that `queries` keeps and cached key pos <= t (the
    causal mask is the join condition): numgpt_q, numgpt_kv (part 1) -> (t, h, pos, score);
    [H, T, D] x [H, S, D] -> [H, T, S]."""
    dot = " + ".join(f"q.e{d} * k.e{d}" for d in range(1, config.head_size + 1))
    return f"""
    SELECT q.t, q.h, k.pos, ({dot}) * {1.0 / config.head_size ** 0.5!r} AS score
    FROM numgpt_q AS q
    JOIN numgpt_kv AS k ON k.layer = {layer} AND k.part = 1 AND k.h = q.h AND k.pos <= q.t
    WHERE q.layer = {layer} AND {queries}"""


def softmax(dialect: Dialect, scores: str, group: str, value: str, out: str) -> str:
    """exp(x - max) / sum(exp(x - max)) over each `group` (a comma-separated list of columns; "" for
    all rows), the max subtracted first so exp never overflows."""
    over = f"PARTITION BY {group}" if group else ""
    shifted = dialect.exp(f"{value} - max({value}) OVER ({over})")
    return f"""
    SELECT *, e / sum(e) OVER ({over}) AS {out}
    FROM (SELECT *, {shifted} AS e FROM {scores}) AS shifted"""


def attention_values(weights: str, config: GPTConfig, layer: str) -> str:
    """softmax(scores) v, heads merged back: (t, h, pos, p) and numgpt_kv (part 2) -> (t, i = h D + d, v);
    [H, T, S] x [H, S, D] -> [T, C]. One sum() per element d of a head, then unpacked into rows."""
    D = config.head_size
    sums = ", ".join(f"sum(w.p * v.e{d})" for d in range(1, D + 1))
    return f"""
    SELECT t, h * {D} + d - 1 AS i, e AS v
    FROM (SELECT w.t, w.h, unnest(ARRAY[{sums}]) AS e, generate_series(1, {D}) AS d
          FROM {weights} AS w
          JOIN numgpt_kv AS v ON v.layer = {layer} AND v.part = 2 AND v.h = w.h AND v.pos = w.pos
          GROUP BY w.t, w.h) AS heads"""


def embedding_cube(table: str, n_in: int, rows: str, key: str) -> str:
    """embedding's twin for weight rows stored as cubes (product="cube"): each point's coordinates
    unpacked with cube_ll_coord. [T] -> [T, C]"""
    k = chunk_width(n_in)
    m = cube_width(k)
    points = ", ".join(f"w.c{p + 1}" for p in range(k // m))
    return f"""
    SELECT t, CAST(chunk * {k} + (p - 1) * {m} + n - 1 AS INTEGER) AS i, cube_ll_coord(c, n) AS v
    FROM (SELECT r.t, w.chunk, unnest(ARRAY[{points}]) AS c, generate_series(1, {k // m}) AS p
          FROM {rows} AS r
          JOIN (SELECT * FROM {table} WHERE layer = 0 AND j = ANY(ARRAY(SELECT {key} FROM {rows}))) AS w
            ON w.j = r.{key}) AS u,
         generate_series(1, {m}) AS n"""


def residual(x: str, y: str) -> str:
    """x + y, element by element (the residual stream)."""
    return f"""
    SELECT x.t, x.i, x.v + y.v AS v FROM {x} AS x JOIN {y} AS y ON y.t = x.t AND y.i = x.i"""


def embedding(table: str, n_in: int, rows: str, key: str) -> str:
    """The weight rows `table`.j = `key` (a column of `rows`, which also has t) unpacked into elements:
    (t, i, v) -- wte[ids] or wpe[positions]. [T] -> [T, C]
    subtle: the rows are fetched with j = ANY(ARRAY(...)), an index lookup; as a join, with nested loops
    disabled (engines.py), the planner hashed all of wte for one token (0.37 s of a 124M step)."""
    k = chunk_width(n_in)
    columns = ", ".join(f"w.c{n}" for n in range(1, k + 1))
    return f"""
    SELECT t, CAST(chunk * {k} + n - 1 AS INTEGER) AS i, CAST(v AS FLOAT8) AS v
    FROM (SELECT r.t, w.chunk, unnest(ARRAY[{columns}]) AS v, generate_series(1, {k}) AS n
          FROM {rows} AS r
          JOIN (SELECT * FROM {table} WHERE layer = 0 AND j = ANY(ARRAY(SELECT {key} FROM {rows}))) AS w
            ON w.j = r.{key}) AS u"""
