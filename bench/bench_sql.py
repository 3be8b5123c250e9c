"""GPT-2 in SQL (issue 12): 124M-shaped random checkpoint (transformers, save_pretrained), 32-token
prompt, KV cache. Per engine and precision: export time, database size, prefill time per prompt token,
decode time per token, ns per multiply-add; beside the original design (no cache: every step recomputes
the whole sequence, measured by a prefill of the whole sequence) and numgpt's NumPy decode.

    python bench/bench_sql.py                         DuckDB float32 + float64
    python bench/bench_sql.py --engines duckdb,postgresql --pg auto     both engines; `auto` starts a
                                                      throwaway PostgreSQL 15 server as the tests do
                                                      (shared_buffers 1GB), or give a postgresql:// URL

Run it alone on the machine (the figures are wall-clock). Needs torch + transformers for the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def make_checkpoint(folder: Path) -> Path:
    import torch
    import transformers
    torch.manual_seed(3)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(initializer_range=0.05)).eval().save_pretrained(folder)
    return folder


def multiply_adds_per_token(config) -> int:
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    return L * 12 * C * C + V * C       # c_attn 3C^2 + c_proj C^2 + c_fc 4C^2 + mlp c_proj 4C^2, + lm_head


def bench_engine(lm, db: str, precision: str, prompt: list[int], steps: int) -> dict:
    import numgpt.sql
    t = time.perf_counter()
    summary = numgpt.sql.export(lm, db, force=True, precision=precision)
    export_s = time.perf_counter() - t
    with numgpt.sql.connect(db) as m:
        t = time.perf_counter()
        m.start(prompt)
        prefill = time.perf_counter() - t
        token = m.pick(greedy=True)
        times = []
        for _ in range(steps):   # a token: one decode step and the greedy pick, both in SQL
            t = time.perf_counter()
            m.feed(token)
            token = m.pick(greedy=True)
            times.append(time.perf_counter() - t)
        connections = m.connections
        # the original's design: no cache, each step recomputes every position (here: one prefill of
        # the whole sequence so far, which is what a cache-less step costs)
        t = time.perf_counter()
        m.start(prompt + [token] * steps)
        no_cache = time.perf_counter() - t
    decode = float(np.median(times))
    return {"db": db.split("?")[0], "engine": summary.engine, "precision": precision, "connections": connections,
            "export_s": round(export_s, 2),
            "size_mib": round(summary.size_bytes / 2**20, 1), "prefill_s_per_token": round(prefill / len(prompt), 4),
            "decode_s_per_token": round(decode, 4), "decode_s_all": [round(x, 3) for x in times],
            "ns_per_multiply_add": round(decode / multiply_adds_per_token(lm.config) * 1e9, 2),
            f"no_cache_step_at_{len(prompt) + steps}_tokens_s": round(no_cache, 3)}


def bench_numpy(lm, prompt: list[int], steps: int) -> dict:
    from numgpt.kvcache import KVCache
    from numgpt.model import forward
    cache = KVCache.allocate(lm.config, 1, len(prompt) + steps + 1)
    forward(lm.params, lm.config, np.array([prompt]), cache=cache)
    t = time.perf_counter()
    for _ in range(steps):
        forward(lm.params, lm.config, np.array([[1]]), cache=cache)
    decode = (time.perf_counter() - t) / steps
    return {"engine": "numpy", "decode_s_per_token": round(decode, 4),
            "ns_per_multiply_add": round(decode / multiply_adds_per_token(lm.config) * 1e9, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="decode steps to time (8)")
    ap.add_argument("--engines", default="duckdb", help="comma-separated: duckdb, postgresql")
    ap.add_argument("--precisions", default="float32,float64")
    ap.add_argument("--pg", help="a postgresql:// URL of an empty database, for --engines postgresql")
    ap.add_argument("--model", help="a GPT-2 folder instead of the random 124M checkpoint")
    args = ap.parse_args()
    import numgpt
    server = None
    if args.pg == "auto":
        import sys
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from test_sql_support import PostgresServer
        server = PostgresServer()
        args.pg = server.create_database()
    try:
        run(args, numgpt)
    finally:
        if server is not None:
            server.stop()


def run(args, numgpt) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else make_checkpoint(Path(tmp) / "gpt2-124m")
        lm = numgpt.load(folder)
        prompt = [int(i) for i in np.random.default_rng(0).integers(0, lm.config.vocab_size - 1, 32)]
        results = [bench_numpy(lm, prompt, args.steps)]
        print(json.dumps(results[-1]), flush=True)
        for engine in args.engines.split(","):
            for precision in args.precisions.split(","):
                db = str(Path(tmp) / f"bench-{precision}.duckdb") if engine == "duckdb" else args.pg
                if db is None:
                    raise SystemExit("--engines postgresql needs --pg postgresql://...")
                results.append(bench_engine(lm, db, precision, prompt, args.steps))
                print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
