"""numgpt serve benchmark: one client and 8 concurrent clients against numgpt's in-process decode, and
against `transformers serve` on the same checkpoint, all in the same run.

    python bench/bench_serve.py                 print the table
    python bench/bench_serve.py --write         and replace the "## numgpt serve" section of BENCHMARKS.md

A 124M-shaped GPT-2 with random weights (made once with transformers' save_pretrained into a temp
folder), prompts of 32 token ids, 128 new tokens, temperature 1 (end-of-text banned with logit_bias, so
every request makes exactly 128 tokens on every side), streamed over loopback with httpx. Per case the
median of --runs runs, the sides alternating:

  in-process   LanguageModel.generate (the numgpt decode loop, one sequence)
  1 client     one streamed request: tokens/s over the whole request, and time to first token
  1 seeded     the same with a seed (the batch-invariant path: a full-width step for one row)
  8 clients    8 streamed requests at once (continuous batching): aggregate tokens/s
  8 seeded     the same, every request seeded
  transformers `transformers serve` on the same folder, one client and 8 clients (if it starts here;
               it needs `pip install accelerate`, takes prompts only as text -- the same 32 ids decoded --
               and ignores logit_bias, so it may stop early at end-of-text: tokens/s counts what came)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import numgpt  # noqa: E402,F401  before NumPy: it asks OpenBLAS to let idle threads sleep (numgpt/machine.py)
BENCHMARKS = REPO / "BENCHMARKS.md"
SECTION = "## numgpt serve"
PROMPT_TOKENS, NEW_TOKENS, EOT = 32, 128, 50256


def make_checkpoint(folder: Path) -> Path:
    """A random 124M GPT-2 with GPT-2's tokenizer files (transformers serve needs them)."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    import transformers
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(folder)
    assets = REPO / "numgpt" / "assets" / "gpt2"
    shutil.copy(assets / "encoder.json", folder / "vocab.json")
    shutil.copy(assets / "vocab.bpe", folder / "merges.txt")
    return folder


def prompts(n: int) -> list[list[int]]:
    import numpy as np
    rng = np.random.default_rng(1)
    return [rng.integers(0, 50000, PROMPT_TOKENS).tolist() for _ in range(n)]


def start(cmd: list[str], url_from_stderr: bool, port: int | None = None, env=None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    if url_from_stderr:
        line = proc.stderr.readline()
        url = line.split(" on ")[1].split()[0]
    else:
        url = f"http://127.0.0.1:{port}"
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    import httpx
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
        time.sleep(0.5)
    raise RuntimeError("server did not come up")


def stream_one(url: str, model: str, prompt, seed: int | None) -> tuple[float, float, int]:
    """(seconds to the first token, seconds in all, tokens) of one streamed completion."""
    import httpx
    body = {"model": model, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 1.0, "stream": True,
            "logit_bias": {str(EOT): -100}}
    if seed is not None:
        body["seed"] = seed
    t0 = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("finish_reason") is None:
                tokens += 1                     # one chunk per token; the finishing chunk has none
                if first is None:
                    first = time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0, tokens


def clients(url: str, model: str, ps, seeded: bool) -> tuple[float, float]:
    """(aggregate tokens/s, median time to first token) of len(ps) concurrent streamed requests."""
    out = [None] * len(ps)
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, stream_one(url, model, ps[i], i if seeded else None)))
               for i in range(len(ps))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(o[2] for o in out) / wall, statistics.median(o[0] for o in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "numgpt-bench-124m"))
    ap.add_argument("--no-transformers", action="store_true", help="skip `transformers serve`")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    folder = make_checkpoint(Path(args.folder))
    import numgpt
    lm = numgpt.load(folder)
    ps = prompts(8)
    proc, url = start([sys.executable, "-m", "numgpt", "serve", "--model", str(folder), "--model-name", "bench",
                       "--port", "0", "--max-batch", "8"], url_from_stderr=True)
    results: dict[str, list[float]] = {}
    try:
        stream_one(url, "bench", ps[0], None)                    # warm up both sides
        lm.generate(ps[0], max_new_tokens=8)
        for run in range(args.runs):
            t0 = time.perf_counter()
            lm.generate(ps[run % 8], max_new_tokens=NEW_TOKENS, logit_bias={EOT: -100})
            results.setdefault("in-process tok/s", []).append(NEW_TOKENS / (time.perf_counter() - t0))
            ttft, total, n = stream_one(url, "bench", ps[run % 8], None)
            results.setdefault("1 client tok/s", []).append(n / total)
            results.setdefault("1 client TTFT s", []).append(ttft)
            ttft, total, n = stream_one(url, "bench", ps[run % 8], 1)
            results.setdefault("1 seeded tok/s", []).append(n / total)
            rate, ttft = clients(url, "bench", ps, seeded=False)
            results.setdefault("8 clients tok/s", []).append(rate)
            results.setdefault("8 clients TTFT s", []).append(ttft)
            rate, _ = clients(url, "bench", ps, seeded=True)
            results.setdefault("8 seeded tok/s", []).append(rate)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in results.items()), flush=True)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    hf_note = "not run (--no-transformers)"
    if not args.no_transformers:
        hf_note = run_transformers(folder, [lm.decode(p) for p in ps], args.runs, results)
    med = {k: statistics.median(v) for k, v in results.items()}
    lines = table(med, hf_note)
    print("\n".join(lines))
    if args.write:
        write_section(lines)


