"""Batch-1 (and batch-8) greedy decode of numgpt against the machine's streaming limit and the CPU engines a
user would pick for speed, all in one run on the same random GPT-2 checkpoint (issue 23, item 1).

Measured, 2 threads each, float32 unless said, greedy, a 32-token prompt then --new tokens (decode steps
only, after the prefill):
  - the gemv streaming rate: bench_inference.memory_bandwidth()'s "gemv_blas" (a [262144, 1024] float32
    matrix @ a vector, OpenBLAS's 2 threads, GB/s = its bytes / the median of 5 products), sampled before
    every round of slices, reported as median (min-max); beside it the same matrix @ [1024, 8] (what a
    batch-8 step's products can reach);
  - numgpt as `numgpt.load` loads it (formats.hf.load_checkpoint(folder, for_inference=True)): tokens/s
    and its effective weight bandwidth = the bytes of every parameter but wpe (read from the loaded params)
    / seconds per step, as a fraction of the gemv rate (the issue's target: >= 0.9x);
  - the peers, ONNX Runtime fp32 and int8 and CTranslate2 float32, tokens/s and the median ratio to numgpt;
  - each peer's greedy tokens against numgpt's: the length of the common prefix (int8 differs by design).
Decoders alternate in slices of 16 steps (bench_inference's interleaved_decode, with a short --settle pause
after each slice so one engine's idle threads still spinning -- OpenBLAS's, OpenMP's -- do not eat into the
next one's slice), so load from other processes falls on all alike; rates are medians over all slices of
all runs, ratios the median of the per-round ratios against numgpt's slice in the same round. Run it on a
quiet machine (the load average is printed): with more runnable threads than cores, engines that meet at
a barrier after every operation (CTranslate2's OpenMP, ONNX Runtime's pool) lose far more than numgpt.

How each peer was exported (bench/export_peers.py, in a subprocess, cached in --peers while the checkpoint
is unchanged): ONNX Runtime -- a small torch module running the checkpoint's own GPT2LMHeadModel tensors with
the KV cache as explicit tensors (input_ids, position_ids, attention_mask, past keys/values [L, B, H, P, D]
in; last-position logits and present keys/values out; the tied lm_head as a [C, V] constant), exported by
torch.onnx.export (dynamo, opset 18, dynamic batch/length/past) and checked token for token against
transformers' greedy generate; int8 is that file through onnxruntime.quantization.quantize_dynamic(
weight_type=QInt8) (every linear and the lm_head); sessions at intra_op_num_threads=2, ORT_ENABLE_ALL.
CTranslate2 -- its converter needs a tokenizer and the checkpoint has none, so its own GPT2Loader builds
the spec from the loaded model with a vocabulary of token names "t0".."t{V-1}" (ids 1:1), saved unquantized;
Generator(device="cpu", intra_threads=2, compute_type="float32"), timed per slice inside its own
generate_batch by difference (export_peers.Ct2Slices says why).

--profile: instead, the time of each part of numgpt's batch-1 and batch-8 decode step, by timing wrappers
put around the functions numgpt.model's fast path calls (each linear product by its weight, attention,
LayerNorm, GELU, ln_f, lm_head, embed; the Python rest = step time minus all of them); then the batch-1
step with attention, the LayerNorms, GELU or all three removed, and its products back to back alone.

    python bench/bench_decode.py --tiny --runs 1 --new 33             # a check on a tiny model, seconds
    python bench/bench_decode.py --ckpt /work/ckpt124 --runs 5 --out decode.json
    python bench/bench_decode.py --ckpt /work/ckpt124 --engines numgpt,ort --peers /tmp/peers
    python bench/bench_decode.py --ckpt /work/ckpt124 --profile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numgpt  # noqa: F401  before NumPy: it asks OpenBLAS to let idle threads sleep (numgpt/machine.py)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import make_checkpoint, numgpt_steps  # noqa: E402

PROMPT, BATCH, BLOCK, THREADS = 32, 8, 16, 2
ENGINES = ("numgpt", "ort", "ort-int8", "ct2")
LABELS = {"numgpt": "numgpt (numgpt.load)", "ort": "ONNX Runtime fp32", "ort-int8": "ONNX Runtime int8 (dynamic)",
          "ct2": "CTranslate2 float32"}
STREAM_ROWS, STREAM_COLS, STREAM_REPS = 1 << 18, 1024, 5   # bench_inference.memory_bandwidth's 1 GiB matrix


def make_tiny_checkpoint(folder: Path) -> None:
    """A small random GPT-2 (2 layers, 64 channels, 1000 tokens) saved by transformers, for a quick check."""
    make_checkpoint(folder, n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=256, bos_token_id=999,
                    eos_token_id=999, initializer_range=0.1)


# ---- the streaming limit ------------------------------------------------------------------------------

class Streaming:
    """bench_inference.memory_bandwidth()'s "gemv_blas", sampled again and again through the run: GB/s of
    a [262144, 1024] float32 matrix @ a vector (and @ [1024, 8], the batch-8 form) by OpenBLAS."""

    def __init__(self) -> None:
        self.m = np.ones((STREAM_ROWS, STREAM_COLS), np.float32)        # 1 GiB
        self.v, self.v8 = np.ones(STREAM_COLS, np.float32), np.ones((STREAM_COLS, BATCH), np.float32)
        self.gemv: list[float] = []
        self.gemm8: list[float] = []

    def _rate(self, f: Callable[[], np.ndarray]) -> float:
        ts = []
        for _ in range(STREAM_REPS):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return self.m.nbytes / float(np.median(ts)) / 1e9

    def sample(self) -> None:
        self.gemv.append(self._rate(lambda: self.m @ self.v))
        self.gemm8.append(self._rate(lambda: self.m @ self.v8))


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": float(np.median(xs)), "min": float(min(xs)), "max": float(max(xs)), "n": len(xs)}


# ---- the peers: made in a subprocess (torch stays out of the measuring process) -----------------------

def prepare_peers(ckpt: Path, peers: Path, engines: list[str]) -> dict:
    """Export/convert what `engines` need into `peers` (reused while the checkpoint is unchanged) and check
    the ONNX graph against transformers' greedy generate; returns {engine: path, "onnx_check": ...}."""
    import shutil
    import export_peers as ep
    weights = ckpt / "model.safetensors"
    source = {"ckpt": str(ckpt.resolve()), "size": weights.stat().st_size, "mtime": weights.stat().st_mtime}
    stamp = peers / "source.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != source:
        for sub in ("onnx", "ct2"):                                  # made for another checkpoint: redo
            shutil.rmtree(peers / sub, ignore_errors=True)
    peers.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(source))
    out: dict = {}
    if "ort" in engines or "ort-int8" in engines:
        t = time.perf_counter()
        out["ort"] = str(ep.export_onnx(ckpt, peers / "onnx"))
        ours, ref = ep.check_onnx(ckpt, ep.ort_session(Path(out["ort"]), THREADS))
        out["onnx_check"] = {"onnx": ours, "transformers_generate": ref, "equal": ours == ref}
        if "ort-int8" in engines:
            out["ort-int8"] = str(ep.quantize_onnx(Path(out["ort"])))
        out["onnx_s"] = time.perf_counter() - t
    if "ct2" in engines:
        t = time.perf_counter()
        out["ct2"] = str(ep.convert_ct2(ckpt, peers / "ct2"))
        out["ct2_s"] = time.perf_counter() - t
    return out


