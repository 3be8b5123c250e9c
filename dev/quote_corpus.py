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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--shortest", type=int, default=80, help="characters of the shortest passage (80)")
    p.add_argument("--longest", type=int, default=180, help="characters of the longest passage (180)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    text = Path(args.text).read_text(encoding="utf-8")
    train = text[:int(0.9 * len(text))]
    parts = passages(train, np.random.default_rng(args.seed), shortest=args.shortest, longest=args.longest)
    Path(args.output).write_text("".join(f"{q}\n\n{q}\n\n\n" for q in parts), encoding="utf-8")
    print(f"{args.output}: {len(parts):,} passages of {args.shortest}-{args.longest} characters, each twice")


if __name__ == "__main__":
    main()
