"""Structured outputs: time per token of constrained decoding against unconstrained decoding, and the token
automaton's build time per schema (issue 23: at most 10% more time per token on 124M).

For each model (a random 124M-shaped GPT-2 checkpoint saved by transformers: GPT-2's 50,257-token
vocabulary; and the built-in model) and each constraint (a JSON schema, OpenAI's json_object, a regex),
RUNS pairs of greedy generations of the same prompt are timed back to back, unconstrained then
constrained, each NEW tokens at most (stop_at_eos off for the unconstrained one, so it runs NEW tokens;
the constrained one ends where its text is whole and nothing can follow). Time per token is the median
gap between streamed tokens (prefill excluded); the ratio is constrained / unconstrained within a pair,
its median over the pairs reported. Greedy decoding visits the same automaton states in every run, so run
1 ("cold") pays for computing each state's allowed tokens and the later runs ("warm") only for the mask;
both are reported, with the automaton's build time (regex/schema -> DFA -> the first state's allowed
tokens) and how many states a generation computed lazily, in how much time.

    python bench/bench_structured.py --runs 5                  # makes the 124M checkpoint in a temp dir
    python bench/bench_structured.py --runs 5 --ckpt DIR       # or reuses one (made if DIR is empty)
    python bench/bench_structured.py --runs 2 --new 16 --models builtin     # a quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numgpt
from numgpt.structured import build_constraint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import make_checkpoint  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0, "maximum": 130},
    "email": {"type": "string", "pattern": r"^[a-z0-9.]+@[a-z]+\.(com|org|net)$"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 8},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string",
                                                                                       "pattern": r"^\d{5}$"}},
                "required": ["city", "zip"]},
    "score": {"type": "number"}, "active": {"type": "boolean"}},
    "required": ["name", "age", "email", "tags", "address", "score", "active"], "additionalProperties": False}
CONSTRAINTS = {"schema": {"json_schema": SCHEMA}, "json_object": {"json_object_mode": True},
               "regex": {"regex": r"[A-Z][a-z]+(, [a-z]+){0,40}\."}}
PROMPT = "Here is the record, as JSON:"


def per_token_seconds(lm, new: int, constraint=None) -> tuple[float, int, str]:
    """(median seconds between streamed tokens, tokens generated, text) of one greedy generation."""
    stamps, completions = [], []
    options = dict(max_new_tokens=new, do_sample=False)
    if constraint is None:
        options["stop_at_eos"] = False
    else:
        options["constraint"] = constraint
    for piece in lm.stream_pieces(PROMPT, completions=completions, **options):
        if piece.token is not None or piece.text:
            stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps), len(completions[0].token_ids), completions[0].text


def bench_model(name: str, lm, runs: int, new: int) -> dict:
    out = {}
    new = min(new, lm.config.n_positions - len(lm.encode(PROMPT)))     # the built-in model's context is 128
    for kind, given in CONSTRAINTS.items():
        ends = () if lm.tokenizer.eot_id is None else (lm.tokenizer.eot_id,)
        start = time.perf_counter()
        constraint = build_constraint(lm.tokenizer, end_ids=ends, vocab_size=lm.config.vocab_size, **given)
        build = time.perf_counter() - start
        automaton = constraint.automaton
        plain, constrained, ratios, tokens, text = [], [], [], 0, ""
        for run in range(runs):
            p, _, _ = per_token_seconds(lm, new)
            c, tokens, text = per_token_seconds(lm, new, constraint)
            plain.append(p)
            constrained.append(c)
            ratios.append(c / p)
            if run == 0:
                lazily = (automaton.computed_states, automaton.compute_seconds)
        out[kind] = {"dfa_states": automaton.dfa.n_states, "build_s": round(build, 4),
                     "lazy_states_first_run": lazily[0], "lazy_s_first_run": round(lazily[1], 4),
                     "ms_per_token_plain": round(1e3 * statistics.median(plain), 3),
                     "ms_per_token_constrained_cold": round(1e3 * constrained[0], 3),
                     "ms_per_token_constrained_warm": round(1e3 * statistics.median(constrained[1:] or constrained), 3),
                     "ratio_cold": round(ratios[0], 3),
                     "ratio_warm_median": round(statistics.median(ratios[1:] or ratios), 3),
                     "tokens": tokens, "text": text[:80]}
        print(f"{name:8} {kind:11} states {out[kind]['dfa_states']:5}  build {build:7.3f} s  "
              f"lazy {lazily[0]:4} states {lazily[1]:6.3f} s  per token plain {out[kind]['ms_per_token_plain']:7.2f} ms"
              f"  constrained cold {out[kind]['ms_per_token_constrained_cold']:7.2f} / warm "
              f"{out[kind]['ms_per_token_constrained_warm']:7.2f} ms  ratio cold {ratios[0]:.3f} warm "
              f"{out[kind]['ratio_warm_median']:.3f}  ({tokens} tokens)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="pairs of generations per constraint (>= 2: cold + warm)")
    ap.add_argument("--new", type=int, default=128, help="new tokens at most per generation")
    ap.add_argument("--ckpt", type=Path, help="the 124M checkpoint folder to use (made there if missing)")
    ap.add_argument("--models", default="124m,builtin", help="comma-separated: 124m, builtin")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint)
        return
    results = {}
    tmp = None
    for name in args.models.split(","):
        if name == "124m":
            folder = args.ckpt
            if folder is None:
                tmp = tempfile.TemporaryDirectory()
                folder = Path(tmp.name)
            if not (folder / "model.safetensors").is_file():
                subprocess.run([sys.executable, __file__, "--make-checkpoint", str(folder)], check=True)
            lm = numgpt.load(folder)
        elif name == "builtin":
            lm = numgpt.load("builtin")
        else:
            raise SystemExit(f"unknown model {name!r}: 124m or builtin")
        results[name] = bench_model(name, lm, max(args.runs, 2), args.new)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
