"""Generation and scoring benchmark: numgpt against transformers (PyTorch, CPU) on a 124M-shaped GPT-2 with
random weights (the shape, not the values, sets the cost), all in the same run; medians of several runs,
alternating which side goes first, and the ratio of the two measured back to back.

    python bench/bench_generate.py                  print the table
    python bench/bench_generate.py --write          and replace the "## Generation" section of BENCHMARKS.md

Cases (prompts of 32 tokens, no stopping at end-of-text on either side):
  greedy      64 new tokens, numgpt generate_ids vs GPT2LMHeadModel.generate(do_sample=False)
  sampling    64 new tokens, temperature 0.8, top-k 40, top-p 0.95 (both: full processor chain + draw)
  batch 4x    4 prompts, 32 new tokens each, greedy
  perplexity  1536 tokens, window 1024, stride 512 (numgpt scoring.token_logprobs vs the same windows
              through GPT2LMHeadModel with log_softmax)
torch runs with torch.set_num_threads(THREADS) (2 by default: the machine's cores) and under no_grad.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import numgpt  # noqa: E402,F401  before NumPy: it asks OpenBLAS to let idle threads sleep (numgpt/machine.py)
BENCHMARKS = REPO / "BENCHMARKS.md"
SECTION = "## Generation"


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--only", metavar="TEXT", help="run only the cases whose name contains TEXT")
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers

    from numgpt.formats.hf import load_checkpoint
    from numgpt.generate import generate_ids
    from numgpt.sampling import GREEDY, SamplingOptions
    from numgpt.scoring import token_logprobs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    hf.generation_config.eos_token_id = None  # run every case to its full length
    hf.generation_config.pad_token_id = 0
    folder = tempfile.mkdtemp(prefix="bench_generate_")
    hf.save_pretrained(folder)
    config, params = load_checkpoint(folder, for_inference=True)  # as numgpt.load (and the CLI) load it
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 50000, 32).tolist()
    batch = [rng.integers(0, 50000, 32).tolist() for _ in range(4)]
    text_ids = rng.integers(0, 50000, 1536).tolist()
    sampling = SamplingOptions(temperature=0.8, top_k=40, top_p=0.95)

    def hf_generate(prompts, n, **kw):
        ids = torch.tensor(prompts)
        with torch.no_grad():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, **kw)

    def hf_logprobs():
        ids = torch.tensor(text_ids)
        prev_end = 0
        with torch.no_grad():
            for begin in range(0, len(text_ids), 512):
                end = min(begin + 1024, len(text_ids))
                logp = torch.log_softmax(hf(ids[None, begin:end]).logits[0], -1)
                first = max(prev_end, begin + 1)
                logp[torch.arange(first - 1 - begin, end - 1 - begin), ids[first:end]].sum()
                prev_end = end
                if end == len(text_ids):
                    break

    cases = {
        "greedy, 32 + 64 tokens": (
            64, lambda: generate_ids(params, config, [prompt], max_new_tokens=64, sampling=GREEDY),
            lambda: hf_generate([prompt], 64, do_sample=False)),
        "sampling T=0.8 k=40 p=0.95, 32 + 64": (
            64, lambda: generate_ids(params, config, [prompt], max_new_tokens=64, sampling=sampling, seed=1),
            lambda: hf_generate([prompt], 64, do_sample=True, temperature=0.8, top_k=40, top_p=0.95)),
        "batch of 4, greedy, 4 x (32 + 32)": (
            128, lambda: generate_ids(params, config, batch, max_new_tokens=32, sampling=GREEDY),
            lambda: hf_generate(batch, 32, do_sample=False)),
        "perplexity, 1536 tokens, stride 512": (
            1535, lambda: token_logprobs(params, config, text_ids, stride=512), hf_logprobs),
    }
    rows = []
    for name, (n_tokens, ours, ref) in cases.items():
        if args.only and args.only not in name:
            continue
        ours(), ref()  # warm up (first-touch of the memory-mapped embeddings, torch's kernels)
        t_ours, t_ref, ratios = [], [], []
        for r in range(args.runs):
            if r % 2 == 0:
                a, b = timed(ours), timed(ref)
            else:
                b, a = timed(ref), timed(ours)
            t_ours.append(a), t_ref.append(b), ratios.append(b / a)
        rows.append((name, n_tokens / statistics.median(t_ours), n_tokens / statistics.median(t_ref),
                     statistics.median(ratios)))
        print(f"{name:40s} numgpt {rows[-1][1]:8.1f} tok/s   torch {rows[-1][2]:8.1f} tok/s   "
              f"speed ratio {rows[-1][3]:.2f}", flush=True)

    table = [
        SECTION, "",
        f"GPT-2 124M shape, random weights, float32, CPU: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, numpy {np.__version__}, torch {torch.__version__} "
        f"({args.threads} threads), transformers {transformers.__version__}. Median of {args.runs} runs; "
        "ratio = median of (torch time / numgpt time) measured back to back (> 1: numgpt faster). "
        f"The machine is shared (load average {os.getloadavg()[0]:.1f} at the end of the run), so absolute "
        "numbers are noisy; the ratios less so.", "",
        "| case | numgpt tokens/s | transformers tokens/s | numgpt speed / torch |",
        "|---|---:|---:|---:|",
        *[f"| {n} | {a:.1f} | {b:.1f} | {r:.2f}x |" for n, a, b, r in rows], "",
        "Reproduce: `python bench/bench_generate.py --runs 5` (add `--write` to update this section).", "",
    ]
    print("\n".join(table))
    if args.write:
        write_section("\n".join(table))


def write_section(section: str) -> None:
    """Replace (or append) the '## Generation' section of BENCHMARKS.md, leaving the others alone."""
    text = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else "# Benchmarks\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.strip() == SECTION), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + section + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    BENCHMARKS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
