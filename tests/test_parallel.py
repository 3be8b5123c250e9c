"""training/parallel.py: a batch split over threads gives the single-thread loss and gradients (to float32
reordering), the same bits every time, and errors from any thread; threads.single_threaded_blas."""

import numpy as np
import pytest

from numgpt import backprop
from numgpt.config import GPTConfig
from numgpt.errors import NumgptError
from numgpt.training.objective import next_token_loss, next_token_value
from numgpt.training.optim import AdamW, AdamWConfig, init_state
from numgpt.training.parallel import DataParallel, add_into
from numgpt.params import init_params
from numgpt.threads import single_threaded_blas

CONFIG = GPTConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)


def micro_batch(dp, params, ids, targets, opt=None, **kw):
    """One micro-batch as loop.train_step runs it: dp.forward_backward into AdamW's flat gradients (with its
    layer_done), then reduce_gradients; (mean loss, the gradients)."""
    opt = opt or AdamW(params, init_state(params), AdamWConfig(), comm=dp.comm, n_layer=CONFIG.n_layer)
    opt.zero_grad()
    loss = dp.forward_backward(next_token_loss, params, CONFIG, (ids, targets), opt.grads, block_done=opt.layer_done,
                               **kw)
    opt.reduce_gradients()
    return loss, opt.grads


@pytest.fixture
def setup():
    params = init_params(CONFIG, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ids, targets = rng.integers(0, 50, (5, 16)), rng.integers(0, 50, (5, 16))   # 5 rows: uneven slices
    return params, ids, targets


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_split_batch_equals_one_thread(setup, threads):
    params, ids, targets = setup
    ref_loss, ref = backprop.loss_and_grads(params, CONFIG, ids, targets)
    dp = DataParallel(threads)
    opt = AdamW(params, init_state(params), AdamWConfig())
    for _ in range(2):                                   # the second step reuses (and re-zeroes) the buffers
        loss, grads = micro_batch(dp, params, ids, targets, opt, scale=0.5)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        for k in params:
            np.testing.assert_allclose(grads[k], 0.5 * ref[k], rtol=1e-4, atol=1e-8, err_msg=k)
    assert dp.evaluate(next_token_value, params, CONFIG, (ids, targets)) == pytest.approx(ref_loss, rel=1e-6)


def test_one_thread_is_exactly_accumulate_grads(setup):
    params, ids, targets = setup
    ref_loss, ref = backprop.loss_and_grads(params, CONFIG, ids, targets)
    loss, grads = micro_batch(DataParallel(1), params, ids, targets)
    assert loss == ref_loss
    assert all(np.array_equal(grads[k], ref[k]) for k in params)


def test_same_bits_every_time_with_dropout(setup):
    params, ids, targets = setup
    runs = []
    for _ in range(2):
        runs.append(micro_batch(DataParallel(2), params, ids, targets, dropout=0.1, rng=np.random.default_rng(7)))
    (loss_a, a), (loss_b, b) = runs
    assert loss_a == loss_b and all(np.array_equal(a[k], b[k]) for k in params)
    no_dropout, _ = backprop.loss_and_grads(params, CONFIG, ids, targets)
    assert loss_a != no_dropout                          # the masks were applied
    with pytest.raises(ValueError, match="rng"):
        micro_batch(DataParallel(2), params, ids, targets, dropout=0.1)


def test_an_error_in_a_worker_slice_reaches_the_caller(setup):
    params, ids, targets = setup
    bad = targets.copy()
    bad[-1, -1] = 99                                     # out of the vocabulary, in the last slice's rows
    with pytest.raises(NumgptError, match="targets must be in 0..49"):
        micro_batch(DataParallel(2), params, ids, bad)


def test_add_into_sums_every_part(setup):
    params, _, _ = setup
    total = {k: np.ones_like(v) for k, v in params.items()}
    parts = [{k: np.full_like(v, 2.0) for k, v in params.items()}, {k: np.full_like(v, 3.0) for k, v in params.items()}]
    add_into(total, parts)
    assert all(np.all(total[k] == 6.0) for k in params)


def test_single_threaded_blas_limits_and_restores():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    with single_threaded_blas():
        assert all(i["num_threads"] == 1 for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"] == before
