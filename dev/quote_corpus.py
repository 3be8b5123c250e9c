"""Training text for a model that quotes its context (bench/bench_speculative.py's "quote" model, made by
dev/make_quote_model.sh): passages of a text, each written twice, so that fine-tuning teaches the model to
repeat a passage it has just read -- the behaviour prompt lookup drafts from (the issue's "prompts that
quote their context"; a large model does it without being taught). The passages come from the first 90%
of the text (what `numgpt prepare` trains on); the benchmark quotes passages of the last 10%.

    python dev/quote_corpus.py ../shared/data/tinyshakespeare.txt -o /tmp/quote.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def passages(text: str, rng: np.random.Generator, *, shortest: int, longest: int) -> list[str]:
    """Consecutive passages of shortest..longest characters, each cut at a line end when it can be."""
    out, start = [], 0
    while start < len(text):
        stop = min(len(text), start + int(rng.integers(shortest, longest + 1)))
        newline = text.rfind("\n", start + shortest // 2, stop)
        stop = newline + 1 if newline > start and stop < len(text) else stop
        out.append(text[start:stop].strip("\n"))
        start = stop
    return [p for p in out if p]


def shuffle_words(passage: str, rng: np.random.Generator) -> str:
    """The passage's words in a random order, each line keeping its number of words: text that only copying
    predicts the second time, so a model cannot learn it by heart instead of learning to copy."""
    lines = [line.split() for line in passage.split("\n")]
    words = [w for line in lines for w in line]
    order = rng.permutation(len(words))
    out, at = [], 0
    for line in lines:
        out.append(" ".join(words[i] for i in order[at:at + len(line)]))
        at += len(line)
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--shortest", type=int, default=80, help="characters of the shortest passage (80)")
    p.add_argument("--longest", type=int, default=180, help="characters of the longest passage (180)")
    p.add_argument("--shuffled-rounds", type=int, default=0,
                   help="after the passages as written, this many more rounds of them with their words shuffled "
                        "afresh each round (0)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    text = Path(args.text).read_text(encoding="utf-8")
    train = text[:int(0.9 * len(text))]
    rng = np.random.default_rng(args.seed)
    parts = passages(train, rng, shortest=args.shortest, longest=args.longest)
    rounds = [parts] + [[shuffle_words(q, rng) for q in parts] for _ in range(args.shuffled_rounds)]
    Path(args.output).write_text("".join(f"{q}\n\n{q}\n\n\n" for r in rounds for q in r), encoding="utf-8")
    print(f"{args.output}: {len(parts):,} passages of {args.shortest}-{args.longest} characters, each twice"
          f" ({args.shuffled_rounds} more rounds with their words shuffled)")


if __name__ == "__main__":
    main()
