"""The newcomer battery's training rows (shared/reports/newcomer-battery.md, rows 94-127): each refusal is
one line naming the flag or the path, nothing is written before the checks pass, a run folder is
trained by one process at a time, and the messages only name checkpoints that exist."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from numgpt.cli import main
from numgpt.cli.train_commands import TimeEstimate, format_duration
from numgpt.config import GPTConfig
from numgpt.errors import NumgptError
from numgpt.formats.hf import save_checkpoint
from numgpt.params import init_params
from numgpt.training.data import load_dataset
from numgpt.training.lock import run_lock
from numgpt.training.loop import TrainConfig, read_log, train
from numgpt.training.optim import AdamWConfig, ConfigFieldError
from numgpt.training.state import load_train_checkpoint, new_state

TEXT = ("ROMEO: But soft, what light through yonder window breaks?\n"
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n") * 40
SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4"]
QUICK = [*SMALL, "--max-iters", "2", "--eval-iters", "1"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "in.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def char_data(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "char"
    assert main(["prepare", str(text_file), "--out", str(out), "--vocab-size", "256"]) == 0
    return out


def one_line_error(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith("numgpt: error: "), err
    return err[-1]


def run_train(*args):
    return main(["train", *map(str, args)])


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# ---------------------------------------------------------------- prepare (rows 97-101, 15)

def test_prepare_refuses_bad_outputs_and_writes_nothing(text_file, tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    msg = one_line_error(capsys, main(["prepare", str(text_file), "--out", str(tmp_path / "afile")]))
    assert "afile: is an existing file" in msg and (tmp_path / "afile").read_text() == "keep me"
    msg = one_line_error(capsys, main(["prepare", str(text_file), "--out", "/proc/numgpt-data"]))
    assert "/proc/numgpt-data: not writable" in msg
    for fraction, words in (("1", "< 1"), ("0", "> 0 so training can evaluate"), ("nan", "> 0"), ("-1", "> 0")):
        msg = one_line_error(capsys, main(["prepare", str(text_file), "--out", str(tmp_path / "dq"),
                                           "--vocab-size", "256", "--val-fraction", fraction]))
        assert "--val-fraction must be" in msg and words in msg
    assert not (tmp_path / "dq").exists()                         # no tokenizer/ left behind (row 99)
    assert listing(tmp_path) == ["afile"]


def test_prepare_over_an_existing_data_folder_needs_force(text_file, tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["prepare", str(text_file), "--out", str(out), "--vocab-size", "256"]) == 0
    before = (out / "meta.json").read_bytes()
    msg = one_line_error(capsys, main(["prepare", str(text_file), "--out", str(out), "--vocab-size", "300"]))
    assert "--force" in msg and (out / "meta.json").read_bytes() == before
    assert main(["prepare", str(text_file), "--out", str(out), "--vocab-size", "300", "--force"]) == 0
    assert json.loads((out / "meta.json").read_text())["vocab_size"] == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]   # no .tmp / .old siblings left
    # --force replaces a data folder, never a folder of something else
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    msg = one_line_error(capsys, main(["prepare", str(text_file), "--out", str(tmp_path / "mine"), "--force"]))
    assert "not a numgpt data folder" in msg and (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_a_failing_prepare_leaves_no_partial_folder(tmp_path, monkeypatch):
    from numgpt.training import data as data_module
    from numgpt import train_bpe

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(data_module, "tokenizer_fingerprint", fail)   # after the token files are written
    with pytest.raises(OSError):
        data_module.prepare([TEXT], tmp_path / "d", train_bpe(TEXT, vocab_size=256))
    assert listing(tmp_path) == []


def test_prepare_notes_a_smaller_vocabulary_and_warns_of_short_splits(tmp_path, capsys):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("First Citizen: Before we proceed any further", encoding="utf-8")
    assert main(["prepare", str(tiny), "--out", str(tmp_path / "d"), "--vocab-size", "4000"]) == 0
    err = capsys.readouterr().err
    vocab = json.loads((tmp_path / "d" / "meta.json").read_text())["vocab_size"]
    assert vocab < 4000 and f"note: {vocab} tokens, fewer than --vocab-size 4000" in err
    assert "warning: the train split has" in err and "warning: the val split has" in err


def test_prepare_of_a_text_too_short_for_any_block_size_says_add_text(tmp_path, capsys):
    """Newcomer round 2: `prepare one.txt` (1 byte) advised a smaller --block-size, which cannot help."""
    one = tmp_path / "one.txt"
    one.write_text("a", encoding="utf-8")
    # it wrote an unusable folder with a warning and exit 0; now refused, and nothing is written or replaced
    assert main(["prepare", str(one), "--out", str(tmp_path / "d"), "--vocab-size", "256"]) == 2
    err = capsys.readouterr().err
    assert err == ("numgpt: error: the train split would hold 0 tokens, and training needs a window of 2 at "
                   "least: add text, or lower --val-fraction\n") and not (tmp_path / "d").exists()


def test_train_on_data_without_a_val_split_gives_the_right_advice(tmp_path, capsys):
    from numgpt import train_bpe
    from numgpt.training.data import prepare
    prepare([TEXT], tmp_path / "d", train_bpe(TEXT, vocab_size=256), val_fraction=0.0)   # the API allows it
    msg = one_line_error(capsys, run_train(tmp_path / "d", "--out", tmp_path / "run", *QUICK))
    assert "the val split" in msg and "is empty" in msg and "--val-fraction above 0" in msg
    assert "--block-size" not in msg                              # row 98: not the block size's fault


# ---------------------------------------------------------------- train options (rows 107-112, 116, 16)

@pytest.mark.parametrize("flags, words", [
    (["--threads", "0"], "--threads must be >= 1"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0, got inf"),
    (["--grad-clip", "-1"], "--grad-clip must be a finite number >= 0, got -1.0"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--min-lr", "nan"], "--min-lr must be in"),
    (["--beta2", "nan"], "--beta2 must be in [0, 1), got nan"),
    (["--dropout", "inf"], "--dropout must be in [0, 1), got inf"),
    (["--lr-decay-iters", "-1"], "--lr-decay-iters must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
])
def test_a_bad_option_is_refused_naming_only_its_flag(char_data, tmp_path, capsys, flags, words):
    msg = one_line_error(capsys, run_train(char_data, "--out", tmp_path / "run", *SMALL, *flags))
    assert words in msg
    others = {"--weight-decay", "--grad-clip", "eps"} - {flags[0]}
    assert not any(o in msg for o in others)                      # not all three lumped together
    assert not (tmp_path / "run").exists()


def test_the_dataclasses_refuse_with_numgpt_errors_naming_the_field():
    with pytest.raises(ConfigFieldError, match=r"AdamWConfig.weight_decay must be a finite number >= 0, got nan"):
        AdamWConfig(weight_decay=math.nan)
    with pytest.raises(NumgptError, match=r"AdamWConfig.eps must be a finite number > 0"):
        AdamWConfig(eps=0)
    with pytest.raises(NumgptError, match=r"TrainConfig.eval_interval must be >= 0, got -1"):
        TrainConfig(eval_interval=-1)
    assert issubclass(ConfigFieldError, ValueError)               # `except ValueError` still catches it


def test_train_out_that_is_a_file_or_unwritable_is_one_line(char_data, tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    msg = one_line_error(capsys, run_train(char_data, "--out", tmp_path / "afile", *QUICK))
    assert "afile: is an existing file" in msg and (tmp_path / "afile").read_text() == "keep me"
    msg = one_line_error(capsys, run_train(char_data, "--out", "/proc/numgpt-run", *QUICK))
    assert "/proc/numgpt-run: not writable" in msg


def test_help_documents_the_defaults_of_the_dataclasses_and_eval_interval_0(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    tc, opt = TrainConfig(), AdamWConfig()
    for text in (f"windows per micro-batch ({tc.batch_size})", f"optimizer updates in all ({tc.max_iters})",
                 f"peak learning rate ({opt.lr})", f"Adam beta2 ({opt.beta2})", "0 = only at the end",
                 "NUMGPT_NUM_THREADS", "--resume-from"):
        assert text in out, text
    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "the --out folder of a `numgpt train` run" in " ".join(out.split())


def test_numgpt_num_threads_sets_the_default_thread_count(char_data, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMGPT_NUM_THREADS", "3")
    assert run_train(char_data, "--out", tmp_path / "env", *QUICK) == 0
    assert json.loads((tmp_path / "env" / "train_config.json").read_text())["threads"] == 3
    assert run_train(char_data, "--out", tmp_path / "flag", *QUICK, "--threads", 1) == 0   # the flag wins
    assert json.loads((tmp_path / "flag" / "train_config.json").read_text())["threads"] == 1


# ---------------------------------------------------------------- the run lock (row 125)

def test_a_second_training_on_a_held_run_folder_is_refused_naming_the_holder(char_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):
        msg = one_line_error(capsys, run_train(char_data, "--out", run, *QUICK))
        assert str(run) in msg and f"pid {os.getpid()}" in msg and "in use by another training" in msg
        data = load_dataset(char_data)
        tc = TrainConfig(batch_size=4, block_size=16, max_iters=1, eval_iters=1)
        config = GPTConfig(vocab_size=256, n_positions=16, n_embd=16, n_layer=1, n_head=2)
        with pytest.raises(NumgptError, match="in use by another training"):    # the library's train too
            train(new_state(init_params(config, np.random.default_rng(0)), seed=0), config, tc, data, run)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]     # the refused runs wrote nothing
    assert run_train(char_data, "--out", run, *QUICK) == 0       # released: the next run may go


HOLD = """
import sys, time
from numgpt.training.lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_lock_left_by_a_killed_process_does_not_block(char_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        msg = one_line_error(capsys, run_train(char_data, "--out", run, *QUICK))
        assert f"pid {holder.pid}" in msg
    finally:
        holder.send_signal(signal.SIGKILL)                          # kill -9: no cleanup runs
        holder.wait()
    assert (run / ".lock").read_text().strip() == str(holder.pid)   # the stale file is still there
    assert run_train(char_data, "--out", run, *QUICK) == 0


def test_two_real_trainings_at_once_one_is_refused(char_data, tmp_path):
    run = tmp_path / "two"
    cmd = [sys.executable, "-m", "numgpt", "train", str(char_data), "--out", str(run), *SMALL,
           "--max-iters", "300", "--eval-interval", "50", "--eval-iters", "1"]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run / ".lock").is_file() or not (run / ".lock").read_text().strip():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.05)
        second = subprocess.run([*cmd, "--seed", "7"], capture_output=True, text=True, timeout=120)
    finally:
        first_err = first.communicate(timeout=300)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith(f"numgpt: error: {run} is in use by another training")
    steps = [e["step"] for e in read_log(run) if e["type"] == "eval"]
    assert steps == [0, 50, 100, 150, 200, 250, 300]              # one run's evaluations only


