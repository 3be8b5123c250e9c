"""training/comm.py and the data-parallel code behind it: the thread backend's all-reduce is the plain
ordered sum bit for bit; two ranks (threads standing in for processes) of one thread each give the same
gradients, and train() the same weights, as one process of two threads; the loop calls only the interface."""

import threading

import numpy as np
import pytest

from numgpt.config import GPTConfig
from numgpt.params import init_params, zeros_like
from numgpt.threads import run_in_threads, single_threaded_blas
from numgpt.training.comm import CHUNK, Communicator, SingleProcess, ThreadGroup
from numgpt.training.data import load_dataset, prepare
from numgpt.training.loop import TrainConfig, read_log, train
from numgpt.training.objective import next_token_loss
from numgpt.training.optim import AdamW, AdamWConfig, init_state
from numgpt.training.parallel import DataParallel, add_into, batch_slices, flat_buffer, flat_zeros_like
from numgpt.training.state import new_state

CONFIG = GPTConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)


def as_ranks(size, fn):
    """fn(rank, communicator) in `size` threads at once, one ThreadGroup member each; the results by rank."""
    group = ThreadGroup(size)
    out = [None] * size

    def run(rank):
        out[rank] = fn(rank, group.member(rank))
    run_in_threads(run, size)
    return out


def test_thread_allreduce_is_the_ordered_sum_bit_for_bit():
    rng = np.random.default_rng(0)
    n = 2 * CHUNK + 12345                                        # several chunks, uneven shares
    bufs = [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(np.float32) for _ in range(3)]
    ordered = (bufs[0] + bufs[1]) + bufs[2]
    reference = {"x": bufs[0].copy()}
    add_into(reference, [{"x": bufs[1]}, {"x": bufs[2]}])        # today's thread sum
    assert np.array_equal(reference["x"], ordered)
    assert not np.array_equal((bufs[2] + bufs[1]) + bufs[0], ordered)   # the order shows in the bits
    work = [b.copy() for b in bufs]
    as_ranks(3, lambda rank, comm: comm.allreduce_sum(work[rank]))
    for w in work:
        assert np.array_equal(w, ordered)                        # every rank, the same bits
    work = [b.copy() for b in bufs]
    as_ranks(3, lambda rank, comm: comm.reduce_sum(work[rank]))  # the threads' sum: into rank 0 only
    assert np.array_equal(work[0], ordered)
    assert all(np.array_equal(w, b) for w, b in zip(work[1:], bufs[1:]))    # the others untouched


def test_thread_broadcast_and_barrier():
    bufs = [np.full(10, r, np.float32) for r in range(3)]
    order = []

    def run(rank, comm):
        comm.broadcast(bufs[rank], root=2)
        order.append(("before", rank))
        comm.barrier()
        order.append(("after", rank))
    as_ranks(3, run)
    assert all(np.array_equal(b, np.full(10, 2, np.float32)) for b in bufs)
    assert [step for step, _ in order] == ["before"] * 3 + ["after"] * 3


def test_single_process_is_rank_0_of_1_and_changes_nothing():
    comm = SingleProcess()
    assert isinstance(comm, Communicator) and isinstance(ThreadGroup(2).member(1), Communicator)
    buf = np.arange(5, dtype=np.float32)
    comm.allreduce_sum(buf)
    comm.broadcast(buf)
    comm.barrier()
    assert (comm.rank, comm.size) == (0, 1) and np.array_equal(buf, np.arange(5, dtype=np.float32))
    with pytest.raises(ValueError, match="flat"):
        comm.allreduce_sum(np.zeros((2, 2), np.float32))


def test_abort_releases_a_waiting_rank():
    group = ThreadGroup(2)
    seen = []

    def wait():
        try:
            group.member(0).allreduce_sum(np.zeros(3, np.float32))
        except threading.BrokenBarrierError:
            seen.append("released")
    t = threading.Thread(target=wait)
    t.start()
    group.abort()
    t.join(timeout=10)
    assert seen == ["released"]


@pytest.mark.parametrize("n, ranks", [(5, 2), (7, 3), (2, 4)])
def test_ranks_of_one_thread_split_rows_like_one_rank_of_that_many_threads(n, ranks):
    by_ranks = [s for share in batch_slices(n, ranks, 1) for s in share]
    assert by_ranks == batch_slices(n, 1, ranks)[0]
    assert np.array_equal(np.concatenate([np.arange(n)[s] for s in by_ranks]), np.arange(n))


def test_flat_gradients_are_views_of_one_buffer():
    params = init_params(CONFIG, np.random.default_rng(0))
    flat, views = flat_zeros_like(params)
    assert flat.size == sum(p.size for p in params.values()) and flat_buffer(views) is flat
    assert all(views[k].shape == p.shape for k, p in params.items())
    views["ln_f.bias"][...] = 7
    assert np.count_nonzero(flat == 7) == params["ln_f.bias"].size
    assert flat_buffer(zeros_like(params)) is None               # separate arrays have no flat buffer


