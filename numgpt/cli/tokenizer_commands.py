"""`numgpt tokenize` (text -> ids, pieces, or the merges step by step) and `numgpt train-tokenizer`
(text files -> a new byte-level BPE vocabulary folder). The work is in numgpt.tokenizer and
numgpt.tokenizer.train; this module reads flags and input, and prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..errors import NumgptError
from .paths import input_file, output_folder, read_text
from .progress import progress_reporter

TOKENIZE_EXAMPLES = """\
examples:
  numgpt tokenize "Hello world"                        15496 995
  numgpt tokenize --pieces "Hello world"               each id with the text it stands for
  numgpt tokenize --json --file input.txt              a file's ids as a JSON list
  echo "Hello" | numgpt tokenize                       stdin when no text is given (its newline counts)
  numgpt tokenize --explain "Mississippilessly"        the merges step by step, with their ranks
  numgpt tokenize --tokenizer my_tok "Hello"           another vocabulary (a folder with vocab.json
                                                       + merges.txt, or encoder.json + vocab.bpe)
  numgpt tokenize --model builtin "ROMEO:"             the built-in model's vocabulary (what `generate`,
                                                       `next` and `explain tokens` use without --model)
  numgpt tokenize --allow-special "a<|endoftext|>b"    special tokens in the text become their ids

The default vocabulary is GPT-2's (50257 tokens, the ids tiktoken's "gpt2" and OpenAI's GPT-2 give), not
the built-in model's own smaller one: pass --model to see the ids a model reads. Special token strings such as <|endoftext|> in the text are refused unless --allow-special is given.
"""

TRAIN_EXAMPLES = """\
examples:
  numgpt train-tokenizer input.txt --vocab-size 4096 -o my_tok
  numgpt train-tokenizer a.txt b.txt --vocab-size 8000 --special "<|endoftext|>" --special "<|pad|>" -o tok
  numgpt train-tokenizer input.txt --vocab-size 256 --no-special -o bytes_tok    one token per byte
  numgpt train-tokenizer input.txt --vocab-size 4096 --chat -o chat_tok    + the chat tokens and template

The folder is in Hugging Face's layout (vocab.json, merges.txt, tokenizer_config.json,
special_tokens_map.json): `numgpt tokenize --tokenizer FOLDER` and transformers' GPT2TokenizerFast
load it. --vocab-size counts the 256 byte tokens, the merges and the special tokens. A special token
must not be an ordinary token (a single character such as "e", or a merge). FOLDER must be new or
empty unless --force. --chat adds numgpt's chat tokens (<|endoftext|>, <|system|>, <|user|>,
<|assistant|>, <|end|>) after the other special tokens, and writes the chat format as
tokenizer_config.json's chat_template (transformers' apply_chat_template renders the same ids).
"""


def register(sub) -> None:
    """Add `tokenize` and `train-tokenizer` to the `numgpt` subcommands."""
    _register_tokenize(sub)
    _register_train(sub)


def _register_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="text -> token ids (GPT-2's tokenizer or another vocabulary)",
                       description="Encode text with byte-level BPE and print the token ids.",
                       epilog=TOKENIZE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", help="the text (default: --file, else stdin)")
    p.add_argument("--file", metavar="PATH", help="read the text from a UTF-8 file (- = stdin)")
    show = p.add_mutually_exclusive_group()
    show.add_argument("--pieces", action="store_true", help="one line per token: id and the text it stands for")
    show.add_argument("--json", action="store_true", help="print the ids as a JSON list")
    show.add_argument("--explain", action="store_true",
                      help="for each pre-tokenized piece, the merges step by step with their ranks")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--tokenizer", metavar="FOLDER", help="vocabulary folder (default: GPT-2's, built in)")
    vocab.add_argument("--model", "-m", metavar="NAME_OR_FOLDER",
                       help="the vocabulary of this model (a folder, a run, a hub name, or builtin: the one "
                            "`numgpt generate` and `numgpt next` use by default)")
    p.add_argument("--allow-special", action="store_true",
                   help="encode special token strings in the text (e.g. <|endoftext|>) as their ids")
    p.set_defaults(run=run_tokenize)


def _register_train(sub) -> None:
    p = sub.add_parser("train-tokenizer", help="train a byte-level BPE vocabulary on text files",
                       description="Train a new byte-level BPE vocabulary (GPT-2's pre-tokenization) on "
                                   "text files and save it as a Hugging Face tokenizer folder.",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 text files to learn from ('-' = stdin)")
    p.add_argument("--vocab-size", type=int, required=True, metavar="N",
                   help="tokens in all: 256 bytes + merges + special tokens")
    p.add_argument("--special", action="append", metavar="TOKEN",
                   help="a special token, appended after the merges (repeatable; default <|endoftext|>)")
    p.add_argument("--no-special", action="store_true", help="no special tokens at all")
    p.add_argument("--chat", action="store_true",
                   help="add the chat tokens and numgpt's chat template (for a model to fine-tune for chat)")
    p.add_argument("--min-frequency", type=int, default=2, metavar="K",
                   help="merge only pairs seen at least K times (default 2)")
    p.add_argument("--split-digits", action="store_true",
                   help="merge no digit: every digit its own token (learnable arithmetic; GPT-2's format still)")
    p.add_argument("-o", "--output", "--out", dest="output", required=True, metavar="FOLDER",
                   help="where to write the vocabulary (a new or empty folder)")
    p.add_argument("--force", action="store_true", help="write into FOLDER though it holds files: its tokenizer "
                   "files are replaced, the others kept")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors (no progress bar, "
                   "no summary)")
    p.set_defaults(run=run_train_tokenizer)


def run_tokenize(args) -> int:
    text = _read_input(args)
    tok = _tokenizer(args)
    allowed = "all" if args.allow_special else frozenset()
    found = None if args.allow_special else tok.find_special(text)
    if found:
        raise NumgptError(f"the text contains the special token {found[0]!r} at position {found[1]}; pass "
                          f"--allow-special to encode it as id {tok.encode(found[0], allowed_special='all')[0]} "
                          "(as generate and next read a prompt)")
    if args.explain:
        print(format_explanation(tok.explain(text, allowed_special=allowed)))
        return 0
    ids = tok.encode(text, allowed_special=allowed)
    if args.json:
        print(json.dumps(ids))
    elif args.pieces:
        from ..tokenizer import show_bytes
        print("\n".join(f"{i}\t{show_bytes(tok.token_bytes(i))}" for i in ids))
    else:
        print(" ".join(map(str, ids)))
    return 0


def _tokenizer(args):
    """The vocabulary `tokenize` encodes with: --tokenizer FOLDER, --model's own, else GPT-2's."""
    from ..tokenizer import Tokenizer

    if args.model is not None:
        from ..formats import hf_cache_dir, load_config, load_tokenizer, resolve_model
        folder = resolve_model(args.model, cache_dir=hf_cache_dir(os.environ))
        return load_tokenizer(folder, load_config(folder))
    return Tokenizer.load(args.tokenizer) if args.tokenizer else Tokenizer.gpt2()


def format_explanation(traces) -> str:
    """`explain`'s traces as text: per piece its bytes, each merge (rank, pair, tokens after), its ids."""
    from ..tokenizer import show_bytes

    def tokens(parts) -> str:
        return " ".join(map(show_bytes, parts))

    lines = []
    for n, trace in enumerate(traces, start=1):
        if trace.special:
            lines.append(f"piece {n}: {trace.piece!r} (special token) -> id {trace.ids[0]}")
            continue
        lines.append(f"piece {n}: {trace.piece!r} ({len(trace.start)} bytes)")
        lines.append(f"  {'bytes':<{_STEP_WIDTH}}{tokens(trace.start)}")
        for step in trace.steps:
            merge = f"rank {step.rank:>5}: {show_bytes(step.pair[0])} + {show_bytes(step.pair[1])}"
            lines.append(f"  {merge:<{_STEP_WIDTH}}-> {tokens(step.tokens)}")
        lines.append(f"  {'ids':<{_STEP_WIDTH}}{' '.join(map(str, trace.ids))}  ({_tokens(len(trace.ids))})")
    lines.append(f"{_tokens(sum(len(t.ids) for t in traces))} in all")
    return "\n".join(lines)