# ---------------------------------------------------------------- non-finite --init (rows 118, 109)

def test_init_with_nan_weights_is_refused_naming_the_tensor(char_data, tmp_path, capsys):
    from numgpt.tokenizer import Tokenizer
    config = GPTConfig(vocab_size=256, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=255,
                       eos_token_id=255)
    params = init_params(config, np.random.default_rng(0))
    params["h.0.attn.c_attn.weight"][0, :3] = np.nan
    model = tmp_path / "m_nan"
    save_checkpoint(model, config, params)
    Tokenizer.load(char_data / "tokenizer").save(model)
    code = run_train(char_data, "--out", tmp_path / "run", "--init", model, "--block-size", 16, "--max-iters", 2)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("numgpt: error: ") and err.count("\n") == 1, err  # before any progress
    msg = err.strip()
    assert "weights are not finite: h.0.attn.c_attn.weight has 3 NaN/inf values" in msg
    assert "pass another --init" in msg
    assert "intact" not in msg and not (tmp_path / "run" / "latest").exists()


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # the poisoned weights' NaN, on purpose
def test_divergence_before_any_checkpoint_does_not_claim_one(char_data, tmp_path):
    data = load_dataset(char_data)
    config = GPTConfig(vocab_size=256, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    tc = TrainConfig(batch_size=4, block_size=16, max_iters=20, eval_interval=0, eval_iters=1)
    state = new_state(init_params(config, np.random.default_rng(0)), seed=0)

    def poison(event):
        if event["type"] == "step" and event["step"] == 3:
            state.params["wte.weight"][0, 0] = np.inf
    with pytest.raises(NumgptError) as e:
        train(state, config, tc, data, tmp_path, on_event=poison)
    assert "diverged at step 3" in str(e.value) and "before any checkpoint was saved" in str(e.value)
    assert "intact" not in str(e.value) and not (tmp_path / "latest").exists()
    assert str(e.value).endswith("lower lr= or raise warmup_iters and start again")   # Python's names (defect 9)
    with pytest.raises(NumgptError, match="weights are not finite: wte.weight has 1 NaN/inf values"):
        train(state, config, tc, data, tmp_path)                  # the API refuses such a start too


# ---------------------------------------------------------------- resume from a damaged checkpoint (120, 121)

@pytest.mark.parametrize("damage", ["weights", "optimizer", "state_json"])
def test_a_damaged_latest_points_to_best_and_resume_from_best_works(char_data, tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *SMALL, "--max-iters", 6, "--eval-interval", 3, "--eval-iters", 1,
                     "--lr", 1e-2, "--warmup-iters", 0) == 0
    latest = run / "latest"
    best_step = load_train_checkpoint(run / "best")[1].step
    if damage == "weights":
        with open(latest / "model.safetensors", "r+b") as f:
            f.truncate(1000)
    elif damage == "optimizer":
        with open(latest / "optimizer.safetensors", "r+b") as f:
            f.truncate(1000)
    else:
        (latest / "trainstate.json").write_text('{"format": "numgpt-trai')
    capsys.readouterr()
    msg = one_line_error(capsys, run_train(char_data, "--out", run, "--resume", "--max-iters", 8))
    assert str(latest) in msg and "--resume-from best" in msg and f"step {best_step}" in msg
    assert run_train(char_data, "--out", run, "--resume-from", "best", "--max-iters", 8) == 0
    assert load_train_checkpoint(latest)[1].step == 8
    steps = [e["step"] for e in read_log(run) if e["type"] == "step"]
    assert steps == list(range(1, 9))                             # rewound to best's step, then continued


def test_resume_from_best_continues_like_a_run_from_that_step(char_data, tmp_path):
    common = [*SMALL, "--eval-interval", 4, "--eval-iters", 1, "--lr-decay-iters", 12, "--dropout", 0.1]
    assert run_train(char_data, "--out", tmp_path / "a", *common, "--max-iters", 12) == 0
    assert run_train(char_data, "--out", tmp_path / "b", *common, "--max-iters", 8) == 0
    best = load_train_checkpoint(tmp_path / "b" / "best")[1].step
    assert best == 8                                              # the loss still falls: best is the last
    assert run_train(char_data, "--out", tmp_path / "b", "--resume-from", "best", "--max-iters", 12) == 0
    losses = lambda run: [e["loss"] for e in read_log(run) if e["type"] == "step"]  # noqa: E731
    assert losses(tmp_path / "b") == losses(tmp_path / "a")


# ---------------------------------------------------------------- plot (row 127)

def test_plot_prints_the_file_it_writes_and_refuses_a_folder(char_data, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *QUICK) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["plot", str(run), "-o", "plotout"]) == 0
    assert capsys.readouterr().out.strip() == "plotout.png"
    assert (tmp_path / "plotout.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "plotout").exists()
    assert main(["plot", str(run)]) == 0 and main(["plot", str(run)]) == 0   # a second plot replaces the first
    (tmp_path / "adir").mkdir()
    msg = one_line_error(capsys, main(["plot", str(run), "-o", "adir"]))
    assert "adir: is a folder" in msg and not (tmp_path / "adir.png").exists()
    msg = one_line_error(capsys, main(["plot", str(run), "-o", "x.jpg"]))
    assert ".png" in msg
    msg = one_line_error(capsys, main(["plot", str(run), "-o", "/proc/numgpt-loss.png"]))
    assert "not writable" in msg


# ---------------------------------------------------------------- time estimate and Ctrl-C (row 6 of the ten)

def test_the_time_estimate_after_five_steps(monkeypatch):
    tc = TrainConfig(max_iters=2000, eval_interval=250, eval_iters=20)
    eta = TimeEstimate(tc, 0)
    eta.eval_seconds = 30.0
    lines = [eta.step({"step": s, "seconds": 9.0 if s == 1 else 3.9}) for s in range(1, 8)]
    assert lines[:4] == [None] * 4 and lines[5:] == [None, None]  # said once, after step 5
    assert lines[4] == ("about 2 h 13 min for the 1,995 steps left at 3.90 s/step and 8 evaluations; "
                        "pass --max-iters N for a shorter run (Ctrl-C saves and stops)")
    # 1995 * 3.9 s + 8 * 30 s = 8020.5 s = 2 h 13 min
    assert format_duration(59) == "59 s" and format_duration(250) == "4 min 10 s" and format_duration(3600) == "1 h 0 min"


def test_ctrl_c_before_the_first_evaluation_says_best_is_untrained(char_data, tmp_path, capsys, monkeypatch):
    from numgpt.cli import train_commands

    def interrupt_at_step_3(state, config, tc, data, run, on_event=None):
        def stop(event):
            on_event(event)
            if event["type"] == "step" and event["step"] == 3:
                raise KeyboardInterrupt
        return train(state, config, tc, data, run, on_event=stop)
    monkeypatch.setattr(train_commands, "_train_with_progress",
                        lambda state, config, tc, data, run, _train: interrupt_at_step_3(state, config, tc, data, run,
                                                                                          on_event=lambda e: None))
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *SMALL, "--max-iters", 100, "--eval-interval", 50, "--eval-iters", 1) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 3" in err
    assert f"{run / 'best'} is the untrained step-0 model (the first evaluation after step 0 comes at step 50)" in err
    assert f"use --model {run / 'latest'} (step 3)" in err


