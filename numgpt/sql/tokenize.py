"""GPT-2's tokenizer as one SQL statement: special tokens, pre-tokenization, bytes, merges by rank.

Pre-tokenization must give tiktoken's pieces for GPT-2's pattern

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

which neither engine can run as written: DuckDB's RE2 has no lookahead (?!\\S), and PostgreSQL has no
\\p{L}/\\p{N} and, among alternatives that match at one place, takes the longest rather than the
first. Both are solved without either feature:

1. Lookahead, on both engines. `\\s+(?!\\S)` only ever does one thing: a run of whitespace followed by
   a non-space gives its last whitespace character to what follows (" world" keeps its space; "\\n\\nx"
   is "\\n", "\\n", "x" because only a literal space may lead a word). So the text is first cut into
   alternating runs of whitespace and non-whitespace, and each whitespace run that has a non-space run
   after it lends that run its last character. Each resulting segment is either whitespace only or one
   optional whitespace character plus non-whitespace, and on such a segment the pattern without the
   lookahead, `'s|...| ?[^\\s\\p{L}\\p{N}]+|\\s+`, gives exactly the pieces of the full pattern.
2. Longest versus first match, on PostgreSQL. Within a segment no two alternatives can match at one
   place with the first one shorter (a contraction beats the one-character punctuation run "'"; the
   ` ?X+` alternatives start with different classes; a lone leading whitespace character loses to
   " word"), so PostgreSQL's longest match is Perl's first match there.
3. \\p{L}, \\p{N} and Unicode's White_Space on PostgreSQL: every character is first mapped to a class
   character -- ASCII stays itself, a non-ASCII letter becomes 'a', a number '0', whitespace a tab,
   anything else '!' -- from numgpt_unicode, ranges of code points exported from Python's `regex`
   tables (the ones numgpt's own tokenizer uses). The runs and pieces are found in that ASCII class
   string with GPT-2's ASCII pattern and cut out of the text by position. DuckDB matches the text
   itself with \\p{L}, \\p{N} and White_Space spelled out.

Then each piece becomes the ids of its UTF-8 bytes (numgpt_bytes), written as text '(12)(34)(5)', and a
recursive CTE merges it, one rank per iteration: the adjacent pair of lowest rank in numgpt_merges is
replaced everywhere in the piece, left to right without overlap (`replace` on the text: the parentheses
keep '(1)(2)' from matching inside '(11)(2)'), until no adjacent pair is a merge. That is GPT-2's own
encoder.py rule; it equals the one-merge-at-a-time rule of numgpt.tokenizer.bpe (`_merge_steps`, what
tiktoken does) whenever every merge comes after the merges that made its parts -- true of GPT-2's list
and of every list numgpt's train_bpe learns -- and it needs one iteration per distinct rank instead of
one per merge (a 4000-byte piece of one repeated word: tens of iterations, not thousands).
`explain` shows these steps: numgpt's steps with each run of equal ranks taken at once.

Special tokens written in the text (<|endoftext|>) are those tokens, as `numgpt generate` reads
prompts. The statement reads the parameter :text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .dialects import Dialect

CLASS_LETTER, CLASS_NUMBER, CLASS_SPACE, CLASS_OTHER = "a", "0", "\t", "!"
SPECIALS_LAST = 2147483647   # a special token after part p sorts after every piece of part p


def _specials_regex(specials: Sequence[str]) -> str:
    ordered = sorted(specials, key=lambda s: (-len(s), s))   # longest first, as the Python tokenizer
    return "|".join(re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", s) for s in ordered)


def _indexed(d: Dialect, lst: str, value: str, index: str) -> str:
    """A lateral table over a list: its elements `value` with their 1-based `index`."""
    return "LATERAL " + d.indexed(lst, value, index)


def tokenize_ctes(d: Dialect, specials: Sequence[str]) -> list[tuple[str, str]]:
    """The CTEs from :text to bpe(p, r, q, step, ids, rank, k) -- every merge step of every piece."""
    runs_re, piece_re = d.pretokenizer_patterns()
    if specials:
        sre = _specials_regex(specials)
        parts = f"\n    SELECT part, p FROM {_indexed(d, d.split_list(':text', sre), 'part', 'p').replace('LATERAL ', '', 1)}"
        found = (f"\n    SELECT u.p, sp.id FROM {_indexed(d, d.regex_list(':text', sre), 'token', 'p').replace('LATERAL ', '', 1)}"
                 "\n    JOIN numgpt_special AS sp ON sp.token = u.token")
    else:
        parts = "\n    SELECT CAST(:text AS " + d.text + ") AS part, 1 AS p"
        found = "\n    SELECT 1 AS p, 0 AS id WHERE 1 = 0"
    byte_ids = d.int_list("b.id ORDER BY s.k")
    n = d.list_length("bpe.ids")
    return [
        ("parts", parts),
        ("specials", found),
        ("classes", d.class_string(CLASS_OTHER)),
        ("runs", f"""
    SELECT c.p, CAST(u.r AS INTEGER) AS r, CAST(length(u.run) AS INTEGER) AS len, {d.starts_with_white_space("u.run")} AS ws
    FROM classes AS c, {_indexed(d, d.regex_list('c.cls', runs_re), 'run', 'r')}"""),
        ("run_spans", """
    SELECT p, r, len, ws, CAST(sum(len) OVER (PARTITION BY p ORDER BY r) - len + 1 AS INTEGER) AS start,
           CAST(count(*) OVER (PARTITION BY p) AS INTEGER) AS n_runs
    FROM runs"""),
        ("segments", """
    SELECT p, r,
           CASE WHEN ws OR r = 1 THEN start ELSE start - 1 END AS start,
           CASE WHEN ws THEN len - CASE WHEN r < n_runs THEN 1 ELSE 0 END
                ELSE len + CASE WHEN r > 1 THEN 1 ELSE 0 END END AS len
    FROM run_spans"""),
        ("piece_spans", f"""
    SELECT s.p, s.r, CAST(u.q AS INTEGER) AS q, s.start, CAST(length(u.piece) AS INTEGER) AS len
    FROM segments AS s JOIN classes AS c ON c.p = s.p,
         {_indexed(d, d.regex_list('substr(c.cls, s.start, s.len)', piece_re), 'piece', 'q')}
    WHERE s.len > 0"""),
        ("pieces", """
    SELECT sp.p, sp.r, sp.q,
           substr(c.part, CAST(sp.start + sum(sp.len) OVER (PARTITION BY sp.p, sp.r ORDER BY sp.q) - sp.len AS INTEGER),
                  sp.len) AS piece
    FROM piece_spans AS sp JOIN classes AS c ON c.p = sp.p"""),
        ("piece_bytes", f"""
    SELECT pieces.p, pieces.r, pieces.q, pieces.piece, string_agg('(' || CAST(b.id AS {d.text}) || ')', '' ORDER BY s.k) AS ids
    FROM pieces, {d.series('0', d.byte_length(d.utf8('pieces.piece')) + ' - 1')}, numgpt_bytes AS b
    WHERE b.byte = {d.byte_at(d.utf8('pieces.piece'), 's.k')}
    GROUP BY pieces.p, pieces.r, pieces.q, pieces.piece""".replace("AS series(k)", "AS s(k)")),
        ("bpe", f"""
    SELECT p, r, q, piece, 0 AS step, ids, CAST(NULL AS INTEGER) AS rank
    FROM piece_bytes
    UNION ALL
    SELECT bpe.p, bpe.r, bpe.q, bpe.piece, bpe.step + 1,
           replace(bpe.ids, '(' || CAST(best.left_id AS {d.text}) || ')(' || CAST(best.right_id AS {d.text}) || ')',
                   '(' || CAST(best.merged_id AS {d.text}) || ')'),
           best.rank
    FROM bpe, LATERAL (
        SELECT m.rank, m.left_id, m.right_id, m.merged_id
        FROM (SELECT {d.split_ids('bpe.ids')} AS l) AS ids, {d.series('1', d.list_length('ids.l') + ' - 1').replace('AS series(k)', 'AS s(k)')},
             numgpt_merges AS m
        WHERE m.left_id = CAST(ids.l[s.k] AS INTEGER) AND m.right_id = CAST(ids.l[s.k + 1] AS INTEGER)
        ORDER BY m.rank LIMIT 1) AS best"""),
    ]


def tokenize_sql(d: Dialect, specials: Sequence[str]) -> str:
    """SELECT pos, id: the token ids of :text, in order (pos from 0)."""
    return ("WITH RECURSIVE " + _ctes(tokenize_ctes(d, specials) + [
        ("merged", """
    SELECT p, r, q, ids FROM (SELECT p, r, q, ids, row_number() OVER (PARTITION BY p, r, q ORDER BY step DESC) AS newest
                          FROM bpe) AS steps
    WHERE newest = 1"""),
        ("tokens", f"""
    SELECT m.p, m.r, m.q, CAST(u.k AS INTEGER) AS k, CAST(u.id AS INTEGER) AS id
    FROM merged AS m, {_indexed(d, d.split_ids('m.ids'), 'id', 'k')}
    UNION ALL
    SELECT p, {SPECIALS_LAST}, 0, 1, id FROM specials"""),
    ]) + "\nSELECT CAST(row_number() OVER (ORDER BY p, r, q, k) - 1 AS INTEGER) AS pos, id FROM tokens ORDER BY pos")


def explain_sql(d: Dialect, specials: Sequence[str]) -> str:
    """Every merge step of every piece: (piece number, piece, step, rank, ids after the step as
    '(12)(34)'), and the special tokens as pieces of one step 0."""
    return ("WITH RECURSIVE " + _ctes(tokenize_ctes(d, specials)) + f"""
