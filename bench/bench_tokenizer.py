"""Tokenizer benchmark: encoding throughput (MB/s) of numgpt, tiktoken and Hugging Face GPT2TokenizerFast on
tinyshakespeare and on a mixed text, and BPE training time (4096 tokens on tinyshakespeare) of numgpt and
Hugging Face tokenizers' ByteLevelBPETokenizer, all in the same run; medians of several runs.

    python bench/bench_tokenizer.py                 print the table
    python bench/bench_tokenizer.py --write         and replace the "## Tokenizer" section of BENCHMARKS.md

Encoding: one call on the whole text, single thread: tiktoken's encode_ordinary, transformers'
GPT2TokenizerFast.encode, numgpt's encode. numgpt keeps a per-instance cache of pieces, so it is timed
twice: "cold" (a fresh Tokenizer each run: every distinct piece goes through BPE once) and "warm" (the same
instance again: the steady state when encoding many documents). All three must give identical ids.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
GPT2_FILES = REPO / "numgpt" / "assets" / "gpt2"
CORPUS = REPO / "tests" / "data" / "tokenizer_corpus.json"
BENCHMARKS = REPO / "BENCHMARKS.md"


def mixed_text(shakespeare: str, size: int = 1_000_000, seed: int = 0) -> str:
    """About `size` characters: one third English prose (tinyshakespeare), one third Python code (stdlib
    sources, fixed for a Python version), one third non-Latin scripts (random sentences over the words of
    the test corpus' Chinese, Japanese, Korean, Russian, Arabic, Hebrew, Hindi, Thai, Greek lines) with
    emoji, in alternating paragraphs."""
    import argparse as m1, collections as m2, json.decoder as m3, json.encoder as m4, pathlib as m5, typing as m6
    code = "".join(inspect.getsource(m) for m in (m1, m2, m3, m4, m5, m6))
    corpus = json.loads(CORPUS.read_text(encoding="utf-8"))
    scripts = "".join(corpus[k] for k in ("chinese", "japanese_korean", "russian", "arabic_hebrew",
                                          "indic_thai_greek", "emoji", "astral"))
    words = scripts.split() + list(re.sub(r"\s", "", corpus["chinese"]))
    rng = random.Random(seed)
    third = size // 3
    prose = shakespeare[100_000:100_000 + third]
    foreign = []
    while sum(map(len, foreign)) < third:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randrange(4, 16)))
        foreign.append(sentence + rng.choice([".", "。", "!", "?", "،", "।"]) + rng.choice(["\n", " ", "\n\n"]))
    parts = [prose, code[:third], "".join(foreign)]
    paragraphs = [[p for p in re.split(r"(?<=\n\n)", part) if p] for part in parts]
    out = []
    for group in zip(*(iter_cycle(p, rng) for p in paragraphs)):
        out.extend(group)
        if sum(map(len, out)) >= size:
            break
    return "".join(out)[:size]


def iter_cycle(items, rng):
    while True:
        yield from items
        rng.shuffle(items)


def interleaved_medians(contenders: dict, runs: int) -> dict[str, float]:
    """Median seconds of each contender (name -> (setup or None, fn)), one run of each per round, so that
    load from other work on the machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, (setup, fn) in contenders.items():
            arg = setup() if setup else None
            start = time.perf_counter()
            fn(arg) if setup else fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_encoding(texts: dict[str, str], runs: int) -> list[dict]:
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from transformers import GPT2TokenizerFast
    import shutil
    import tempfile

    from numgpt import Tokenizer
    from numgpt.tokenizer import GPT2_SPLIT_PATTERN

    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the files directly; no download, no cache
    ranks = data_gym_to_mergeable_bpe_ranks(str(GPT2_FILES / "vocab.bpe"), str(GPT2_FILES / "encoder.json"))
    tt = tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                           special_tokens={"<|endoftext|>": 50256})
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(GPT2_FILES / "encoder.json", Path(folder) / "vocab.json")
        shutil.copy(GPT2_FILES / "vocab.bpe", Path(folder) / "merges.txt")
        hf = GPT2TokenizerFast.from_pretrained(folder, model_max_length=10**9)

    rows = []
    for name, text in texts.items():
        n_bytes = len(text.encode("utf-8"))
        warm = Tokenizer.gpt2()
        ids = warm.encode(text)
        assert ids == tt.encode_ordinary(text) == hf.encode(text), f"ids differ on {name}"
        seconds = interleaved_medians({
            "numgpt cold": (Tokenizer.gpt2, lambda tok: tok.encode(text)),
            "numgpt warm": (None, lambda: warm.encode(text)),
            "tiktoken": (None, lambda: tt.encode_ordinary(text)),
            "HF GPT2TokenizerFast": (None, lambda: hf.encode(text)),
        }, runs)
        rows.append({"text": name, "MB": n_bytes / 1e6, "tokens": len(ids),
                     "MB/s": {k: n_bytes / 1e6 / s for k, s in seconds.items()}})
    return rows