def test_real_ctrl_c_releases_the_lock_and_says_what_best_is(char_data, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "numgpt", "train", str(char_data), "--out", str(run), *SMALL,
           "--max-iters", "100000", "--eval-interval", "50000", "--eval-iters", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "best").is_dir():                            # the step-0 evaluation is saved
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert "is the untrained step-0 model (the first evaluation after step 0 comes at step 50000)" in err
    assert (run / ".lock").read_text() == ""                      # released, no pid left
    stopped = load_train_checkpoint(run / "latest")[1].step
    assert run_train(char_data, "--out", run, "--resume", "--max-iters", stopped + 2) == 0   # not locked out
    assert load_train_checkpoint(run / "latest")[1].step == stopped + 2


# ---------------------------------------------------------------- newcomer round 2: memory, SIGTERM, loose ends

@pytest.mark.parametrize("flags, fix", [
    (["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "32", "--batch-size", "100000000"],
     "lower --batch-size"),
    (["--n-layer", "48", "--n-head", "16", "--n-embd", "65536"], "train a smaller model")])
def test_a_shape_that_cannot_fit_is_refused_before_anything_is_allocated(char_data, tmp_path, capsys, flags, fix):
    """Defect 6: --batch-size 100000 was OOM-killed leaving a run folder; 48 x 65536 was an ArrayMemoryError
    traceback. Now one line, no folder, and (tracemalloc sees every NumPy allocation) nothing big allocated."""
    import tracemalloc
    run = tmp_path / "run"
    tracemalloc.start()
    try:
        code = run_train(char_data, "--out", run, *flags, "--max-iters", 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = one_line_error(capsys, code)
    assert msg.startswith("numgpt: error: this shape needs ~") and "GiB available; " in msg and fix in msg
    assert not run.exists()
    assert peak < 64 << 20                                          # the data's maps, the parser: not the shape


def test_sigterm_saves_latest_like_ctrl_c_and_resume_is_bit_exact(char_data, tmp_path):
    """Newcomer round 2: SIGTERM to `numgpt train` (rc 143) saved nothing. Now it stops like Ctrl-C: RUN/latest
    at the last whole step, one line, rc 143, the lock released, and the resumed run lands on the bits of
    a run that never stopped."""
    run = tmp_path / "run"
    flags = [*SMALL, "--eval-interval", "50000", "--eval-iters", "1", "--threads", "1", "--lr-decay-iters", "1000"]
    proc = subprocess.Popen([sys.executable, "-m", "numgpt", "train", str(char_data), "--out", str(run), *flags,
                             "--max-iters", "100000"], stderr=subprocess.PIPE, text=True)
    log = run / "log.jsonl"
    deadline = time.time() + 60
    while not (log.is_file() and log.read_text().count('"type": "step"') >= 5):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM at step" in err and "Traceback" not in err
    stopped = load_train_checkpoint(run / "latest")[1].step
    assert stopped >= 5 and (run / ".lock").read_text() == ""
    assert run_train(char_data, "--out", run, "--resume", "--max-iters", stopped + 3) == 0
    assert run_train(char_data, "--out", tmp_path / "straight", *flags, "--max-iters", stopped + 3) == 0
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (run / "latest" / name).read_bytes() == (tmp_path / "straight" / "latest" / name).read_bytes()


def test_a_sigterm_during_the_optimizer_update_is_held_until_it_is_done():
    from numgpt.training.loop import Terminated, interrupts_held, sigterm_as_interrupt
    done = []
    with pytest.raises(Terminated):
        with sigterm_as_interrupt():
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)       # delivered now, held by the block
                done.append("update finished")
    assert done == ["update finished"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL   # the handler is put back


def test_loose_ends_of_round_2_get_one_line_each(char_data, tmp_path, capsys):
    """Newcomer round 2, defect 10: --resume past --max-iters was a silent no-op; --max-iters -1 named
    --lr-decay-iters; --zero 1 without mpiexec said nothing."""
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *QUICK, "--max-iters", 4) == 0
    capsys.readouterr()
    for max_iters in (2, 4):
        msg = one_line_error(capsys, run_train(char_data, "--out", run, "--resume", "--max-iters", max_iters))
        assert msg == (f"numgpt: error: {run / 'latest'} is already at step 4 >= --max-iters {max_iters}; "
                       "raise --max-iters to continue")
    msg = one_line_error(capsys, run_train(char_data, "--out", tmp_path / "neg", *SMALL, "--max-iters", -1))
    assert msg == "numgpt: error: --max-iters must be >= 0, got -1"
    assert not (tmp_path / "neg").exists()
    assert run_train(char_data, "--out", tmp_path / "z", *QUICK, "--zero", 1) == 0
    assert "note: --zero 1 shards AdamW's moments over the MPI ranks" in capsys.readouterr().err


def test_one_time_estimate_on_screen(char_data, tmp_path, capsys):
    """Newcomer round 2: numgpt's estimate said 'about 18 min' while tqdm's ETA at step 1 said 4:55:03.
    The bar shows no remaining time of its own; the estimate after five steps is the one."""
    import re
    assert run_train(char_data, "--out", tmp_path / "run", *QUICK, "--max-iters", 8) == 0
    err = capsys.readouterr().err
    assert re.search(r"about \d+ s for the 3 steps left", err)
    assert "8/8 [" in err and not re.search(r"\[\d+:\d+<", err)    # tqdm's [elapsed<remaining] is gone


def test_init_builtin_fine_tunes_the_built_in_model(tmp_path, text_file, capsys):
    """The newcomer's wish: --init builtin names the built-in model (resolved by formats.hub, as --model), and
    prepare --tokenizer builtin its vocabulary."""
    from numgpt.formats.hub import builtin_model_folder
    data = tmp_path / "d"
    assert main(["prepare", str(text_file), "--out", str(data), "--tokenizer", "builtin"]) == 0
    assert run_train(data, "--init", "builtin", "--out", tmp_path / "ft", "--max-iters", 1, "--eval-iters", 1,
                     "--block-size", 32, "--batch-size", 2) == 0
    assert f"fine-tuning {builtin_model_folder()}" in capsys.readouterr().err
    assert json.loads((tmp_path / "ft" / "train_config.json").read_text())["init"] == "builtin"
    # more data for the run just trained (its run folder), and GPT-2's shipped vocabulary by name: both refused
    import numpy as np
    assert main(["prepare", str(text_file), "--out", str(tmp_path / "again"), "--tokenizer", str(tmp_path / "ft")]) == 0
    for split in ("train", "val"):
        assert np.array_equal(np.fromfile(tmp_path / "again" / f"{split}.bin", np.uint16),
                              np.fromfile(data / f"{split}.bin", np.uint16))
    for name in ("gpt2", "openai-community/gpt2-medium"):
        out = tmp_path / name.replace("/", "_")
        assert main(["prepare", str(text_file), "--out", str(out), "--tokenizer", name]) == 0
        assert json.loads((out / "meta.json").read_text())["vocab_size"] == 50257


def test_the_python_api_names_its_parameters_and_the_cli_its_flags(char_data, tmp_path, capsys):
    """Newcomer round 2, defect 9: numgpt.setup_run answered a Python caller with CLI flags (--resume,
    --max-iters, --out). The library names its parameters and TrainConfig fields; `numgpt train` says the
    same message in its flags (cli.main's flag_message with the command's vocabulary)."""
    import numgpt
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *QUICK) == 0                # a run at step 2
    capsys.readouterr()
    cases = [  # (setup_run's keywords, its message, numgpt train's flags, their message)
        (dict(resume_from="latest", init="builtin"),
         "resume_from= continues the run in run_dir; init= starts a new run: pass only one",
         ["--resume", "--init", "builtin"],
         "--resume continues the run in --out; --init starts a new run: pass only one"),
        (dict(resume_from="latest", options={"max_iters": 2}),
         f"{run / 'latest'} is already at step 2 >= max_iters 2; raise max_iters to continue",
         ["--resume", "--max-iters", 2],
         f"{run / 'latest'} is already at step 2 >= --max-iters 2; raise --max-iters to continue"),
        (dict(), f"{run} already holds a training run; continue it with resume_from='latest', or pass another run_dir "
                 "(or delete that folder) to start again",
         SMALL, f"{run} already holds a training run; continue it with --resume, or pass another --out "
                "(or delete that folder) to start again"),
        (dict(resume_from="latest", shape={"n_embd": 32}),
         "n_embd 32 differs from the model's shape (with resume_from= the shape comes from the checkpoint); "
         "leave the shape's sizes out",
         ["--resume", "--n-embd", 32], "--n-embd 32 differs from the model's shape (with --resume the shape comes "
                                       "from the checkpoint); leave the shape's sizes out")]
    for keywords, python_message, flags, cli_message in cases:
        with pytest.raises(NumgptError) as e:
            numgpt.setup_run(char_data, run, **keywords)
        assert str(e.value) == python_message
        assert one_line_error(capsys, run_train(char_data, "--out", run, *flags)) == f"numgpt: error: {cli_message}"


