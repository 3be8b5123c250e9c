"""What differs between the two engines' SQL spelling, as one class per engine with the same methods
(DuckDBDialect, PostgresDialect): types, list/array functions, the seeded uniform draw, the regular
expressions of GPT-2's pre-tokenizer. An engine (engines.py) gives its dialect; statements.py and
tokenize.py write one SQL text through it wherever the engines can share one.

The big difference is the matrix-vector product, the cost of the whole model, so the model's stages
are written once per engine (array_layers.py, layers.py) and each engine chooses its own:

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

import numpy as np

CUBE_MAX = 100   # the cube module's most dimensions per cube (CUBE_MAX_DIM)
WIDE_MAX = 768   # at most this many weight columns per PostgreSQL row (768 float8 = 6 kB < 8 kB page)

# Unicode White_Space, which is what \s means in tiktoken's and Python's `regex` patterns (RE2's \s and
# PostgreSQL's [[:space:]] are ASCII or locale-dependent, so the set is spelled out).
WHITE_SPACE = (r"\t\n\x{0B}\x{0C}\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}"
               r"\x{205F}\x{3000}")
ASCII_WHITE_SPACE = "\\t\\n\\v\\f\\r "   # the same set within ASCII, in PostgreSQL's escapes


def cube_width(k: int) -> int:
    """Dimensions per cube of a chunk of k inputs in the cube product: the largest divisor of k that is
    at most CUBE_MAX (768 -> 96: eight cubes a chunk)."""
    return max(m for m in range(1, min(k, CUBE_MAX) + 1) if k % m == 0)


def chunk_width(n_in: int) -> int:
    """The PostgreSQL chunk width for an input of n_in elements: the largest divisor of n_in that is at
    most WIDE_MAX, so chunks are equal and need no padding (768 -> 768, 3072 -> 768, 1600 -> 400)."""
    return max(k for k in range(1, min(n_in, WIDE_MAX) + 1) if n_in % k == 0)


@dataclass(frozen=True)
class Dialect:
    """One engine's spelling of the few things the SQL here needs (DuckDBDialect, PostgresDialect: the
    same methods); `float_type` is the weights' type."""

    precision: str       # "float32" or "float64"
    product: str = "wide"   # PostgreSQL's matrix product: "wide" rows of REAL columns, or "cube" (layers.py)
    name = ""            # the engine's name, for messages and numgpt_meta
    unicode_table = False   # whether the pre-tokenizer reads numgpt_unicode (tokenize.py)

    @property
    def float_type(self) -> str:
        return "FLOAT4" if self.precision == "float32" else "FLOAT8"

    @property
    def numpy_float(self) -> type:
        """The numpy type the weights are rounded to before they are written."""
        return np.float32 if self.precision == "float32" else np.float64

    def byte_length(self, blob: str) -> str:
        return f"octet_length({blob})"

    def uniform(self, seed: str, step: str) -> str:
        """A uniform draw in [0, 1) from (seed, step): the first 52 bits of md5('seed:step'). A hash
        rather than a generator with state, so step n of a seeded run is the same whatever came before."""
        key = f"md5(CAST({seed} AS {self.text}) || ':' || CAST({step} AS {self.text}))"
        return f"(CAST({self.hex_bits(f'substr({key}, 1, 13)')} AS FLOAT8) / 4503599627370496.0)"   # 2^52

    # ---- spelled differently by each engine (the subclasses) --------------------------------------

    blob = ""   # the bytes type
    text = ""   # the text type

    def list_length(self, expr: str) -> str:
        raise NotImplementedError

    def int_list(self, expr: str) -> str:
        """A list of integers built by an aggregate over `expr` (in ORDER BY order)."""
        raise NotImplementedError

    def single(self, expr: str) -> str:
        """A one-element list."""
        raise NotImplementedError

    def series(self, first: str, last: str) -> str:
        """A table function of the integers first .. last (inclusive), column `k`."""
        raise NotImplementedError

    def split_ids(self, expr: str) -> str:
        """'(12)(34)(5)' -> the list of its ids as text: ['12', '34', '5']."""
        raise NotImplementedError

    def utf8(self, expr: str) -> str:
        """Text -> its UTF-8 bytes."""
        raise NotImplementedError

    def byte_at(self, blob: str, k: str) -> str:
        """The k-th byte (0-based) of a blob, as an integer."""
        raise NotImplementedError

    def hex_bits(self, hex_text: str) -> str:
        """Up to 15 hex digits -> a BIGINT."""
        raise NotImplementedError

    def exp(self, expr: str) -> str:
        """exp() of a value <= 0."""
        raise NotImplementedError

    def regex_list(self, text: str, pattern: str) -> str:
        """Every match of pattern in text, as a list, in order."""
        raise NotImplementedError

    def split_list(self, text: str, pattern: str) -> str:
        """The parts of text between matches of pattern, as a list (n matches: n + 1 parts)."""
        raise NotImplementedError

    def indexed(self, lst: str, value: str, index: str) -> str:
        """A table over a list, aliased u: its elements `value` with their 1-based `index` (put LATERAL
        before it to read a column of an earlier table)."""
        raise NotImplementedError

    def pretokenizer_patterns(self) -> tuple[str, str]:
        """(runs of whitespace or not, GPT-2's pieces without the lookahead) for the engine's regex
        (tokenize.py)."""
        raise NotImplementedError

    def starts_with_white_space(self, expr: str) -> str:
        """Whether a run of the class string (tokenize.py) is a whitespace run."""
        raise NotImplementedError

    def class_string(self, other: str) -> str:
        """parts(p, part) -> classes(p, part, cls): the string the patterns run on (tokenize.py; `other`
        is the class character of a code point that is no letter, number or space)."""
        raise NotImplementedError


