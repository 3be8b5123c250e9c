"""Column panels (numgpt/panels.py): few-row products equal to x @ w + b, each row computed alone, and used
by numgpt.load's models only where a forward continues a cache."""

import numpy as np
import pytest

import numgpt
from numgpt import panels as P
from numgpt.kvcache import KVCache
from numgpt.model import forward


def _product(w, b, x, pool=None):
    out = np.empty((x.shape[0], w.shape[1]), np.float32)
    return P.Panels(w, pool, lambda: True).linear_into(x, b, out)


@pytest.mark.parametrize("n_in,n_out", [(64, 96), (256, 1000), (768, 2304), (3072, 768), (100, 33)])
@pytest.mark.parametrize("rows", [2, 5, 8, 16])
def test_panel_product_is_x_at_w_plus_b(n_in, n_out, rows):
    rng = np.random.default_rng(rows * n_in + n_out)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64) + b                       # [rows, out]
    got = _product(w, b, x)
    np.testing.assert_allclose(got, exact, rtol=0, atol=2e-6 * np.sqrt(n_in) * np.abs(exact).max())
    np.testing.assert_array_equal(_product(w, None, x) + b, got)


def test_weights_stored_transposed_and_the_head_are_multiplied_as_their_views():
    rng = np.random.default_rng(0)
    w_out_in = rng.standard_normal((300, 128)).astype(np.float32)      # numgpt.load's [out, in] copies
    x = rng.standard_normal((4, 128)).astype(np.float32)
    np.testing.assert_allclose(_product(w_out_in.T, None, x), x @ w_out_in.T, rtol=1e-5, atol=1e-5)


def test_every_panel_product_stays_within_openblas_direct_limit():
    for rows in range(2, P.MAX_ROWS + 1):
        for n_in in (1, 64, 256, 700, 768, 1024, 3072, 6400, 20000):
            step = P.chunk_length(rows, n_in)
            assert 1 <= step <= n_in and rows * P.PANEL * step <= P.DIRECT_MNK, (rows, n_in)
            assert step == n_in or rows * P.PANEL * (step + 1) > P.DIRECT_MNK   # the longest that fits


