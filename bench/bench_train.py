"""Training speed and loss curves of numgpt against PyTorch (torch 2.x, float32, 2 threads), same run.

Workload A (nanoGPT's documented CPU run, character-level tinyshakespeare): n_layer 4, n_head 4, n_embd 128,
block 64, batch 12, lr 1e-3 with 100 warmup steps and cosine decay to 1e-4 over the run, beta2 0.99,
weight decay 0.1 (matrices and embeddings, as nanoGPT), dropout 0, grad clip 1.0; vocabulary = the 65
characters of the text; first 90% of the characters train, last 10% validate.
Both sides start from the same weights (numgpt's init, copied into transformers' GPT2LMHeadModel with tied
embeddings) and see the same batches (one numpy rng drawing the same windows in both workers), so their
loss curves must agree; validation loss every 250 steps on the same fixed batches.

Workload B: one training step (forward, backward, clip, AdamW) of a 124M-parameter GPT-2 at batch 4 x 256
tokens: time per step and peak RSS, each framework in its own subprocess.

Each measurement runs in a fresh subprocess (so thread pools and allocators do not interfere); the
timing rounds alternate numgpt and torch so that background load hits both alike, and the ratio of
each round is reported with the median over rounds.

    python bench/bench_train.py --iters 200 --rounds 3      # quick timing (a few minutes)
    python bench/bench_train.py --iters 2000 --rounds 1     # the full run with loss curves (long)
    python bench/bench_train.py --step124m --rounds 3       # 124M step time and memory
numgpt runs its step as `numgpt train` does: each batch's rows split over one thread per core
(parallel.DataParallel), BLAS held to one thread for the whole run (threads.single_threaded_blas, entered
once as `train` does), freed memory kept for reuse (memory.keep_freed_memory, as `train` sets it).
Add --json FILE to keep the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from numgpt.training.memory import keep_freed_memory  # noqa: E402
from numgpt.training.objective import next_token_loss, next_token_value  # noqa: E402
from numgpt.training.parallel import DataParallel  # noqa: E402
from numgpt.threads import single_threaded_blas, thread_count  # noqa: E402
from numgpt.config import GPTConfig  # noqa: E402
from numgpt.training.data import get_batch  # noqa: E402
from numgpt.training.optim import AdamW, AdamWConfig, decays, init_state, learning_rate  # noqa: E402
from numgpt.params import init_params  # noqa: E402

DATA = Path("/work/shared/data/tinyshakespeare.txt")
SEED = 1337
BATCH, BLOCK = 12, 64
EVAL_INTERVAL, EVAL_ITERS, FINAL_EVAL_ITERS = 250, 20, 100


# ---------------------------------------------------------------- shared setup

def char_data(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    cut = int(len(text) * 0.9)
    return ids[:cut], ids[cut:], len(chars)


def small_setup(iters: int):
    train, val, vocab = char_data(DATA)
    config = GPTConfig(vocab_size=vocab, n_positions=BLOCK, n_embd=128, n_layer=4, n_head=4,
                       bos_token_id=0, eos_token_id=0)
    hp = AdamWConfig(lr=1e-3, min_lr=1e-4, warmup_iters=100, decay_iters=iters, beta1=0.9, beta2=0.99,
                     weight_decay=0.1, decay_embeddings=True, grad_clip=1.0)
    params = init_params(config, np.random.default_rng(SEED))
    return train, val, config, hp, params


def eval_batches(val: np.ndarray, n: int):
    rng = np.random.default_rng([SEED, 1])
    return [get_batch(val, BATCH, BLOCK, rng) for _ in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux reports KiB


# ---------------------------------------------------------------- workers (one framework per process)

def numgpt_worker(iters: int, eval_every: int) -> dict:
    with keep_freed_memory(), single_threaded_blas():      # for the run, as numgpt.training.train does
        return numgpt_small_run(iters, eval_every)


def numgpt_small_run(iters: int, eval_every: int) -> dict:
    train, val, config, hp, params = small_setup(iters)
    opt, rng = AdamW(params, init_state(params), hp), np.random.default_rng(SEED)   # train()'s optimizer
    dp = DataParallel(thread_count())                # as `numgpt train` runs: rows over the cores
    evals = eval_batches(val, EVAL_ITERS)
    times, losses, curve = [], [], []
    for it in range(iters + 1):
        if eval_every and (it % eval_every == 0 or it == iters):
            batches = evals if it < iters else eval_batches(val, FINAL_EVAL_ITERS)
            losses_now = [dp.evaluate(next_token_value, params, config, (x, y)) for x, y in batches]
            curve.append((it, float(np.mean(losses_now))))
        if it == iters:
            break
        x, y = get_batch(train, BATCH, BLOCK, rng)
        t0 = time.perf_counter()
        opt.zero_grad()                              # the calls of loop.train_step
        loss = dp.forward_backward(next_token_loss, params, config, (x, y), opt.grads)
        opt.reduce_gradients()
        opt.clip(hp.grad_clip)
        opt.step(params, learning_rate(hp, it))
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    return {"times": times, "losses": losses, "val": curve, "peak_rss_mb": peak_rss_mb()}


def torch_model(config: GPTConfig, params):
    import torch
    import transformers
    hf = transformers.GPT2Config(vocab_size=config.vocab_size, n_positions=config.n_positions,
                                 n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                                 attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(hf)
    if params is not None:
        sd = model.state_dict()
        with torch.no_grad():
            for name, p in params.items():
                sd["transformer." + name].copy_(torch.from_numpy(p))
    return model


def torch_optimizer(model, hp: AdamWConfig):
    import torch
    named = [(n.removeprefix("transformer."), p) for n, p in model.named_parameters()]
    return torch.optim.AdamW(
        [{"params": [p for n, p in named if decays(n, tuple(p.shape), hp)], "weight_decay": hp.weight_decay},
         {"params": [p for n, p in named if not decays(n, tuple(p.shape), hp)], "weight_decay": 0.0}],
        lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps)


def torch_step(model, opt, x, y, lr: float, clip: float) -> float:
    import torch
    logits = model(x).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return loss.item()


def torch_worker(iters: int, eval_every: int) -> dict:
    import torch
    torch.set_num_threads(2)
    train, val, config, hp, params = small_setup(iters)
    model = torch_model(config, params).train()
    opt = torch_optimizer(model, hp)
    rng = np.random.default_rng(SEED)
    evals = eval_batches(val, EVAL_ITERS)

    def val_loss(batches):
        model.eval()
        with torch.no_grad():
            out = [torch.nn.functional.cross_entropy(model(torch.from_numpy(x)).logits.reshape(-1, config.vocab_size),
                                                     torch.from_numpy(y).reshape(-1)).item() for x, y in batches]
        model.train()
        return float(np.mean(out))

    times, losses, curve = [], [], []
    for it in range(iters + 1):
        if eval_every and (it % eval_every == 0 or it == iters):
            curve.append((it, val_loss(evals if it < iters else eval_batches(val, FINAL_EVAL_ITERS))))
        if it == iters:
            break
        x, y = (torch.from_numpy(a) for a in get_batch(train, BATCH, BLOCK, rng))
        t0 = time.perf_counter()
        losses.append(torch_step(model, opt, x, y, learning_rate(hp, it), hp.grad_clip))
        times.append(time.perf_counter() - t0)
    return {"times": times, "losses": losses, "val": curve, "peak_rss_mb": peak_rss_mb(),
            "torch": torch.__version__}


GPT2_124M = GPTConfig(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
B124, T124, STEPS124 = 4, 256, 3


def numgpt_124m_worker() -> dict:
    with keep_freed_memory(), single_threaded_blas():      # for the run, as numgpt.training.train does
        return numgpt_124m_run()


def numgpt_124m_run() -> dict:
    config, hp = GPT2_124M, AdamWConfig()
    params = init_params(config, np.random.default_rng(0))
    opt, rng = AdamW(params, init_state(params), hp), np.random.default_rng(0)
    dp = DataParallel(thread_count())
    times = []
    for _ in range(STEPS124 + 1):                                          # the first step warms up
        ids = rng.integers(0, config.vocab_size, (B124, T124 + 1))
        t0 = time.perf_counter()
        opt.zero_grad()                              # the calls of loop.train_step
        dp.forward_backward(next_token_loss, params, config, (ids[:, :-1], ids[:, 1:]), opt.grads)
        opt.reduce_gradients()
        opt.clip(1.0)
        opt.step(params, 1e-4)
        times.append(time.perf_counter() - t0)
    return {"times": times[1:], "peak_rss_mb": peak_rss_mb()}


def torch_124m_worker() -> dict:
    import torch
    torch.set_num_threads(2)
    config, hp = GPT2_124M, AdamWConfig()
    model = torch_model(config, None).train()
    opt = torch_optimizer(model, hp)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(STEPS124 + 1):
        ids = torch.from_numpy(rng.integers(0, config.vocab_size, (B124, T124 + 1)))
        t0 = time.perf_counter()
        torch_step(model, opt, ids[:, :-1], ids[:, 1:], 1e-4, 1.0)
        times.append(time.perf_counter() - t0)
    return {"times": times[1:], "peak_rss_mb": peak_rss_mb()}


WORKERS = {"numgpt": numgpt_worker, "torch": torch_worker,
           "numgpt124m": numgpt_124m_worker, "torch124m": torch_124m_worker}


# ---------------------------------------------------------------- driver

def run_worker(name: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, *map(str, args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_small(iters: int, rounds: int) -> dict:
    results = []
    for r in range(rounds):
        eval_every = EVAL_INTERVAL if r == 0 else 0                      # curves once; later rounds time only
        ours = run_worker("numgpt", iters, eval_every)
        ref = run_worker("torch", iters, eval_every)
        skip = min(10, iters // 10)                                       # warm-up steps are not timed
        t_ours, t_ref = statistics.median(ours["times"][skip:]), statistics.median(ref["times"][skip:])
        results.append({"numgpt_ms": 1e3 * t_ours, "torch_ms": 1e3 * t_ref, "ratio": t_ours / t_ref})
        print(f"round {r + 1}: numgpt {1e3 * t_ours:.1f} ms/iter, torch {1e3 * t_ref:.1f} ms/iter, "
              f"ratio {t_ours / t_ref:.3f}", file=sys.stderr)
        if r == 0:
            curves = {"numgpt": ours["val"], "torch": ref["val"],
                      "train_loss_numgpt": ours["losses"][::max(1, iters // 20)],
                      "train_loss_torch": ref["losses"][::max(1, iters // 20)],
                      "max_abs_train_loss_diff": float(np.max(np.abs(np.subtract(ours["losses"], ref["losses"])))),
                      "torch_version": ref["torch"]}
    return {"iters": iters, "rounds": results, "median_ratio": statistics.median(r["ratio"] for r in results),
            **curves}


def bench_124m(rounds: int) -> dict:
    results = []
    for r in range(rounds):
        ours, ref = run_worker("numgpt124m"), run_worker("torch124m")
        t_ours, t_ref = statistics.median(ours["times"]), statistics.median(ref["times"])
        row = {"numgpt_s": t_ours, "torch_s": t_ref, "ratio": t_ours / t_ref,
               "numgpt_peak_rss_mb": ours["peak_rss_mb"], "torch_peak_rss_mb": ref["peak_rss_mb"],
               "rss_ratio": ours["peak_rss_mb"] / ref["peak_rss_mb"]}
        results.append(row)
        print(f"round {r + 1}: numgpt {t_ours:.2f} s/step {ours['peak_rss_mb']:.0f} MB, torch {t_ref:.2f} s/step "
              f"{ref['peak_rss_mb']:.0f} MB, time ratio {row['ratio']:.3f}, memory ratio {row['rss_ratio']:.3f}",
              file=sys.stderr)
    return {"rounds": results, "median_ratio": statistics.median(r["ratio"] for r in results),
            "median_rss_ratio": statistics.median(r["rss_ratio"] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--step124m", action="store_true", help="the 124M one-step benchmark instead")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("worker_args", nargs="*", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](*args.worker_args)))
        return
    result = bench_124m(args.rounds) if args.step124m else bench_small(args.iters, args.rounds)
    result["machine"] = {"cpus": os.cpu_count(), "numpy": np.__version__, "load_avg_at_end": os.getloadavg(),
                         "numgpt_threads": thread_count()}
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