def engine_steps(engines: list[str], peers: dict, params, config) -> tuple[dict, dict]:
    """({engine: steps(prompt, n)}, {engine: slices(prompt, n)}), all loaded now: a steps is a greedy
    step generator (prefill on the first next(), then [B, 1] tokens per step); a slices (CTranslate2's,
    export_peers.Ct2Slices) returns the seconds of a slice of steps when called, and has its `tokens`."""
    import export_peers as ep
    made: dict[str, Callable[[np.ndarray, int], Iterator]] = {}
    slices: dict[str, Callable] = {}
    for name in engines:
        if name == "numgpt":
            made[name] = lambda prompt, n: numgpt_steps(params, config, prompt, n)
        elif name in ("ort", "ort-int8"):
            session = ep.ort_session(Path(peers[name]), THREADS)
            made[name] = lambda prompt, n, s=session: ep.ort_steps(s, config, prompt, n)
        elif name == "ct2":
            slices[name] = partial(ep.Ct2Slices, ep.ct2_generator(Path(peers[name]), THREADS))
    return made, slices


# ---- the interleaved measurement ----------------------------------------------------------------------

def interleaved(gens: dict[str, Iterator], slices: dict[str, Callable], n: int, block: int,
                stream: Streaming | None, settle: float) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """bench_inference.interleaved_decode, plus a streaming sample before each round and a settle pause
    after each slice: each engine's seconds per `block`-step slice, and its tokens [B, 1 + slices*block].
    `slices`: engines timed by their own call per slice (CTranslate2), in the same rounds."""
    tokens = {name: [next(gen)] for name, gen in gens.items()}       # prefill + first token, not timed
    times: dict[str, list[float]] = {name: [] for name in [*gens, *slices]}
    rounds = (n - 1) // block
    try:
        for _ in range(rounds):
            if stream is not None:
                stream.sample()
                time.sleep(settle)
            for name, gen in gens.items():
                t = time.perf_counter()
                tokens[name].extend(next(gen) for _ in range(block))
                times[name].append(time.perf_counter() - t)
                time.sleep(settle)
            for name, timed_slice in slices.items():
                times[name].append(timed_slice(block))
                time.sleep(settle)
    finally:
        for gen in gens.values():
            gen.close()
    made = {name: np.concatenate(ts, axis=1) for name, ts in tokens.items()}
    return times, {**made, **{name: s.tokens[:, :1 + rounds * block] for name, s in slices.items()}}


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Tokens [B, N] equal from the start, for the worst row."""
    differ = a != b
    return int(min(np.argmax(row) if row.any() else row.size for row in differ))


def measure(steps: dict, slices: dict, prompts: dict[int, np.ndarray], runs: int, new: int, stream: Streaming,
            settle: float) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, int], int]:
    """tokens/s per slice ("name_bB"), paired ratios to numgpt per round, tokens in common with numgpt."""
    rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    match: dict[str, int] = {}
    block = min(BLOCK, new - 1)
    rounds = (new - 1) // block
    for run in range(runs):
        for b, prompt in prompts.items():
            times, tokens = interleaved({name: f(prompt, new) for name, f in steps.items()},
                                        {name: f(prompt, new) for name, f in slices.items()}, new, block, stream, settle)
            for name, ts in times.items():
                rates.setdefault(f"{name}_b{b}", []).extend(b * block / t for t in ts)
                if "numgpt" in times:
                    ratios.setdefault(f"{name}_b{b}", []).extend(np.array(times["numgpt"]) / np.array(ts))
                if "numgpt" in tokens and name in tokens and run == 0:
                    match[f"{name}_b{b}"] = common_prefix(tokens[name], tokens["numgpt"])
        print(f"run {run + 1}/{runs}: gemv {stream.gemv[-1]:.1f} GB/s; " + ", ".join(
            f"{k} {statistics.median(v[-rounds:]):.1f}" for k, v in rates.items()) + " tokens/s", file=sys.stderr)
    return rates, ratios, match, 1 + rounds * block


# ---- --profile ----------------------------------------------------------------------------------------

REST = "rest: Python, residual adds, KV-cache writes, buffers, checks (step - the above)"
PROFILED = ("embed", "layer_norm_into", "product_into", "attend_rows_into", "causal_attention_into", "gelu_",
            "split_heads", "layer_norm", "lm_head",
            "linear_row_into", "layer_norm_row_", "attend")      # batch 1's step (model.decode_row) calls these


def profile(params, config, b: int, steps: int = 40, past: int = PROMPT + 64) -> tuple[dict[str, float], float, float]:
    """ms per decode step of each part of numgpt's fast path at `past` cached positions, timed by wrapping
    the functions numgpt.model calls by name; the products are split by their weight's shape. Returns
    (ms per part, ms per step wrapped, ms per step unwrapped)."""
    import numgpt.model as model
    from numgpt import KVCache, forward
    C = config.n_embd
    linear_names = {(C, 3 * C): "linear c_attn", (C, C): "linear attn.c_proj", (C, 4 * C): "linear c_fc",
                    (4 * C, C): "linear mlp.c_proj"}
    acc: dict[str, float] = {}

    def timed(name: str, f: Callable) -> Callable:
        def wrapper(*args, **kw):
            if name == "linear_row_into":
                key = linear_names.get(tuple(args[1].shape), "linear other")
            elif name == "product_into":                             # block_'s products (panels or not)
                key = linear_names.get(tuple(args[1].weight.shape), "linear other")
            elif name == "layer_norm":
                key = "ln_f (layer_norm)"
            else:
                key = name
            t = time.perf_counter()
            out = f(*args, **kw)
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t
            return out
        return wrapper

    rng = np.random.default_rng(0)
    cache = KVCache.allocate(config, b, past + steps + 1)
    forward(params, config, rng.integers(0, config.vocab_size, (b, past)), cache=cache)
    nxt = rng.integers(0, config.vocab_size, (b, 1))

    def run() -> float:
        cache.length = past
        t = time.perf_counter()
        for _ in range(steps):
            forward(params, config, nxt, cache=cache, panels=True)
        return (time.perf_counter() - t) / steps * 1e3

    run()                                                            # warm
    originals = {name: getattr(model, name) for name in PROFILED if hasattr(model, name)}
    missing = [name for name in PROFILED if name not in originals]
    if missing:
        print(f"profile: numgpt.model no longer calls {', '.join(missing)} (not timed)", file=sys.stderr)
    plain, wrapped, runs = [], [], []
    for _ in range(5):                                               # plain and timed runs alternate
        plain.append(run())
        try:
            for name, f in originals.items():
                setattr(model, name, timed(name, f))
            acc.clear()
            wrapped.append(run())
            runs.append({k: v / steps * 1e3 for k, v in acc.items()})
        finally:
            for name, f in originals.items():
                setattr(model, name, f)
    parts = {k: float(np.median([r.get(k, 0.0) for r in runs])) for k in runs[0]}   # each part's median run
    step = float(np.median(plain))
    parts[REST] = step - sum(parts.values())                         # of the plain step: the timers' own cost
    return parts, float(np.median(wrapped)), step                    # (a few us per call) stays out of it


def part_bytes(config) -> dict[str, int]:
    """Weight bytes each profiled part reads per step (float32)."""
    C, L = config.n_embd, config.n_layer
    return {"linear c_attn": L * C * 3 * C * 4, "linear attn.c_proj": L * C * C * 4, "linear c_fc": L * C * 4 * C * 4,
            "linear mlp.c_proj": L * 4 * C * C * 4, "lm_head": config.vocab_size * C * 4}


ABLATED = {"attention": ("attend_rows_into", "attend"), "LayerNorm": ("layer_norm_into", "layer_norm_row_"),
           "GELU": ("gelu_",), "all three": ("attend_rows_into", "attend", "layer_norm_into", "layer_norm_row_", "gelu_")}
NO_OPS = {"attend_rows_into": lambda q, k, v, key_valid, out: out, "attend": lambda q, k, v, out=None: out,
          "layer_norm_into": lambda x, w, b, eps, out: out, "layer_norm_row_": lambda x, w, b, eps, out: out,
          "gelu_": lambda x, scratch: x}


def ablation(params, config, rounds: int = 25, past: int = PROMPT + 64) -> dict[str, float]:
    """Median ms of a batch-1 decode step with parts of it removed (each replaced by a no-op: the values
    are wrong, the time is what is left), and of the same products called back to back with nothing
    between them; the variants alternate within each round."""
    import numgpt.model as model
    from numgpt import KVCache, forward
    from numgpt.params import layers
    cache = KVCache.allocate(config, 1, past + 2)
    forward(params, config, np.arange(past)[None] % config.vocab_size, cache=cache)
    blocks = list(layers(params, config))
    x, h = np.ones(config.n_embd, np.float32), np.ones(4 * config.n_embd, np.float32)   # a batch-1 step's vectors
    outs = {n: np.empty(n, np.float32) for n in (config.n_embd, 3 * config.n_embd, 4 * config.n_embd)}

    def products() -> None:                                          # as model.decode_row_ makes them
        for L in blocks:
            for m, inp in ((L.attn.c_attn, x), (L.attn.c_proj, x), (L.mlp.c_fc, x), (L.mlp.c_proj, h)):
                model.linear_row_into(inp, m.weight, m.bias, outs[m.weight.shape[1]])
        model.lm_head(params, x[None])

    originals = {name: getattr(model, name) for name in NO_OPS}
    times: dict[str, list[float]] = {k: [] for k in ["the full step", *(f"without {k}" for k in ABLATED),
                                                      "the products back to back"]}
    with np.errstate(all="ignore"):                                  # a no-op leaves garbage in the stream
        for _ in range(rounds):
            for label, off in [("the full step", ())] + [(f"without {k}", v) for k, v in ABLATED.items()]:
                try:
                    for name in off:
                        setattr(model, name, NO_OPS[name])
                    cache.length = past
                    t = time.perf_counter()
                    forward(params, config, np.array([[5]]), cache=cache)
                    times[label].append(time.perf_counter() - t)
                finally:
                    for name, f in originals.items():
                        setattr(model, name, f)
            t = time.perf_counter()
            products()
            times["the products back to back"].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def print_profile(params, config, weight_bytes: int) -> dict:
    stream = Streaming()
    stream.sample()
    gemv = stream.gemv[-1]
    del stream
    sizes = part_bytes(config)
    out: dict = {"gemv_GBps": gemv}
    print(f"gemv streaming rate now: {gemv:.1f} GB/s (bench_inference.memory_bandwidth's gemv_blas)")
    for b in (1, BATCH):
        parts, wrapped, plain = profile(params, config, b)
        out[f"b{b}"] = {"parts_ms": parts, "step_ms_wrapped": wrapped, "step_ms": plain}
        print(f"\nnumgpt decode step, batch {b}, {PROMPT + 64} cached positions: {plain:.2f} ms "
              f"({b * 1e3 / plain:.1f} tokens/s, {weight_bytes / plain / 1e6:.1f} GB/s of weights); "
              f"with the timers {wrapped:.2f} ms\n")
        print("| part | ms per step | share | weights read, GB/s (x gemv) |\n|---|---|---|---|")
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
            rate = f"{sizes[k] / v / 1e6:.1f} ({sizes[k] / v / 1e6 / gemv:.2f}x)" if k in sizes and v > 0 else ""
            print(f"| {k} | {v:.3f} | {v / plain * 100:.1f}% | {rate} |")
    out["ablation_ms"] = ablation(params, config)
    print(f"\nbatch 1, parts removed (median ms of {PROMPT + 64}-position steps, alternating):")
    for k, v in out["ablation_ms"].items():
        print(f"  {k:28s} {v:6.2f} ms  ({weight_bytes / v / 1e6:.1f} GB/s of weights)")
    return out


# ---- main ---------------------------------------------------------------------------------------------

def table(rates, ratios, match, total, stream: Streaming, weight_bytes: int, engines: list[str]) -> str:
    med = {k: float(np.median(v)) for k, v in rates.items()}
    gemv, gemm8 = summary(stream.gemv), summary(stream.gemm8)
    lines = ["| engine | batch 1, tokens/s | vs numgpt | batch 8, total tokens/s | vs numgpt | greedy tokens equal to numgpt's (b1; b8 worst row) |",
             "|---|---|---|---|---|---|"]
    for name in engines:
        cells = []
        for b in (1, BATCH):
            k = f"{name}_b{b}"
            cells += [f"{med[k]:.1f}", "" if name == "numgpt" or k not in ratios else f"{np.median(ratios[k]):.2f}x"]
        same = "" if name == "numgpt" else f"{match.get(f'{name}_b1', 0)}/{total}; {match.get(f'{name}_b{BATCH}', 0)}/{total}"
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {same} |")
    lines.append("")
    lines.append(f"streaming limit (OpenBLAS, 2 threads, 1 GiB float32 matrix): gemv {gemv['median']:.1f} GB/s "
                 f"(min {gemv['min']:.1f}, max {gemv['max']:.1f}, {gemv['n']} samples); @ [1024, {BATCH}] "
                 f"{gemm8['median']:.1f} GB/s ({gemm8['min']:.1f}-{gemm8['max']:.1f})")
    if "numgpt_b1" in med:
        eff1 = weight_bytes * med["numgpt_b1"] / 1e9
        eff8 = weight_bytes * med[f"numgpt_b{BATCH}"] / BATCH / 1e9
        lines.append(f"numgpt effective weight bandwidth ({weight_bytes / 1e6:.0f} MB per step, all params but wpe): "
                     f"batch 1 {eff1:.1f} GB/s = **{eff1 / gemv['median']:.2f}x gemv** (target >= 0.9x); "
                     f"batch 8 {eff8:.1f} GB/s = {eff8 / gemm8['median']:.2f}x the [1024, {BATCH}] product")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="measured runs (each: batch 1, then batch 8)")
    ap.add_argument("--new", type=int, default=129, help="new tokens per run (slices of 16 after the first)")
    ap.add_argument("--ckpt", type=Path, help="checkpoint folder (a random 124M GPT-2 is made there if empty)")
    ap.add_argument("--tiny", action="store_true", help="a small random GPT-2 instead of 124M (a quick check)")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    ap.add_argument("--peers", type=Path, help="folder for the exported peers, reused while the checkpoint is "
                    "unchanged (default: a temporary folder)")
    ap.add_argument("--settle", type=float, default=0.2, help="seconds of pause after each slice")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--profile", action="store_true", help="time the parts of numgpt's decode step and stop")
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        ap.error(f"--engines: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(ENGINES)}")
    if args.new < 2:
        ap.error("--new must be at least 2 (the first token comes with the prefill and is not timed)")
    if args.prepare:                                                 # the subprocess that makes the peers
        print(json.dumps(prepare_peers(args.ckpt, args.peers, engines)))
        return

    tmp = tempfile.TemporaryDirectory()
    folder = args.ckpt or Path(tmp.name) / "ckpt"
    if not (folder / "model.safetensors").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        maker = "make_tiny_checkpoint" if args.tiny else "make_checkpoint"
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                        f"from bench_decode import {maker}; from pathlib import Path; {maker}(Path({str(folder)!r}))"],
                       check=True)
    from threadpoolctl import threadpool_limits
    threadpool_limits(THREADS, user_api="blas")
    from numgpt.formats.hf import load_checkpoint
    config, params = load_checkpoint(folder, for_inference=True)     # what numgpt.load does
    weight_bytes = sum(a.nbytes for k, a in params.items() if k != "wpe.weight")   # wpe: one row per token

    if args.profile:
        result = print_profile(params, config, weight_bytes)
        if args.out:
            args.out.write_text(json.dumps({"profile": result}, indent=1))
        return

    peers_dir = args.peers or Path(tmp.name) / "peers"
    peers: dict = {}
    if any(e != "numgpt" for e in engines):
        t = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--prepare", "--ckpt", str(folder), "--peers", str(peers_dir),
                               "--engines", args.engines], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"bench_decode: making the peers failed:\n{done.stderr[-3000:]}")
        peers = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"peers ready in {time.perf_counter() - t:.0f} s in {peers_dir}", file=sys.stderr)
        if "onnx_check" in peers and not peers["onnx_check"]["equal"]:
            print(f"ONNX export differs from transformers' generate: {peers['onnx_check']}", file=sys.stderr)

    load_before = os.getloadavg()[0]
    steps, slices = engine_steps(engines, peers, params, config)
    stream = Streaming()
    rng = np.random.default_rng(0)
    prompts = {1: rng.integers(0, config.vocab_size, (1, PROMPT)), BATCH: rng.integers(0, config.vocab_size, (BATCH, PROMPT))}
    warm = min(BLOCK, args.new - 1)
    interleaved({name: f(prompts[1], warm + 1) for name, f in steps.items()},                      # warm up
                {name: f(prompts[1], warm + 1) for name, f in slices.items()}, warm + 1, warm, None, 0.0)
    rates, ratios, match, total = measure(steps, slices, prompts, args.runs, args.new, stream, args.settle)
    text = table(rates, ratios, match, total, stream, weight_bytes, engines)
    onnx_check = peers.get("onnx_check")
    foot = (f"\n{config.n_layer} layers, {config.n_embd} channels, vocabulary {config.vocab_size}; prompt {PROMPT}, "
            f"{total} new tokens per run, {args.runs} runs, slices of {min(BLOCK, args.new - 1)} steps ({len(rates[f'{engines[0]}_b1'])} "
            f"per engine and batch), settle {args.settle} s; load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after")
    if onnx_check:
        foot += f"; ONNX graph's greedy tokens equal transformers' generate: {onnx_check['equal']}"
    print("\n" + text + foot)
    if args.out:
        args.out.write_text(json.dumps({
            "config": {"n_layer": config.n_layer, "n_embd": config.n_embd, "vocab_size": config.vocab_size},
            "args": {k: str(v) for k, v in vars(args).items()}, "weight_bytes_per_step": weight_bytes,
            "gemv_GBps": {**summary(stream.gemv), "samples": stream.gemv},
            "gemm8_GBps": {**summary(stream.gemm8), "samples": stream.gemm8},
            "tokens_per_s": {k: {"median": float(np.median(v)), "slices": v} for k, v in rates.items()},
            "ratio_vs_numgpt": {k: float(np.median(v)) for k, v in ratios.items()},
            "tokens_equal_to_numgpt": {"of": total, **match}, "peers": peers,
            "load_average": [load_before, os.getloadavg()[0]], "table": text}, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
