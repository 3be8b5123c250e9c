"""LoRA against full fine-tuning: time per training step and peak memory, GPT-2 124M, batch 4 x 256.

The issue's targets: a LoRA rank-8 step at most 0.7x the time and 0.5x the peak memory of a full
fine-tuning step. Each mode runs in a fresh subprocess (its peak RSS is its own): the 124M model's
weights (random, GPT-2's init: the speed does not depend on the values), then `--steps` training steps
exactly as `numgpt train` makes them (loop.train_step: rows split over one thread per core, BLAS single-
threaded, freed memory kept), the first `--warmup` not timed. Rounds alternate the two modes, so
background load hits both alike; the medians and their ratio are printed.

    python bench/bench_lora.py --rounds 3                  # needs a quiet machine and ~3 GB of memory
    python bench/bench_lora.py --rank 16 --targets c_attn  # another adapter
Add --json FILE to keep the raw numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from numgpt.config import PRESETS  # noqa: E402
from numgpt.params import init_params  # noqa: E402
from numgpt.posttrain.lora import LoraConfig, init_adapters, lora_objective  # noqa: E402
from numgpt.threads import single_threaded_blas, thread_count  # noqa: E402
from numgpt.training.comm import SingleProcess  # noqa: E402
from numgpt.training.loop import Trainer, TrainConfig, make_optimizer, train_step  # noqa: E402
from numgpt.training.memory import keep_freed_memory  # noqa: E402
from numgpt.training.objective import Objective  # noqa: E402
from numgpt.training.parallel import DataParallel  # noqa: E402
from numgpt.training.state import new_state  # noqa: E402


def random_windows(data, split, batch_size, block_size, rng, rows, *, vocab: int):
    """A batch of random token windows (no data set needed to time a step): (ids, targets) [rows, T]."""
    ids = rng.integers(0, vocab, size=(batch_size, block_size + 1))
    return ids[rows, :-1], ids[rows, 1:]


def one_mode(mode: str, steps: int, warmup: int, rank: int, targets: tuple[str, ...], preset: str) -> dict:
    """Time `steps` steps of one mode in this process; its peak RSS."""
    config = PRESETS[preset]
    batches = functools.partial(random_windows, vocab=config.vocab_size)
    tc = TrainConfig(batch_size=4, block_size=min(256, config.n_positions), max_iters=steps, threads=thread_count())
    params = init_params(config, np.random.default_rng(0))
    if mode == "lora":
        lora = LoraConfig(rank=rank, targets=targets)
        params.update(init_adapters(config, lora, np.random.default_rng(1)))
        objective = lora_objective(config, lora, batches)
    else:
        objective = Objective(batch=batches)
    state = new_state(params, seed=0)
    del params
    dp = DataParallel(tc.threads, SingleProcess())
    opt = make_optimizer(state, config, tc, objective, dp.comm, dp.threads)
    trainer = Trainer(state, config, tc, None, Path("."), objective, dp, opt)
    times = []
    with keep_freed_memory(), single_threaded_blas():
        for i in range(steps):
            t0 = time.perf_counter()
            train_step(trainer)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    trained = sum(p.size for p in objective.trainable_params(state.params).values())
    return {"mode": mode, "step_s": statistics.median(times), "peak_rss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "trained_params": trained}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="c_attn,c_proj,c_fc")
    ap.add_argument("--preset", default="gpt2", help="the model (gpt2: 124M; tiny: a smoke test of this script)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--worker", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    targets = tuple(args.targets.split(","))
    if args.worker:
        print(json.dumps(one_mode(args.worker, args.steps, args.warmup, args.rank, targets, args.preset)))
        return
    rows = []
    for r in range(args.rounds):
        for mode in ("full", "lora") if r % 2 == 0 else ("lora", "full"):
            out = subprocess.run([sys.executable, __file__, "--worker", mode, "--steps", str(args.steps), "--warmup",
                                  str(args.warmup), "--rank", str(args.rank), "--targets", args.targets, "--preset", args.preset],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    med = {m: {k: statistics.median(x[k] for x in rows if x["mode"] == m) for k in ("step_s", "peak_rss_mb")}
           for m in ("full", "lora")}
    print(f"{args.preset}, batch 4 x 256, {thread_count()} threads; LoRA rank {args.rank} on {args.targets}")
    for m in ("full", "lora"):
        print(f"  {m:5s} step {med[m]['step_s']:.2f} s   peak RSS {med[m]['peak_rss_mb']:.0f} MB")
    print(f"  LoRA / full: time {med['lora']['step_s'] / med['full']['step_s']:.2f}x (target <= 0.7x), "
          f"memory {med['lora']['peak_rss_mb'] / med['full']['peak_rss_mb']:.2f}x (target <= 0.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "median": med}, indent=2) + "\n")


if __name__ == "__main__":
    main()