def run_transformers(folder: Path, ps, runs: int, results: dict) -> str:
    """`transformers serve FOLDER` (torch on 2 threads; it needs `pip install accelerate`), the same
    requests with the prompts as text (it takes no token ids); a note on how it went."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "transformers"
    try:
        proc, url = start([str(exe), "serve", str(folder), "--port", str(port), "--host", "127.0.0.1"],
                          url_from_stderr=False, port=port, env={**os.environ, "OMP_NUM_THREADS": "2"})
    except Exception as e:  # noqa: BLE001 -- reported in the table
        return f"did not start here: {e}"
    try:
        model = str(folder)
        try:
            stream_one(url, model, ps[0], None)
        except Exception as e:  # noqa: BLE001
            return f"started, but its /v1/completions failed: {type(e).__name__}: {e}"
        for run in range(runs):
            ttft, total, n = stream_one(url, model, ps[run % 8], None)
            results.setdefault("transformers 1 client tok/s", []).append(n / total)
            results.setdefault("transformers 1 client TTFT s", []).append(ttft)
            rate, _ = clients(url, model, ps, seeded=False)
            results.setdefault("transformers 8 clients tok/s", []).append(rate)
        return "ran"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def table(med: dict, hf_note: str) -> list[str]:
    base = med["in-process tok/s"]
    one = med["1 client tok/s"]
    rows = [("numgpt in-process decode (LanguageModel.generate)", med["in-process tok/s"], "1.00x"),
            ("numgpt serve, 1 client", one, f"{one / base:.2f}x in-process"),
            ("numgpt serve, 1 client, seeded (batch-invariant)", med["1 seeded tok/s"], f"{med['1 seeded tok/s'] / base:.2f}x in-process"),
            ("numgpt serve, 8 clients (aggregate)", med["8 clients tok/s"], f"{med['8 clients tok/s'] / one:.2f}x 1 client"),
            ("numgpt serve, 8 clients seeded (aggregate)", med["8 seeded tok/s"], f"{med['8 seeded tok/s'] / one:.2f}x 1 client")]
    if "transformers 1 client tok/s" in med:
        rows += [("transformers serve, 1 client", med["transformers 1 client tok/s"],
                  f"numgpt {one / med['transformers 1 client tok/s']:.2f}x faster"),
                 ("transformers serve, 8 clients (aggregate)", med["transformers 8 clients tok/s"],
                  f"numgpt {med['8 clients tok/s'] / med['transformers 8 clients tok/s']:.2f}x faster")]
    out = ["| case | tokens/s | ratio |", "|---|---:|---|"]
    out += [f"| {name} | {v:.1f} | {r} |" for name, v, r in rows]
    out.append("")
    out.append(f"Time to first token: 1 client {med['1 client TTFT s'] * 1000:.0f} ms, 8 clients (median) "
               f"{med['8 clients TTFT s'] * 1000:.0f} ms"
               + (f"; transformers serve 1 client {med['transformers 1 client TTFT s'] * 1000:.0f} ms"
                  if "transformers 1 client TTFT s" in med else "") + ".")
    out.append(f"transformers serve: {hf_note}.")
    return out


def write_section(lines: list[str]) -> None:
    import platform
    text = BENCHMARKS.read_text()
    body = [SECTION, "", "`python bench/bench_serve.py --write` (124M random checkpoint, 32-token prompts, 128 new "
            f"tokens, temperature 1, streamed over loopback; medians; {platform.machine()}, {os.cpu_count()} cores).", "",
            *lines, ""]
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip() + "\n\n" + "\n".join(body)
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(body) + ("\n" + text[end + 1:] if end >= 0 else "")
    BENCHMARKS.write_text(text)


if __name__ == "__main__":
    main()
