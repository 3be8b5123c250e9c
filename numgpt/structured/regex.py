"""Regular expressions -> a DFA over UTF-8 bytes: the language a constrained generation must stay in.

    parse(pattern) -> a small syntax tree over Unicode code-point sets
    compile_regex(pattern) -> DFA: transitions [S, 256] over bytes, accepting states, every state live

Written here (no new dependency): Thompson's construction (each code-point set becomes the UTF-8 byte
sequences that spell it, by the range-splitting of Rust's regex-syntax `Utf8Sequences`), then the subset
construction over classes of bytes the automaton cannot tell apart, then the states that cannot reach an
accepting one are dropped. The whole text must match (as `re.fullmatch`): `^` at the start and `$` at the
end are accepted and mean nothing more.

Syntax: literals, `.`, escapes (\\n \\t \\r \\f \\v \\0 \\xHH \\uHHHH \\. ...), classes `[a-z_]`, `[^...]`,
`\\d \\w \\s \\D \\W \\S`, `\\UHHHHHHHH`, groups `(...)` `(?:...)` `(?P<name>...)`, `|`, `? * + {m} {m,} {m,n}` (a lazy
`?` after one is accepted: the language is the same). Refused by name: backreferences, lookaround,
inline flags, word boundaries, anchors inside the pattern.

Meaning of the shorthand classes, chosen so the output matches under both Python's `re` (Unicode) and
ECMAScript (ASCII, JSON Schema's dialect): where a class *allows* characters it uses the smaller reading
(\\d = [0-9], \\w = [A-Za-z0-9_], \\s = ASCII space characters), where it *excludes* them (\\D, \\W, \\S,
[^...]) the larger one (every Unicode digit, word or space character of either dialect); `.` excludes
every line terminator of either (\\n \\r U+2028 U+2029). So generated text is always in both languages.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import numpy as np

from ..errors import NumgptError

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)          # not characters: UTF-8 cannot spell them
MAX_STATES = 20_000                     # DFA states at most: beyond it a pattern is refused as too large
MAX_REPEAT = 1_000                      # the largest {m,n} bound (each copy is spelled out)
MAX_NFA_STATES = 1_000_000              # the NFA's states at most, repeats spelled out (nested ones multiply)
MAX_DEPTH = 100                         # groups nested at most this deep
MAX_PATTERN = 200_000                   # characters of a pattern at most
DEAD = -1                               # "no transition" in a DFA's table

Ranges = tuple[tuple[int, int], ...]    # sorted, disjoint, inclusive code-point ranges


# ---------------------------------------------------------------------------------------------------
# code-point sets


def normalize(ranges) -> Ranges:
    """Sorted, merged, surrogate-free ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        for a, b in ((lo, min(hi, SURROGATES[0] - 1)), (max(lo, SURROGATES[1] + 1), hi)):
            if a > b:
                continue
            if out and a <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
    return tuple((a, b) for a, b in out)