_STEP_WIDTH = 32  # the column where tokens start in --explain


def _tokens(n: int) -> str:
    return f"{n} token" if n == 1 else f"{n} tokens"


def run_train_tokenizer(args) -> int:
    from ..tokenizer import train_bpe
    from ..tokenizer import ENDOFTEXT

    if args.no_special and (args.special or args.chat):
        raise NumgptError(f"--no-special and {'--special' if args.special else '--chat'} contradict each other; "
                          "give one")
    specials = [] if args.no_special else (args.special or [ENDOFTEXT])
    if args.chat:
        from ..posttrain.chat_format import CHAT_TOKENS
        specials = [*specials, *(t for t in CHAT_TOKENS if t not in specials)]
    out = output_folder(args.output, flag="-o", force=args.force, what="tokenizer folder")
    # files are read in blocks; stdin ('-') and pipes such as <(...) are read whole, once
    files = [f for f in args.files if f != "-" and input_file(f).is_file()]
    texts = [read_text(f, keep_newlines=True) for f in args.files if f not in files]
    start = time.perf_counter()
    update, close = progress_reporter(not args.quiet, "merge", "train-tokenizer")
    try:
        tok = train_bpe(texts, files=files, vocab_size=args.vocab_size, special_tokens=specials,
                        min_frequency=args.min_frequency, split_digits=args.split_digits, progress=update)
    finally:
        close()
    seconds = time.perf_counter() - start
    if args.chat:
        from ..posttrain.chat_format import with_chat_tokens
        tok = with_chat_tokens(tok)        # the tokens are there already: this adds the template
    tok.save(out, overwrite=args.force)
    if args.quiet:
        return 0
    n_bytes = sum(Path(f).stat().st_size for f in files) + sum(len(t.encode()) for t in texts)
    merged = tok.vocab_size - 256 - len(specials)
    print(f"{args.output}: {tok.vocab_size} tokens (256 bytes + {merged} merged + {len(specials)} special) "
          f"from {n_bytes:,} bytes in {seconds:.1f} s")
    if tok.vocab_size < args.vocab_size:
        print(f"note: fewer than --vocab-size {args.vocab_size}: no pair occurs --min-frequency "
              f"{args.min_frequency} times any more", file=sys.stderr)
    return 0


def _read_input(args) -> str:
    """The text to tokenize: the argument, --file, or stdin (UTF-8, kept exactly, newlines included)."""
    if args.text is not None and args.file:
        raise NumgptError("give the text as an argument or with --file, not both")
    if args.text is not None:
        return args.text
    return read_text(args.file or "-", keep_newlines=True)     # --file -: stdin too
