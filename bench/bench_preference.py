"""Preference tuning on the built-in chat model (issue 22's DPO and reward-model figures): a reward model and a
DPO policy trained on synthetic preference pairs, then judged on held-out pairs and held-out tasks.

    python bench/bench_preference.py --out runs/bench_pref                 # the figures in BENCHMARKS.md

Steps, each the CLI's own command (so the figures are what a user gets):
  1. numgpt data pairs: --n training pairs and --heldout pairs of the held-out templates (with --sampled-pairs,
     `--from-model MODEL`: from --n and --heldout tasks of --pair-families, the model's own right and wrong answers)
  2. numgpt reward train PAIRS --init MODEL: its pairwise accuracy on the held-out pairs
  3. numgpt dpo PAIRS --init MODEL --beta B [--sft-weight W]: its preference accuracy on every held-out pair
     (the implicit reward beta * log pi/pi_ref ranks chosen above rejected). With --step-level, DPO trains on
     step-level pairs of the same tasks (data pairs --from-model --step-level: the reference reply chosen,
     the wrong answer cut after its slip rejected; --step-level token: after the token where it slipped;
     --chosen nearest: the right reply, reference or sample, worded most like the wrong one), and
     its preference accuracy is on held-out step-level pairs; the reward model still learns from whole
     replies, which is what it judges below. With --with-whole, DPO trains on the whole pairs and the
     step-level ones together, and its preference accuracy is on the held-out whole pairs.
     With --rounds R (iterative DPO, with --sampled-pairs): R rounds, each sampling pairs of --round-n new
     tasks from the policy the round before left (the first from MODEL) and running DPO from it, with it as
     the reference (its held-out figures on the pairs sampled from MODEL); the last round's policy is
     judged against MODEL. A DPO run's folder is named by its kind (dpo, dpo_step, dpo_token, dpo_token_whole, round{r}, ...):
     what --out holds is reused, so one --out serves both kinds on the same reward model; use a new --out
     for other settings (--model, --lr, --beta, ...).
     With --dpo-seeds S,S,...: one DPO run per seed (numgpt dpo --seed S; the pairs and the reference's sums
     are the same, the batches differ) into dpo{kind}_s{S}, and their mean by `numgpt average` into
     dpo{kind}_soup. The soup is the policy judged in step 4, and each seed's run is judged beside it; the
     soup's held-out preference accuracy is computed here, on the same held-out pairs as the runs' own.
  4. on --tasks held-out tasks, greedy replies of the reference (MODEL) and of the DPO policy; the DPO policy
     wins a task when the judge prefers its reply: by the exact checker (right beats wrong; both right or both
     wrong is a tie) and by the reward model (higher reward; equal replies are ties).
     win rate = wins / (wins + losses), ties left out (and counted); the checker's wins, losses and ties
     are also given per family.
Not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def numgpt(*args: str) -> float:
    """Run one numgpt command (its output shown); its seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "numgpt", *args], check=True)
    return time.perf_counter() - t0


def win_rate(wins: int, losses: int) -> float:
    return wins / max(1, wins + losses)


def run_data_dir(run: Path) -> Path:
    """The prepared pairs a DPO run trained on (RUN/data, or the folder it was given), from its train_config."""
    return Path(json.loads((run / "train_config.json").read_text())["data_dir"])


