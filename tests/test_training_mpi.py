"""Data-parallel training on MPI (training/mpi.py), through real `mpiexec -n 2` subprocesses: the same
weights, moments and losses, bit for bit, as one process of two threads; the MPI all-reduce adds in rank
order; a launcher that is not mpi4py's, ranks that disagree, and a rank killed mid-run all end the job
with a message, bounded in time, the last checkpoint intact."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from references import reference

from numgpt.training.state import load_train_checkpoint

mpi4py = reference("mpi4py")
SHAPE = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "6",
         "--eval-iters", "2"]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


def mpiexec() -> str:
    mpi4py.get_include                                     # skips the test (with a reason) without mpi4py
    found = Path(sys.executable).parent / "mpiexec"        # the MPICH wheel's, beside this Python
    return str(found) if found.exists() else shutil.which("mpiexec") or pytest.skip("no mpiexec on PATH")


def numgpt(*args) -> list[str]:
    return [sys.executable, "-m", "numgpt", *map(str, args)]


def run(cmd, timeout=120, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**env, **kw.pop("env", {})},
                          **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi")
    (folder / "t.txt").write_text(TEXT)
    done = run(numgpt("prepare", folder / "t.txt", "--out", folder / "d", "--vocab-size", 256))
    assert done.returncode == 0, done.stderr
    return folder / "d"


def test_two_ranks_of_one_thread_train_the_weights_of_two_threads_bit_for_bit(data, tmp_path):
    steps = ["--max-iters", 30, "--eval-interval", 10]
    threads = run(numgpt("train", data, "--out", tmp_path / "threads", *SHAPE, *steps, "--threads", 2))
    assert threads.returncode == 0, threads.stderr
    ranks = run([mpiexec(), "-n", "2", *numgpt("train", data, "--out", tmp_path / "ranks", *SHAPE, *steps,
                                               "--threads", 1)])
    assert ranks.returncode == 0, ranks.stderr
    assert "on 2 ranks x 1 threads" in ranks.stderr and ranks.stderr.count("done: step 30") == 0  # rank 0 prints
    assert ranks.stdout.count("done: step 30") == 1                                          # once, to stdout
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (tmp_path / "threads" / "latest" / name).read_bytes() == (tmp_path / "ranks" / "latest" / name).read_bytes()
    losses = [[json.loads(line).get("loss") for line in (tmp_path / run_name / "log.jsonl").read_text().splitlines()]
              for run_name in ("threads", "ranks")]
    assert losses[0] == losses[1] and len(losses[0]) > 30
    assert not (tmp_path / "ranks" / "latest.tmp").exists()


def test_the_mpi_allreduce_adds_in_rank_order_on_three_ranks(tmp_path):
    script = tmp_path / "allreduce.py"
    script.write_text(
        "import numpy as np\n"
        "from numgpt.training.mpi import MPICommunicator\n"
        "comm = MPICommunicator()\n"
        "rng = np.random.default_rng(0)\n"
        "n = 100_003\n"
        "bufs = [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(np.float32) for _ in range(3)]\n"
        "mine = bufs[comm.rank].copy()\n"
        "comm.allreduce_sum(mine)\n"
        "ordered = (bufs[0] + bufs[1]) + bufs[2]\n"
        "other = (bufs[2] + bufs[1]) + bufs[0]\n"
        "import sys\n"
        "open(f'{sys.argv[1]}.{comm.rank}', 'w').write(f'{np.array_equal(mine, ordered)} {np.array_equal(ordered, other)}')\n")
    done = run([mpiexec(), "-n", "3", sys.executable, str(script), str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr
    for rank in range(3):                        # every rank the rank-order sum; the other order differs
        assert (tmp_path / f"out.{rank}").read_text() == "True False"


def test_a_launcher_that_is_not_mpi4pys_is_refused(data, tmp_path):
    mpiexec()
    done = run(numgpt("train", data, "--out", tmp_path / "r", *SHAPE, "--max-iters", 2), env={"PMI_SIZE": "2"})
    assert done.returncode == 2 and not (tmp_path / "r" / "latest").exists()
    assert "the launcher started 2 ranks but this process's MPI sees a world of 1" in done.stderr


def test_ranks_that_disagree_are_refused_and_every_rank_exits(data, tmp_path):
    start = time.time()
    done = run([mpiexec(), "-n", "1", *numgpt("train", data, "--out", tmp_path / "r", *SHAPE, "--max-iters", 2),
                ":", "-n", "1", *numgpt("train", data, "--out", tmp_path / "r", *SHAPE, "--max-iters", 3)], timeout=60)
    assert done.returncode != 0 and time.time() - start < 60
    assert "rank 0 of 2: the ranks disagree on the training options" in done.stderr
    assert "rank 1 of 2: the ranks disagree" in done.stderr and not (tmp_path / "r" / "latest").exists()



def test_fewer_rows_than_ranks_is_refused_at_start(data, tmp_path):
    """--batch-size 1 on 2 ranks: one line from each rank before any step (rank 1 had no rows, and the
    layer-by-layer gradient exchange failed with MPICH's "Message truncated" error stack)."""
    done = run([mpiexec(), "-n", "2", *numgpt("train", data, "--out", tmp_path / "r", *SHAPE, "--batch-size", 1,
                                              "--max-iters", 2, "--threads", 1)], timeout=60)
    assert done.returncode != 0 and "Message truncated" not in done.stderr
    assert "--batch-size 1 leaves some of the 2 ranks without a row; raise --batch-size to at least 2" in done.stderr
    assert not (tmp_path / "r" / "latest").exists()

def test_ranks_given_different_run_folders_are_refused(data, tmp_path):
    """Newcomer round 2: MPMD with another --out per rank silently ignored rank 1's (only rank 0 writes)."""
    done = run([mpiexec(), "-n", "1", *numgpt("train", data, "--out", tmp_path / "a", *SHAPE, "--max-iters", 2),
                ":", "-n", "1", *numgpt("train", data, "--out", tmp_path / "b", *SHAPE, "--max-iters", 2)], timeout=60)
    assert done.returncode == 2, done.stderr
    assert "rank 0 of 2: the ranks disagree on the run folder (--out) (1 of 2 differ from rank 0's)" in done.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def long_run(run_dir: Path, data: Path, eval_interval: int, until) -> subprocess.Popen:
    """A 2-rank training of (practically) endless steps, returned once until() is true (60 s at most)."""
    proc = subprocess.Popen([mpiexec(), "-n", "2", *numgpt("train", data, "--out", run_dir, *SHAPE, "--threads", 1,
                                                           "--max-iters", 100000, "--eval-interval", eval_interval)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not until():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    return proc


def test_a_killed_rank_ends_the_job_and_the_last_checkpoint_is_intact(data, tmp_path):
    run_dir = tmp_path / "r"
    proc = long_run(run_dir, data, 20, lambda: (run_dir / "latest" / "trainstate.json").is_file())
    time.sleep(0.5)
    ranks = subprocess.run(["pgrep", "-f", f"^{sys.executable} -m numgpt train {data} --out {run_dir}"],
                           capture_output=True, text=True)           # the two ranks, not mpiexec itself
    pids = [int(p) for p in ranks.stdout.split()]
    assert len(pids) == 2
    os.kill(max(pids), signal.SIGKILL)                     # one rank dies mid-run
    proc.communicate(timeout=60)                           # the other does not wait forever
    assert proc.returncode != 0
    config, state, _ = load_train_checkpoint(run_dir / "latest")   # intact (atomic swap), loadable
    assert state.step >= 20


def test_a_run_resumes_on_another_number_of_ranks_bit_for_bit(data, tmp_path):
    """2 ranks x 1 thread -> 1 process x 2 threads, and back: the same row split, so the same bits as a
    run that never stopped. The checkpoint does not depend on the world size."""
    common = [*SHAPE, "--eval-interval", 10, "--lr-decay-iters", 40]
    straight = run(numgpt("train", data, "--out", tmp_path / "straight", *common, "--max-iters", 40, "--threads", 2))
    assert straight.returncode == 0, straight.stderr
    reference_weights = (tmp_path / "straight" / "latest" / "model.safetensors").read_bytes()
    first = run([mpiexec(), "-n", "2", *numgpt("train", data, "--out", tmp_path / "a", *common, "--max-iters", 20,
                                               "--threads", 1)])
    assert first.returncode == 0, first.stderr
    then = run(numgpt("train", data, "--out", tmp_path / "a", "--resume", "--max-iters", 40, "--threads", 2))
    assert then.returncode == 0, then.stderr
    assert (tmp_path / "a" / "latest" / "model.safetensors").read_bytes() == reference_weights      # 2 -> 1
    assert "changed from the run's" not in then.stderr       # it said "threads 1 -> 2 ... not bit for bit"
    first = run(numgpt("train", data, "--out", tmp_path / "b", *common, "--max-iters", 20, "--threads", 2))
    assert first.returncode == 0, first.stderr
    then = run([mpiexec(), "-n", "2", *numgpt("train", data, "--out", tmp_path / "b", "--resume", "--max-iters", 40,
                                              "--threads", 1)])
    assert then.returncode == 0, then.stderr
    assert (tmp_path / "b" / "latest" / "model.safetensors").read_bytes() == reference_weights      # 1 -> 2
    assert "changed from the run's" not in then.stderr
    other = run([mpiexec(), "-n", "2", *numgpt("train", data, "--out", tmp_path / "b", "--resume", "--max-iters", 42,
                                               "--threads", 2)])                  # 2 x 2: another row split
    assert other.returncode == 0 and "changed from the run's: ranks x threads 2 x 1 -> 2 x 2" in other.stderr


def test_ctrl_c_on_mpiexec_stops_every_rank_at_one_step_and_saves_latest_once(data, tmp_path):
    run_dir = tmp_path / "r"
    log = run_dir / "log.jsonl"
    proc = long_run(run_dir, data, 100000, lambda: log.is_file() and log.read_text().count('"step"') >= 20)
    proc.send_signal(signal.SIGINT)                        # Ctrl-C: mpiexec passes it to every rank
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count("interrupted at step") == 1           # rank 0 says it, once
    step = int(err.split("interrupted at step ")[1].split(":")[0])
    resume = f"numgpt train {data} --out {run_dir} --resume"    # the same ranks, or their threads in one process
    assert f"continue with `mpiexec -n 2 {resume}` (or in one process `{resume} --threads 2`" in err, err
    assert load_train_checkpoint(run_dir / "latest")[1].step == step
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()
             if json.loads(line).get("type") == "step"]
    assert steps == list(range(1, step + 1))               # one continuous log, every step once


def test_sigterm_on_mpiexec_saves_latest_like_ctrl_c(data, tmp_path):
    """Newcomer round 2: SIGTERM (what `timeout` and batch systems send) killed the ranks with no save.
    mpiexec passes it to every rank; they agree on it at a step boundary, rank 0 saves once, rc 143."""
    run_dir = tmp_path / "r"
    log = run_dir / "log.jsonl"
    proc = long_run(run_dir, data, 100000, lambda: log.is_file() and log.read_text().count('"type": "step"') >= 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.count("stopped by SIGTERM at step") == 1
    step = int(err.split("stopped by SIGTERM at step ")[1].split(":")[0])
    assert step >= 10 and load_train_checkpoint(run_dir / "latest")[1].step == step
    resumed = run([mpiexec(), "-n", "2", *numgpt("train", data, "--out", run_dir, "--resume", "--max-iters", step + 2,
                                                 "--threads", 1)])
    assert resumed.returncode == 0, resumed.stderr
    assert load_train_checkpoint(run_dir / "latest")[1].step == step + 2


FAKE_SSH = """#!/bin/sh
# hydra's ssh launcher runs: fakessh [options] HOST COMMAND...; run COMMAND inside HOST's network namespace,
# with a hostname of its own (a UTS namespace), as a second machine would
while [ "${1#-}" != "$1" ]; do shift; done
host=$1; shift
case $host in
  10.77.0.1) ns=NS_A; name=numgpt-host-a;;
  10.77.0.2) ns=NS_B; name=numgpt-host-b;;
  *) echo "fakessh: unknown host $host" >&2; exit 1;;
esac
exec ip netns exec $ns unshare --uts sh -c "hostname $name; $*"
"""


@pytest.fixture
def two_hosts(tmp_path):
    """Two test hosts on this machine: network namespaces joined by a veth pair (10.77.0.1, 10.77.0.2),
    and an ssh stand-in for mpiexec's launcher. Skipped, with the reason, where they cannot be made."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        pytest.skip("network namespaces need root, iproute2 (ip) and util-linux (unshare)")
    a, b = f"numgpt_a{os.getpid()}", f"numgpt_b{os.getpid()}"
    va, vb = f"nga{os.getpid() % 100000}", f"ngb{os.getpid() % 100000}"
    setup = [f"ip netns add {a}", f"ip netns add {b}", f"ip link add {va} type veth peer name {vb}",
             f"ip link set {va} netns {a}", f"ip link set {vb} netns {b}",
             f"ip -n {a} addr add 10.77.0.1/24 dev {va}", f"ip -n {b} addr add 10.77.0.2/24 dev {vb}",
             f"ip -n {a} link set {va} up", f"ip -n {b} link set {vb} up",
             f"ip -n {a} link set lo up", f"ip -n {b} link set lo up"]
    try:
        for cmd in setup:
            done = subprocess.run(cmd.split(), capture_output=True, text=True)
            if done.returncode:
                pytest.skip(f"cannot make network namespaces here: `{cmd}`: {done.stderr.strip()}")
        ssh = tmp_path / "fakessh"
        ssh.write_text(FAKE_SSH.replace("NS_A", a).replace("NS_B", b))
        ssh.chmod(0o755)
        yield a, va, ssh
    finally:
        subprocess.run(["ip", "netns", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", b], capture_output=True)   # the veth pair goes with them


def tx_bytes(namespace: str, device: str) -> int:
    return int(subprocess.run(["ip", "netns", "exec", namespace, "cat", f"/sys/class/net/{device}/statistics/tx_bytes"],
                              capture_output=True, text=True, check=True).stdout)


def test_two_ranks_on_two_hosts_over_tcp_train_the_weights_of_two_threads(data, tmp_path, two_hosts):
    """Nothing assumes shared memory: the ranks run in separate network namespaces with hostnames of their
    own, so MPI treats them as two machines and the gradients cross the veth link."""
    namespace, device, ssh = two_hosts
    steps = ["--max-iters", 20, "--eval-interval", 10]
    threads = run(numgpt("train", data, "--out", tmp_path / "threads", *SHAPE, *steps, "--threads", 2))
    assert threads.returncode == 0, threads.stderr
    before = tx_bytes(namespace, device)
    # One machine's namespaces still share /dev/shm and can read each other's memory, which MPICH and UCX
    # would use; two machines cannot, so the ranks are held to TCP as between machines: MPICH treats every
    # rank as remote (MPIR_CVAR_NOLOCAL) and UCX moves bytes by TCP only (UCX_TLS=tcp)
    job = " ".join([mpiexec(), "-launcher", "ssh", "-launcher-exec", str(ssh), "-hosts", "10.77.0.1,10.77.0.2",
                    "-genv", "MPIR_CVAR_NOLOCAL", "1", "-genv", "UCX_TLS", "tcp", "-n", "2", *map(str, numgpt("train", data, "--out", tmp_path / "hosts", *SHAPE, *steps,
                                                "--threads", 1))])
    done = run(["ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c", f"hostname numgpt-host-a; {job}"])
    assert done.returncode == 0, done.stderr
    crossed = tx_bytes(namespace, device) - before
    gradient_bytes = 4 * sum(a.size for a in load_train_checkpoint(tmp_path / "hosts" / "latest")[1].params.values())
    assert crossed > 20 * gradient_bytes / 2             # at least half of each step's gradients left over TCP
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (tmp_path / "threads" / "latest" / name).read_bytes() == (tmp_path / "hosts" / "latest" / name).read_bytes()


ZERO_SCRIPT = """
import json, sys
import numpy as np
from numgpt.config import GPTConfig
from numgpt.params import init_params
from numgpt.training.data import load_dataset
from numgpt.training.loop import TrainConfig, train
from numgpt.training.mpi import MPICommunicator
from numgpt.training.state import new_state
data, out, zero = sys.argv[1], sys.argv[2], int(sys.argv[3])
comm = MPICommunicator()
config = GPTConfig(vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=None, eos_token_id=None)
state = new_state(init_params(config, np.random.default_rng(0)), seed=0)
tc = TrainConfig(batch_size=6, block_size=32, max_iters=10, eval_interval=5, eval_iters=1, threads=1, zero=zero)
train(state, config, tc, load_dataset(data), out, comm=comm)
held = sum(a.nbytes for a in state.optim.m.values()) + sum(a.nbytes for a in state.optim.v.values())
open(f"{out}.rank{comm.rank}", "w").write(json.dumps({"moment_bytes": held}))
"""


def test_zero_1_gives_the_bits_of_zero_0_with_half_the_optimizer_state_per_rank(data, tmp_path):
    steps = ["--max-iters", 30, "--eval-interval", 10]
    runs = {}
    for zero in (0, 1):
        done = run([mpiexec(), "-n", "2", *numgpt("train", data, "--out", tmp_path / f"z{zero}", *SHAPE, *steps,
                                                  "--threads", 1, "--zero", zero)])
        assert done.returncode == 0, done.stderr
        runs[zero] = tmp_path / f"z{zero}" / "latest"
    for name in ("model.safetensors", "optimizer.safetensors"):     # one world-size-free checkpoint, same bits
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes()
    resumed = run(numgpt("train", data, "--out", tmp_path / "z1", "--resume", "--max-iters", 40, "--threads", 2,
                         "--zero", 0))                             # and it resumes unsharded on one process
    assert resumed.returncode == 0, resumed.stderr
    script = tmp_path / "zero.py"
    script.write_text(ZERO_SCRIPT)
    held = {}
    for zero in (0, 1):
        done = run([mpiexec(), "-n", "2", sys.executable, str(script), str(data), str(tmp_path / f"api{zero}"), str(zero)])
        assert done.returncode == 0, done.stderr
        held[zero] = [json.loads((tmp_path / f"api{zero}.rank{r}").read_text())["moment_bytes"] for r in range(2)]
    assert held[0][0] == held[0][1]                                 # ZeRO-0: every rank holds all
    assert sum(held[1]) == held[0][0]                               # ZeRO-1: the ranks hold it between them,
    assert all(0.35 < h / held[0][0] < 0.65 for h in held[1])       # about half each (whole tensors per shard)
    print("moment bytes per rank: ZeRO-0", held[0], "ZeRO-1", held[1])


def test_any_split_keeps_the_loss_curve_within_1e_6_of_the_threaded_run(data, tmp_path):
    """2 ranks x 2 threads split each batch 4 ways, one process of 2 threads 2 ways: the float32 sums
    group differently, so not bit for bit, but over 100 steps of the nanoGPT CPU config the losses stay
    within 1e-6 relative (measured: 1.4e-8 on tinyshakespeare)."""
    nanogpt = ["--n-layer", 4, "--n-head", 4, "--n-embd", 128, "--block-size", 64, "--batch-size", 12,
               "--max-iters", 100, "--eval-interval", 0, "--eval-iters", 1]
    one = run(numgpt("train", data, "--out", tmp_path / "one", *nanogpt, "--threads", 2))
    assert one.returncode == 0, one.stderr
    two = run([mpiexec(), "-n", "2", *numgpt("train", data, "--out", tmp_path / "two", *nanogpt, "--threads", 2)])
    assert two.returncode == 0, two.stderr
    curves = [[e["loss"] for e in map(json.loads, (tmp_path / r / "log.jsonl").read_text().splitlines())
               if e.get("type") == "step"] for r in ("one", "two")]
    assert len(curves[0]) == len(curves[1]) == 100
    assert max(abs(a - b) / abs(a) for a, b in zip(*curves)) < 1e-6


OVERLAP_SCRIPT = """
import json
import sys
import numpy as np
from numgpt.config import GPTConfig
from numgpt.params import init_params
from numgpt.training.mpi import MPICommunicator
from numgpt.training.objective import next_token_loss
from numgpt.training.optim import AdamW, AdamWConfig, init_state
from numgpt.training.parallel import DataParallel
comm = MPICommunicator()
config = GPTConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=3, n_head=4)
params = init_params(config, np.random.default_rng(0))
ids = np.random.default_rng(1).integers(0, 50, (4, 8))
calls, phase = [], ["before"]
for name in ("start_allreduce_sum", "allreduce_sum"):
    real = getattr(comm, name)
    def logged(buf, real=real, name=name):
        if buf.dtype == np.float32:                   # the gradients (the loss's sum is float64)
            calls.append((name, phase[0], buf.__array_interface__["data"][0], buf.size))
        return real(buf)
    setattr(comm, name, logged)
dp, runs = DataParallel(1, comm), []
for overlap in (True, False):                         # as loop.train_step runs a micro-batch
    opt = AdamW(params, init_state(params), AdamWConfig(), comm=comm, n_layer=config.n_layer, overlap=overlap)
    base = opt.flat.__array_interface__["data"][0]
    def span(prefix):
        names = [n for n in opt.grads if n.startswith(prefix)]
        start = min((opt.grads[n].__array_interface__["data"][0] - base) // 4 for n in names)
        return [start, sum(opt.grads[n].size for n in names)]
    calls.clear()
    phase[0] = "backward"
    rows = dp.rank_rows(4)
    dp.forward_backward(next_token_loss, params, config, (ids[rows], np.roll(ids, 1, 1)[rows]), opt.grads,
                        total=4, block_done=opt.layer_done)
    phase[0] = "after"
    opt.reduce_gradients()
    got = [[name, when, (address - base) // 4, size] for name, when, address, size in calls]
    runs.append((got, opt.flat.copy(), {p: span(p) for p in ("ln_f.", "h.2.", "h.1.", "h.0.")}))
(overlapped, a, spans), (plain, b, _) = runs
expected = [["start_allreduce_sum", "backward", *spans[p]] for p in ("ln_f.", "h.2.", "h.1.", "h.0.")]
expected.append(["allreduce_sum", "after", 0, min(s[0] for s in spans.values())])   # wte, wpe after it
open(f"{sys.argv[1]}.{comm.rank}", "w").write(json.dumps({
    "overlapped_as_expected": overlapped == expected, "overlapped": overlapped, "plain": plain,
    "size": int(a.size), "same_bits": bool(np.array_equal(a, b)), "summed": bool(np.any(a != 0))}))
"""


def test_adamw_starts_each_layers_gradient_sum_during_the_backward_with_the_same_bits(tmp_path):
    """The path training runs (dp.forward_backward with AdamW's layer_done, then reduce_gradients) on 2
    MPI ranks: ln_f's and each block's sums start inside the backward as it finishes them (ln_f, blocks
    2, 1, 0), wte and wpe's after it; without overlap one all-reduce of the whole buffer after the
    backward; the same bits either way."""
    script = tmp_path / "overlap.py"
    script.write_text(OVERLAP_SCRIPT)
    done = run([mpiexec(), "-n", "2", sys.executable, str(script), str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr
    for rank in range(2):
        out = json.loads((tmp_path / f"out.{rank}").read_text())
        assert out["overlapped_as_expected"], out["overlapped"]
        assert out["plain"] == [["allreduce_sum", "after", 0, out["size"]]]
        assert out["same_bits"] and out["summed"]


def test_four_ranks_resume_a_four_thread_run_bit_for_bit(data, tmp_path):
    """1 process x 4 threads -> 4 ranks x 1 thread: the same four slices summed in the same order (the
    rank-ordered path of 3+ ranks), so the same bits as the run that never stopped."""
    common = [*SHAPE, "--eval-interval", 10, "--lr-decay-iters", 40]
    straight = run(numgpt("train", data, "--out", tmp_path / "straight", *common, "--max-iters", 40, "--threads", 4))
    assert straight.returncode == 0, straight.stderr
    first = run(numgpt("train", data, "--out", tmp_path / "r", *common, "--max-iters", 20, "--threads", 4))
    assert first.returncode == 0, first.stderr
    then = run([mpiexec(), "-n", "4", *numgpt("train", data, "--out", tmp_path / "r", "--resume", "--max-iters", 40,
                                              "--threads", 1)], timeout=300)
    assert then.returncode == 0, then.stderr
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (tmp_path / "r" / "latest" / name).read_bytes() == (tmp_path / "straight" / "latest" / name).read_bytes()
