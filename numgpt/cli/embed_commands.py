"""`numgpt embed`: embedding vectors of texts as JSON lines (LanguageModel.embed, numgpt/embeddings.py)."""

from __future__ import annotations

import argparse
import json
import re
import sys

from ..embeddings import POOLINGS
from ..errors import NumgptError
from .inference_commands import MODEL_HELP, _add_adapter, load_model
from .paths import read_text

EMBED_DESCRIPTION = """\
Print one JSON line per text: {"index": i, "tokens": n, "embedding": [n_embd floats]}, in the order given.
A vector is the model's final hidden states (after the last LayerNorm, transformers' GPT2Model
last_hidden_state) averaged over the text's tokens, or the last token's with --pooling last; the same as
LanguageModel.embed and numgpt serve's /v1/embeddings. Texts are batched by length. A text longer than the
model's context is refused, or cut to its first tokens with --truncate.
"""

EMBED_EXAMPLES = """\
examples:
  numgpt embed "ROMEO: I" "JULIET: O Romeo"            two vectors from the built-in model
  numgpt embed --model gpt2 --pooling last --file lines.txt   each line of the file is a text (- = stdin)
  cut -f2 data.tsv | numgpt embed                      with no TEXT, each line of stdin is a text
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embedding vectors of texts (JSON lines)", description=EMBED_DESCRIPTION,
                       epilog=EMBED_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", metavar="TEXT", help="the texts to embed (none, or '-': the lines of stdin)")
    p.add_argument("--file", metavar="PATH", help="embed each line of this UTF-8 file instead ('-' = stdin)")
    p.add_argument("--model", "-m", metavar="NAME_OR_FOLDER", help=MODEL_HELP)
    _add_adapter(p)
    p.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="the mean of the final hidden states over the text's tokens, or the last token's (default mean)")
    p.add_argument("--truncate", action="store_true",
                   help="cut a text longer than the context to its first n_positions tokens (default: refuse it)")
    p.set_defaults(run=run_embed)


def texts_of(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """(the texts, where their lines came from): the arguments (None), or the lines of --file or of stdin
    ('-' as the only TEXT too, as classify predict takes it), an empty line refused by its number."""
    texts, source = args.texts, args.file
    if texts == ["-"] and source is None:                    # '-' alone is stdin, as classify predict takes it
        texts, source = [], "-"
    if texts and source is not None:
        raise NumgptError("give the texts either as arguments or with --file, not both")
    if source is None and texts:
        return texts, None
    if source is None and sys.stdin.isatty():
        raise NumgptError('no texts: pass TEXT arguments, --file PATH or lines on stdin (one text per line)')
    source = source or "-"                                   # no TEXT, stdin piped: its lines, as tokenize
    lines = read_text(source).splitlines()
    where = "stdin" if source == "-" else source
    for n, line in enumerate(lines, 1):
        if not line:
            raise NumgptError(f"{where}: line {n} is empty: every line is a text to embed")
    if not lines:
        raise NumgptError(f"{where}: no lines to embed")
    return lines, where


def run_embed(args: argparse.Namespace) -> int:
    texts, where = texts_of(args)
    lm = load_model(args)
    try:
        vectors = lm.embed(texts, pooling=args.pooling, truncate=args.truncate)  # [n, C]
    except NumgptError as e:                   # the library's remedy said as this command's flag, its input as a line
        message = re.sub(r"\binput (\d+)", lambda m: f"{where}: line {int(m[1]) + 1}" if where
                         else f"TEXT {int(m[1]) + 1}", str(e))
        raise NumgptError(message.replace("truncate=True", "--truncate")) from None
    for i, (text, v) in enumerate(zip(texts, vectors)):
        tokens = min(len(lm.encode(text)), lm.config.n_positions)
        print(json.dumps({"index": i, "tokens": tokens, "embedding": v.tolist()}))
    return 0