def test_the_note_after_ctrl_c_tells_a_fine_tune_from_a_model_trained_from_nothing(tmp_path):
    """RUN/best at step 0 is noise for a model from nothing, but the model it started from for a fine-tune."""
    from numgpt.cli.train_commands import best_checkpoint_note
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "trainstate.json").write_text(json.dumps({"step": 0}))
    scratch = best_checkpoint_note(tmp_path, 5, TrainConfig(eval_interval=10))
    tuned = best_checkpoint_note(tmp_path, 5, TrainConfig(eval_interval=10, init="runs/sft/init"))
    assert "untrained step-0 model" in scratch and "would print noise" in scratch
    assert "is still the step-0 model, runs/sft/init as it started" in tuned and "noise" not in tuned
    assert "(the first evaluation after step 0 comes at step 10)" in tuned
    (tmp_path / "latest").mkdir()                       # an evaluation at step 10 ran, and did not improve
    (tmp_path / "latest" / "trainstate.json").write_text(json.dumps({"step": 15, "evaluated_step": 10}))
    tuned = best_checkpoint_note(tmp_path, 15, TrainConfig(eval_interval=10, init="runs/sft/init"))
    assert "(the evaluation at step 10 did not improve on it)" in tuned and "comes at" not in tuned


def test_a_folder_packed_for_another_tokenizer_is_packed_again_by_its_own_command(tmp_path):
    from numgpt.training.run import repack_advice
    assert repack_advice({"sft": {}}, "chat", tmp_path) == \
        "pack it again for that model: `numgpt sft CHATS --init chat --out DIR --prepare-only`"
    assert "numgpt dpo PAIRS --init chat" in repack_advice({"dpo": {}}, "chat", tmp_path)
    assert f"numgpt prepare TEXT_FILE --tokenizer {tmp_path}" in repack_advice({}, "chat", tmp_path)