class DuckDBDialect(Dialect):
    """DuckDB: lists, RE2 with \\p{L}/\\p{N}, fixed-size arrays."""

    name = "duckdb"
    blob = "BLOB"
    text = "VARCHAR"

    def list_length(self, expr):
        return f"len({expr})"

    def int_list(self, expr):
        return f"list({expr})"

    def single(self, expr):
        return f"[{expr}]"

    def series(self, first, last):
        return f"range({first}, ({last}) + 1) AS series(k)"

    def split_ids(self, expr):
        return f"string_split(trim({expr}, '()'), ')(')"

    def utf8(self, expr):
        return f"encode({expr})"

    def byte_at(self, blob, k):
        return f"CAST('0x' || substr(hex({blob}), 2 * ({k}) + 1, 2) AS INTEGER)"

    def hex_bits(self, hex_text):
        return f"CAST('0x' || {hex_text} AS BIGINT)"

    def exp(self, expr):
        return f"exp({expr})"

    def regex_list(self, text, pattern):
        return f"regexp_extract_all({text}, {quote(pattern)})"

    def split_list(self, text, pattern):
        return f"string_split_regex({text}, {quote(pattern)})"

    def indexed(self, lst, value, index):
        return f"(SELECT unnest({lst}) AS {value}, generate_subscripts({lst}, 1) AS {index}) AS u"

    def pretokenizer_patterns(self):
        ws = WHITE_SPACE
        return (f"[{ws}]+|[^{ws}]+",
                rf"'s|'t|'re|'ve|'m|'ll|'d| ?\p{{L}}+| ?\p{{N}}+| ?[^{ws}\p{{L}}\p{{N}}]+|[{ws}]+")

    def starts_with_white_space(self, expr):
        return f"regexp_matches({expr}, {quote('^[' + WHITE_SPACE + ']')})"

    def class_string(self, other):
        return "\n    SELECT p, part, part AS cls FROM parts"   # RE2 matches the text itself


class PostgresDialect(Dialect):
    """PostgreSQL: arrays, its own regular expressions (lookahead, no \\p{L}), a checked exp()."""

    name = "postgresql"
    blob = "BYTEA"
    text = "TEXT"
    unicode_table = True

    def list_length(self, expr):
        return f"coalesce(array_length({expr}, 1), 0)"

    def int_list(self, expr):
        return f"array_agg({expr})"

    def single(self, expr):
        return f"ARRAY[{expr}]"

    def series(self, first, last):
        return f"generate_series({first}, {last}) AS series(k)"

    def split_ids(self, expr):
        return f"string_to_array(trim(both '()' from {expr}), ')(')"

    def utf8(self, expr):
        return f"convert_to({expr}, 'UTF8')"

    def byte_at(self, blob, k):
        return f"get_byte({blob}, {k})"

    def hex_bits(self, hex_text):
        return f"('x' || lpad({hex_text}, 16, '0'))::bit(64)::bigint"

    def exp(self, expr):
        """subtle: PostgreSQL raises an error when exp underflows (below about -745), so the argument is
        clamped at -700, where exp is 1e-304: 0 for every sum it enters."""
        return f"exp(greatest({expr}, -700))"

    def regex_list(self, text, pattern):
        return f"ARRAY(SELECT m[1] FROM regexp_matches({text}, {quote('(' + pattern + ')')}, 'g') AS m)"

    def split_list(self, text, pattern):
        return f"regexp_split_to_array({text}, {quote(pattern)})"

    def indexed(self, lst, value, index):
        return f"unnest({lst}) WITH ORDINALITY AS u({value}, {index})"

    def pretokenizer_patterns(self):
        ws = ASCII_WHITE_SPACE   # the class string is ASCII (tokenize.py)
        return (f"[{ws}]+|[^{ws}]+", f"'s|'t|'re|'ve|'m|'ll|'d| ?[a-zA-Z]+| ?[0-9]+| ?[^{ws}a-zA-Z0-9]+|[{ws}]+")

    def starts_with_white_space(self, expr):
        return f"{expr} ~ {quote('^[' + ASCII_WHITE_SPACE + ']')}"

    def class_string(self, other):
        return f"""
    SELECT parts.p, parts.part, coalesce(string_agg(
             CASE WHEN ascii(c.ch) < 128 THEN c.ch
                  ELSE coalesce((SELECT CASE WHEN u.hi >= ascii(c.ch) THEN u.cls END FROM numgpt_unicode AS u
                                 WHERE u.lo <= ascii(c.ch) ORDER BY u.lo DESC LIMIT 1), '{other}') END,
             '' ORDER BY c.k), '') AS cls
    FROM parts LEFT JOIN LATERAL regexp_split_to_table(parts.part, '') WITH ORDINALITY AS c(ch, k) ON TRUE
    GROUP BY parts.p, parts.part"""


def quote(s: str) -> str:
    """A SQL string literal (standard: a quote is doubled; backslashes are literal in both engines)."""
    return "'" + s.replace("'", "''") + "'"
