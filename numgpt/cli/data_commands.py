"""`numgpt data synth` (synthetic conversations with exact answers -> chat JSONL) and `numgpt data check`
(a chat JSONL file validated and counted). The work is in numgpt.posttrain; this module reads flags, prints.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ..errors import NumgptError
from .paths import input_file, output_file

DATA_EXAMPLES = """\
examples:
  numgpt data synth --n 1000 -o train.jsonl                        every task family, the train split
  numgpt data synth --n 200 --split heldout --seed 1 -o heldout.jsonl   held-out templates and operands
  numgpt data synth --families add,sub --max-digits 4 --n 500 -o sums.jsonl
  numgpt data check train.jsonl                                    validate a chat JSONL file and count it
  numgpt data fortunes --categories computers,food,law -o f.jsonl  Debian's fortunes by category (for classify)
"""

SYNTH_EXAMPLES = """\
examples:
  numgpt data synth --n 1000 -o train.jsonl
  numgpt data synth --n 200 --split heldout -o heldout.jsonl
  numgpt data synth --families count,reverse --words mytext.txt --n 300 -o words.jsonl
  numgpt data synth --n 1000 --turns 3 -o chat.jsonl              conversations of 1 to 3 exchanges
  numgpt data synth --n 1000 --seed 7 -o train.jsonl --force       replace the file

Families: add, sub (multi-digit, with carries and borrows), count (a letter in a word), reverse (a word
backwards), next (what comes after a number, letter, weekday or month), convert (m/cm, km/m, kg/g, h/min,
min/s), identity (who numgpt is). Each line is OpenAI's fine-tuning format, {"messages": [...]}, with the
ground truth beside it ("family", "answer", "split", "template"). The held-out split uses question and
answer templates, and numbers and words, that the train split never does. The same --seed gives the same
file. The file is written whole or not at all.
"""

CHECK_EXAMPLES = """\
examples:
  numgpt data check train.jsonl

Each line must be {"messages": [...]}: an optional system message first, then user and assistant turns
alternating (user first, assistant last), text contents. Lines that carry a task ("family", "answer")
must also give that answer in their reference reply as the checker reads it (the last number or word).
"""


def register(sub) -> None:
    """Add `data synth` and `data check` to the `numgpt` subcommands."""
    p = sub.add_parser("data", help="fine-tuning data: make synthetic conversations, check chat JSONL",
                       description="Fine-tuning data: synthetic conversations with exact answers, and a check "
                                   "of chat JSONL files in OpenAI's fine-tuning format.",
                       epilog=DATA_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=lambda args: p.print_help() or 0)
    s = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    _register_synth(s)
    _register_check(s)
    from .classify_commands import register_fortunes   # data fortunes: labelled text for classify
    register_fortunes(s)


def _register_synth(sub) -> None:
    from ..posttrain.synth import FAMILIES, Operands
    p = sub.add_parser("synth", help="write synthetic conversations with exact answers (chat JSONL)",
                       description="Write synthetic conversations with exact answers as chat JSONL, for "
                                   "fine-tuning and for RL with exact rewards.",
                       epilog=SYNTH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(FAMILIES), metavar="LIST",
                   help=f"comma-separated task families (default: all: {','.join(FAMILIES)})")
    p.add_argument("--n", type=int, required=True, metavar="N", help="how many conversations (an even mix)")
    p.add_argument("--split", choices=["train", "heldout"], default="train",
                   help="which templates and operands (default train)")
    p.add_argument("--seed", type=int, default=0, help="the random seed (default 0)")
    p.add_argument("--words", metavar="TEXT_FILE", help="take the words of count and reverse from a UTF-8 text "
                   "file (default: a built-in list)")
    p.add_argument("--max-digits", type=int, default=Operands().max_digits, metavar="D",
                   help=f"numbers have 1..D digits (default {Operands().max_digits})")
    p.add_argument("--system-rate", type=float, default=0.2, metavar="P",
                   help="the fraction of conversations that start with a system prompt (default 0.2)")
    p.add_argument("--turns", type=int, default=1, metavar="K",
                   help="each conversation holds 1..K exchanges, the last one the task (default 1)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the JSONL file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(run=run_synth, flag_names={"max_digits": "--max-digits", "system_rate": "--system-rate",
                                              "n": "--n", "turns": "--turns"})


def _register_check(sub) -> None:
    p = sub.add_parser("check", help="validate a chat JSONL file and count its conversations",
                       description="Validate a chat JSONL file (OpenAI's fine-tuning format) and print its "
                                   "counts per role and per task family.",
                       epilog=CHECK_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a chat JSONL file")
    p.set_defaults(run=run_check)


def run_synth(args) -> int:
    import numpy as np

    from ..posttrain.chatdata import write_conversations
    from ..posttrain.synth import Operands, synthesize, words_from_text

    if args.seed < 0:
        raise NumgptError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.output)
    if out.exists() and not out.is_dir() and not args.force:
        raise NumgptError(f"-o {out}: the file already exists; pass --force to replace it, or another path")
    output_file(out, flag="-o")
    operands = Operands(max_digits=args.max_digits)
    if args.words:
        words = words_from_text(_read_text(input_file(args.words)))
        if not words:
            raise NumgptError(f"--words {args.words}: no words of 3 to 12 ASCII letters in the file")
        operands = Operands(words=words, max_digits=args.max_digits)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    tasks = synthesize(args.n, rng=np.random.default_rng(args.seed), families=families, split=args.split,
                       operands=operands, system_rate=args.system_rate, turns=args.turns)
    write_conversations(out, tasks)
    counts = Counter(t["family"] for t in tasks)
    print(f"wrote {len(tasks)} {args.split} conversations to {out} "
          f"({', '.join(f'{f} {counts[f]}' for f in families if counts[f])})")
    return 0


def run_check(args) -> int:
    from ..posttrain.chatdata import numbered_conversations
    from ..posttrain.synth import check_task

    path = input_file(args.file)
    records = numbered_conversations(path)
    roles = Counter(m["role"] for _, r in records for m in r["messages"])
    tasks = [(n, r) for n, r in records if "family" in r or "answer" in r]
    for number, task in tasks:
        check_task(task, f"{path}:{number}")
    print(f"{path}: {len(records)} conversations, {sum(roles.values())} messages "
          f"(system {roles['system']}, user {roles['user']}, assistant {roles['assistant']})")
    if tasks:
        families = Counter(r["family"] for _, r in tasks)
        splits = Counter(str(r.get("split", "-")) for _, r in tasks)
        print(f"tasks: {len(tasks)} ({', '.join(f'{f} {c}' for f, c in sorted(families.items()))}; "
              f"split {', '.join(f'{s} {c}' for s, c in sorted(splits.items()))}); every reference reply "
              "gives its answer as the checker reads it")
    return 0


def _read_text(path: Path) -> str:
    """A UTF-8 text file, or a one-line error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise NumgptError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
