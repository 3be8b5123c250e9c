"""What differs between the two engines' SQL, in one place: types, list/array functions, the seeded
uniform draw, the regular expressions of GPT-2's pre-tokenizer, and the matrix-vector product.

Everything else in numgpt/sql is one SQL text for both engines. The big difference is the
matrix-vector product, the cost of the whole model:

- DuckDB keeps every weight row as a fixed-size FLOAT8[C] array (uncompressed; a float32 export holds
  float32 values) and multiplies with its built-in `array_inner_product`, one call per output element;
  its activations are arrays too (array_layers.py).
- PostgreSQL (core, no extension) has no inner product of arrays that is not a per-element loop, so a
  weight row is *wide*: one column per input element, c1 .. cK, and the product is the expression
  `c1 * x1 + c2 * x2 + ... + cK * xK` that PostgreSQL compiles once per prepared statement. A row holds
  at most WIDE_MAX columns (PostgreSQL's limit is 1600 and a row must fit in an 8 kB page), so inputs
  wider than that (the MLP's 4C) are cut into chunks whose partial sums are added.

Regular expressions: DuckDB's RE2 knows \\p{L} and \\p{N} but has no lookahead; PostgreSQL's
regular expressions have lookahead but no \\p{L}, and pick the longest of several alternatives that
match at one place (not the first one, as Perl and tiktoken do). tokenize.py explains how the
pre-tokenizer gets GPT-2's exact pieces from each (a split into runs, then a class string on
PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass

WIDE_MAX = 768   # at most this many weight columns per PostgreSQL row (768 float8 = 6 kB < 8 kB page)

# Unicode White_Space, which is what \s means in tiktoken's and Python's `regex` patterns (RE2's \s and
# PostgreSQL's [[:space:]] are ASCII or locale-dependent, so the set is spelled out).
WHITE_SPACE = (r"\t\n\x{0B}\x{0C}\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}"
               r"\x{205F}\x{3000}")
ASCII_WHITE_SPACE = "\\t\\n\\v\\f\\r "   # the same set within ASCII, in PostgreSQL's escapes


def chunk_width(n_in: int) -> int:
    """The PostgreSQL chunk width for an input of n_in elements: the largest divisor of n_in that is at
    most WIDE_MAX, so chunks are equal and need no padding (768 -> 768, 3072 -> 768, 1600 -> 400)."""
    return max(k for k in range(1, min(n_in, WIDE_MAX) + 1) if n_in % k == 0)


@dataclass(frozen=True)
class Dialect:
    """One engine's spelling of the few things the SQL here needs; `float_type` is the weights' type."""

    name: str            # "duckdb" or "postgresql"
    precision: str       # "float32" or "float64"

    @property
    def float_type(self) -> str:
        return "FLOAT4" if self.precision == "float32" else "FLOAT8"

    @property
    def blob(self) -> str:
        return "BLOB" if self.name == "duckdb" else "BYTEA"

    @property
    def text(self) -> str:
        return "VARCHAR" if self.name == "duckdb" else "TEXT"

    # ---- lists ------------------------------------------------------------------------------------

    def list_length(self, expr: str) -> str:
        return f"len({expr})" if self.name == "duckdb" else f"coalesce(array_length({expr}, 1), 0)"

    def int_list(self, expr: str) -> str:
        """A list of integers built by an aggregate over `expr` (in ORDER BY order)."""
        return f"list({expr})" if self.name == "duckdb" else f"array_agg({expr})"

    def single(self, expr: str) -> str:
        """A one-element list."""
        return f"[{expr}]" if self.name == "duckdb" else f"ARRAY[{expr}]"

    def series(self, first: str, last: str) -> str:
        """A table function of the integers first .. last (inclusive), column `k`."""
        if self.name == "duckdb":
            return f"range({first}, ({last}) + 1) AS series(k)"
        return f"generate_series({first}, {last}) AS series(k)"

    def split_ids(self, expr: str) -> str:
        """'(12)(34)(5)' -> the list of its ids as text: ['12', '34', '5']."""
        if self.name == "duckdb":
            return f"string_split(trim({expr}, '()'), ')(')"
        return f"string_to_array(trim(both '()' from {expr}), ')(')"

    # ---- bytes and text ---------------------------------------------------------------------------

    def utf8(self, expr: str) -> str:
        """Text -> its UTF-8 bytes."""
        return f"encode({expr})" if self.name == "duckdb" else f"convert_to({expr}, 'UTF8')"

    def byte_at(self, blob: str, k: str) -> str:
        """The k-th byte (0-based) of a blob, as an integer."""
        if self.name == "duckdb":
            return f"CAST('0x' || substr(hex({blob}), 2 * ({k}) + 1, 2) AS INTEGER)"
        return f"get_byte({blob}, {k})"

    def byte_length(self, blob: str) -> str:
        return f"octet_length({blob})"

    # ---- randomness -------------------------------------------------------------------------------

    def uniform(self, seed: str, step: str) -> str:
        """A uniform draw in [0, 1) from (seed, step): the first 52 bits of md5('seed:step'). A hash
        rather than a generator with state, so step n of a seeded run is the same whatever came before."""
        key = f"md5(CAST({seed} AS {self.text}) || ':' || CAST({step} AS {self.text}))"
        if self.name == "duckdb":
            bits = f"CAST('0x' || substr({key}, 1, 13) AS BIGINT)"
        else:
            bits = f"('x' || lpad(substr({key}, 1, 13), 16, '0'))::bit(64)::bigint"
        return f"(CAST({bits} AS FLOAT8) / 4503599627370496.0)"   # 2^52

    def exp(self, expr: str) -> str:
        """exp() of a value <= 0. subtle: PostgreSQL raises an error when exp underflows (below
        about -745), so the argument is clamped at -700, where exp is 1e-304: 0 for every sum it enters."""
        return f"exp({expr})" if self.name == "duckdb" else f"exp(greatest({expr}, -700))"

    # ---- regular expressions ----------------------------------------------------------------------

    def regex_list(self, text: str, pattern: str) -> str:
        """Every match of pattern in text, as a list, in order."""
        if self.name == "duckdb":
            return f"regexp_extract_all({text}, {quote(pattern)})"
        return f"ARRAY(SELECT m[1] FROM regexp_matches({text}, {quote('(' + pattern + ')')}, 'g') AS m)"

    def split_list(self, text: str, pattern: str) -> str:
        """The parts of text between matches of pattern, as a list (n matches: n + 1 parts)."""
        if self.name == "duckdb":
            return f"string_split_regex({text}, {quote(pattern)})"
        return f"regexp_split_to_array({text}, {quote(pattern)})"

    def unnest_indexed(self, lst: str, value: str, index: str) -> str:
        """A table function over a list: each element `value` with its 1-based `index`."""
        if self.name == "duckdb":
            return (f"(SELECT unnest({lst}) AS {value}, generate_subscripts({lst}, 1) AS {index})")
        return f"unnest({lst}) WITH ORDINALITY AS u({value}, {index})"


def quote(s: str) -> str:
    """A SQL string literal (standard: a quote is doubled; backslashes are literal in both engines)."""
    return "'" + s.replace("'", "''") + "'"
