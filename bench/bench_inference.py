"""Inference speed of numgpt against transformers on the same random 124M-shaped GPT-2 checkpoint.

Measures numgpt and transformers alternately, in short paired slices, so that load from other processes
falls on both alike, and reports medians and the median of the paired ratios:
  - greedy decode tokens/s, batch 1 (32-token prompt, 128 new tokens; decode steps only, after prefill;
    the two decoders alternate every 16 steps and each 16-step pair gives one ratio)
  - greedy decode total tokens/s, batch 8 (same shape per row)
  - 512-token prefill time (transformers both as called by default -- logits at all 512 positions --
    and with logits_to_keep=1, the last position only, which is what numgpt computes)
  - a short prompt's prefill, 64 tokens: numgpt through the weights' column panels (panels.py; as generate
    prefills for a speculative or batched decode) and without them (a plain batch-1 decode), against
    transformers with logits_to_keep=1
  - load time and peak RSS of numgpt loading the checkpoint and running a decode step (in a subprocess;
    the median of LOADS of them)
numgpt runs twice: with its weights loaded as `numgpt.load` does (block weights copied into memory
stored [out, in]), and memory-mapped as stored in the file (load_checkpoint's default).
  - memory bandwidth of this machine (2 threads) and the effective weight bandwidth of batch-1 decode

transformers runs float32, torch.set_num_threads(2), torch.inference_mode(), use_cache=True.

    python bench/bench_inference.py --runs 5              # makes a checkpoint in a temp dir
    python bench/bench_inference.py --runs 5 --ckpt DIR   # or reuses one (made if DIR is empty)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numgpt  # noqa: F401  before NumPy: it asks OpenBLAS to let idle threads sleep (numgpt/machine.py)
import numpy as np

PROMPT, NEW, BATCH, PREFILL, SHORT = 32, 128, 8, 512, 64
LOADS = 5                                     # load-time samples, each a fresh process


def make_checkpoint(folder: Path, **config) -> None:
    """A random GPT-2 saved by transformers (seed 0; 124M's shape unless `config` overrides GPT2Config's
    fields): the checkpoint every bench/ script measures on."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**{"initializer_range": 0.05, **config})).save_pretrained(folder)


def numgpt_steps(params, config, prompt: np.ndarray, n: int):
    """Greedy decoding as a generator: prefill, then yields each step's tokens [B, 1]. The steps ask for
    the weights' column panels as numgpt's decode loop does (panels=True; older code, run through a
    worktree to compare, has no such option)."""
    import inspect
    from numgpt import KVCache, forward
    steps = {"panels": True} if "panels" in inspect.signature(forward).parameters else {}
    cache = KVCache.allocate(config, prompt.shape[0], prompt.shape[1] + n)
    logits = forward(params, config, prompt, cache=cache)
    for _ in range(n):
        nxt = logits.argmax(-1)[:, None]
        yield nxt
        logits = forward(params, config, nxt, cache=cache, **steps)


