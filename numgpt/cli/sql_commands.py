"""`numgpt sql export|generate|next|tokenize|show`: GPT-2 in SQL (numgpt/sql). Reads flags, prints;
numgpt.sql does the work, and the database does the arithmetic. Options are checked before a database
is opened, so a bad flag fails at once."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import NumgptError
from ..sql.session import SQL_OPTIONS
from .inference_commands import DEFAULT_NEW_TOKENS_HELP, MODEL_HELP, new_tokens_that_fit
from .options import add_decoding_flags, decoding_kwargs
DB_HELP = "a DuckDB file path (the embedded default) or a postgresql:// URL (a PostgreSQL server)"

SQL_DESCRIPTION = """\
GPT-2 in SQL: export a model into a database, then tokenize, predict and generate with the database
doing every step -- the tokenizer, each layer with its KV cache kept in tables, the sampling filters and
the seeded draw. DuckDB (a file) or PostgreSQL (a server); needs `pip install "numgpt[sql]"`.
"""

SQL_EXAMPLES = """\
examples:
  numgpt sql export --db model.duckdb                          the built-in model into a DuckDB file
  numgpt sql generate --db model.duckdb --greedy "ROMEO:"      the same text as numgpt generate --greedy
  numgpt sql next --db model.duckdb "ROMEO: I"
  numgpt sql tokenize --db model.duckdb --explain "Mississippilessly"
  numgpt sql show --db model.duckdb --step attn_qkv            the SQL of one stage
  numgpt sql export --model gpt2 --db postgresql://me@localhost/gpt2 --precision float64
"""

EXPORT_EXAMPLES = """\
examples:
  numgpt sql export --db model.duckdb
  numgpt sql export --model gpt2 --db gpt2.duckdb --precision float64
  numgpt sql export --model gpt2 --db postgresql://me@localhost/gpt2 --force
  numgpt sql export --model gpt2 --db postgresql://me@localhost/gpt2 --product wide   core PostgreSQL only

The database gets the weights, the vocabulary and merges, and the SQL that runs them, generated from the
model's config (any size). A database that already holds an export is refused unless --force.
--precision float32 rounds the weights to float32 (logits within 1e-5 of numgpt's NumPy forward), float64
keeps them whole (within 1e-9 of a float64 forward). DuckDB stores either as doubles and multiplies in
double, so both take the same space there; PostgreSQL stores float32 as REAL, half of float64's.
On PostgreSQL, --product auto (the default) multiplies through the cube contrib module when the server has
it and the role may create it (2-2.5x less CPU a token, twice the space), else over wide rows of REAL
columns, and says which it wrote.
"""

GENERATE_EXAMPLES = """\
examples:
  numgpt sql generate --db model.duckdb "ROMEO:"                        sample 64 tokens, streamed
  numgpt sql generate --db model.duckdb --greedy -n 20 "JULIET:"        the most likely tokens
  numgpt sql generate --db model.duckdb --temperature 0.8 --top-k 40 --top-p 0.9 --seed 1 "KING:"

Filters apply in numgpt's (transformers') order: repetition penalty, temperature, top-k, top-p; the draw
uses u = md5('seed:step'), so the same --seed gives the same text on DuckDB and PostgreSQL. Stops at
<|endoftext|> and at --stop strings. prompt + --max-new-tokens must fit in the model's context.
"""

NEXT_EXAMPLES = """\
examples:
  numgpt sql next --db model.duckdb "ROMEO: I"
  numgpt sql next --db model.duckdb --top 5 --json "JULIET:"
"""

TOKENIZE_EXAMPLES = """\
examples:
  numgpt sql tokenize --db model.duckdb "Hello world"
  numgpt sql tokenize --db gpt2.duckdb --explain "Mississippilessly"      each merge, step by step
  numgpt sql tokenize --db gpt2.duckdb --json "it's 2024"

<|endoftext|> written in the text is that special token (as generate reads prompts).
"""

SHOW_EXAMPLES = """\
examples:
  numgpt sql show --db model.duckdb                    every stage's SQL, in the order a step runs them
  numgpt sql show --db model.duckdb --step attn_qkv    one stage (tokenize, tokenize_explain, embed,
                                                       attn_qkv, attention_mlp, logits, next, greedy, sample;
                                                       PostgreSQL has attention, attn_proj, mlp_fc and
                                                       mlp_proj for attention_mlp)