def test_a_row_is_computed_alone_and_two_threads_compute_what_one_does():
    """At a fixed number of rows, a row's result does not depend on the rows beside it (the serving
    engine's batch invariance), and splitting the panels between two threads changes no bit."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((768, 3072)).astype(np.float32) * 0.02     # 9.4 MB: big enough for two threads
    b = rng.standard_normal(3072).astype(np.float32)
    x = rng.standard_normal((8, 768)).astype(np.float32)
    one = _product(w, b, x)
    pool = P.PanelPool()
    assert w.nbytes >= P.THREADED_BYTES
    np.testing.assert_array_equal(_product(w, b, x, pool), one)
    other = rng.standard_normal((8, 768)).astype(np.float32)
    other[3] = x[3]
    np.testing.assert_array_equal(_product(w, b, other, pool)[3], one[3])


def test_load_makes_panels_of_every_decode_matrix_on_first_few_row_use(monkeypatch):
    monkeypatch.setattr(P, "panels_pay_off", lambda: True)              # as on an AVX-512 CPU with OpenBLAS
    lm = numgpt.load("builtin")
    assert isinstance(lm.params, P.DecodeParams)
    names = {n for n in lm.params if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))} | {"wte.weight"}
    assert set(lm.params.panels) == names and len(names) == 4 * lm.config.n_layer + 1
    assert all(p._data is None for p in lm.params.panels.values())                   # nothing copied yet
    assert type(numgpt.load("builtin", mmap=True).params) is dict                    # a memory map: no copies
    monkeypatch.setattr(P, "panels_pay_off", lambda: False)             # elsewhere: products go as before
    assert numgpt.load("builtin").params.panels == {}


def test_a_forward_takes_the_panels_only_when_asked(monkeypatch):
    monkeypatch.setattr(P, "panels_pay_off", lambda: True)
    lm = numgpt.load("builtin")
    plain = dict(lm.params)                                             # the same arrays, no panels
    ids = np.random.default_rng(2).integers(0, lm.config.vocab_size, (2, 20))
    caches = [KVCache.allocate(lm.config, 2, 40) for _ in range(2)]
    first = [forward(p, lm.config, ids[:, :12], cache=c) for p, c in zip((lm.params, plain), caches)]
    np.testing.assert_array_equal(first[0], first[1])
    not_asked = [forward(p, lm.config, ids[:, 12:16], cache=c, all_logits=True) for p, c in zip((lm.params, plain), caches)]
    np.testing.assert_array_equal(not_asked[0], not_asked[1])          # continuing a cache, not asked: as before
    assert all(p._data is None for p in lm.params.panels.values())
    asked = [forward(p, lm.config, ids[:, 16:], cache=c, all_logits=True, panels=True)
             for p, c in zip((lm.params, plain), caches)]
    assert all(p._data is not None for p in lm.params.panels.values())  # 2 x 4 rows: through the panels
    np.testing.assert_allclose(asked[0], asked[1], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(asked[0].argmax(-1), asked[1].argmax(-1))


def test_decode_params_weights_are_read_only_replaced_ones_lose_their_panels_and_pickling_works(monkeypatch):
    import copy
    import pickle
    monkeypatch.setattr(P, "panels_pay_off", lambda: True)
    lm = numgpt.load("builtin")
    name = "h.0.mlp.c_fc.weight"
    with pytest.raises(ValueError, match="read-only"):
        lm.params[name][0, 0] = 1.0                                     # an edit behind the panels' back
    lm.params[name] = np.array(lm.params[name]) * 2                      # replaced: its panels go
    assert name not in lm.params.panels and "h.0.attn.c_attn.weight" in lm.params.panels
    lm.params.update({"h.1.mlp.c_fc.weight": np.array(lm.params["h.1.mlp.c_fc.weight"])})
    assert "h.1.mlp.c_fc.weight" not in lm.params.panels
    for clone in (copy.deepcopy(lm.params), pickle.loads(pickle.dumps(lm.params))):
        assert isinstance(clone, P.DecodeParams) and set(clone) == set(lm.params)
        np.testing.assert_array_equal(clone[name], lm.params[name])


def test_panels_are_not_made_where_the_machine_cannot_spare_their_memory(monkeypatch):
    monkeypatch.setattr(P, "panels_pay_off", lambda: True)
    lm = numgpt.load("builtin")
    monkeypatch.setattr(P, "available_memory", lambda: P.SPARE_BYTES)   # less than SPARE + twice the panels
    ids = np.random.default_rng(3).integers(0, lm.config.vocab_size, (1, 16))
    out = []
    for params in (lm.params, dict(lm.params)):
        cache = KVCache.allocate(lm.config, 1, 20)
        forward(params, lm.config, ids[:, :8], cache=cache)
        out.append(forward(params, lm.config, ids[:, 8:], cache=cache, all_logits=True, panels=True))
    assert all(p.data is None and not p.takes(8) for p in lm.params.panels.values())
    np.testing.assert_array_equal(out[0], out[1])                        # the plain products, as without panels


def test_a_forked_child_runs_its_own_half_of_the_panels():
    """After fork the worker thread is gone; the child's pool starts its own instead of waiting forever."""
    import multiprocessing as mp
    rng = np.random.default_rng(4)
    w = rng.standard_normal((512, 2048)).astype(np.float32)            # 4 MB: two threads
    x = rng.standard_normal((4, 512)).astype(np.float32)
    pool = P.PanelPool()
    expected = _product(w, None, x, pool)                               # the parent's worker exists now
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=lambda: results.put(_product(w, None, x, pool)))   # inherited, not pickled
    child.start()
    got = results.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("width,n_in,pool", [(2, 256, None), (3, 256, None), (5, 256, None), (8, 256, None),
                                             (13, 256, None), (16, 256, None), (24, 768, "two threads"),
                                             (P.MAX_ROWS, 768, "two threads")])
