"""GPT-2 in SQL (issues 12, 23): 124M-shaped random checkpoint (transformers, save_pretrained), 32-token
prompt, KV cache. Per engine and precision: export time, database size, prefill time per prompt token,
decode time per token, ns per multiply-add; beside the original design (no cache: every step recomputes
the whole sequence, measured by a prefill of the whole sequence) and numgpt's NumPy decode. Then, per
engine, a profile of the decode steps (--no-profile: none):

  - a per-stage table: each stage's wall time per token, each connection's busy time in it, how much
    the two PostgreSQL connections' runs of a split stage overlapped in time (100%: they ran at once),
    ns per multiply-add, and the rest of a token (Python and round trips between stages, the pick);
  - the CPU time each PostgreSQL server process (or the DuckDB process) used per token: CPU / wall
    under 1 per process means it waited -- for the other connection, for Python, or for a core that
    another program held;
  - the machine: cores, load average before and after;
  - PostgreSQL: whether the stages were planned again during the steps (pg_prepared_statements'
    generic/custom plan counts, pg_stat_statements' plans) and their shared-buffer hits and reads
    (pg_stat_statements, which `--pg auto` loads; on a server of yours, if it is loaded there);
  - DuckDB: its version, and what one run of each stage costs on no rows (binding and planning, for the
    most part: DuckDB 2.0 plans a prepared statement again at every EXECUTE), in all per token.

    python bench/bench_sql.py                         DuckDB float32 + float64
    python bench/bench_sql.py --engines duckdb,postgresql --pg auto     both engines; `auto` starts a
                                                      throwaway PostgreSQL 15 server as the tests do
                                                      (shared_buffers 1GB), or give a postgresql:// URL
    python bench/bench_sql.py --engines postgresql --precisions float32 --pg auto --n-layer 2
                                                      a 2-block model of 124M's width: the products'
                                                      ns per multiply-add, in a tenth of the time

The issue-23 figures (median of two runs, each alone on the machine; BENCHMARKS.md), PostgreSQL with
the default products (export's product="auto": cube on the benchmark's own server, which has the
module) and with the wide rows:

    python bench/bench_sql.py --engines postgresql,duckdb --precisions float32 --pg auto --steps 8 --no-original
    python bench/bench_sql.py --engines postgresql --precisions float32 --pg auto --pg-product wide --steps 8 --no-original

Run it alone on the machine (the figures are wall-clock; the profile's CPU / wall per server process
says whether they got their cores). Needs torch + transformers for the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

AUTO_SETTINGS = {   # --pg auto's server, beyond the tests' settings (test_sql_support.PostgresServer)
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track_planning": "on",
    "shared_buffers": "2GB",   # the cube products' float8 weights (1.1 GB for 124M) stay in the cache too
}


def make_checkpoint(folder: Path, n_layer: int) -> Path:
    import torch
    import transformers
    torch.manual_seed(3)
    config = transformers.GPT2Config(initializer_range=0.05, n_layer=n_layer)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(folder)
    return folder


def multiply_adds_per_token(config) -> int:
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    return L * 12 * C * C + V * C       # c_attn 3C^2 + c_proj C^2 + c_fc 4C^2 + mlp c_proj 4C^2, + lm_head


def stage_multiply_adds(config, positions: int) -> dict[str, int]:
    """Multiply-adds of one run of each stage at a decode step over `positions` cached positions
    (attention: q k^T and p v, 2 S C)."""
    C, V = config.n_embd, config.vocab_size
    return {"attn_qkv": 3 * C * C, "attention": 2 * positions * C, "attn_proj": C * C, "mlp_fc": 4 * C * C,
            "mlp_proj": 4 * C * C, "logits": V * C,
            # DuckDB's attention_mlp: attention, its c_proj and both MLP products
            "duckdb:attention_mlp": 2 * positions * C + C * C + 8 * C * C}


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (/proc/PID/stat: fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict:
    return {"cores": os.cpu_count(), "load_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def bench_engine(lm, db: str, precision: str, prompt: list[int], steps: int, profile: bool,
                 threads: int | None, original: bool = True, product: str = "wide") -> dict:
    import numgpt.sql
    t = time.perf_counter()
    summary = numgpt.sql.export(lm, db, force=True, precision=precision, product=product)
    export_s = time.perf_counter() - t
    with numgpt.sql.connect(db, threads=threads) as m:
        t = time.perf_counter()
        m.start(prompt)
        prefill = time.perf_counter() - t
        token = m.pick(greedy=True)
        watch = ServerWatch(m) if profile else None
        times, steps_seen = [], []
        for _ in range(steps):   # a token: one decode step and the greedy pick, both in SQL
            if watch:
                watch.before_step()
            t = time.perf_counter()
            m.feed(token)
            fed = time.perf_counter()
            token = m.pick(greedy=True)
            times.append(time.perf_counter() - t)
            if watch:
                steps_seen.append(watch.after_step(t, fed, time.perf_counter()))
        connections = m.connections
        server = watch.finish() if watch else None
        # the original's design: no cache, each step recomputes every position (here: one prefill of
        # the whole sequence so far, which is what a cache-less step costs)
        no_cache = None
        if original:
            t = time.perf_counter()
            m.start(prompt + [token] * steps)
            no_cache = round(time.perf_counter() - t, 3)
    decode = float(np.median(times))
    result = {"db": db.split("?")[0], "engine": summary.engine, "precision": precision, "product": summary.product,
              "connections": connections, "n_layer": lm.config.n_layer, "export_s": round(export_s, 2),
              "size_mib": round(summary.size_bytes / 2**20, 1),
              "prefill_s_per_token": round(prefill / len(prompt), 4),
              "decode_s_per_token": round(decode, 4), "decode_s_all": [round(x, 3) for x in times],
              "ns_per_multiply_add": round(decode / multiply_adds_per_token(lm.config) * 1e9, 2),
              f"no_cache_step_at_{len(prompt) + steps}_tokens_s": no_cache}
    if watch:
        result["profile"] = {"stages": stage_table(steps_seen, lm.config, summary.engine, len(prompt) + 1),
                             "steps": [{k: v for k, v in s.items() if k != "trace"} for s in steps_seen],
                             **server}
    return result


class ServerWatch:
    """What the profile watches around each decode step: the stages' trace (SqlModel.trace), the CPU
    time of each PostgreSQL server process (or of this process, for DuckDB), the load average; and
    once, PostgreSQL's plan and buffer counters."""

    def __init__(self, m):
        self.m = m
        self.postgres = m.engine.name == "postgresql"
        engines = [m.engine, *m.workers]
        self.pids = ([int(e.rows("SELECT pg_backend_pid()")[0][0]) for e in engines] if self.postgres
                     else [os.getpid()])
        self.load_before = os.getloadavg()
        self.statements = False
        if self.postgres:
            try:
                m.engine.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                m.engine.rows("SELECT pg_stat_statements_reset()")
                self.statements = True
            except Exception as e:   # not loaded on this server (shared_preload_libraries): say so
                self.statements_error = str(e).splitlines()[0]
            self.plans_before = self._prepared_plans()

    def before_step(self) -> None:
        self.m.trace = []
        self.cpu = [process_cpu_seconds(p) for p in self.pids]

    def after_step(self, start: float, fed: float, end: float) -> dict:
        cpu = [round(process_cpu_seconds(p) - c, 3) for p, c in zip(self.pids, self.cpu)]
        trace, self.m.trace = self.m.trace, None
        return {"token_s": round(end - start, 4), "feed_s": round(fed - start, 4), "pick_s": round(end - fed, 4),
                "cpu_s": cpu, "cpu_over_wall": [round(c / (end - start), 2) for c in cpu], "trace": trace}

    def _runs_on_no_rows(self, repeats: int = 9) -> dict[str, float]:
        """DuckDB: per stage, the median ms of one run that computes nothing (a layer past the model's and
        positions past the sequence, rolled back): what a run costs before any work -- binding and planning
        for the most part, since DuckDB 2.0 binds and plans a prepared statement again at every EXECUTE."""
        nothing = {"layer": 10**6, "past": 10**9, "last": 10**9}
        out = {}
        self.m.engine.execute("BEGIN TRANSACTION")
        try:
            for stage in self.m.stages:
                sql, times = self.m.statements[stage.name], []
                for _ in range(repeats):
                    start = time.perf_counter()
                    self.m.engine.execute_prepared(sql, nothing)
                    times.append(time.perf_counter() - start)
                out[stage.name] = round(float(np.median(times)) * 1e3, 2)
        finally:
            self.m.engine.execute("ROLLBACK")
        return out

    def _prepared_plans(self) -> list[dict]:
        """Per connection: prepared statements and their generic / custom plan counts."""
        out = []
        for e in [self.m.engine, *self.m.workers]:
            rows = e.rows("SELECT count(*), coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) "
                          "FROM pg_prepared_statements")
            out.append({"prepared": int(rows[0][0]), "generic_plans": int(rows[0][1]), "custom_plans": int(rows[0][2])})
        return out

    def finish(self) -> dict:
        out = {"machine": {**machine(), "load_1_5_15_before": [round(x, 2) for x in self.load_before]},
               "pids": self.pids}
        if not self.postgres:
            import duckdb
            out["duckdb"] = {"version": duckdb.__version__, "run_on_no_rows_ms": self._runs_on_no_rows()}
            return out
        after = self._prepared_plans()
        out["prepared_plans"] = [{"prepared": a["prepared"], "generic_plans_used": a["generic_plans"] - b["generic_plans"],
                                  "custom_plans_made": a["custom_plans"] - b["custom_plans"]}
                                 for a, b in zip(after, self.plans_before)]
        if self.statements:
            out["statements"] = self._statement_stats()
        else:
            out["statements"] = f"pg_stat_statements unavailable: {self.statements_error}"
        out["settings"] = dict(self.m.engine.rows(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN ('shared_buffers', "
            "'work_mem', 'jit', 'huge_pages', 'max_parallel_workers_per_gather', 'plan_cache_mode', "
            "'enable_nestloop', 'fsync', 'server_version')"))
        return out

    def _statement_stats(self) -> dict:
        """pg_stat_statements since the reset, per stage (the statement whose text starts as the stage's
        does up to its first parameter): calls, plans made, plan and execution ms, shared blocks."""
        rows = self.m.engine.rows(
            "SELECT query, calls, plans, total_plan_time, total_exec_time, shared_blks_hit, shared_blks_read, "
            "temp_blks_read + temp_blks_written FROM pg_stat_statements WHERE dbid = (SELECT oid FROM "
            "pg_database WHERE datname = current_database())")
        # pg_stat_statements shows parameters and constants as $n: compare the text before either
        prefixes = {name: re.split(r"[:$0-9]", sql, maxsplit=1)[0].strip() for name, sql in self.m.statements.items()}
        out = {}
        for query, calls, plans, plan_ms, exec_ms, hit, read, temp in rows:
            name = next((n for n, p in prefixes.items() if p and query.strip().startswith(p)), query[:40])
            row = out.setdefault(name, {"calls": 0, "plans": 0, "plan_ms": 0.0, "exec_ms": 0.0, "shared_hit": 0,
                                        "shared_read": 0, "temp_blocks": 0})
            for key, value in zip(row, (calls, plans, plan_ms, exec_ms, hit, read, temp)):
                row[key] += value
        return {n: {k: round(v, 1) if isinstance(v, float) else int(v) for k, v in r.items()} for n, r in out.items()}


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The part of the union of two time intervals that both cover."""
    both = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return both / union if union > 0 else 1.0


def stage_table(steps: list[dict], config, engine: str, positions: int) -> list[dict]:
    """Per stage, medians over the steps of: wall ms per token (each run from its first connection's
    start to its last one's end), each connection's busy ms, the overlap of connections 0 and 1 (mean
    over runs), ns per multiply-add; then the rest of the token."""
    madds = stage_multiply_adds(config, positions)
    names = list(dict.fromkeys(s.stage for step in steps for s in step["trace"]))
    rows = []
    for name in names:
        walls, busy, overlaps, runs = [], [], [], 0
        for step in steps:
            by_run: dict = {}
            for s in step["trace"]:
                if s.stage == name:
                    by_run.setdefault(s.layer, {})[s.connection] = (s.start, s.end)
            runs = len(by_run)
            walls.append(sum(max(e for _, e in r.values()) - min(b for b, _ in r.values()) for r in by_run.values()))
            n = max(len(r) for r in by_run.values())
            busy.append([sum(r[k][1] - r[k][0] for r in by_run.values() if k in r) for k in range(n)])
            overlaps += [overlap(r[0], r[1]) for r in by_run.values() if 1 in r]
        wall = float(np.median(walls))
        ma = madds.get(f"{engine}:{name}", madds.get(name, 0)) * runs
        rows.append({"stage": name, "runs": runs, "wall_ms": round(wall * 1e3, 1),
                     "busy_ms": [round(float(np.median([b[k] for b in busy])) * 1e3, 1) for k in range(len(busy[0]))],
                     "overlap": round(float(np.mean(overlaps)), 2) if overlaps else None,
                     "multiply_adds": ma, "ns_per_multiply_add": round(wall / ma * 1e9, 2) if ma else None})
    stages_wall = [sum(max(e for _, e in r.values()) - min(b for b, _ in r.values()) for r in _runs(step).values())
                   for step in steps]
    rows.append({"stage": "between stages (Python, round trips, clear_step)",
                 "wall_ms": round(float(np.median([s["feed_s"] - w for s, w in zip(steps, stages_wall)])) * 1e3, 1)})
    rows.append({"stage": "pick (greedy, SQL)", "wall_ms": round(float(np.median([s["pick_s"] for s in steps])) * 1e3, 1)})
    rows.append({"stage": "token", "wall_ms": round(float(np.median([s["token_s"] for s in steps])) * 1e3, 1)})
    return rows


def _runs(step: dict) -> dict:
    """The runs of a step's stages: (stage, layer) -> connection -> (start, end)."""
    out: dict = {}
    for s in step["trace"]:
        out.setdefault((s.stage, s.layer), {})[s.connection] = (s.start, s.end)
    return out


def print_profile(result: dict) -> None:
    p = result["profile"]
    print(f"\n{result['engine']} {result['precision']} ({result['product']} products), n_layer {result['n_layer']}, {result['connections']} "
          f"connection(s): token {result['decode_s_per_token']} s (median of {len(result['decode_s_all'])})")
    print(f"{'stage':<50} {'runs':>4} {'wall ms':>8} {'busy ms per connection':>24} {'overlap':>8} {'ns/MA':>7}")
    for r in p["stages"]:
        busy = " / ".join(f"{b:.1f}" for b in r.get("busy_ms", []))
        ov = "" if r.get("overlap") is None else f"{r['overlap']:.0%}"
        ns = "" if r.get("ns_per_multiply_add") is None else f"{r['ns_per_multiply_add']:.2f}"
        print(f"{r['stage']:<50} {r.get('runs', ''):>4} {r['wall_ms']:>8.1f} {busy:>24} {ov:>8} {ns:>7}")
    cpu = np.median([s["cpu_over_wall"] for s in p["steps"]], axis=0)
    who = "server process" if result["engine"] == "postgresql" else "process"
    # CPU seconds a token costs, whatever share of the cores it got: the figure to compare on a busy machine
    print(f"CPU seconds per token, all {who}es: {np.median([sum(s['cpu_s']) for s in p['steps']]):.2f}")
    print(f"CPU / wall per {who} (median over steps): {' / '.join(f'{c:.2f}' for c in cpu)}; machine: "
          f"{p['machine']['cores']} cores, load {p['machine']['load_1_5_15_before']} before, "
          f"{p['machine']['load_1_5_15']} after")
    if "duckdb" in p:
        runs = {r["stage"]: r["runs"] for r in p["stages"] if "runs" in r}
        fixed = p["duckdb"]["run_on_no_rows_ms"]
        print(f"DuckDB {p['duckdb']['version']}: one run of a stage on no rows (binding and planning, mostly): "
              f"{', '.join(f'{n} {ms:.1f} ms' for n, ms in fixed.items())}; "
              f"{sum(ms * runs.get(n, 1) for n, ms in fixed.items()):.0f} ms of a token")
    if "prepared_plans" in p:
        print(f"prepared statements per connection during the steps: {p['prepared_plans']}")
        print(f"pg_stat_statements per stage during the steps: {json.dumps(p['statements'])}")
        print(f"settings: {json.dumps(p['settings'])}")


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
    ap.add_argument("--pg", help="a postgresql:// URL of an empty database, for --engines postgresql; or `auto`")
    ap.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="with --pg auto: a server setting (-c NAME=VALUE), e.g. work_mem=64MB; repeatable")
    ap.add_argument("--pg-product", default="auto", choices=["auto", "wide", "cube"],
                    help="PostgreSQL's matrix product (export's product): wide rows, the cube module's distances, "
                         "or auto (the default): cube where the server has the module")
    ap.add_argument("--model", help="a GPT-2 folder instead of the random 124M checkpoint")
    ap.add_argument("--n-layer", type=int, default=12, help="blocks of the random checkpoint (12: 124M)")
    ap.add_argument("--threads", type=int, help="DuckDB's threads (default: its own, the cores)")
    ap.add_argument("--no-profile", action="store_true", help="no per-stage profile")
    ap.add_argument("--no-original", action="store_true",
                    help="skip the original design's cache-less step (a whole-sequence prefill: 20 s on PostgreSQL)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    import numgpt
    server = None
    if args.pg == "auto":
        import sys
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from test_sql_support import PostgresServer
        settings = dict(AUTO_SETTINGS)
        for s in args.pg_setting:
            name, _, value = s.partition("=")
            settings[name] = value
        server = PostgresServer(settings)
        args.pg = server.create_database()
    try:
        run(args, numgpt)
    finally:
        if server is not None:
            server.stop()


def run(args, numgpt) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else make_checkpoint(Path(tmp) / "gpt2-124m", args.n_layer)
        lm = numgpt.load(folder)
        prompt = [int(i) for i in np.random.default_rng(0).integers(0, lm.config.vocab_size - 1, 32)]
        print(json.dumps({"machine": machine()}), flush=True)
        results = [bench_numpy(lm, prompt, args.steps)]
        print(json.dumps(results[-1]), flush=True)
        for engine in args.engines.split(","):
            for precision in args.precisions.split(","):
                db = str(Path(tmp) / f"bench-{precision}.duckdb") if engine == "duckdb" else args.pg
                if db is None:
                    raise SystemExit("--engines postgresql needs --pg postgresql://... or --pg auto")
                result = bench_engine(lm, db, precision, prompt, args.steps, not args.no_profile, args.threads,
                                      not args.no_original, args.pg_product if engine == "postgresql" else "auto")
                results.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "profile"}), flush=True)
                if "profile" in result:
                    print_profile(result)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
