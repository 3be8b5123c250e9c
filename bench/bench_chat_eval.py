"""Exact match of chat models on many held-out tasks: a larger test than the recipe's 35 a family, and the
paired comparison of two models on the same tasks (issue 22's "RL at least 5 points above SFT").

    python bench/bench_chat_eval.py --models runs/chat/sft/run/latest runs/chat/model --per-family 300

Tasks: synth.synthesize(split="heldout") -- phrasings the training never used -- with --seed (not the
recipe's held-out set: other numbers, other draws). Each model answers greedily (evaluate.chat_replies).
Printed per family: each model's exact match with a 95% Wilson interval, and for every other model
against the first the difference with a 95% interval from the paired bootstrap and the paired wins (right
where the first was wrong) and losses (the exact checker's win rate is wins / (wins + losses)). Not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def paired_interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, rounds: int = 10_000
                    ) -> tuple[float, float]:
    """95% bootstrap interval of mean(b) - mean(a) over the same tasks (resampled together)."""
    n = len(a)
    pick = rng.integers(0, n, (rounds, n))                     # [rounds, n]
    diffs = b[pick].mean(axis=1) - a[pick].mean(axis=1)
    return float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="chat model folders (the first is the baseline)")
    p.add_argument("--per-family", type=int, default=300)
    p.add_argument("--families", default=None, help="comma-separated (default: every family)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--json")
    args = p.parse_args()

    from numgpt.formats import load_checkpoint, load_tokenizer, resolve_model
    from numgpt.posttrain.evaluate import chat_replies
    from numgpt.posttrain.synth import FAMILIES, check, synthesize

    families = tuple(args.families.split(",")) if args.families else tuple(FAMILIES)
    tasks = synthesize(args.per_family * len(families), rng=np.random.default_rng(args.seed), families=families,
                       split="heldout", system_rate=0.0)
    right: dict[str, np.ndarray] = {}
    for name in args.models:
        folder = resolve_model(name, cache_dir=Path("/nonexistent"))
        config, params = load_checkpoint(folder)
        t0 = time.perf_counter()
        replies, _ = chat_replies(params, config, load_tokenizer(folder, config), tasks)
        right[name] = np.array([check(t, r) for t, r in zip(tasks, replies)], np.float64)
        print(f"{name}: {len(tasks)} replies in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    family_of = np.array([t["family"] for t in tasks])
    base = args.models[0]
    rng = np.random.default_rng(0)
    out: dict = {"per_family": args.per_family, "seed": args.seed, "models": args.models, "families": {}}
    print(f"{'family':10}" + "".join(f"{'model ' + str(i):>24}" for i in range(len(args.models)))
          + "".join(f"{'model ' + str(i) + ' - model 0 (95%), won/lost':>46}" for i in range(1, len(args.models))))
    for fam in (*families, "all"):
        sel = np.ones(len(tasks), bool) if fam == "all" else family_of == fam
        row, cells = {}, []
        for name in args.models:
            k, n = int(right[name][sel].sum()), int(sel.sum())
            lo, hi = wilson(k, n)
            row[name] = {"right": k, "n": n, "share": k / n, "wilson95": [lo, hi]}
            cells.append(f"{k / n:6.1%} [{lo:5.1%},{hi:6.1%}]")
        for name in args.models[1:]:
            a, b = right[base][sel], right[name][sel]
            lo, hi = paired_interval(a, b, rng)
            wins, losses = int(((b == 1) & (a == 0)).sum()), int(((a == 1) & (b == 0)).sum())
            row[name]["against_first"] = {"wins": wins, "losses": losses, "win_rate": wins / max(1, wins + losses),
                                          "difference": float(b.mean() - a.mean()), "bootstrap95": [lo, hi]}
            cells.append(f"{b.mean() - a.mean():+6.1%} [{lo:+.1%},{hi:+.1%}] {wins}/{losses}")
        out["families"][fam] = row
        print(f"{fam:10}" + "".join(f"{c:>24}" for c in cells[:len(args.models)])
              + "".join(f"{c:>46}" for c in cells[len(args.models):]))
    for i, name in enumerate(args.models):
        print(f"model {i}: {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