def hf_steps(model, prompt: np.ndarray, n: int):
    import torch
    with torch.inference_mode():
        out = model(torch.from_numpy(prompt), use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        for _ in range(n):
            nxt = logits.argmax(-1, keepdim=True)
            yield nxt.numpy()
            out = model(nxt, past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]


def interleaved_decode(gens: dict, n: int, block: int = 16) -> tuple[dict[str, list[float]], bool]:
    """Run step generators in turn, `block` steps at a time, so that load from other processes falls on
    all alike; returns each one's seconds per block and whether all produced the same tokens."""
    for gen in gens.values():
        next(gen)                                             # prefill + first token, not timed
    times: dict[str, list[float]] = {name: [] for name in gens}
    same = True
    for _ in range((n - 1) // block):
        tokens = []
        for name, gen in gens.items():
            t = time.perf_counter()
            tokens.append([next(gen) for _ in range(block)])
            times[name].append(time.perf_counter() - t)
        same &= all(np.array_equal(a, b) for toks in tokens[1:] for a, b in zip(tokens[0], toks))
    return times, same


def numgpt_prefill(params, config, ids: np.ndarray, panels: bool = False) -> float:
    from numgpt import KVCache, forward
    cache = KVCache.allocate(config, ids.shape[0], ids.shape[1])
    t = time.perf_counter()
    forward(params, config, ids, cache=cache, panels=panels)
    return time.perf_counter() - t


def hf_prefill(model, ids: np.ndarray, **kw) -> float:
    import torch
    with torch.inference_mode():
        t = time.perf_counter()
        model(torch.from_numpy(ids), use_cache=True, **kw)
        return time.perf_counter() - t


LOAD_SCRIPT = """
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
from numgpt import KVCache, forward, load_checkpoint
t1 = time.perf_counter()
config, params = load_checkpoint(sys.argv[1], for_inference=True)  # what numgpt.load does
t2 = time.perf_counter()
rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cache = KVCache.allocate(config, 1, 33)
forward(params, config, np.arange(32)[None], cache=cache)
forward(params, config, np.array([[5]]), cache=cache)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# subtle: Linux carries ru_maxrss over fork + exec from the parent, so also read this process's own
# high-water mark (VmHWM, reset by exec); main() starts this subprocess before loading anything big.
hwm = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
t3 = time.perf_counter()
load_checkpoint(sys.argv[1])
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "load_mmap_s": t4 - t3, "rss_after_load_kb": rss_loaded,
                  "peak_rss_kb": rss, "vm_hwm_kb": hwm, "cache_bytes": cache.nbytes,
                  "weight_bytes": sum(a.nbytes for a in params.values())}))
"""


def load_stats(folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def memory_bandwidth() -> dict:
    """GB/s reading a 1 GiB float32 array: np.add.reduce on 1 and 2 threads (halves in parallel; the
    reduction releases the GIL), and a BLAS matrix-vector product (OpenBLAS's own 2 threads)."""
    a = np.ones(1 << 28, np.float32)
    halves = np.split(a, 2)

    def reduce_two_threads():
        ts = [threading.Thread(target=np.add.reduce, args=(h,)) for h in halves]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    m, v = a.reshape(-1, 1024), np.ones(1024, np.float32)
    result = {}
    for name, f in [("sum_1_thread", lambda: np.add.reduce(a)), ("sum_2_threads", reduce_two_threads),
                    ("gemv_blas", lambda: m @ v)]:
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        result[name] = a.nbytes / np.median(ts) / 1e9
    return result


def lm_head_layouts(wte: np.ndarray, rows: int) -> dict[str, float]:
    """ms for the vocabulary projection of `rows` rows written two ways (wte is [V, C] row-major)."""
    x = np.random.default_rng(0).standard_normal((rows, wte.shape[1]), dtype=np.float32)
    ways = {"x @ wte.T": lambda: x @ wte.T, "(wte @ x.T).T": lambda: (wte @ x.T).T}
    ts: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(15):
        for name, f in ways.items():
            t = time.perf_counter()
            f()
            ts[name].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1e3 for k, v in ts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ckpt", type=Path, help="checkpoint folder to use (made there if missing)")
    ap.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint)
        return

    tmp = None
    folder = args.ckpt
    if folder is None:
        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name)
    if not (folder / "model.safetensors").is_file():
        subprocess.run([sys.executable, __file__, "--make-checkpoint", str(folder)], check=True)
    load_before = os.getloadavg()[0]
    # first, while this process is small (see LOAD_SCRIPT); several fresh processes, since the time of
    # a load swings with how quickly the kernel finds free (huge) pages for the copies
    loads = [load_stats(folder) for _ in range(LOADS)]
    load = {k: statistics.median(s[k] for s in loads) for k in loads[0]}
    load_times = sorted(s["load_s"] for s in loads)
    bw = memory_bandwidth()

    import torch
    from transformers import GPT2LMHeadModel
    torch.set_num_threads(2)
    from numgpt import load_checkpoint
    config, params = load_checkpoint(folder)                   # memory-mapped, as stored (the default)
    _, params_lm = load_checkpoint(folder, for_inference=True)  # what numgpt.load does
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    weight_bytes = sum(a.nbytes for a in params.values())
    per_token_bytes = weight_bytes - params["wpe.weight"].nbytes   # wpe: one row per token

    rng = np.random.default_rng(0)
    p1 = rng.integers(0, config.vocab_size, (1, PROMPT))
    p8 = rng.integers(0, config.vocab_size, (BATCH, PROMPT))
    long = rng.integers(0, config.vocab_size, (1, PREFILL))
    short = rng.integers(0, config.vocab_size, (1, SHORT))
    sides = {"lm": params_lm, "mmap": params}

    def decoders(prompt, n):
        gens = {name: numgpt_steps(p, config, prompt, n) for name, p in sides.items()}
        return {**gens, "hf": hf_steps(model, prompt, n)}

    rows: dict[str, list[float]] = {}
    interleaved_decode(decoders(p1, 17), 17)                   # warm up: pages in the weights
    same_tokens = True
    block = 16
    for run in range(args.runs):
        for b, prompt in ((1, p1), (BATCH, p8)):
            times, same = interleaved_decode(decoders(prompt, NEW), NEW, block)
            same_tokens &= same
            for name, ts in times.items():
                rows.setdefault(f"{name}_b{b}", []).extend(b * block / t for t in ts)
        for name, p in sides.items():
            rows.setdefault(f"{name}_prefill", []).append(numgpt_prefill(p, config, long))
        rows.setdefault("hf_prefill_all", []).append(hf_prefill(model, long))
        rows.setdefault("hf_prefill_last", []).append(hf_prefill(model, long, logits_to_keep=1))
        for _ in range(5):                                     # short: five of each, interleaved
            rows.setdefault("lm_short_panels", []).append(numgpt_prefill(params_lm, config, short, panels=True))
            rows.setdefault("lm_short", []).append(numgpt_prefill(params_lm, config, short))
            rows.setdefault("hf_short_last", []).append(hf_prefill(model, short, logits_to_keep=1))
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in rows.items()), file=sys.stderr)

    med = {k: float(np.median(v)) for k, v in rows.items()}
    head = {rows: lm_head_layouts(params["wte.weight"], rows) for rows in (1, BATCH)}

    def ratio(a: str, b: str) -> float:
        return float(np.median(np.array(rows[a]) / np.array(rows[b])))

    eff = {name: per_token_bytes * med[f"{name}_b1"] / 1e9 for name in ("lm", "mmap", "hf")}
    print(f"""
numgpt as `numgpt.load` loads it (load_checkpoint(for_inference=True): block weights copied into memory
stored [out, in]) / as stored in the file, all memory-mapped (load_checkpoint's default):

| measure | numgpt.load | numgpt mmap | transformers | numgpt / transformers (median of paired ratios), numgpt.load / mmap | goal |
|---|---|---|---|---|---|
| greedy decode, batch 1, tokens/s | {med['lm_b1']:.1f} | {med['mmap_b1']:.1f} | {med['hf_b1']:.1f} | {ratio('lm_b1', 'hf_b1'):.2f}x / {ratio('mmap_b1', 'hf_b1'):.2f}x | >= 1.25x |
| greedy decode, batch 8, total tokens/s | {med['lm_b8']:.1f} | {med['mmap_b8']:.1f} | {med['hf_b8']:.1f} | {ratio('lm_b8', 'hf_b8'):.2f}x / {ratio('mmap_b8', 'hf_b8'):.2f}x | >= 1.25x |
| prefill 512 tokens, ms (HF: logits at all 512 positions, its default) | {med['lm_prefill'] * 1e3:.0f} | {med['mmap_prefill'] * 1e3:.0f} | {med['hf_prefill_all'] * 1e3:.0f} | {ratio('lm_prefill', 'hf_prefill_all'):.2f}x / {ratio('mmap_prefill', 'hf_prefill_all'):.2f}x time | <= 0.8x |
| prefill 512 tokens, ms (HF: logits_to_keep=1, last position only, like numgpt) | | | {med['hf_prefill_last'] * 1e3:.0f} | {ratio('lm_prefill', 'hf_prefill_last'):.2f}x / {ratio('mmap_prefill', 'hf_prefill_last'):.2f}x time | |
| prefill {SHORT} tokens, ms (numgpt.load: through the panels, as a speculative or batched decode prefills / without them; HF: logits_to_keep=1) | {med['lm_short_panels'] * 1e3:.1f} / {med['lm_short'] * 1e3:.1f} | | {med['hf_short_last'] * 1e3:.1f} | {ratio('lm_short_panels', 'hf_short_last'):.2f}x / {ratio('lm_short', 'hf_short_last'):.2f}x time | |
| effective weight bandwidth of batch-1 decode, GB/s ({per_token_bytes / 1e6:.0f} MB of weights per token) | {eff['lm']:.1f} | {eff['mmap']:.1f} | {eff['hf']:.1f} | | |

| measure | value | goal |
|---|---|---|
| load 124M checkpoint as numgpt.load does (for_inference=True), s, median of {LOADS} processes (range; + {load['import_s']:.2f} s to import numgpt) | {load['load_s']:.3f} ({load_times[0]:.3f}-{load_times[-1]:.3f}) | < 0.5 s |
| load 124M checkpoint memory-mapped as stored (the default of load_checkpoint), s | {load['load_mmap_s']:.3f} | |
| peak RSS (VmHWM) after numgpt.load's load + prefill 32 + 1 decode step, MB | {load['vm_hwm_kb'] / 1024:.0f} = {load['vm_hwm_kb'] * 1024 / load['weight_bytes']:.2f}x weights ({load['weight_bytes'] / 1e6:.0f} MB) | < 1.25x |
| lm_head, ms, 1 row: `x @ wte.T` / `(wte @ x.T).T`; {BATCH} rows: the same | {head[1]['x @ wte.T']:.1f} / {head[1]['(wte @ x.T).T']:.1f}; {head[BATCH]['x @ wte.T']:.1f} / {head[BATCH]['(wte @ x.T).T']:.1f} | |
| memory bandwidth, GB/s: np.add.reduce 1 GiB 1 thread / 2 threads / BLAS gemv 2 threads | {bw['sum_1_thread']:.1f} / {bw['sum_2_threads']:.1f} / {bw['gemv_blas']:.1f} | |

runs: {args.runs} ({len(rows['hf_b1'])} paired 16-step slices per decode row); load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; greedy tokens identical across the three: {same_tokens}; ru_maxrss after load / after the decode step: {load['rss_after_load_kb'] / 1024:.0f} / {load['peak_rss_kb'] / 1024:.0f} MB
""")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