@pytest.mark.parametrize("command", [["sft", "x.jsonl", "--init", "builtin", "--out", "r"],
                                     ["dpo", "x.jsonl", "--init", "chat", "--out", "r"],
                                     ["reward", "train", "x.jsonl", "--init", "chat", "--out", "r"],
                                     ["train", "data", "--out", "r"]])
def test_a_negative_seed_is_one_line_for_every_command(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == "numgpt: error: --seed must be a whole number >= 0, got -1\n" and not (tmp_path / "r").exists()


def test_a_run_is_not_lost_to_another_tokenizer_a_missing_latest_or_its_data_folder(char_data, text_file, tmp_path,
                                                                                    capsys):
    """Three ways a newcomer lost a run (review 20), each refused in one line, the run untouched:
    --resume on data of another tokenizer (only the vocabulary size was compared: the run trained on other ids
    and saved that tokenizer's files, after which no checkpoint loaded); a new run in a folder whose latest/ is
    gone but whose best/ and log stay (it was replaced; the advice is resume_from best); --out inside DATA_DIR
    (`prepare --force` on the data deletes it)."""
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *QUICK) == 0
    before = listing(run)
    other = tmp_path / "other"                                     # the same text, another vocabulary
    assert main(["prepare", str(text_file), "--out", str(other), "--vocab-size", "260"]) == 0
    capsys.readouterr()
    assert one_line_error(capsys, run_train(other, "--out", run, "--resume", "--max-iters", 4)) == (
        f"numgpt: error: {other} was prepared with another tokenizer than the run's ({run / 'latest'}); resume on "
        f"data prepared with the run's tokenizer (numgpt prepare --tokenizer {run / 'latest'}), or start a new --out")
    assert listing(run) == before
    shutil.rmtree(run / "latest")
    assert one_line_error(capsys, run_train(char_data, "--out", run, *QUICK)) == (
        f"numgpt: error: {run} already holds a training run (best); continue it from {run / 'best'} (step 2) with "
        "--resume-from best, or pass another --out (or delete that folder) to start again")
    assert run_train(char_data, "--out", run, "--resume-from", "best", "--max-iters", 3) == 0
    inside = char_data / "runs" / "x"
    assert one_line_error(capsys, run_train(char_data, "--out", inside, *QUICK)) == (
        f"numgpt: error: --out {inside} is inside the data folder {char_data}, which `numgpt prepare --force` "
        "replaces whole; pass a --out outside it")
    assert not inside.exists()