"""


def register(sub) -> None:
    """Add `sql` and its subcommands to the `numgpt` subcommands."""
    p = sub.add_parser("sql", help="GPT-2 in SQL: export a model into DuckDB/PostgreSQL and run it there",
                       description=SQL_DESCRIPTION, epilog=SQL_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=lambda args: p.print_help() or 0)
    s = p.add_subparsers(dest="sql_command", metavar="SQL_COMMAND")
    _register_export(s)
    _register_generate(s)
    _register_next(s)
    _register_tokenize(s)
    _register_show(s)


def _parser(sub, name: str, help: str, epilog: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, metavar="DB", help=DB_HELP)
    return p


def _register_export(sub) -> None:
    p = _parser(sub, "export", "write a model, its tokenizer and the SQL that runs them into a database",
                EXPORT_EXAMPLES)
    p.add_argument("--model", "-m", metavar="NAME_OR_FOLDER", help=MODEL_HELP)
    p.add_argument("--force", action="store_true", help="replace an export the database already holds")
    p.add_argument("--precision", choices=["float32", "float64"], default="float32",
                   help="how the weights are stored and multiplied (float32)")
    p.add_argument("--product", choices=["auto", "wide", "cube"], default="auto",
                   help="PostgreSQL's matrix products: wide rows of REAL columns (core PostgreSQL), or the cube "
                        "contrib module's distances in C (CREATE EXTENSION cube; float8 weights, twice the space); "
                        "auto (default): cube where the server has it and the role may create it, else wide")
    p.set_defaults(run=run_export, flag_names={"force=True": "--force"})   # the rest: cli.name_flags


def _register_generate(sub) -> None:
    p = _parser(sub, "generate", "continue a prompt, every step computed by the database (streamed)",
                GENERATE_EXAMPLES)
    p.add_argument("prompt", metavar="PROMPT", help="the prompt (empty: start from <|endoftext|>)")
    # the decoding flags of numgpt generate, those the SQL computes (SQL_OPTIONS); the others are not offered
    add_decoding_flags(p, only=SQL_OPTIONS, title="decoding (computed in SQL)",
                       shown_defaults={"max_new_tokens": DEFAULT_NEW_TOKENS_HELP})
    _add_connections(p)
    p.set_defaults(run=run_generate)


def _register_next(sub) -> None:
    p = _parser(sub, "next", "the most likely next tokens after a prompt, computed by the database",
                NEXT_EXAMPLES)
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--top", type=int, default=10, metavar="N", help="how many tokens, >= 1 (10)")
    p.add_argument("--json", action="store_true", help="a JSON list of {rank, id, token, probability}")
    _add_connections(p)
    p.set_defaults(run=run_next)


def _add_connections(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", type=int, metavar="N",
                   help="PostgreSQL: connections that share each matrix product, one server process (and "
                        "core) each (2; 1 uses temporary tables and needs no CREATE privilege)")


def _register_tokenize(sub) -> None:
    p = _parser(sub, "tokenize", "text to token ids with the tokenizer in SQL", TOKENIZE_EXAMPLES)
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--json", action="store_true", help="print the ids (and tokens) as JSON")
    p.add_argument("--explain", action="store_true", help="show each piece's merges step by step")
    p.set_defaults(run=run_tokenize)


def _register_show(sub) -> None:
    p = _parser(sub, "show", "print the SQL of each stage, as stored in the database", SHOW_EXAMPLES)
    p.add_argument("--step", metavar="NAME", help="only this stage")
    p.set_defaults(run=run_show)


# ---------------------------------------------------------------------------------------------------


def run_export(args) -> int:
    import os

    from ..formats import hf_cache_dir
    from ..lm import load
    from ..sql import export
    model = load(args.model, cache_dir=hf_cache_dir(os.environ))
    summary = export(model, args.db, force=args.force, precision=args.precision, product=args.product,
                     progress=lambda what: print(f"  {what}\n", end="", file=sys.stderr, flush=True))
    print(f"exported {summary.parameters:,} parameters ({summary.precision}{summary.product_note}) into "
          f"{summary.target} in {summary.seconds:.1f} s, "
          f"{summary.size_bytes / 2**20:.1f} MiB")
    return 0


def run_generate(args) -> int:
    from ..sql import connect
    options = decoding_kwargs(args)   # every option checked before the database opens
    with connect(args.db, connections=args.connections) as m:
        if "max_new_tokens" not in options:   # as numgpt generate: the default fits the context
            options["max_new_tokens"] = new_tokens_that_fit(m.config.n_positions - len(m.tokenize(args.prompt)))
        for piece in m.stream(args.prompt, **options):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def run_next(args) -> int:
    from ..sql import connect
    if args.top < 1:
        raise NumgptError(f"--top must be >= 1, got {args.top}")
    with connect(args.db, connections=args.connections) as m:
        rows = m.next(args.prompt, top=args.top)
    if args.json:
        print(json.dumps([{"rank": r + 1, "id": t.id, "token": t.token, "probability": t.probability}
                          for r, t in enumerate(rows)], ensure_ascii=False))
        return 0
    print(f"{'rank':>4}  {'id':>6}  {'token':<20}  probability")
    for r, t in enumerate(rows, start=1):
        print(f"{r:>4}  {t.id:>6}  {t.token!r:<20}  {t.probability:.6f}")
    return 0


def run_tokenize(args) -> int:
    from ..sql import connect
    with connect(args.db) as m:
        if args.explain:
            _print_explain(m, args.text)
            return 0
        ids = m.tokenize(args.text)
        if args.json:
            print(json.dumps({"ids": ids, "tokens": [b.decode("utf-8", "replace") for b in m.token_bytes(ids)]},
                             ensure_ascii=False))
        else:
            print(" ".join(map(str, ids)))
            print(f"{len(ids)} token{'' if len(ids) == 1 else 's'}", file=sys.stderr)
    return 0


def _print_explain(m, text: str) -> None:
    rows = m.explain(text)
    for row in rows:
        shown = " ".join(repr(b.decode("utf-8", "replace")) for b in m.token_bytes(row.ids))
        if row.special:
            print(f"piece {row.piece_no}: {row.piece!r} is a special token: {list(row.ids)}")
        elif row.step == 0:
            print(f"piece {row.piece_no}: {row.piece!r} -> bytes {shown}")
        else:
            print(f"  step {row.step}: merge rank {row.rank} -> {shown}")
    ids = m.tokenize(text)
    print(f"ids: {' '.join(map(str, ids))}")


def run_show(args) -> int:
    from ..sql import connect
    with connect(args.db) as m:
        names = list(m.statements)
        if args.step is not None and args.step not in m.statements:
            raise NumgptError(f"no stage named {args.step!r}; the stages are {', '.join(names)}")
        for name in ([args.step] if args.step else names):
            print(f"-- {name}: {m.descriptions[name]}")
            print(m.statements[name].strip() + ";\n")
    return 0
