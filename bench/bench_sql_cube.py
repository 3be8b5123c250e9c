"""A measurement for issue 23 item 5, not a feature: PostgreSQL's matrix product two ways, on a
throwaway server (as bench_sql --pg auto), one connection, CPU time of its server process.

    wide   numgpt's own (layers.linear_chunks): weight rows of 768 REAL columns, one `w.cN * xN` and one
           `+` per multiply-add, evaluated by PostgreSQL's expression interpreter
    cube   the `cube` contrib module (CREATE EXTENSION cube): each 768-input row as 8 points of 96
           dimensions, w . x = (|w|^2 + |x|^2 - d(w, x)^2) / 2 per row, cube_distance's loop in C

Both against NumPy (float64 products of the same float32 weights): the largest absolute difference.

    python bench/bench_sql_cube.py                    c_fc's shape (768 -> 3072) and the logits' (768 -> 50257)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

DIM = 96   # dimensions per cube (the module's limit is 100; 768 = 8 x 96)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--outputs", default="3072,50257")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_sql_support import PostgresServer
    server = PostgresServer({"shared_buffers": "2GB"})
    try:
        run(server.create_database(), args)
    finally:
        server.stop()


def run(db: str, args) -> None:
    from numgpt.sql import layers
    from numgpt.sql.engine_postgres import PostgresEngine
    e = PostgresEngine(db)
    e.execute("CREATE EXTENSION cube")
    pid = int(e.rows("SELECT pg_backend_pid()")[0][0])
    C = 768
    rng = np.random.default_rng(0)
    x = rng.standard_normal(C)                                       # a LayerNorm output's scale
    e.execute("CREATE TABLE xc (t INTEGER, chunk INTEGER, a FLOAT8[])")
    e.execute("INSERT INTO xc VALUES (0, 0, CAST(:a AS FLOAT8[]))", {"a": [float(v) for v in x]})
    for n_out in [int(n) for n in args.outputs.split(",")]:
        w = (rng.standard_normal((n_out, C)) * 0.05).astype(np.float32)   # [n_out, C], W^T
        b = rng.standard_normal(n_out) * 0.01
        want = w.astype(np.float64) @ x + b
        wide, cube = f"w_{n_out}", f"c_{n_out}"
        cols = ", ".join(f"c{n} REAL" for n in range(1, C + 1))
        e.execute(f"CREATE TABLE {wide} (layer INTEGER, j INTEGER, chunk INTEGER, b FLOAT8, {cols})")
        e._load_matrix(wide, 0, w, b, np.float32)
        parts = ", ".join(f"cube(ARRAY[{', '.join(f'c{k * DIM + n}' for n in range(1, DIM + 1))}]::FLOAT8[]) AS c{k + 1}"
                          for k in range(C // DIM))
        squares = " + ".join(f"c{n}::FLOAT8 * c{n}::FLOAT8" for n in range(1, C + 1))
        e.execute(f"CREATE TABLE {cube} AS SELECT layer, j, chunk, b, {squares} AS sq, {parts} FROM {wide}")
        for k in range(C // DIM):
            e.execute(f"ALTER TABLE {cube} ALTER COLUMN c{k + 1} SET STORAGE PLAIN")
        e.execute(f"VACUUM ANALYZE {wide}")
        e.execute(f"VACUUM ANALYZE {cube}")
        wide_sql = layers.linear_chunks("xc", wide, C, "0").replace(":lo", "0").replace(":hi", str(n_out))
        xs = ", ".join(f"cube(a[{k * DIM + 1}:{(k + 1) * DIM}]) AS x{k + 1}" for k in range(C // DIM))
        d2 = " + ".join(f"power(cube_distance(w.c{k + 1}, xs.x{k + 1}), 2)" for k in range(C // DIM))
        cube_sql = f"""
    SELECT xs.t, p.i, p.v
    FROM (SELECT t, chunk, {xs}, (SELECT sum(v * v) FROM unnest(a) AS v) AS sq FROM xc OFFSET 0) AS xs,
         LATERAL (SELECT w.j AS i, w.b + (w.sq + xs.sq - ({d2})) / 2 AS v
                  FROM {cube} AS w WHERE w.layer = 0 AND w.chunk = xs.chunk OFFSET 0) AS p
    OFFSET 0"""
        for name, sql in (("wide", wide_sql), ("cube", cube_sql)):
            got = np.full(n_out, np.nan)
            for i, v in e.rows(f"SELECT i, v FROM ({sql}) AS q"):
                got[i] = v
            spent = []
            for _ in range(args.repeats):
                c = cpu_seconds(pid)
                t = time.perf_counter()
                e.rows(f"SELECT count(*), sum(v) FROM ({sql}) AS q")
                spent.append((cpu_seconds(pid) - c, time.perf_counter() - t))
            cpu = float(np.median([s[0] for s in spent]))
            wall = float(np.median([s[1] for s in spent]))
            print(f"{C} -> {n_out} {name}: CPU {cpu * 1e3:.0f} ms, {cpu / (n_out * C) * 1e9:.2f} ns per multiply-add "
                  f"(wall {wall / (n_out * C) * 1e9:.2f}); max |SQL - NumPy| {np.abs(got - want).max():.2e}; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    e.close()


if __name__ == "__main__":
    main()