def test_a_text_file_or_a_run_folder_given_as_data_gets_advice_that_works(char_data, text_file, tmp_path, capsys):
    """`numgpt train input.txt`: the prepare command that makes its data (it advised `prepare TEXT_FILE --out
    input.txt`, over the text); a run folder as data: the data folder it was trained on."""
    assert one_line_error(capsys, run_train(text_file, "--out", tmp_path / "r", *QUICK)) == (
        f"numgpt: error: {text_file} is a file; training reads a prepared data folder: `numgpt prepare {text_file} "
        f"--out {text_file.with_suffix('')}`, then train on {text_file.with_suffix('')}")
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *QUICK) == 0
    capsys.readouterr()
    assert one_line_error(capsys, run_train(run, "--out", tmp_path / "r2", *QUICK)) == (
        f"numgpt: error: {run} is a training run's folder, not data; pass the data folder it was trained on "
        f"(data_dir in {run / 'train_config.json'})")


def test_a_resume_that_changes_the_numbers_says_so(char_data, tmp_path, capsys):
    """--resume with another --lr or --threads continues, but not as the one run it resumes: the first line
    says which options changed (they went ahead silently); a longer --max-iters alone says nothing."""
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *QUICK, "--threads", 1, "--lr", "1e-3") == 0
    capsys.readouterr()
    assert run_train(char_data, "--out", run, "--resume", "--max-iters", 3) == 0
    assert "changed from the run's" not in capsys.readouterr().err
    assert run_train(char_data, "--out", run, "--resume", "--max-iters", 4, "--lr", "0.01", "--threads", 2) == 0
    assert (f"resuming {run / 'latest'} at step 3; changed from the run's: lr 0.001 -> 0.01, threads 1 -> 2 (it "
            "continues, but not bit for bit as one run)") in capsys.readouterr().err