def bench_training(text: str, runs: int, vocab_size: int = 4096) -> dict:
    from tokenizers import ByteLevelBPETokenizer

    from numgpt import train_bpe

    def ours():
        return train_bpe(text, vocab_size=vocab_size, special_tokens=["<|endoftext|>"], min_frequency=2)

    def theirs():
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator([text], vocab_size=vocab_size, min_frequency=2,
                                special_tokens=["<|endoftext|>"], show_progress=False)
        return tok

    assert ours().vocab_size == theirs().get_vocab_size() == vocab_size
    return interleaved_medians({"numgpt": (None, ours), "HF ByteLevelBPETokenizer": (None, theirs)}, runs)


def markdown(rows: list[dict], training: dict, runs: int, command: str) -> str:
    cpu = platform.processor() or platform.machine()
    import numgpt
    import tiktoken
    import tokenizers
    import transformers
    lines = [
        "## Tokenizer",
        "",
        f"Command: `{command}` (medians of {runs} interleaved runs; {os.cpu_count()} CPU cores shared with "
        f"other work, load average {os.getloadavg()[0]:.1f} at the end; {cpu}, Python "
        f"{platform.python_version()}; tiktoken {tiktoken.__version__}, tokenizers "
        f"{tokenizers.__version__}, transformers {transformers.__version__}, numgpt {numgpt.__version__}).",
        "",
        "Encoding throughput in MB/s of UTF-8 input, one call on the whole text, single thread. numgpt is",
        "pure Python (+ `regex`); *cold* = a fresh Tokenizer (every distinct piece runs BPE once), *warm* =",
        "the same instance again (pieces come from its cache). All give identical ids (checked in the run).",
        "",
        "| text | MB | tokens | numgpt cold | numgpt warm | tiktoken | HF GPT2TokenizerFast | numgpt cold / tiktoken | numgpt warm / tiktoken | numgpt cold / HF |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["MB/s"]
        lines.append(f"| {r['text']} | {r['MB']:.2f} | {r['tokens']:,} | {s['numgpt cold']:.2f} | "
                     f"{s['numgpt warm']:.2f} | {s['tiktoken']:.2f} | {s['HF GPT2TokenizerFast']:.2f} | "
                     f"{s['numgpt cold'] / s['tiktoken']:.2f} | {s['numgpt warm'] / s['tiktoken']:.2f} | "
                     f"{s['numgpt cold'] / s['HF GPT2TokenizerFast']:.1f} |")
    ours, theirs = training["numgpt"], training["HF ByteLevelBPETokenizer"]
    lines += [
        "",
        "BPE training, 4096 tokens (256 bytes + 3839 merges + `<|endoftext|>`) on tinyshakespeare,",
        "min_frequency 2, GPT-2 pre-tokenization; HF tokenizers uses all cores (Rust, multithreaded):",
        "",
        "| numgpt train_bpe | HF ByteLevelBPETokenizer | ratio |",
        "|---:|---:|---:|",
        f"| {ours:.2f} s | {theirs:.2f} s | {ours / theirs:.1f}x |",
        "",
        "mixed text: one third tinyshakespeare prose, one third Python code (stdlib sources), one third",
        "random sentences over Chinese, Japanese, Korean, Russian, Arabic, Hebrew, Hindi, Thai, Greek words",
        "with emoji (`mixed_text()` in bench/bench_tokenizer.py), in alternating paragraphs.",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    """Replace (or add) the '## Tokenizer' section of BENCHMARKS.md, leaving the other sections alone."""
    text = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## Tokenizer\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = parser.parse_args()
    if not SHAKESPEARE.is_file():
        print(f"{SHAKESPEARE} is missing", file=sys.stderr)
        return 2
    shakespeare = SHAKESPEARE.read_text(encoding="utf-8")
    texts = {"tinyshakespeare": shakespeare, "mixed": mixed_text(shakespeare)}
    rows = bench_encoding(texts, args.runs)
    training = bench_training(shakespeare, max(3, args.runs // 2))
    command = "python bench/bench_tokenizer.py" + (f" --runs {args.runs}" if args.runs != 5 else "") + " --write"
    section = markdown(rows, training, args.runs, command)
    print(section)
    if args.write:
        write_section(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
