"""`numgpt train`: it learns, its checkpoints load in transformers, resume is bit-exact, Ctrl-C saves,
divergence keeps the last good checkpoint, fine-tuning starts from the given weights, bad input is one line."""

import json
import math
import sys

import numpy as np
import pytest

from numgpt import Tokenizer
from numgpt.formats.hf import load_checkpoint
from numgpt.formats.safetensors import read_safetensors
from numgpt.cli import main
from numgpt.config import GPTConfig
from numgpt.training.data import get_batch, load_dataset, prepare
from numgpt.errors import NumgptError
from numgpt.training.optim import AdamWConfig
from numgpt.params import init_params
from numgpt.training.loop import EVAL_STREAM, TrainConfig, read_log, train
from numgpt.training.state import checkpoint_folder, load_train_checkpoint, new_state

TEXT = ("ROMEO: But soft, what light through yonder window breaks?\n"
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n") * 40
SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4"]
CONFIG = GPTConfig(vocab_size=256, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=255, eos_token_id=255)


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    """TEXT prepared with the byte-level vocabulary (256 ids)."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "in.txt").write_text(TEXT, encoding="utf-8")
    assert main(["prepare", str(folder / "in.txt"), "--out", str(folder / "char"), "--vocab-size", "256"]) == 0
    return folder / "char"


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2data")
    prepare([TEXT], folder, Tokenizer.gpt2())
    return folder


def run_train(*args):
    return main(["train", *map(str, args)])


def step_losses(run):
    return [e["loss"] for e in read_log(run) if e["type"] == "step"]


def test_training_learns_and_saves_a_transformers_checkpoint(char_data, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *SMALL, "--max-iters", 60, "--eval-interval", 30,
                     "--eval-iters", 4, "--lr", 1e-2, "--warmup-iters", 5) == 0
    evals = [e for e in read_log(run) if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.5        # from ln(256) = 5.5 to well below
    data = load_dataset(char_data)
    # ASCII bytes: one token per byte and per char, so bits per byte = nats per token / ln 2
    assert evals[-1]["val_bpb"] == pytest.approx(evals[-1]["val_loss"] / math.log(2))
    assert data.bytes_per_token("val") == 1.0
    assert len(step_losses(run)) == 60
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["max_iters"] == 60 and saved["optim"]["lr"] == 1e-2 and saved["model"]["n_embd"] == 16

    config, params = load_checkpoint(run / "best")
    assert config.vocab_size == 256 and (run / "best" / "vocab.json").is_file()
    model = transformers.GPT2LMHeadModel.from_pretrained(run / "best").eval()
    ids = np.array([list(b"ROMEO: But soft")])
    from numgpt.model import forward
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    # float32 forward of a 1-layer model in two libraries: a few ulps of logits ~10
    np.testing.assert_allclose(forward(params, config, ids, all_logits=True), ref, rtol=0, atol=1e-4)
    assert Tokenizer.load(run / "best").vocab_size == 256


def small_config(**kw):
    base = dict(batch_size=4, block_size=16, max_iters=200, dropout=0.1, grad_accum=2, eval_interval=50,
                eval_iters=2, seed=3, optim=AdamWConfig(lr=3e-3, min_lr=3e-4, warmup_iters=10, decay_iters=200))
    return TrainConfig(**{**base, **kw})


def fresh_state(tc):
    return new_state(init_params(CONFIG, np.random.default_rng(tc.seed)), seed=tc.seed)


def final_weights(run):
    tensors, _ = read_safetensors(run / "latest" / "model.safetensors")
    return tensors


def test_resume_is_bit_exact_after_ctrl_c_and_after_a_crash(char_data, tmp_path):
    data = load_dataset(char_data)
    tc = small_config()
    whole = train(fresh_state(tc), CONFIG, tc, data, tmp_path / "whole")
    assert whole.state.step == 200 and not whole.interrupted

    # Ctrl-C after step 100: saved at 100; resumed to 200
    def ctrl_c_at_100(event):
        if event["type"] == "step" and event["step"] == 100:
            raise KeyboardInterrupt
    cut = train(fresh_state(tc), CONFIG, tc, data, tmp_path / "cut", on_event=ctrl_c_at_100)
    assert cut.interrupted and cut.state.step == 100
    config, state, saved = load_train_checkpoint(tmp_path / "cut" / "latest")
    assert state.step == 100 and TrainConfig.from_dict(saved) == tc
    train(state, config, tc, data, tmp_path / "cut")

    # a crash at step 130 saves nothing: resuming from the step-100 checkpoint replays 101..200
    def crash_at_130(event):
        if event["type"] == "step" and event["step"] == 130:
            raise RuntimeError("power cut")
    with pytest.raises(RuntimeError):
        train(fresh_state(tc), CONFIG, tc, data, tmp_path / "crash", on_event=crash_at_130)
    config, state, _ = load_train_checkpoint(tmp_path / "crash" / "latest")
    assert state.step == 100
    train(state, config, tc, data, tmp_path / "crash")

    reference = step_losses(tmp_path / "whole")
    for name in ("cut", "crash"):
        assert step_losses(tmp_path / name) == reference                  # bit-identical, and one copy each
        got = final_weights(tmp_path / name)
        for k, v in final_weights(tmp_path / "whole").items():
            assert np.array_equal(got[k], v), (name, k)



@pytest.mark.parametrize("stop_at", [100, 200])
def test_a_stop_during_an_evaluation_runs_it_on_resume(char_data, tmp_path, monkeypatch, stop_at):
    """Ctrl-C inside the evaluation at step 100 (or the final one at 200, where resume was refused as already
    at max_iters): the resumed run evaluates that step first, so its log's evaluations, best/ and weights are
    the uninterrupted run's (the evaluation was skipped: "done before saving")."""
    from numgpt.training import loop
    data = load_dataset(char_data)
    tc = small_config()
    train(fresh_state(tc), CONFIG, tc, data, tmp_path / "whole")
    real = loop.estimate_loss

    def stopped_at(t):
        if t.state.step == stop_at:
            raise KeyboardInterrupt
        return real(t)
    monkeypatch.setattr(loop, "estimate_loss", stopped_at)
    cut = train(fresh_state(tc), CONFIG, tc, data, tmp_path / "cut")
    assert cut.interrupted and cut.state.step == stop_at
    monkeypatch.setattr(loop, "estimate_loss", real)
    import numgpt
    resumed = numgpt.setup_run(char_data, tmp_path / "cut", resume_from="latest")   # at max_iters too
    resumed.train()

    def evals(run):
        return [(e["step"], e["val_loss"]) for e in read_log(run) if e["type"] == "eval"]
    assert evals(tmp_path / "cut") == evals(tmp_path / "whole") and [s for s, _ in evals(tmp_path / "whole")] == \
        [0, 50, 100, 150, 200]
    for folder in ("best", "latest"):
        want, _ = read_safetensors(tmp_path / "whole" / folder / "model.safetensors")
        got, _ = read_safetensors(tmp_path / "cut" / folder / "model.safetensors")
        assert all(np.array_equal(got[k], v) for k, v in want.items()), folder

def test_a_stop_inside_the_save_of_best_loses_nothing(char_data, tmp_path, monkeypatch):
    """Ctrl-C while best/ is written after the step-100 evaluation: latest/ had recorded that evaluation's best
    loss while best/ kept the older model, the evaluation was never logged nor run again, and best.tmp stayed
    half-written. Now the stop's latest/ forgets the evaluation, and the resumed run is the uninterrupted one."""
    from numgpt.training import state as state_module
    data = load_dataset(char_data)
    tc = small_config()
    train(fresh_state(tc), CONFIG, tc, data, tmp_path / "whole")
    real = state_module._write_train_checkpoint

    def cut_short(folder, tmp, config, state, *rest):
        if folder.name == "best" and state.step == 100:
            tmp.mkdir()
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
        return real(folder, tmp, config, state, *rest)
    monkeypatch.setattr(state_module, "_write_train_checkpoint", cut_short)
    cut = train(fresh_state(tc), CONFIG, tc, data, tmp_path / "cut")
    assert cut.interrupted and cut.state.step == 100 and not (tmp_path / "cut" / "best.tmp").exists()
    latest = json.loads((tmp_path / "cut" / "latest" / "trainstate.json").read_text())
    best = json.loads((tmp_path / "cut" / "best" / "trainstate.json").read_text())
    assert latest["best_val_loss"] == best["best_val_loss"] and latest["evaluated_step"] < 100
    monkeypatch.setattr(state_module, "_write_train_checkpoint", real)
    import numgpt
    numgpt.setup_run(char_data, tmp_path / "cut", resume_from="latest").train()
    evals = [[(e["step"], e["val_loss"], e["best"]) for e in read_log(tmp_path / run) if e["type"] == "eval"]
             for run in ("cut", "whole")]
    assert evals[0] == evals[1] and (100, evals[1][2][1], True) in evals[1]      # step 100 improved on best
    for folder in ("best", "latest"):
        want, _ = read_safetensors(tmp_path / "whole" / folder / "model.safetensors")
        got, _ = read_safetensors(tmp_path / "cut" / folder / "model.safetensors")
        assert all(np.array_equal(got[k], v) for k, v in want.items()), folder


def test_cli_resume_continues_the_same_run(char_data, tmp_path, capsys):
    common = [*SMALL, "--eval-interval", 10, "--eval-iters", 2, "--lr-decay-iters", 40, "--dropout", 0.1]
    assert run_train(char_data, "--out", tmp_path / "a", *common, "--max-iters", 40) == 0
    assert run_train(char_data, "--out", tmp_path / "b", *common, "--max-iters", 20) == 0
    # the same size flags again are fine on --resume; the saved training config supplies the rest
    assert run_train(char_data, "--out", tmp_path / "b", "--resume", *SMALL[:6], "--max-iters", 40) == 0
    assert step_losses(tmp_path / "b") == step_losses(tmp_path / "a")
    assert [e["step"] for e in read_log(tmp_path / "b") if e["type"] == "eval"] == [0, 10, 20, 30, 40]
    capsys.readouterr()
    msg = one_line_error(capsys, run_train(char_data, "--out", tmp_path / "b", "--resume", "--n-embd", 32))
    assert "--n-embd 32 differs" in msg
    msg = one_line_error(capsys, run_train(char_data, "--out", tmp_path / "b", *SMALL))   # would overwrite
    assert "--resume" in msg and "already holds a training run" in msg


def test_divergence_stops_and_keeps_the_last_good_checkpoint(char_data, tmp_path):
    data = load_dataset(char_data)
    tc = small_config(max_iters=20, eval_interval=4, dropout=0.0, grad_accum=1)
    state = fresh_state(tc)

    def poison_at_6(event):
        if event["type"] == "step" and event["step"] == 6:
            state.params["h.0.mlp.c_fc.weight"][0, 0] = np.nan
    with pytest.raises(NumgptError, match="diverged at step 6.*intact"):
        train(state, CONFIG, tc, data, tmp_path, on_event=poison_at_6)
    _, saved, _ = load_train_checkpoint(tmp_path / "latest")
    assert saved.step == 4 and all(np.isfinite(p).all() for p in saved.params.values())


def test_fine_tuning_starts_from_the_given_weights(gpt2_data, hf_gpt2_vocab_ckpt, tmp_path):
    torch = pytest.importorskip("torch")
    run = tmp_path / "ft"
    assert run_train(gpt2_data, "--init", hf_gpt2_vocab_ckpt.folder, "--out", run, "--block-size", 16,
                     "--batch-size", 2, "--max-iters", 2, "--eval-iters", 3, "--lr", 1e-4, "--seed", 5) == 0
    first_eval = next(e for e in read_log(run) if e["type"] == "eval")
    # the step-0 validation loss is the given model's loss on the evaluation batches
    data = load_dataset(gpt2_data)
    rng = np.random.default_rng([5, EVAL_STREAM])
    losses = []
    with torch.no_grad():
        for _ in range(3):
            x, y = get_batch(data.val, 2, 16, rng)
            logits = hf_gpt2_vocab_ckpt.model(torch.from_numpy(x)).logits
            losses.append(torch.nn.functional.cross_entropy(logits.reshape(-1, 50257), torch.from_numpy(y).reshape(-1)).item())
    assert first_eval["val_loss"] == pytest.approx(np.mean(losses), rel=1e-5)   # float32, two libraries
    config, _ = load_checkpoint(run / "latest")
    assert config.n_embd == 16 and config.vocab_size == 50257
    assert json.loads((run / "train_config.json").read_text())["init"] == str(hf_gpt2_vocab_ckpt.folder)


def one_line_error(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("numgpt: error: "), err
    return err[-1]


def test_bad_input_gets_one_line_errors(char_data, gpt2_data, hf_gpt2_vocab_ckpt, tmp_path, capsys):
    msg = one_line_error(capsys, run_train(char_data, "--init", hf_gpt2_vocab_ckpt.folder, "--out", tmp_path / "x"))
    assert "another tokenizer" in msg
    msg = one_line_error(capsys, run_train(gpt2_data, "--init", hf_gpt2_vocab_ckpt.folder, "--out", tmp_path / "x",
                                           "--block-size", 300))
    assert "300 tokens > the model's context of n_positions=256; pass a smaller --block-size" in msg
    msg = one_line_error(capsys, run_train(char_data, "--out", tmp_path / "x", "--lr", 0))
    assert "--lr must be a finite number > 0, got 0.0" in msg
    msg = one_line_error(capsys, run_train(char_data, "--out", tmp_path / "x", "--n-head", 3, "--n-embd", 16))
    assert "divisible" in msg
    msg = one_line_error(capsys, run_train(char_data, "--out", tmp_path / "none", "--resume"))
    assert "no training checkpoint" in msg and msg.endswith("start without --resume, or pass the --out of an earlier run")
    msg = one_line_error(capsys, run_train(char_data, "--out", tmp_path / "x", "--block-size", 5000))
    assert "tokens, fewer than --block-size + 1 = 5001; use a smaller --block-size" in msg   # block_size, as a flag


@pytest.mark.parametrize("damage", ["state_json", "weights", "optimizer"])
def test_resume_from_a_damaged_checkpoint_is_refused(char_data, tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *SMALL, "--max-iters", 2, "--eval-iters", 1) == 0
    latest = run / "latest"
    if damage == "state_json":
        (latest / "trainstate.json").write_text("{not json")
    elif damage == "weights":
        with open(latest / "model.safetensors", "r+b") as f:
            f.truncate(1000)
    else:
        (latest / "optimizer.safetensors").unlink()
    capsys.readouterr()
    msg = one_line_error(capsys, run_train(char_data, "--out", run, "--resume"))
    assert str(latest) in msg


def test_a_save_cut_between_its_renames_is_recovered(char_data, tmp_path):
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *SMALL, "--max-iters", 2, "--eval-iters", 1) == 0
    (run / "latest").rename(run / "latest.old")          # as if the process died between the two renames
    assert checkpoint_folder(run / "latest") == run / "latest.old"
    assert run_train(char_data, "--out", run, "--resume", "--max-iters", 3) == 0
    assert load_train_checkpoint(run / "latest")[1].step == 3 and not (run / "latest.old").exists()


def test_plot_draws_a_png(char_data, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    assert run_train(char_data, "--out", run, *SMALL, "--max-iters", 4, "--eval-interval", 2, "--eval-iters", 1) == 0
    assert main(["plot", str(run)]) == 0
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (run / "log.jsonl").read_text()
    (run / "log.jsonl").write_text(log + '{"type": "st')           # a kill mid-write: plotted without it
    assert main(["plot", str(run), "-o", str(tmp_path / "y.png")]) == 0
    for damaged, said in ((b"\xff\xfe", "not UTF-8 text, so not a numgpt training log"),      # was a traceback
                          (b"not json\n" + log.encode(), ":1: not an event of a numgpt training log")):  # "train first"
        (run / "log.jsonl").write_bytes(damaged)
        assert said in one_line_error(capsys, main(["plot", str(run), "-o", str(tmp_path / "z.png")]))
    (run / "log.jsonl").write_text(log)
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # as if the `plot` extra were not installed
    capsys.readouterr()
    msg = one_line_error(capsys, main(["plot", str(run), "-o", str(tmp_path / "x.png")]))
    assert "pip install 'numgpt[plot]'" in msg


def test_setup_run_in_python_trains_what_the_cli_trains(char_data, tmp_path):
    """Run setup lives in the library: setup_run + Run.train give the CLI's run, loss for loss."""
    from numgpt.training import setup_run
    assert run_train(char_data, "--out", tmp_path / "cli", *SMALL, "--max-iters", 4, "--eval-interval", 2,
                     "--eval-iters", 1, "--threads", 1) == 0
    run = setup_run(char_data, tmp_path / "py", shape={"n_layer": 1, "n_head": 2, "n_embd": 16},
                    options={"block_size": 16, "batch_size": 4, "max_iters": 4, "eval_interval": 2, "eval_iters": 1,
                             "threads": 1})
    assert run.description == "training from scratch" and run.tc.optim.decay_iters == 4   # the cosine follows
    run.train()
    assert step_losses(tmp_path / "py") == step_losses(tmp_path / "cli")
    resumed = setup_run(char_data, tmp_path / "py", resume_from="latest", options={"max_iters": 6})
    assert resumed.state.step == 4 and resumed.description.startswith("resuming")


def test_an_objective_trains_only_its_parameter_set_with_its_own_loss(char_data, tmp_path):
    """The step is a batch, a loss function and a parameter set (objective.py): a subset is updated exactly as
    in a full run's first step (AdamW is elementwise; no clipping), the rest stays; the loss sees row slices."""
    from numgpt.training.objective import Objective, next_token_batch, next_token_loss
    data = load_dataset(char_data)
    tc = TrainConfig(batch_size=4, block_size=16, max_iters=1, eval_interval=0, eval_iters=1, threads=2,
                     optim=AdamWConfig(grad_clip=0.0, warmup_iters=0, decay_iters=1))
    start = init_params(CONFIG, np.random.default_rng(0))
    full = train(new_state(start, seed=1), CONFIG, tc, data, tmp_path / "full").state.params
    subset = frozenset({"ln_f.weight", "h.0.attn.c_attn.weight", "wpe.weight"})
    rows = []

    def counting_loss(params, config, batch, grads, **kw):
        rows.append(len(batch[0]))
        assert set(grads) == subset                       # gradients of the trained parameters only
        return next_token_loss(params, config, batch, grads, **kw)
    splits = []

    def recording_batch(data, split, *args):
        splits.append(split)
        return next_token_batch(data, split, *args)
    result = train(new_state(start, seed=1), CONFIG, tc, data, tmp_path / "part",
                   objective=Objective(batch=recording_batch, loss=counting_loss, trainable=subset))
    assert rows == [2, 2]                                 # 4 rows over 2 threads
    assert splits == ["train", "train", "val"]            # the step's batch, then the final evaluation's
    for name, p in result.state.params.items():
        expected = full[name] if name in subset else start[name]
        assert np.array_equal(p, expected), name
    moved = {name for name, m in result.state.optim.m.items() if np.any(m)}
    assert moved == subset                                # the frozen ones' moments stay zero

    with pytest.raises(NumgptError, match="'h.9.ln_1.weight', which is no parameter of this model"):
        train(new_state(start, seed=1), CONFIG, tc, data, tmp_path / "bad",
              objective=Objective(trainable=frozenset({"h.9.ln_1.weight"})))
    assert not (tmp_path / "bad").exists()


def test_plot_says_what_each_kind_of_run_logs():
    """RL's evaluated "losses" are 1 - pass@1 and its steps' loss a surrogate: plotted as pass@1 and the
    samples' mean reward; DPO's and a reward model's losses are per preference pair; the rest cross-entropy
    per token (an RL plot said "cross-entropy" over error rates)."""
    from numgpt.cli.train_commands import plotted_quantities
    rl = [{"type": "eval", "step": 0, "train_loss": 1.0, "val_loss": 0.25, "pass@1": 0.75},
          {"type": "step", "step": 1, "loss": 1e-16, "reward": 0.5}]
    q = plotted_quantities(rl)
    assert (q.step_key, q.of_eval(0.25), q.of_eval(1.0)) == ("reward", 0.75, 0.0) and "pass@1" in q.axis
    pairs = [{"type": "eval", "step": 0, "train_loss": 0.69, "val_loss": 0.68, "val_accuracy": 0.5}]
    assert plotted_quantities(pairs).axis.startswith("loss per preference pair")
    lm = [{"type": "eval", "step": 0, "train_loss": 4.0, "val_loss": 4.1}, {"type": "step", "step": 1, "loss": 3.9}]
    q = plotted_quantities(lm)
    assert (q.step_key, q.of_eval(4.1), q.axis) == ("loss", 4.1, "cross-entropy (nats per token)")


def test_a_full_disk_names_the_checkpoint_keeps_the_old_one_and_logs_no_unsaved_evaluation(char_data, tmp_path,
                                                                                          monkeypatch):
    """A save that fails (here the optimizer file, as on a full disk): one NumgptError naming RUN/latest and
    the step its intact checkpoint holds; the partial latest.tmp is removed (it held the space); the step's
    evaluation is not logged as "(best, saved)" (it was printed before the save)."""
    import errno
    from numgpt.training import state as state_module
    data = load_dataset(char_data)
    tc = small_config(max_iters=100)
    real = state_module.write_safetensors

    def full_after_step_0(path, tensors, metadata=None):
        if "optimizer" in str(path) and events and events[-1]["step"] > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, tensors, metadata=metadata)
    events = []
    monkeypatch.setattr(state_module, "write_safetensors", full_after_step_0)
    with pytest.raises(NumgptError) as e:
        train(fresh_state(tc), CONFIG, tc, data, tmp_path / "run", on_event=events.append)
    assert str(e.value) == (f"cannot save the checkpoint {tmp_path / 'run' / 'latest'}: No space left on device; it "
                            "still holds step 0 (a save replaces it whole or not at all)")
    assert not (tmp_path / "run" / "latest.tmp").exists()
    assert [x["step"] for x in events if x["type"] == "eval"] == [0]
    assert load_train_checkpoint(tmp_path / "run" / "latest")[1].step == 0


def test_a_second_ctrl_c_during_the_save_says_what_the_checkpoint_still_holds(char_data, tmp_path, monkeypatch,
                                                                               capsys):
    """Ctrl-C, then Ctrl-C again while RUN/latest is being saved: `numgpt train` ends with one line saying
    that latest/ still holds the last whole save's step (it said only "numgpt: interrupted"), exit 130."""
    from numgpt.training import loop, state as state_module
    real = state_module.write_safetensors
    calls = {"steps": 0}

    def second_ctrl_c_in_the_save(path, tensors, metadata=None):
        if calls["steps"] >= 3 and "optimizer" in str(path):
            raise KeyboardInterrupt
        return real(path, tensors, metadata=metadata)
    real_step = loop.train_step

    def ctrl_c_at_step_3(t):
        calls["steps"] += 1
        if calls["steps"] == 3:
            raise KeyboardInterrupt
        return real_step(t)
    monkeypatch.setattr(state_module, "write_safetensors", second_ctrl_c_in_the_save)
    monkeypatch.setattr(loop, "train_step", ctrl_c_at_step_3)
    argv = ["train", str(char_data), "--out", str(tmp_path / "r"), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--block-size", "16", "--batch-size", "2", "--max-iters", "50", "--eval-iters", "1"]
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"numgpt: interrupted again while saving {tmp_path / 'r' / 'latest'}: it still holds step 0 (a save "
        "replaces it whole or not at all)")
    assert load_train_checkpoint(tmp_path / "r" / "latest")[1].step == 0