def test_sigterm_stops_any_command_in_one_line_and_leaves_no_tmp(text_file, tmp_path, capsys, monkeypatch):
    """SIGTERM during prepare's write: it killed the process silently (exit by the signal) and left OUT.tmp;
    now it is stopped as Ctrl-C is, exit 143, and the earlier data folder is still there whole."""
    import os
    import signal
    from numgpt.training import data as data_module
    out = tmp_path / "d"
    assert main(["prepare", str(text_file), "--out", str(out), "--tokenizer", "builtin"]) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    real = data_module._write_data_folder

    def killed_midway(folder, *rest):
        (folder / "train.bin").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)           # delivered here, in the main thread
        return real(folder, *rest)
    monkeypatch.setattr(data_module, "_write_data_folder", killed_midway)
    capsys.readouterr()
    previous = signal.getsignal(signal.SIGTERM)
    assert main(["prepare", str(text_file), "--out", str(out), "--tokenizer", "builtin", "--force"]) == 143
    assert capsys.readouterr().err == "numgpt: stopped by SIGTERM\n"
    assert not (tmp_path / "d.tmp").exists() and {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
    assert signal.getsignal(signal.SIGTERM) is previous          # main's handler is put back


def test_prepare_reads_stdin_for_dash(text_file, tmp_path, capsys, monkeypatch):
    """`numgpt prepare -` reads the text from stdin, as `numgpt perplexity -` does (it said "-: no such file"):
    the same tokens as the file."""
    import io
    assert main(["prepare", str(text_file), "--out", str(tmp_path / "a"), "--tokenizer", "builtin"]) == 0
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text_file.read_bytes()), encoding="utf-8"))
    assert main(["prepare", "-", "--out", str(tmp_path / "b"), "--tokenizer", "builtin"]) == 0
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / split).read_bytes() == (tmp_path / "b" / split).read_bytes()