SELECT CAST(dense_rank() OVER (ORDER BY p, r, q) AS INTEGER) AS piece_no, piece, step, rank, ids, special
FROM (SELECT p, r, q, piece, step, rank, ids, FALSE AS special FROM bpe
      UNION ALL
      SELECT sp.p, {SPECIALS_LAST}, 0, s.token, 0, NULL, '(' || CAST(sp.id AS {d.text}) || ')', TRUE
      FROM specials AS sp JOIN numgpt_special AS s ON s.id = sp.id) AS steps
ORDER BY piece_no, step""")


def _ctes(ctes: list[tuple[str, str]]) -> str:
    return ",\n".join(f"{name} AS ({body}\n)" for name, body in ctes)


def unicode_classes() -> list[tuple[int, int, str]]:
    """(first, last code point, class character) for every range of non-ASCII code points that are
    letters (\\p{L} -> 'a'), numbers (\\p{N} -> '0') or whitespace (\\s -> tab), by Python's `regex`,
    the tables numgpt's tokenizer splits with; other code points are punctuation ('!'). A few thousand
    ranges; PostgreSQL looks characters up in them (numgpt_unicode)."""
    import regex

    cps = [c for c in range(128, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(map(chr, cps))
    out = []
    for cls, pattern in ((CLASS_LETTER, r"\p{L}+"), (CLASS_NUMBER, r"\p{N}+"), (CLASS_SPACE, r"\s+")):
        for m in regex.finditer(pattern, text):
            out.append((cps[m.start()], cps[m.end() - 1], cls))
    return sorted(out)