def preference_accuracy(policy: Path, data_dir: Path, beta: float) -> float:
    """The share of a prepared DPO folder's held-out pairs whose implicit reward ranks the chosen reply above
    the rejected one under `policy` (what numgpt dpo logs as val_accuracy, on every held-out pair)."""
    from numgpt.formats import load_checkpoint
    from numgpt.posttrain.dpo import PairBatches, dpo_metrics, load_pair_arrays, reply_logps
    from numgpt.training.data import load_dataset

    data = load_dataset(data_dir)
    batches = PairBatches(*load_pair_arrays(data_dir, data.meta))
    pairs = batches.pairs(data, "val", batches.masks["val"].shape[2] - 1)          # [P, 2, L]
    ids, targets, mask, ref, _ = batches.rows_of(pairs, "val", np.arange(len(pairs)), 1.0)
    config, params = load_checkpoint(policy)
    n, _, T = ids.shape
    logps = reply_logps(params, config, ids.reshape(2 * n, T), targets.reshape(2 * n, T),
                        mask.reshape(2 * n, T)).reshape(n, 2)
    return dpo_metrics(logps, ref, beta, mask[:, 0].sum(axis=1))["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="chat")
    p.add_argument("--out", default="runs/bench_pref")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--heldout", type=int, default=300)
    p.add_argument("--tasks", type=int, default=1400)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--dpo-iters", type=int, default=300)
    p.add_argument("--rm-iters", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-5, help="DPO's learning rate")
    p.add_argument("--sft-weight", type=float, default=0.0, help="DPO's SFT term (numgpt dpo --sft-weight)")
    p.add_argument("--dpo-seed", type=int, default=None,
                   help="DPO's batches (numgpt dpo --seed; default numgpt dpo's own); the pairs stay")
    p.add_argument("--dpo-seeds", default=None, metavar="S,S,...",
                   help="one DPO run per seed, averaged by numgpt average; the average is the judged policy (above)")
    p.add_argument("--rm-lr", type=float, default=1e-4, help="the reward model's learning rate")
    p.add_argument("--sampled-pairs", action="store_true",
                   help="pairs from the model's own answers (numgpt data pairs --from-model): a right one chosen, a "
                        "wrong one rejected; --n and --heldout then count tasks, not pairs")
    p.add_argument("--pair-families", default="add,sub", help="the families of --sampled-pairs' tasks (add,sub)")
    p.add_argument("--step-level", nargs="?", const="sentence", choices=("sentence", "token"),
                   help="with --sampled-pairs: DPO on step-level pairs, cut after the differing sentence (default) or token")
    p.add_argument("--rejected", default="sampled", choices=("sampled", "greedy"),
                   help="with --sampled-pairs: numgpt data pairs --rejected (the wrong answer a pair rejects)")
    p.add_argument("--with-whole", action="store_true",
                   help="with --step-level: DPO on the whole pairs and the step-level pairs together (the whole ones "
                        "first, in one file), its held-out figures on the held-out whole pairs")
    p.add_argument("--chosen", default="reference", choices=("reference", "nearest"),
                   help="with --step-level: numgpt data pairs --chosen (the right reply a pair chooses and cuts against)")
    p.add_argument("--rounds", type=int, default=1, help="iterative DPO: rounds of sampling and DPO (above)")
    p.add_argument("--round-n", type=int, default=600, help="tasks sampled a round (--rounds > 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    if (args.step_level or args.rounds > 1 or args.rejected != "sampled") and not args.sampled_pairs:
        p.error("--step-level, --rounds and --rejected need --sampled-pairs")
    if (args.chosen != "reference" or args.with_whole) and not args.step_level:
        p.error("--chosen and --with-whole need --step-level")
    if args.with_whole and args.rounds > 1:
        p.error("--with-whole is for one round")
    if args.rounds < 1 or args.round_n < 1:
        p.error("--rounds and --round-n must be at least 1")
    try:
        seeds = [int(x) for x in args.dpo_seeds.split(",")] if args.dpo_seeds else []
    except ValueError:
        p.error(f"--dpo-seeds takes whole numbers separated by commas, got {args.dpo_seeds!r}")
    if seeds and (args.rounds > 1 or args.dpo_seed is not None or len(seeds) < 2 or len(set(seeds)) < len(seeds)):
        p.error("--dpo-seeds takes two or more different seeds, for one round, without --dpo-seed")

    from numgpt.formats import load_checkpoint, load_tokenizer, resolve_model
    from numgpt.posttrain.chatdata import write_conversations
    from numgpt.posttrain.evaluate import chat_replies
    from numgpt.posttrain.pairs import read_pairs
    from numgpt.posttrain.reward import load_reward_model
    from numgpt.posttrain.synth import FAMILIES, check, prompt_messages, synthesize

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs, held = out / "pairs.jsonl", out / "heldout_pairs.jsonl"
    figures: dict = {}
    sampled = (["--from-model", args.model, "--families", args.pair_families, "--rejected", args.rejected]
               if args.sampled_pairs else [])
    if not held.exists():           # like the reward model and DPO below, what --out holds already is reused
        numgpt("data", "pairs", "--n", str(args.n), "-o", str(pairs), "--seed", str(args.seed), "--force", *sampled)
        numgpt("data", "pairs", "--n", str(args.heldout), "--split", "heldout", "-o", str(held),
               "--seed", str(args.seed + 1), "--force", *sampled)
    dpo_pairs, dpo_held = pairs, held
    kind = {None: "", "sentence": "_step", "token": "_token"}[args.step_level]
    if args.step_level:
        dpo_pairs, dpo_held = out / f"{kind[1:]}_pairs.jsonl", out / f"heldout{kind}_pairs.jsonl"
        if args.rounds == 1 and not dpo_pairs.exists():     # rounds sample their own training pairs
            numgpt("data", "pairs", "--n", str(args.n), "-o", str(dpo_pairs), "--seed", str(args.seed), "--force",
                   "--step-level", args.step_level, "--chosen", args.chosen, *sampled)
        if not dpo_held.exists():
            numgpt("data", "pairs", "--n", str(args.heldout), "--split", "heldout", "-o", str(dpo_held),
                   "--seed", str(args.seed + 1), "--force", "--step-level", args.step_level, "--chosen", args.chosen,
                   *sampled)
    if args.with_whole:              # the whole pairs first, then the step-level ones; held out: the whole ones
        mixed = out / f"whole{kind}_pairs.jsonl"
        if not mixed.exists():
            mixed.write_text(pairs.read_text() + dpo_pairs.read_text())
        dpo_pairs, dpo_held, kind = mixed, held, f"{kind}_whole"
    n_held = sum(1 for line in dpo_held.read_text().splitlines() if line.strip())
    if not (out / "rm" / "model").exists():
        figures["rm_seconds"] = numgpt("reward", "train", str(pairs), "--init", args.model, "--out", str(out / "rm"),
                                       "--max-iters", str(args.rm_iters), "--val", str(held), "--train", "all",
                                       "--lr", str(args.rm_lr))
    rm = load_reward_model(out / "rm" / "model")
    rewards = rm.score_pairs(read_pairs(held))
    figures["rm_pairwise_accuracy"] = float(np.mean(rewards[:, 0] > rewards[:, 1]))

    def dpo(train: Path, init: str | Path, run: Path, seed: int | None = args.dpo_seed) -> float:
        """numgpt dpo from `init` into `run`, its held-out figures on every pair of dpo_held; its seconds.
        `train` is the pairs' JSONL, or a folder a run before prepared from them and dpo_held (its reference
        sums reused)."""
        return numgpt("dpo", str(train), "--init", str(init), "--out", str(run), "--beta", str(args.beta),
                      "--max-iters", str(args.dpo_iters), *([] if train.is_dir() else ["--val", str(dpo_held)]),
                      "--lr", str(args.lr), "--sft-weight", str(args.sft_weight), "--batch-size", "8",
                      "--eval-iters", str(-(-n_held // 8)), *(["--seed", str(seed)] if seed is not None else []))

    last = out / f"dpo{kind}"
    seed_runs = {s: out / f"dpo{kind}_s{s}" for s in seeds}
    prepared = None                     # the first seed's pair rows and reference sums, reused by the others
    for s, run in seed_runs.items():
        if not (run / "latest").exists():
            figures[f"dpo_seconds_s{s}"] = dpo(prepared or dpo_pairs, args.model, run, seed=s)
        prepared = prepared or run_data_dir(run)
    if seeds:                           # averaged anew every time: a second, whatever the runs are now
        last = out / f"dpo{kind}_soup"
        numgpt("average", *(str(run / "latest") for run in seed_runs.values()), "--out", str(last), "--force")
        figures["policy"] = f"the average of the DPO runs of seeds {args.dpo_seeds}"
    elif args.rounds == 1 and not (last / "latest").exists():
        figures["dpo_seconds"] = dpo(dpo_pairs, args.model, last)
    policy = last if seeds else last / "latest"
    if args.rounds > 1:
        policy = Path(args.model)
        for r in range(args.rounds):
            rd = out / f"round{r}{kind}"
            rd.mkdir(exist_ok=True)
            if not (rd / "pairs.jsonl").exists():
                numgpt("data", "pairs", "--n", str(args.round_n), "-o", str(rd / "pairs.jsonl"), "--force",
                       "--seed", str(args.seed + 100 * (r + 1)), "--from-model", str(policy),
                       "--families", args.pair_families, "--rejected", args.rejected,
                       *(["--step-level", args.step_level, "--chosen", args.chosen] if args.step_level else []))
            if not (rd / "dpo" / "latest").exists():
                dpo(rd / "pairs.jsonl", policy, rd / "dpo")
            policy, last = rd / "dpo" / "latest", rd / "dpo"
    for name, run in {"": last, **{f"_s{s}": r for s, r in seed_runs.items()}}.items():
        if (run / "log.jsonl").exists():
            log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            last_eval = [e for e in log if e["type"] == "eval"][-1]
            figures[f"dpo_last_eval{name}"] = {k: v for k, v in last_eval.items() if isinstance(v, (int, float))}
    if seeds:
        beta = json.loads((next(iter(seed_runs.values())) / "dpo.json").read_text())["beta"]
        figures["soup_val_accuracy"] = preference_accuracy(policy, prepared, beta)

    folder = resolve_model(args.model, cache_dir=Path("/nonexistent"))
    config, ref_params = load_checkpoint(folder)
    tok = load_tokenizer(folder, config)
    tasks = synthesize(args.tasks, rng=np.random.default_rng(args.seed + 2), split="heldout", system_rate=0.0)
    write_conversations(out / "heldout_tasks.jsonl", tasks)
    ref_replies, _ = chat_replies(ref_params, config, tok, tasks)
    convs = lambda replies: [prompt_messages(t) + [{"role": "assistant", "content": r}]  # noqa: E731
                             for t, r in zip(tasks, replies)]
    r_ref = rm.score(convs(ref_replies))

    def judge(policy: Path) -> dict:
        """The policy's greedy replies against the reference's, by the exact checker and the reward model."""
        _, dpo_params = load_checkpoint(policy)
        dpo_replies, _ = chat_replies(dpo_params, config, tok, tasks)
        exact = {"wins": 0, "losses": 0, "ties": 0}
        per_family = {f: {"wins": 0, "losses": 0, "ties": 0} for f in FAMILIES}
        for task, a, b in zip(tasks, dpo_replies, ref_replies):
            ca, cb = check(task, a), check(task, b)
            outcome = "wins" if ca and not cb else "losses" if cb and not ca else "ties"
            exact[outcome] += 1
            per_family[task["family"]][outcome] += 1
        r_dpo = rm.score(convs(dpo_replies))
        same = np.array([a == b for a, b in zip(dpo_replies, ref_replies)])
        rm_judge = {"wins": int(((r_dpo > r_ref) & ~same).sum()), "losses": int(((r_dpo < r_ref) & ~same).sum()),
                    "ties": int((same | (r_dpo == r_ref)).sum())}
        return {"exact_judge": {**exact, "win_rate": win_rate(exact["wins"], exact["losses"])},
                "exact_judge_per_family": per_family,
                "exact_match": {"reference": float(np.mean([check(t, r) for t, r in zip(tasks, ref_replies)])),
                                "dpo": float(np.mean([check(t, r) for t, r in zip(tasks, dpo_replies)]))},
                "rm_judge": {**rm_judge, "win_rate": win_rate(rm_judge["wins"], rm_judge["losses"])}}

    figures.update(judge(policy))
    for s, run in seed_runs.items():
        figures[f"judged_s{s}"] = judge(run / "latest")
    figures["families"] = list(FAMILIES)
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