def test_a_row_gets_the_same_bits_wherever_it_sits_at_a_fixed_width(width, n_in, pool):
    """The serving engine's batch invariance: a request's row moves between slots as others come and go
    (beyond FEW_ROWS, `numgpt serve --max-batch 24`, a big weight on two threads)."""
    rng = np.random.default_rng(width)
    w = rng.standard_normal((n_in, 1000 if pool is None else 3072)).astype(np.float32) * 0.02
    pool = pool and P.PanelPool()
    row = rng.standard_normal(n_in).astype(np.float32)
    outs = []
    for pos in range(0, width, max(1, width // 8)):
        x = rng.standard_normal((width, n_in)).astype(np.float32)
        x[pos] = row
        outs.append(_product(w, None, x, pool)[pos])
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


@pytest.mark.parametrize("rows", [17, 33, 66, P.MAX_ROWS])
def test_many_row_products_of_a_big_weight_on_two_threads_are_x_at_w_plus_b(rows):
    """A prefill of a short prompt: up to MAX_ROWS rows through a weight split between two threads."""
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((768, 2304)).astype(np.float32)                       # 7 MB: threaded
    b = rng.standard_normal(2304).astype(np.float32)
    x = rng.standard_normal((rows, 768)).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64) + b
    got = _product(w, b, x, P.PanelPool())
    np.testing.assert_allclose(got, exact, rtol=0, atol=2e-6 * np.sqrt(768) * np.abs(exact).max())


def test_beyond_few_rows_only_a_threaded_weight_takes_its_panels_and_only_while_blas_threads_sleep(monkeypatch):
    rng = np.random.default_rng(0)
    big = P.Panels(rng.standard_normal((768, 768)).astype(np.float32), P.PanelPool(), lambda: True)   # 2.4 MB
    one_thread = P.Panels(big.weight, None, lambda: True)
    small = P.Panels(rng.standard_normal((256, 256)).astype(np.float32), P.PanelPool(), lambda: True)
    monkeypatch.setattr(P, "blas_threads_sleep_when_idle", lambda: True)
    assert [big.takes(r) for r in (1, 2, P.FEW_ROWS, P.FEW_ROWS + 1, P.MAX_ROWS, P.MAX_ROWS + 1)] == \
        [False, True, True, True, True, False]
    assert (one_thread.takes(P.FEW_ROWS), one_thread.takes(P.FEW_ROWS + 1)) == (True, False)
    assert (small.takes(P.FEW_ROWS), small.takes(P.FEW_ROWS + 1)) == (True, False)
    monkeypatch.setattr(P, "blas_threads_sleep_when_idle", lambda: False)     # OpenBLAS's threads spin
    assert (big.takes(P.FEW_ROWS), big.takes(P.FEW_ROWS + 1)) == (True, False)


def _blas_sleeps(code: str, **env: str) -> str:
    import os
    import subprocess
    import sys
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"} | env
    code += "; from numgpt.machine import blas_threads_sleep_when_idle as s; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), s())"
    return subprocess.run([sys.executable, "-c", "import os; " + code], env=environ, capture_output=True,
                          text=True, check=True).stdout.split()


def test_importing_numgpt_puts_openblas_idle_threads_to_sleep_unless_the_user_chose():
    """OpenBLAS's own `openblas_thread_timeout()` reports what it read when it loaded, or read again."""
    assert _blas_sleeps("import numgpt") == ["19", "True"]                      # numgpt asked first
    assert _blas_sleeps("import numpy, numgpt") == ["19", "True"]               # OpenBLAS read it again
    assert _blas_sleeps("import numgpt", OPENBLAS_THREAD_TIMEOUT="28") == ["28", "False"]   # the user's choice
    assert _blas_sleeps("import numpy, numgpt", OPENBLAS_THREAD_TIMEOUT="28") == ["28", "False"]
    assert _blas_sleeps("import numgpt", OPENBLAS_THREAD_TIMEOUT="20") == ["20", "False"]
    assert _blas_sleeps("import numgpt", OPENBLAS_THREAD_TIMEOUT="4") == ["4", "True"]
    # another thread might be inside a product: OpenBLAS's threads are left as they are
    other = "import numpy, threading; threading.Thread(target=threading.Event().wait, daemon=True).start(); import numgpt"
    assert _blas_sleeps(other) == ["19", "False"]


IDLE_CPU = """
import time{first}
import numpy as np
a = np.ones((512, 512), np.float32)
a @ a                                           # OpenBLAS's threads are started and busy
c0 = time.process_time(); time.sleep(0.06); c1 = time.process_time()
print((c1 - c0) / 0.06)
"""


def _idle_cpu_share(first: str, **env: str) -> float:
    """The CPU time the process spends in the 60 ms after a threaded product while doing nothing, as a
    share of those 60 ms: about 1 where OpenBLAS's idle threads spin (2**28 cycles, ~0.1 s), near 0 where
    they sleep."""
    import os
    import subprocess
    import sys
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS",
                                                                  "OMP_NUM_THREADS")} | {"OPENBLAS_NUM_THREADS": "2"} | env
    code = IDLE_CPU.format(first=first)
    return float(subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                                check=True).stdout)


def test_numgpt_imported_after_numpy_stops_openblas_threads_spinning():
    """What the timeout is for, observed: idle OpenBLAS threads that spin eat a core. Imported after NumPy,
    numgpt has OpenBLAS restart them with its timeout; the user's own long timeout is the control."""
    assert _idle_cpu_share("\nimport numpy\nimport numgpt") < 0.3
    assert _idle_cpu_share("\nimport numgpt") < 0.3
    assert _idle_cpu_share("\nimport numpy\nimport numgpt", OPENBLAS_THREAD_TIMEOUT="28") > 0.6


def test_a_plain_batch_one_decode_never_makes_the_panels_a_speculative_one_does(monkeypatch):
    """The panels double the decode matrices' memory: only decodes that multiply several rows make them,
    and a prompt's prefill takes them only for such a decode (generate.decode_steps)."""
    monkeypatch.setattr(P, "panels_pay_off", lambda: True)
    lm = numgpt.load("builtin")
    prompt = "ROMEO: But soft, what light"                           # <= FEW_ROWS tokens: any weight's panels
    assert 1 < len(lm.encode(prompt)) <= P.FEW_ROWS
    last = f"h.{lm.config.n_layer - 1}."             # the prefill's last block multiplies 1 row after c_attn
    blocks = [p for name, p in lm.params.panels.items()
              if name != P.HEAD and (not name.startswith(last) or "c_attn" in name)]   # the head: 1 row too
    plain = lm.generate(prompt, max_new_tokens=6, temperature=0)
    assert all(p._data is None for p in lm.params.panels.values())
    spec = lm.generate(prompt, max_new_tokens=6, temperature=0, speculative="ngram", num_draft=4)
    assert all(p._data is not None for p in blocks)
    assert spec == plain