def test_a_schedule_that_never_reaches_its_lr_gets_a_note(char_data, tmp_path, capsys):
    """--warmup-iters beyond --max-iters (or a decay ending inside the warmup) trains as asked, with a note
    saying what the learning rate does (it went ahead silently)."""
    assert run_train(char_data, "--out", tmp_path / "a", *QUICK, "--warmup-iters", 500, "--lr", "1e-3") == 0
    from numgpt.training.optim import AdamWConfig, learning_rate
    last = learning_rate(AdamWConfig(lr=1e-3, warmup_iters=500), 1)
    assert (f"note: --warmup-iters 500 is not below --max-iters 2: the learning rate never reaches --lr 0.001 (its "
            f"last step's is {last:.3g})") in capsys.readouterr().err
    assert run_train(char_data, "--out", tmp_path / "b", *QUICK, "--max-iters", 4, "--warmup-iters", 3,
                     "--lr-decay-iters", 2, "--lr", "1e-3", "--min-lr", "1e-4") == 0
    assert (f"note: --lr-decay-iters 2 ends inside the warmup (3 steps): after it the learning rate drops from "
            f"{learning_rate(AdamWConfig(lr=1e-3, warmup_iters=3), 2):.3g} to --min-lr 0.0001") in capsys.readouterr().err
    assert run_train(char_data, "--out", tmp_path / "c", *QUICK, "--warmup-iters", 1, "--lr-decay-iters", 2) == 0
    assert "note: --" not in capsys.readouterr().err
    from numgpt.threads import thread_count
    assert run_train(char_data, "--out", tmp_path / "d", *QUICK, "--threads", thread_count() + 1) == 0
    assert f"note: --threads {thread_count() + 1} is more than the {thread_count()} cores" in capsys.readouterr().err


def test_the_progress_bar_in_a_log_file_is_lines_not_carriage_returns(char_data, tmp_path, capsys):
    """stderr that is not a terminal (a log file, a pipe) gets the bar as whole lines: no carriage return, so
    a log reads line by line (tqdm's redraws made one long line of bar fragments)."""
    assert run_train(char_data, "--out", tmp_path / "r", *QUICK) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and any(line.startswith("100%|") and "2/2" in line for line in err.splitlines()), err