@pytest.fixture
def batch():
    params = init_params(CONFIG, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    return params, rng.integers(0, 50, (5, 16)), rng.integers(0, 50, (5, 16))   # 5 rows: uneven shares


def two_micro_batches(dp, params, ids, targets):
    """A step of two micro-batches with dropout, as loop.train_step runs it (dp.forward_backward of this
    rank's rows into AdamW's flat gradients, then its reduce_gradients over the ranks): (losses, flat gradient)."""
    opt = AdamW(params, init_state(params), AdamWConfig(), comm=dp.comm, n_layer=CONFIG.n_layer)
    rng, rows = np.random.default_rng(7), dp.rank_rows(len(ids))
    opt.zero_grad()
    losses = []
    for m in range(2):
        batch = ((ids[::-1] if m else ids)[rows], targets[rows])
        losses.append(dp.forward_backward(next_token_loss, params, CONFIG, batch, opt.grads, scale=0.5, dropout=0.1,
                                          rng=rng, total=len(ids), block_done=opt.layer_done))
        opt.reduce_gradients()
    return losses, opt.flat


def test_two_ranks_of_one_thread_give_the_gradients_of_two_threads_bit_for_bit(batch):
    params, ids, targets = batch
    ref_losses, ref = two_micro_batches(DataParallel(2), params, ids, targets)
    one_thread_losses, one_thread = two_micro_batches(DataParallel(1), params, ids, targets)
    assert not np.array_equal(one_thread, ref)                   # the split shows in the bits
    results = as_ranks(2, lambda rank, comm: two_micro_batches(DataParallel(1, comm), params, ids, targets))
    for losses, flat in results:
        assert losses == ref_losses
        assert np.array_equal(flat, ref)


class Recording(SingleProcess):
    """A single process that counts its collective calls and the buffer sizes."""

    def __init__(self):
        self.calls = []

    def allreduce_sum(self, buf):
        self.calls.append(("allreduce_sum", buf.size))

    def broadcast(self, buf, root=0):
        self.calls.append(("broadcast", buf.size))


TEXT = ("ROMEO: But soft, what light through yonder window breaks?\n"
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n") * 40
SMALL = GPTConfig(vocab_size=256, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=255, eos_token_id=255)


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    from numgpt import train_bpe
    folder = tmp_path_factory.mktemp("comm_data")
    prepare([TEXT], folder, train_bpe(TEXT, vocab_size=256))
    return load_dataset(folder)


def small_tc(**kw):
    return TrainConfig(**{**dict(batch_size=5, block_size=16, max_iters=30, dropout=0.1, grad_accum=2,
                                 eval_interval=10, eval_iters=2, seed=3,
                                 optim=AdamWConfig(lr=3e-3, min_lr=3e-4, warmup_iters=10, decay_iters=30)), **kw})


def fresh(tc):
    return new_state(init_params(SMALL, np.random.default_rng(tc.seed)), seed=tc.seed)


def test_train_on_two_ranks_gives_the_weights_of_two_threads_and_only_rank_0_writes(char_data, tmp_path):
    reference = train(fresh(small_tc(threads=2)), SMALL, small_tc(threads=2), char_data, tmp_path / "threads")
    tc = small_tc(threads=1)
    with single_threaded_blas():                                 # as train() holds it for 2 threads
        results = as_ranks(2, lambda rank, comm: train(fresh(tc), SMALL, tc, char_data, tmp_path / f"rank{rank}",
                                                       comm=comm))
    for result in results:
        for k, v in reference.state.params.items():
            assert np.array_equal(result.state.params[k], v), k
        assert result.last_eval["val_loss"] == reference.last_eval["val_loss"]
    steps = lambda run: [e["loss"] for e in read_log(run) if e["type"] == "step"]  # noqa: E731
    assert steps(tmp_path / "rank0") == steps(tmp_path / "threads")
    assert not (tmp_path / "rank1").exists()


def test_the_loop_sums_each_micro_batch_with_one_call(char_data, tmp_path):
    comm = Recording()
    tc = small_tc(max_iters=2, eval_interval=0, eval_iters=1, threads=1)
    train(fresh(tc), SMALL, tc, char_data, tmp_path, comm=comm)
    n_params = sum(p.size for p in fresh(tc).params.values())
    grads_calls = [c for c in comm.calls if c == ("allreduce_sum", n_params)]
    assert len(grads_calls) == 2 * tc.grad_accum                 # one per micro-batch, the whole gradient
    assert ("broadcast", SMALL.n_embd) in comm.calls              # the start: rank 0's weights


class Overlapping(SingleProcess):
    """A single process that can start sums without waiting, as MPI's 2 ranks can, and logs each call on
    the gradients with the phase it came in: (call, phase, offset in the buffer, size)."""
    can_overlap = True

    def __init__(self, flat_of):
        self.flat_of, self.phase, self.calls = flat_of, "before", []

    def log(self, name, buf):
        if buf.dtype == np.float32:                              # the loss's sum is float64
            offset = (buf.__array_interface__["data"][0] - self.flat_of().__array_interface__["data"][0]) // 4
            self.calls.append((name, self.phase, offset, buf.size))

    def allreduce_sum(self, buf):
        self.log("allreduce_sum", buf)

    def start_allreduce_sum(self, buf):
        self.log("start_allreduce_sum", buf)
        return Done()


class Done:
    def test(self):
        pass

    def wait(self):
        pass


def test_adamw_layer_done_starts_each_layers_sum_during_the_backward(batch):
    """What training runs: dp.forward_backward with AdamW's layer_done starts ln_f's and each block's sum
    as the backward finishes them (ln_f, blocks 1, 0), and reduce_gradients sums wte and wpe after it;
    without overlap, one sum of the whole buffer after the backward. (The same bits on real MPI ranks:
    test_training_mpi.py.)"""
    params, ids, targets = batch
    for overlap in (True, False):
        comm = Overlapping(lambda: opt.flat)
        opt = AdamW(params, init_state(params), AdamWConfig(), comm=comm, n_layer=CONFIG.n_layer, overlap=overlap)
        comm.phase = "backward"
        DataParallel(1, comm).forward_backward(next_token_loss, params, CONFIG, (ids, targets), opt.grads,
                                               block_done=opt.layer_done)
        comm.phase = "after"
        opt.reduce_gradients()
        offset = {n: (g.__array_interface__["data"][0] - opt.flat.__array_interface__["data"][0]) // 4
                  for n, g in opt.grads.items()}

        def bucket(prefix):
            names = [n for n in params if n.startswith(prefix)]
            return min(offset[n] for n in names), sum(params[n].size for n in names)
        if overlap:
            assert comm.calls == [("start_allreduce_sum", "backward", *bucket(p)) for p in ("ln_f.", "h.1.", "h.0.")] \
                + [("allreduce_sum", "after", 0, params["wte.weight"].size + params["wpe.weight"].size)]
        else:
            assert comm.calls == [("allreduce_sum", "after", 0, opt.flat.size)]


@pytest.mark.parametrize("where", ["backward", "sum"])
def test_a_ctrl_c_in_the_main_thread_never_leaves_a_thread_waiting(monkeypatch, where):
    """A KeyboardInterrupt lands wherever the calling thread is: in its backward, or inside the thread
    sum (a barrier). Either way the other thread must be released and the interrupt reach the caller;
    before the fix the second case hung in Thread.join (5 of 25 real Ctrl-Cs on `numgpt train --threads 2`)."""
    import numgpt.training.comm as comm
    import numgpt.training.objective as objective
    params = init_params(CONFIG, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, CONFIG.vocab_size, (4, 8))
    caller = []                                   # the thread that runs the step: slice 0 runs on it
    target, name = (objective, "accumulate_grads") if where == "backward" else (comm.ThreadRank, "reduce_sum")
    real = getattr(target, name)

    def interrupted(*args, **kwargs):
        if threading.current_thread() is caller[0]:
            raise KeyboardInterrupt               # as if Ctrl-C came right there
        return real(*args, **kwargs)
    monkeypatch.setattr(target, name, interrupted)
    outcome = []

    def step():
        caller.append(threading.current_thread())
        try:
            DataParallel(2).forward_backward(next_token_loss, params, CONFIG, (ids, np.roll(ids, 1, axis=1)),
                                             flat_zeros_like(params)[1])
        except KeyboardInterrupt:
            outcome.append("interrupted")
    t = threading.Thread(target=step, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "a thread of the step was left waiting: the step never returned"
    assert outcome == ["interrupted"]


def test_a_ctrl_c_during_the_optimizer_update_is_held_until_it_is_done():
    import os
    import signal
    from numgpt.training.loop import interrupts_held
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)        # delivered now, held by the block
            done.append("update finished")             # the update is not cut short
    assert done == ["update finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the handler is put back


def test_each_rank_reads_only_its_rows_of_a_batch():
    from numgpt.training.data import get_batch
    tokens = np.arange(1000, dtype=np.uint16)
    whole = get_batch(tokens, 6, 8, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    share = get_batch(tokens, 6, 8, rng, rows=slice(3, 6))          # rank 1 of 2
    assert all(np.array_equal(a[3:6], b) for a, b in zip(whole, share))
    after = np.random.default_rng(3)
    after.integers(0, 992, size=6)
    assert rng.bit_generator.state == after.bit_generator.state    # the rng moved on as for the whole batch
    group = ThreadGroup(2)
    assert [DataParallel(1, group.member(r)).rank_rows(7) for r in range(2)] == [slice(0, 3), slice(3, 7)]