def complement(ranges: Ranges) -> Ranges:
    """Every character not in `ranges`."""
    out, start = [], 0
    for lo, hi in normalize(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return normalize(out)


@functools.cache
def _unicode_class(name: str) -> Ranges:
    """Python's Unicode \\d, \\w or \\s, united with ECMAScript's: the larger reading of a shorthand."""
    test = {"d": str.isdecimal, "w": lambda c: c.isalnum() or c == "_", "s": str.isspace}[name]
    extra = {"s": "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                  "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"}.get(name, "")
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and (test(chr(cp)) or chr(cp) in extra)
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append((start, cp - 1))
            start = None
    return normalize(ranges)


ASCII_CLASS = {"d": ((48, 57),), "w": ((48, 57), (65, 90), (95, 95), (97, 122)),
               "s": ((9, 13), (32, 32))}
LINE_TERMINATORS = ((10, 10), (13, 13), (0x2028, 0x2029))


def shorthand(letter: str, allowing: bool) -> Ranges:
    """\\d \\w \\s \\D \\W \\S as a set: the smaller reading when the set allows, the larger when the
    surrounding class excludes it (allowing=False: inside [^...]); see the module docstring."""
    lower = letter.lower()
    positive = letter == lower
    if positive == allowing:                  # \d allowing, or \D excluded: the ASCII digits
        small = ASCII_CLASS[lower]
        return small if positive else complement(small)
    large = _unicode_class(lower)
    return large if positive else complement(large)


# ---------------------------------------------------------------------------------------------------
# syntax tree


@dataclass(frozen=True)
class Chars:
    ranges: Ranges


@dataclass(frozen=True)
class Concat:
    parts: tuple


@dataclass(frozen=True)
class Alternate:
    options: tuple


@dataclass(frozen=True)
class Repeat:
    node: object
    low: int
    high: int | None          # None = unbounded


EMPTY = Concat(())
SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "0": "\0"}
REFUSED_ESCAPES = {"b": "a word boundary \\b", "B": "\\B", "A": "\\A", "Z": "\\Z", "z": "\\z", "G": "\\G"}


class RegexError(NumgptError):
    """An invalid or unsupported regular expression (the message says where and what)."""


class _Parser:
    """Recursive descent over the pattern text: alternation > concatenation > repetition > atom."""

    def __init__(self, pattern: str):
        self.text, self.i, self.depth = pattern, 0, 0

    def fail(self, what: str) -> RegexError:
        return RegexError(f"invalid regex {shown(self.text)} at position {self.i}: {what}")

    def peek(self) -> str | None:
        return self.text[self.i] if self.i < len(self.text) else None

    def take(self) -> str:
        if self.i >= len(self.text):
            raise self.fail("it ends too early")
        c = self.text[self.i]
        self.i += 1
        return c

    def parse(self):
        if self.peek() == "^":
            self.i += 1
        node = self.alternation()
        if self.peek() == ")":
            raise self.fail("unbalanced ')'")
        return node

    def alternation(self):
        options = [self.concatenation()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.concatenation())
        return options[0] if len(options) == 1 else Alternate(tuple(options))

    def concatenation(self):
        parts = []
        while self.peek() not in (None, "|", ")"):
            if self.peek() == "$" and self.i == len(self.text) - 1:
                self.i += 1
                break
            parts.append(self.repetition())
        return parts[0] if len(parts) == 1 else Concat(tuple(parts))

    def repetition(self):
        node = self.atom()
        while self.peek() in ("?", "*", "+", "{"):
            c = self.peek()
            if c == "{":
                bounds = self.braces()
                if bounds is None:
                    break
                low, high = bounds
            else:
                self.i += 1
                low, high = {"?": (0, 1), "*": (0, None), "+": (1, None)}[c]
            if self.peek() == "?":
                self.i += 1                       # lazy: the same language
            elif self.peek() == "+":
                raise self.fail("possessive quantifiers are not supported")
            node = Repeat(node, low, high)
        return node

    def braces(self) -> tuple[int, int | None] | None:
        """{m} {m,} {m,n} {,n}; None (and nothing consumed) when the brace is a literal, as in Python."""
        end = self.text.find("}", self.i)
        body = self.text[self.i + 1:end] if end > 0 else ""
        low_s, comma, high_s = body.partition(",")
        if end < 0 or not (low_s.isdigit() or (comma and (low_s == "" and high_s.isdigit()))) \
                or (high_s and not high_s.isdigit()):
            return None
        low = int(low_s) if low_s else 0
        high = (int(high_s) if high_s else None) if comma else low
        if high is not None and high < low:
            raise self.fail(f"the repeat {{{body}}} has its maximum below its minimum")
        if max(low, high or 0) > MAX_REPEAT:
            raise self.fail(f"the repeat {{{body}}} is beyond {MAX_REPEAT}")
        self.i = end + 1
        return low, high

    def atom(self):
        c = self.take()
        if c == "(":
            return self.group()
        if c == "[":
            return Chars(self.char_class())
        if c == ".":
            return Chars(complement(LINE_TERMINATORS))
        if c == "\\":
            return Chars(self.escape(allowing=True))
        if c in "*+?":
            raise self.fail(f"nothing to repeat before {c!r}")
        if c == "^" or c == "$":
            raise self.fail(f"the anchor {c!r} is only allowed at the very start (^) or end ($): the whole "
                            "text must match anyway")
        return Chars(normalize([(ord(c), ord(c))]))

    def group(self):
        if self.peek() == "?":
            self.i += 1
            kind = self.take()
            if kind == ":":
                pass
            elif kind == "P" and self.peek() == "<":
                end = self.text.find(">", self.i)
                if end < 0:
                    raise self.fail("an unterminated group name")
                self.i = end + 1
            elif kind == "<" and self.peek() not in ("=", "!"):
                end = self.text.find(">", self.i)
                if end < 0:
                    raise self.fail("an unterminated group name")
                self.i = end + 1
            elif kind in "=!<":
                raise self.fail("lookaround assertions are not supported")
            elif kind == "P" and self.peek() == "=":
                raise self.fail("backreferences are not supported")
            else:
                raise self.fail(f"the group (?{kind}...) (inline flags, conditionals) is not supported")
        if self.depth == MAX_DEPTH:
            raise self.fail(f"groups nested more than {MAX_DEPTH} deep")
        self.depth += 1
        node = self.alternation()
        self.depth -= 1
        if self.peek() != ")":
            raise self.fail("missing ')'")
        self.i += 1
        return node

    def escape(self, *, allowing: bool) -> Ranges:
        c = self.take()
        if c in "dwsDWS":
            return shorthand(c, allowing)
        if c in SIMPLE_ESCAPES:
            return ((ord(SIMPLE_ESCAPES[c]),) * 2,)
        if c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.text[self.i:self.i + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {width} hex digits")
            self.i += width
            cp = int(digits, 16)
            if cp > MAX_CODE_POINT:
                raise self.fail(f"\\{c}{digits} is beyond the last character U+10FFFF")
            if SURROGATES[0] <= cp <= SURROGATES[1]:
                raise self.fail("a surrogate code point is not a character")
            return ((cp, cp),)
        if c.isdigit():
            raise self.fail("backreferences are not supported")
        if c in REFUSED_ESCAPES:
            raise self.fail(f"{REFUSED_ESCAPES[c]} is not supported")
        if c.isalnum():
            raise self.fail(f"unknown escape \\{c}")
        return ((ord(c), ord(c)),)

    def char_class(self) -> Ranges:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        items: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.take()
            if c == "]" and not first:
                break
            first = False
            if c == "\\":
                got = self.escape(allowing=not negated)
                if len(got) != 1 or got[0][0] != got[0][1]:
                    items.extend(got)
                    continue
                lo = got[0][0]
            else:
                lo = ord(c)
            if self.peek() == "-" and self.i + 1 < len(self.text) and self.text[self.i + 1] != "]":
                self.i += 1
                d = self.take()
                if d == "\\":
                    got = self.escape(allowing=not negated)
                    if len(got) != 1 or got[0][0] != got[0][1]:
                        raise self.fail("a range cannot end in a class such as \\d")
                    hi = got[0][0]
                else:
                    hi = ord(d)
                if hi < lo:
                    raise self.fail(f"the range {chr(lo)!r}-{chr(hi)!r} is backwards")
                items.append((lo, hi))
            else:
                items.append((lo, lo))
        ranges = normalize(items)
        return complement(ranges) if negated else ranges


def parse(pattern: str):
    """The syntax tree of `pattern` (RegexError, one line, if it is invalid or unsupported)."""
    if not isinstance(pattern, str):
        raise RegexError(f"a regex must be a string, got {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN:
        raise RegexError(f"the regex is too large: {len(pattern):,} characters, at most {MAX_PATTERN:,}")
    return _Parser(pattern).parse()


def shown(pattern: str, limit: int = 80) -> str:
    """A pattern as an error message quotes it: as written (no doubled backslashes), cut short if long."""
    return "'" + (pattern if len(pattern) <= limit else pattern[:limit - 3] + "...") + "'"


def nfa_size(node, sizes: dict[int, int] | None = None) -> int:
    """About how many states `_NFA.build` makes for a syntax tree: repeats spelled out, so nested bounded
    repeats multiply (a{1000}{1000} is a million). Checked before building, which would take the memory."""
    sizes = {} if sizes is None else sizes
    if id(node) in sizes:
        return sizes[id(node)]
    if isinstance(node, Chars):
        size = 1 + 3 * len(node.ranges)
    elif isinstance(node, Concat):
        size = sum(nfa_size(p, sizes) for p in node.parts)
    elif isinstance(node, Alternate):
        size = 1 + sum(1 + nfa_size(o, sizes) for o in node.options)
    else:
        inner = nfa_size(node.node, sizes)
        size = node.low * inner + (1 + inner if node.high is None else 1 + (node.high - node.low) * inner)
    sizes[id(node)] = size
    return size


# ---------------------------------------------------------------------------------------------------
# UTF-8: a code-point range as byte-range sequences


def utf8_sequences(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """The byte-range sequences whose concatenations spell exactly the characters lo..hi in UTF-8
    (Rust regex-syntax's Utf8Sequences: split where the encoded length changes, then until every byte
    position varies over a full range independently)."""
    for boundary in (0x7F, 0x7FF, 0xFFFF):
        if lo <= boundary < hi:
            return utf8_sequences(lo, boundary) + utf8_sequences(boundary + 1, hi)
    n = 1 if hi <= 0x7F else 2 if hi <= 0x7FF else 3 if hi <= 0xFFFF else 4
    for i in range(1, n):
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m != 0:
                return utf8_sequences(lo, lo | m) + utf8_sequences((lo | m) + 1, hi)
            if hi & m != m:
                return utf8_sequences(lo, (hi & ~m) - 1) + utf8_sequences(hi & ~m, hi)
    a, b = chr(lo).encode("utf-8"), chr(hi).encode("utf-8")
    return [list(zip(a, b))]


# ---------------------------------------------------------------------------------------------------
# NFA (Thompson) over bytes


class _NFA:
    """States are ints; `edges[s]` is a list of (lo, hi, target) byte-range edges, `eps[s]` epsilon targets."""

    def __init__(self):
        self.edges: list[list[tuple[int, int, int]]] = []
        self.eps: list[list[int]] = []

    def state(self) -> int:
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def build(self, node, start: int) -> int:
        """Add `node` starting at `start`; returns its end state."""
        if isinstance(node, Chars):
            end = self.state()
            for lo, hi in node.ranges:
                for seq in utf8_sequences(lo, hi):
                    s = start
                    for k, (a, b) in enumerate(seq):
                        t = end if k == len(seq) - 1 else self.state()
                        self.edges[s].append((a, b, t))
                        s = t
            return end
        if isinstance(node, Concat):
            for part in node.parts:
                start = self.build(part, start)
            return start
        if isinstance(node, Alternate):
            end = self.state()
            for option in node.options:
                s = self.state()
                self.eps[start].append(s)
                self.eps[self.build(option, s)].append(end)
            return end
        if isinstance(node, Repeat):
            for _ in range(node.low):
                start = self.build(node.node, start)
            if node.high is None:                 # x*: a loop
                loop = self.state()
                self.eps[start].append(loop)
                self.eps[self.build(node.node, loop)].append(loop)
                return loop
            end = self.state()
            for _ in range(node.high - node.low):  # x? x? ...: each may stop early
                self.eps[start].append(end)
                start = self.build(node.node, start)
            self.eps[start].append(end)
            return end
        raise TypeError(node)


# ---------------------------------------------------------------------------------------------------
# DFA


@dataclass(frozen=True)
class DFA:
    """A deterministic automaton over bytes. `table[s, b]` is the next state or DEAD (-1); state 0 starts;
    `accepting[s]`. Every state can reach an accepting one (dead ends are removed), so the empty
    language has no DFA (compile_regex refuses it)."""

    table: np.ndarray        # [S, 256] int32
    accepting: np.ndarray    # [S] bool
    pattern: str = ""

    @property
    def n_states(self) -> int:
        return self.table.shape[0]

    def run(self, data: bytes, state: int = 0) -> int:
        """The state after reading `data` from `state` (DEAD if it leaves the language)."""
        for b in data:
            if state == DEAD:
                return DEAD
            state = int(self.table[state, b])
        return state

    def matches(self, text: str) -> bool:
        """True if the whole text is in the language (the slow obvious check the tests compare with re)."""
        s = self.run(text.encode("utf-8"))
        return s != DEAD and bool(self.accepting[s])


def byte_classes(nfa: _NFA) -> np.ndarray:
    """[256] class id per byte: bytes no edge tells apart share a class (fewer moves to compute)."""
    cuts = np.zeros(257, dtype=bool)
    for edges in nfa.edges:
        for lo, hi, _ in edges:
            cuts[lo] = cuts[hi + 1] = True
    return np.cumsum(cuts[:256]).astype(np.int64)


def determinize(nfa: _NFA, start: int, end: int, *, max_states: int, what: str) -> tuple[list[list[int]], list[bool]]:
    """The subset construction; refuses beyond max_states DFA states."""
    classes = byte_classes(nfa)

    def closure(states) -> frozenset[int]:
        seen, todo = set(states), list(states)
        while todo:
            for t in nfa.eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)

    first = closure([start])
    index = {first: 0}
    order = [first]
    rows: list[list[int]] = []
    for current in order:                       # grows while we walk it
        moves: dict[int, set[int]] = {}
        for s in current:
            for lo, hi, t in nfa.edges[s]:
                for c in range(int(classes[lo]), int(classes[hi]) + 1):
                    moves.setdefault(c, set()).add(t)
        row = [DEAD] * (int(classes[-1]) + 1)
        for c, targets in moves.items():
            target = closure(targets)
            if target not in index:
                if len(order) >= max_states:
                    raise RegexError(f"{what} is too large: its automaton passes {max_states} states (fewer or "
                                     "smaller bounded repeats help: maxLength, maxItems, {m,n})")
                index[target] = len(order)
                order.append(target)
            row[c] = index[target]
        rows.append(row)
    accepting = [end in s for s in order]
    full = [[row[c] for c in classes] for row in rows]
    return full, accepting


def trim(table: np.ndarray, accepting: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the states from which no accepting state can be reached (renumbered; 0 stays the start)."""
    S = table.shape[0]
    live = accepting.copy()
    while True:                                  # live = can reach an accepting state
        targets = np.where(table >= 0, table, 0)                     # [S, 256]
        grown = live | (live[targets] & (table >= 0)).any(axis=1)
        if (grown == live).all():
            break
        live = grown
    if not live[0]:
        return np.zeros((0, 256), dtype=np.int32), np.zeros(0, dtype=bool)
    new = np.full(S + 1, DEAD, dtype=np.int64)
    new[:-1][live] = np.arange(int(live.sum()))
    kept = table[live]
    kept = new[np.where(kept >= 0, kept, S)]                          # DEAD (index S) stays DEAD
    return kept.astype(np.int32), accepting[live]


def compile_tree(tree, *, pattern: str = "", max_states: int = MAX_STATES, what: str | None = None) -> DFA:
    """A syntax tree -> its trimmed DFA; RegexError if no text matches or it passes max_states."""
    what = what or f"the regex {shown(pattern)}"
    size = nfa_size(tree)
    if size > MAX_NFA_STATES:
        raise RegexError(f"{what} is too large: spelled out, its repeats come to about {size:,} states (at most "
                         f"{MAX_NFA_STATES:,}); smaller or fewer nested bounded repeats help: maxLength, maxItems, {{m,n}}")
    nfa = _NFA()
    start = nfa.state()
    end = nfa.build(tree, start)
    rows, accepting = determinize(nfa, start, end, max_states=max_states, what=what)
    table, acc = trim(np.asarray(rows, dtype=np.int32).reshape(len(rows), 256), np.asarray(accepting))
    if table.shape[0] == 0:
        raise RegexError(f"no text satisfies {what}")
    table, acc = minimize(table, acc)
    return DFA(table, acc, pattern)


def minimize(table: np.ndarray, accepting: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge the states no input tells apart (Moore's partition refinement, a row of classes per state at
    each round); the start state stays 0. Fewer states: fewer allowed-token sets to compute."""
    S = table.shape[0]
    block = accepting.astype(np.int64)                                # [S] current partition
    while True:
        targets = np.where(table >= 0, block[np.maximum(table, 0)], -1)   # [S, 256]
        signature = np.concatenate([block[:, None], targets], axis=1)      # [S, 257]
        groups: dict[bytes, int] = {}
        refined = np.asarray([groups.setdefault(row.tobytes(), len(groups)) for row in signature])  # [S]
        if len(np.unique(refined)) == len(np.unique(block)):
            break
        block = refined
    order = np.unique(block, return_index=True)[1]                     # first state of each block
    order = order[np.argsort(order)]                                   # blocks numbered by first state
    renumber = np.empty(block.max() + 1, dtype=np.int64)
    renumber[block[order]] = np.arange(len(order))
    new_table = table[order]
    new_table = np.where(new_table >= 0, renumber[block[np.maximum(new_table, 0)]], DEAD)
    return new_table.astype(np.int32), accepting[order]


@functools.lru_cache(maxsize=64)
def compile_regex(pattern: str, *, max_states: int = MAX_STATES) -> DFA:
    """`pattern` (the whole text must match, as re.fullmatch) as a DFA over UTF-8 bytes."""
    return compile_tree(parse(pattern), pattern=pattern, max_states=max_states)
