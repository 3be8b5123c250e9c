"""Embedding throughput: numgpt's LanguageModel.embed and POST /v1/embeddings against transformers' forward
on the same inputs, the same checkpoint, in the same run.

A 124M-shaped GPT-2 with random weights (transformers' save_pretrained into a temp folder, or --ckpt DIR),
--inputs random token-id inputs of --min-len..--max-len tokens (uniform, seed 0). Each run measures, in turn:

  numgpt        LanguageModel.embed(inputs, pooling="mean"): length-sorted, left-padded batches of at most
                embeddings.BATCH_TOKENS (512) padded positions
  transformers  GPT2Model on the same batches (the same padding, attention_mask and position_ids from the
                mask), torch.inference_mode(), float32, then the same masked mean
  serve         (with --serve) `numgpt serve` on the same folder, one request holding every input as token
                ids, encoding_format base64, over loopback

and reports inputs/s and tokens/s (real tokens, not padding) as the median of --runs runs, and the median
of the per-run ratios numgpt / transformers. numgpt's BLAS and torch each get --threads threads
(threadpoolctl limits OpenBLAS); the server's BLAS runs on its default (every core).
The vectors are checked equal (max |difference| printed) before timing.

    python bench/bench_embeddings.py --runs 5 --serve          # the real run: 64 inputs of 16-128 tokens
    python bench/bench_embeddings.py --small --inputs 8 --runs 1   # a quick check that the script works
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numgpt  # noqa: F401  before NumPy: it asks OpenBLAS to let idle threads sleep (numgpt/machine.py)
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_inference import make_checkpoint  # noqa: E402


SMALL = {"n_layer": 2, "n_embd": 128, "n_head": 4}   # --small: a quick check of the script


def hf_embed(model, inputs: list[list[int]], plan: list[np.ndarray]) -> np.ndarray:
    """transformers' GPT2Model over numgpt's batches (left-padded, positions from the mask), mean-pooled."""
    import torch
    out = np.empty((len(inputs), model.config.n_embd), np.float32)
    with torch.inference_mode():
        for pick in plan:
            T = max(len(inputs[i]) for i in pick)
            ids = torch.zeros((len(pick), T), dtype=torch.long)
            mask = torch.zeros((len(pick), T), dtype=torch.long)
            for row, i in enumerate(pick):
                ids[row, T - len(inputs[i]):] = torch.tensor(inputs[i])
                mask[row, T - len(inputs[i]):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = model(ids, attention_mask=mask, position_ids=positions).last_hidden_state   # [B, T, C]
            weights = mask[:, :, None].float()
            out[pick] = ((hidden * weights).sum(1) / weights.sum(1)).numpy()
    return out


class Server:
    """`numgpt serve --model FOLDER --port 0` as a subprocess."""

    def __init__(self, folder: Path):
        import httpx
        self.proc = subprocess.Popen([sys.executable, "-m", "numgpt", "serve", "--model", str(folder), "--port", "0"],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
        first = self.proc.stderr.readline()
        if " on " not in first:
            self.proc.kill()
            raise SystemExit(f"numgpt serve did not start: {first}{self.proc.stderr.read()}")
        self.http = httpx.Client(base_url=first.split(" on ")[1].split()[0], timeout=600)

    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        r = self.http.post("/v1/embeddings", json={"input": inputs, "encoding_format": "base64"})
        r.raise_for_status()
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]])

    def stop(self) -> None:
        self.http.close()
        self.proc.send_signal(2)
        self.proc.wait(timeout=30)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=64)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--serve", action="store_true", help="also time POST /v1/embeddings on a numgpt serve")
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (made there if empty)")
    ap.add_argument("--small", action="store_true", help="a 2-layer, 128-wide model: to check the script quickly")
    args = ap.parse_args()

    import torch
    from transformers import GPT2Model

    import numgpt
    from numgpt.embeddings import plan_batches
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        blas = threadpool_limits(args.threads, user_api="blas")
    except ImportError:
        blas = nullcontext()

    tmp = tempfile.TemporaryDirectory()
    folder = args.ckpt or Path(tmp.name)
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        make_checkpoint(folder, **(SMALL if args.small else {}))
    lm = numgpt.load(folder)
    hf = GPT2Model.from_pretrained(folder).eval()
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, lm.config.vocab_size, n).tolist()
              for n in rng.integers(args.min_len, args.max_len + 1, args.inputs)]
    tokens = sum(map(len, inputs))
    plan = plan_batches([len(s) for s in inputs])
    server = Server(folder) if args.serve else None

    sides = {"numgpt": lambda: lm.embed(inputs), "transformers": lambda: hf_embed(hf, inputs, plan)}
    if server:
        sides["serve"] = lambda: server.embed(inputs)
    try:
        with blas:
            want = sides["transformers"]()
            diffs = {name: float(np.abs(f() - want).max()) for name, f in sides.items() if name != "transformers"}
            times = {name: [] for name in sides}
            for _ in range(args.runs):
                for name, f in sides.items():
                    times[name].append(timed(f))
    finally:
        if server:
            server.stop()

    med = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: statistics.median(h / t for t, h in zip(times[name], times["transformers"]))
              for name in sides if name != "transformers"}
    c = lm.config
    print(f"{'small' if args.small else '124M'}-shaped random GPT-2 (n_layer={c.n_layer}, n_embd={c.n_embd}), "
          f"{args.inputs} inputs of {args.min_len}-{args.max_len} tokens ({tokens} tokens, {len(plan)} batches), "
          f"{args.threads} threads, median of {args.runs} runs; max |numgpt - transformers| {diffs}")
    print("| side | s | inputs/s | tokens/s | speed vs transformers (median of per-run ratios) |")
    print("|---|---|---|---|---|")
    for name in sides:
        ratio = f"{ratios[name]:.2f}x" if name in ratios else "1"
        print(f"| {name} | {med[name]:.3f} | {args.inputs / med[name]:.1f} | {tokens / med[name]:.0f} | {ratio} |")
    print(json.dumps({"inputs": args.inputs, "tokens": tokens, "runs": args.runs, "seconds": med, "ratios": ratios,
                      "max_abs_diff": diffs}))


if __name__ == "__main__":
    main()
