"""Data-parallel training over MPI against threads, on this machine: tokens/s of `numgpt train` as
1 process x 2 threads, 2 ranks x 1 thread (mpiexec, with and without overlapping the gradient sum with
the backward) and 1 x 1, and the time one gradient all-reduce takes.

    python bench/bench_mpi.py --data DIR                 the nanoGPT CPU config on a prepared char-level folder
    python bench/bench_mpi.py --allreduce                one 124M-sized float32 all-reduce between 2 ranks
    python bench/bench_mpi.py --data DIR --step124m      GPT-2 124M steps (batch 4 x 256) on a GPT-2-tokenized folder

Runs alternate between the layouts, `--rounds` times; tokens/s is the median over steps after the first
five of each run (from RUN/log.jsonl), and each layout's figure the median over rounds. "no overlap" sums
the gradients after the backward instead of layer by layer during it (--no-overlap). The all-reduce:
numgpt's MPICommunicator.allreduce_sum against MPI's own Allreduce on the same buffer, medians of
`--repeats`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

NANOGPT = ["--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size", "64", "--batch-size", "12",
           "--eval-interval", "0", "--eval-iters", "1"]
LAYOUTS = {"1 process x 2 threads": (1, 2, []), "2 ranks x 1 thread": (2, 1, []),
           "2 ranks x 1 thread, no overlap": (2, 1, ["--no-overlap"]), "1 process x 1 thread": (1, 1, [])}


def mpiexec() -> str:
    found = Path(sys.executable).parent / "mpiexec"
    return str(found) if found.exists() else (shutil.which("mpiexec") or sys.exit("no mpiexec: pip install 'numgpt[mpi]'"))


GPT2_124M = ["--preset", "gpt2", "--block-size", "256", "--batch-size", "4", "--eval-interval", "0",
             "--eval-iters", "1"]


def tokens_per_second(data: str, ranks: int, threads: int, iters: int, shape: list[str] = NANOGPT,
                      skip: int = 5, extra: list[str] = ()) -> float:
    """Median tokens/s over the steps of one `numgpt train` run after its first `skip`."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "numgpt", "train", data, "--out", f"{tmp}/run", *shape,
               "--max-iters", str(iters), "--threads", str(threads), *extra]
        if ranks > 1:
            cmd = [mpiexec(), "-n", str(ranks), *cmd]
        subprocess.run(cmd, check=True, capture_output=True)
        steps = [json.loads(line) for line in Path(f"{tmp}/run/log.jsonl").read_text().splitlines()]
        return statistics.median(e["tokens_per_s"] for e in steps if e.get("type") == "step" and e["step"] > skip)


ALLREDUCE = textwrap.dedent("""
    import statistics, sys, time
    import numpy as np
    from mpi4py import MPI
    from numgpt.training.mpi import MPICommunicator
    n, repeats = int(sys.argv[1]), int(sys.argv[2])
    comm = MPICommunicator()
    buf = np.random.default_rng(comm.rank).standard_normal(n, dtype=np.float32)
    out = np.empty_like(buf)
    ours, theirs = [], []
    for _ in range(repeats):
        comm.barrier(); t = time.perf_counter(); comm.allreduce_sum(buf); ours.append(time.perf_counter() - t)
        comm.barrier(); t = time.perf_counter(); comm.comm.Allreduce(buf, out); theirs.append(time.perf_counter() - t)
    if comm.rank == 0:
        print(statistics.median(ours), statistics.median(theirs))
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a char-level folder made by `numgpt prepare TEXT --vocab-size 256`")
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--allreduce", action="store_true", help="time one all-reduce of --elements floats")
    ap.add_argument("--elements", type=int, default=124_439_808, help="GPT-2 124M's parameter count")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--step124m", action="store_true", help="GPT-2 124M steps instead of the nanoGPT config")
    args = ap.parse_args()
    if args.allreduce:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(ALLREDUCE)
        done = subprocess.run([mpiexec(), "-n", "2", sys.executable, f.name, str(args.elements), str(args.repeats)],
                              check=True, capture_output=True, text=True)
        ours, theirs = map(float, done.stdout.split())
        mb = args.elements * 4 / 1e6
        print(f"all-reduce of {args.elements:,} float32 ({mb:.0f} MB) between 2 ranks, median of {args.repeats}: "
              f"numgpt rank-ordered {ours:.3f} s, MPI_Allreduce {theirs:.3f} s ({ours / theirs:.2f}x)")
        return
    if not args.data:
        ap.error("pass --data DIR (or --allreduce)")
    shape, iters, skip = (GPT2_124M, 4, 1) if args.step124m else (NANOGPT, args.iters, 5)
    results: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for _ in range(args.rounds):
        for name, (ranks, threads, extra) in LAYOUTS.items():
            results[name].append(tokens_per_second(args.data, ranks, threads, iters, shape, skip, extra))
    base = statistics.median(results["1 process x 2 threads"])
    what = "GPT-2 124M, batch 4 x 256, steps 2-4" if args.step124m else "nanoGPT CPU config"
    print(f"{what}, {iters} steps per run, medians of {args.rounds} rounds")
    print("| layout | tokens/s | rounds | vs 1 x 2 threads |\n|---|---:|---|---:|")
    for name, values in results.items():
        m = statistics.median(values)
        print(f"| {name} | {m:,.0f} | {' / '.join(f'{v:,.0f}' for v in values)} | {m / base:.2f}x |")


if __name__ == "__main__":
    main()
