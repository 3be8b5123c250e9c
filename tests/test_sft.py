"""numgpt sft: the masked loss against torch autograd (float64), packing and masks, learning, resume,
ranks against threads, and bad input (issue 21 item 2). A tiny model and tokenizer made here, synthetic
conversations from numgpt.posttrain.synth."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from references import reference

from numgpt import backprop, save_checkpoint, train_bpe
from numgpt.cli import main
from numgpt.config import GPTConfig
from numgpt.formats import load_checkpoint
from numgpt.model import reference_forward
from numgpt.params import init_params
from numgpt.posttrain.chat_format import render_for_training
from numgpt.posttrain.chatdata import write_conversations
from numgpt.posttrain.packing import load_masks
from numgpt.posttrain.sft import PackedBatches, masked_loss, sft_objective
from numgpt.posttrain.synth import synthesize
from numgpt.threads import run_in_threads, single_threaded_blas
from numgpt.tokenizer import Tokenizer
from numgpt.training.comm import ThreadGroup
from numgpt.training.data import load_dataset
from numgpt.training.loop import TrainConfig, train
from numgpt.training.optim import AdamWConfig
from numgpt.training.state import new_state

torch = reference("torch")
transformers = reference("transformers")

BLOCK = 64
FAST = ["--block-size", str(BLOCK), "--threads", "1", "--batch-size", "4", "--eval-iters", "4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base model (no chat tokens) with a BPE vocabulary of the synthetic text, and 50 conversations."""
    root = tmp_path_factory.mktemp("sft")
    tasks = synthesize(50, rng=np.random.default_rng(0))
    write_conversations(root / "chats.jsonl", tasks)
    text = " ".join(m["content"] for t in synthesize(300, rng=np.random.default_rng(1)) for m in t["messages"])
    tok = train_bpe(text, vocab_size=320, special_tokens=["<|endoftext|>"])
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=BLOCK, vocab_size=tok.vocab_size,
                       bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    save_checkpoint(root / "base", config, init_params(config, np.random.default_rng(0)), tokenizer=tok)
    return root


def sft(world, out, *extra):
    return main(["sft", str(world / "chats.jsonl"), "--init", str(world / "base"), "--out", str(out), *FAST, *extra])


def relative_error(ours, ref):
    return float(np.linalg.norm((ours - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-300))


# ---- the loss against torch ---------------------------------------------------------------------------

def mask_with_uneven_rows(rng, B, T):
    """[B, T] 0/1: rows with different numbers of trained tokens, and row 1 with none."""
    mask = (rng.random((B, T)) < np.linspace(0.2, 0.9, B)[:, None]).astype(np.uint8)
    mask[1] = 0
    return mask


def test_weighted_cross_entropy_pair_is_the_masked_mean_of_torch(world):
    rng = np.random.default_rng(3)
    B, T, V = 4, 7, 11
    logits = rng.standard_normal((B * T, V))
    targets = rng.integers(0, V, B * T)
    mask = mask_with_uneven_rows(rng, B, T).reshape(-1)
    weights = mask / mask.sum()                                        # the masked mean as a weighted sum
    loss, probs = backprop.weighted_cross_entropy_forward(logits.copy(), targets, weights)
    dlogits = backprop.weighted_cross_entropy_backward(probs, targets, weights, scale=0.5)
    t_logits = torch.tensor(logits, requires_grad=True)
    nll = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(targets), reduction="none")
    ref = (nll * torch.from_numpy(mask.astype(np.float64))).sum() / mask.sum()
    (0.5 * ref).backward()
    assert loss == pytest.approx(ref.item(), rel=1e-6)
    assert relative_error(dlogits, t_logits.grad.numpy()) < 1e-6
    assert np.all(dlogits.reshape(B, T, V)[1] == 0)                    # the row with no trained token


def hf_double(config, params):
    """transformers' GPT-2 in float64 holding our params (Conv1D stores [in, out] as we do)."""
    hf_config = transformers.GPT2Config(**{k: v for k, v in config.to_hf_dict().items()
                                           if k not in ("architectures", "torch_dtype")}, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(hf_config).double()
    sd = model.state_dict()
    with torch.no_grad():
        for name, p in params.items():
            sd["transformer." + name].copy_(torch.from_numpy(p))
    return model.train()


def test_masked_loss_and_every_gradient_match_torch_in_float64(world):
    """The SFT batch (weights = mask * B / W) through the whole model, against torch's masked mean."""
    config = GPTConfig(vocab_size=37, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    rng = np.random.default_rng(4)
    params = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float64)
              for k, v in init_params(config, np.random.default_rng(0)).items()}
    B, T = 5, 16
    tokens = rng.integers(0, config.vocab_size, (B, T + 1))
    mask = mask_with_uneven_rows(rng, B, T + 1)

    class Rows:                                                       # a Dataset's split, rows back to back
        def split(self, name):
            return tokens.reshape(-1)
    picks = PackedBatches({"train": mask})(Rows(), "train", B, T, np.random.default_rng(5), slice(0, B))
    ids, targets, weights = picks
    assert weights.sum() == pytest.approx(B)                           # mask * B / W
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    loss = masked_loss(params, config, (ids, targets, weights.astype(np.float64)), grads)

    model = hf_double(config, params)
    logits = model(torch.from_numpy(ids)).logits
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size),
                                            torch.from_numpy(targets).reshape(-1), reduction="none")
    m = torch.from_numpy((weights > 0).astype(np.float64).reshape(-1))
    ref = (nll * m).sum() / m.sum()
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-6)
    for name, p in model.named_parameters():
        if name == "lm_head.weight":
            continue                                                   # tied to wte
        assert relative_error(grads[name.removeprefix("transformer.")], p.grad.numpy()) < 1e-6, name



def test_only_the_trained_positions_are_projected_and_a_batch_with_none_has_no_gradient(world):
    """backprop.trained_rows_logits projects the positions with a weight only; a batch whose weights are
    all 0 gives loss 0 and every gradient exactly 0 (sft.py's promise), and the same batch with one
    weighted position gives that position's loss alone."""
    from numgpt.backprop import Workspace, trained_rows_logits
    config = GPTConfig(vocab_size=37, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    params = init_params(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ids, targets = rng.integers(0, 37, (3, 16)), rng.integers(0, 37, (3, 16))
    weights = np.zeros((3, 16), np.float32)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    assert masked_loss(params, config, (ids, targets, weights), grads) == 0.0
    assert all(not v.any() for v in grads.values())
    weights[1, 5] = 3.0                                                # row 1, position 5: weight 3
    xf = np.random.default_rng(2).standard_normal((48, 16)).astype(np.float32)
    keep, logits = trained_rows_logits(params, xf, weights, Workspace())
    assert keep.tolist() == [21] and logits.shape == (1, 37)
    assert np.allclose(logits[0], xf[21] @ params["wte.weight"].T, rtol=1e-6)
    loss = masked_loss(params, config, (ids, targets, weights), grads)
    full = reference_forward(params, config, ids)[1, 5].astype(np.float64)            # [V]
    nll = np.log(np.exp(full - full.max()).sum()) + full.max() - full[targets[1, 5]]
    assert loss == pytest.approx(3.0 * nll / 3, rel=1e-5)              # sum(weights * nll) / B, B = 3

# ---- packing and masks ----------------------------------------------------------------------------------

def packed(folder):
    data = load_dataset(folder)
    masks = load_masks(folder, data.meta)
    return data, masks, data.train.reshape(-1, BLOCK + 1)


def test_masks_are_the_chat_formats_and_train_on_all_changes_them(world, tmp_path):
    assert sft(world, tmp_path / "a", "--prepare-only") == 0
    assert sft(world, tmp_path / "b", "--prepare-only", "--train-on", "all") == 0
    data, masks, rows = packed(tmp_path / "a")
    _, masks_all, rows_all = packed(tmp_path / "b")
    assert np.array_equal(rows, rows_all)                              # the same rows, another mask
    tok = Tokenizer.load(data.tokenizer_dir)
    # the first train row starts with the first train conversation: its render and mask, verbatim
    meta = data.meta["sft"]
    assert meta["conversations"] == {"train": 45, "val": 5}
    assert data.meta["splits"]["train"]["trained_tokens"] == int(masks["train"].sum())
    records = [json.loads(line) for line in (world / "chats.jsonl").read_text().splitlines()]
    found = False
    for record in records:
        ids, mask = render_for_training(tok, record["messages"])
        if len(ids) <= BLOCK + 1 and list(rows[0, :len(ids)]) == ids:
            assert list(masks["train"][0, :len(ids)]) == mask
            found = True
            break
    assert found and rows[0, 0] == tok.eot_id                         # a row starts with a conversation
    a, b = masks["train"].astype(bool), masks_all["train"].astype(bool)
    assert (a <= b).all() and b.sum() > 2 * a.sum()                    # every assistant token, and the prompts
    assert not b[rows == tok.eot_id].any()         # conversations' first tokens and the padding: never predicted
    assert b.sum() == (rows != tok.eot_id).sum()    # every other token is, with --train-on all
    assert not b[:, 0].any()                                           # the first token is never predicted


# ---- training ---------------------------------------------------------------------------------------------

def val_losses(run):
    return [e["val_loss"] for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if e["type"] == "eval"]


def test_sft_lowers_the_masked_validation_loss(world, tmp_path, capsys):
    run = tmp_path / "run"
    assert sft(world, run, "--max-iters", "30", "--eval-interval", "30", "--lr", "3e-3") == 0
    err = capsys.readouterr().err
    assert "has no chat tokens; added" in err
    losses = val_losses(run)
    assert len(losses) == 2 and losses[1] < losses[0] - 0.5
    config, _ = load_checkpoint(run / "latest")
    assert config.vocab_size == 320 + 4                                # <|system|> <|user|> <|assistant|> <|end|>
    assert Tokenizer.load(run / "latest").chat_template is not None


def test_resume_after_ctrl_c_is_bit_exact(world, tmp_path, monkeypatch):
    common = ["--max-iters", "12", "--eval-interval", "5", "--seed", "7"]
    assert sft(world, tmp_path / "straight", *common) == 0
    from numgpt.cli import train_commands
    step = train_commands.TimeEstimate.step

    def ctrl_c_at_step_7(self, ev):                       # Ctrl-C lands in the loop after step 7's update
        if ev["step"] == 7:
            raise KeyboardInterrupt
        return step(self, ev)
    monkeypatch.setattr(train_commands.TimeEstimate, "step", ctrl_c_at_step_7)
    assert sft(world, tmp_path / "halves", *common) == 130
    monkeypatch.undo()
    assert json.loads((tmp_path / "halves" / "latest" / "trainstate.json").read_text())["step"] == 7
    assert main(["sft", str(world / "chats.jsonl"), "--out", str(tmp_path / "halves"), "--resume"]) == 0
    _, a = load_checkpoint(tmp_path / "straight" / "latest")
    _, b = load_checkpoint(tmp_path / "halves" / "latest")
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert val_losses(tmp_path / "straight")[-1] == val_losses(tmp_path / "halves")[-1]


def test_two_ranks_of_one_thread_train_the_weights_of_two_threads(world, tmp_path):
    assert sft(world, tmp_path / "data", "--prepare-only") == 0
    data = load_dataset(tmp_path / "data")
    objective = sft_objective(data)
    from numgpt.posttrain.chat_format import add_chat_tokens
    from numgpt.formats import load_tokenizer
    config, params = load_checkpoint(world / "base")
    config, params, _ = add_chat_tokens(config, params, load_tokenizer(world / "base", config))
    params = {k: np.array(v) for k, v in params.items()}

    def tc(threads):
        return TrainConfig(batch_size=4, block_size=BLOCK, max_iters=3, eval_interval=0, eval_iters=2,
                           threads=threads, optim=AdamWConfig(lr=1e-3, warmup_iters=0))
    fresh = lambda: new_state({k: v.copy() for k, v in params.items()}, seed=3)  # noqa: E731
    ref = train(fresh(), config, tc(2), data, tmp_path / "threads", objective=objective)
    group = ThreadGroup(2)
    out = [None, None]

    def rank(r):
        out[r] = train(fresh(), config, tc(1), data, tmp_path / f"rank{r}", comm=group.member(r), objective=objective)
    with single_threaded_blas():
        run_in_threads(rank, 2)
    for result in out:
        for k, v in ref.state.params.items():
            assert np.array_equal(result.state.params[k], v), k
        assert result.last_eval["val_loss"] == ref.last_eval["val_loss"]


# ---- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, words", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}, "user"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}, "robot"),
])
def test_bad_lines_are_one_line_errors_naming_the_line_and_leave_nothing(world, tmp_path, capsys, line, words):
    data = tmp_path / "bad.jsonl"
    good = (world / "chats.jsonl").read_text().splitlines()[:3]
    data.write_text("\n".join([*good, json.dumps(line)]) + "\n")
    run = tmp_path / "run"
    assert main(["sft", str(data), "--init", str(world / "base"), "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data}:4:" in err and words in err, err
    assert not run.exists()


def test_a_conversation_longer_than_the_context_is_cut_or_refused(world, tmp_path, capsys):
    data = tmp_path / "long.jsonl"
    long = {"messages": [{"role": "user", "content": "count " * 200}, {"role": "assistant", "content": "200"}]}
    good = [json.dumps({"messages": [{"role": "user", "content": f"{i} + 1?"},
                                     {"role": "assistant", "content": str(i + 1)}]}) for i in range(9)]
    data.write_text("\n".join([*good, json.dumps(long)]) + "\n")
    args = ["sft", str(data), "--init", str(world / "base"), *FAST, "--val-fraction", "0.2", "--seed", "1"]
    assert main([*args, "--out", str(tmp_path / "refused"), "--truncate", "no"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data}:10:" in err and "longer than the context" in err
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--out", str(tmp_path / "cut"), "--prepare-only"]) == 0
    err = capsys.readouterr().err
    assert ("1 train and 0 val" in err or "0 train and 1 val" in err) and "longer than 65 tokens and were cut" in err


def test_other_refusals_leave_nothing(world, tmp_path, capsys):
    other = tmp_path / "other_template"
    shutil.copytree(world / "base", other)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ messages }}"
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    assert main(["sft", str(world / "chats.jsonl"), "--init", str(other), "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chat_template is not numgpt's" in err and not run.exists()
    assert main(["sft", str(world / "chats.jsonl"), "--out", str(run), *FAST]) == 2
    assert "--init MODEL is required" in capsys.readouterr().err and not run.exists()
    # the model's context is shorter than the rows asked for: setup_run refuses, RUN/data and RUN/init go
    assert sft(world, run, "--block-size", "100") == 2
    assert capsys.readouterr().err.count("\n") == 1 and not run.exists()
    # setup_run refuses after RUN/data and RUN/init were written: they go, and an existing RUN stays
    run.mkdir()
    assert sft(world, run, "--batch-size", "0") == 2
    assert "--batch-size must be positive" in capsys.readouterr().err and run.is_dir() and not any(run.iterdir())
    run.rmdir()
    # resume with another file than the run's
    assert sft(world, run, "--max-iters", "1", "--eval-iters", "1") == 0
    capsys.readouterr()
    changed = tmp_path / "changed.jsonl"
    changed.write_text((world / "chats.jsonl").read_text().replace("numgpt", "mumgpt"))
    assert main(["sft", str(changed), "--out", str(run), "--resume", "--max-iters", "2"]) == 2
    assert "is not the file" in capsys.readouterr().err
    # the same path, edited since: said as that (it read "is not the file run was prepared from (that file)")
    edited = tmp_path / "edited.jsonl"
    shutil.copy(world / "chats.jsonl", edited)
    assert main(["sft", str(edited), "--init", str(world / "base"), "--out", str(tmp_path / "e"), *FAST,
                 "--max-iters", "1", "--eval-iters", "1"]) == 0
    edited.write_text(edited.read_text().replace("numgpt", "mumgpt"))
    assert main(["sft", str(edited), "--out", str(tmp_path / "e"), "--resume", "--max-iters", "2"]) == 2
    assert f"{edited} has changed since {tmp_path / 'e'} was prepared from it" in capsys.readouterr().err


def test_a_damaged_latest_resumes_from_best_as_the_message_says(world, tmp_path, capsys):
    """A truncated RUN/latest is refused with the way out that exists, `--resume best`, which works."""
    run = tmp_path / "run"
    assert sft(world, run, "--max-iters", "2", "--eval-iters", "1", "--eval-interval", "1") == 0
    weights = run / "latest" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    capsys.readouterr()
    assert main(["sft", str(world / "chats.jsonl"), "--out", str(run), "--resume", "--max-iters", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"resume from {run / 'best'} (step " in err and "with --resume best" in err, err
    assert main(["sft", str(world / "chats.jsonl"), "--out", str(run), "--resume", "best", "--max-iters", "3",
                 "--eval-iters", "1"]) == 0
    assert "done: step 3" in capsys.readouterr().out


def test_a_run_of_another_command_is_named_as_that(world, tmp_path, capsys):
    """A DPO-like run folder (its RUN/data not SFT's): sft neither resumes it nor tells to --resume it."""
    run = tmp_path / "other"
    (run / "latest").mkdir(parents=True)
    (run / "data").mkdir()
    assert sft(world, run) == 2
    assert "already holds another command's training run; pass another --out" in capsys.readouterr().err
    assert main(["sft", str(world / "chats.jsonl"), "--out", str(run), "--resume"]) == 2
    assert "holds no SFT run to resume (its " in capsys.readouterr().err


def test_setup_sft_in_python_with_a_val_file_trains_what_the_cli_trains(world, tmp_path):
    """numgpt.posttrain.setup_sft with val_file: the held-out file is the val split, and the run trains."""
    from numgpt.posttrain import setup_sft
    val = tmp_path / "val.jsonl"
    write_conversations(val, synthesize(7, rng=np.random.default_rng(9), split="heldout"))
    options = {"max_iters": 2, "eval_interval": 0, "eval_iters": 2, "batch_size": 4, "threads": 1, "dropout": 0.0,
               "optim": {"lr": 1e-4, "min_lr": 1e-5, "warmup_iters": 10}}        # the CLI's SFT defaults
    setup = setup_sft(world / "chats.jsonl", tmp_path / "py", init=world / "base", val_file=val, block_size=BLOCK,
                      options=options)
    assert setup.meta["sft"]["conversations"] == {"train": 50, "val": 7} and setup.added_chat_tokens
    result = setup.run.train()
    assert setup.run.state.step == 2 and np.isfinite(result.last_eval["val_loss"])
    assert sft(world, tmp_path / "cli", "--val", str(val), "--max-iters", "2", "--eval-interval", "0",
               "--eval-iters", "2") == 0
    _, cli = load_checkpoint(tmp_path / "cli" / "latest")
    for name, p in setup.run.state.params.items():
        assert np.array_equal(cli[name], p), name


def test_mpiexec_two_ranks_train_the_bits_of_two_threads_and_a_rank_0_refusal_ends_the_job(world, tmp_path):
    """Real `mpiexec -n 2 numgpt sft` (rank 0 packs, the other waits), against --threads 2 in one process."""
    import os
    import subprocess
    import sys
    reference("mpi4py").get_include                               # skips without mpi4py
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec beside this Python or on PATH")
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}

    def run(*cmd):
        return subprocess.run([*cmd], capture_output=True, text=True, timeout=300, env=env)
    args = ["sft", world / "chats.jsonl", "--init", world / "base", "--block-size", BLOCK, "--batch-size", 4,
            "--eval-iters", 2, "--max-iters", 4, "--eval-interval", 2]
    numgpt = [sys.executable, "-m", "numgpt", *map(str, args)]
    threads = run(*numgpt, "--out", str(tmp_path / "threads"), "--threads", "2")
    assert threads.returncode == 0, threads.stderr
    ranks = run(mpiexec, "-n", "2", *numgpt, "--out", str(tmp_path / "ranks"), "--threads", "1")
    assert ranks.returncode == 0, ranks.stderr
    assert "on 2 ranks x 1 threads" in ranks.stderr
    for name in ("model.safetensors", "optimizer.safetensors"):
        saved = [(tmp_path / which / "latest" / name).read_bytes() for which in ("threads", "ranks")]
        assert saved[0] == saved[1], name
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    refused = run(mpiexec, "-n", "2", sys.executable, "-m", "numgpt", "sft", str(bad), "--init", str(world / "base"),
                  "--out", str(tmp_path / "refused"), "--threads", "1")
    assert refused.returncode == 2 and f"{bad}:1: no assistant turn" in refused.stderr
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("which", ["builtin", "gpt2-vocab"])
def test_init_builtin_and_a_gpt2_vocabulary_get_the_chat_tokens(world, tmp_path, capsys, which, request):
    """--init builtin (its own 1024-token BPE, no <|endoftext|>) and a GPT-2-vocabulary checkpoint (as --init
    gpt2 resolves to): the chat tokens are appended after the vocabulary, and the run's model carries them."""
    init = "builtin" if which == "builtin" else str(request.getfixturevalue("hf_gpt2_vocab_ckpt").folder)
    vocab = {"builtin": 1024 + 5, "gpt2-vocab": 50257 + 4}[which]   # builtin gains <|endoftext|> too
    run = tmp_path / "run"
    assert main(["sft", str(world / "chats.jsonl"), "--init", init, "--out", str(run), "--block-size", "64",
                 "--batch-size", "2", "--max-iters", "1", "--eval-iters", "1", "--threads", "1"]) == 0
    assert "has no chat tokens; added" in capsys.readouterr().err
    config, _ = load_checkpoint(run / "latest")
    tok = Tokenizer.load(run / "latest")
    assert config.vocab_size == tok.vocab_size == vocab
    assert [tok.special_tokens[t] for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")] == \
        list(range(vocab - 4, vocab))


def test_packing_flags_that_a_packed_folder_contradicts_are_refused(world, tmp_path, capsys):
    assert sft(world, tmp_path / "packed", "--prepare-only") == 0
    capsys.readouterr()
    args = ["sft", str(tmp_path / "packed"), "--init", str(world / "base"), "--out", str(tmp_path / "run"), *FAST]
    assert main([*args, "--train-on", "all"]) == 2
    assert "packed with --train-on assistant" in capsys.readouterr().err
    assert main([*args, "--val", str(world / "chats.jsonl")]) == 2
    assert "--val applies when packing" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert main([*args, "--train-on", "assistant", "--max-iters", "1", "--eval-iters", "1"]) == 0   # the same: fine


def test_bits_per_byte_count_the_trained_text(world, tmp_path):
    """meta makes the loop's val_bpb bits per byte of the trained replies: bytes/tokens = trained bytes per
    trained token, the bytes being the replies' UTF-8 (here non-ASCII) and no special token's."""
    data = tmp_path / "utf8.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"é{i}"}]}
            for i in range(10)]
    write_conversations(data, rows)
    assert main(["sft", str(data), "--init", str(world / "base"), "--out", str(tmp_path / "p"), "--prepare-only",
                 "--val-fraction", "0.5", *FAST]) == 0
    d = load_dataset(tmp_path / "p")
    for name in ("train", "val"):
        split = d.meta["splits"][name]
        n = d.meta["sft"]["conversations"][name]
        assert split["trained_bytes"] == n * len("é0".encode()) and split["trained_chars"] == n * 2
        trained_tokens = int(load_masks(d.folder, d.meta)[name].sum())
        assert d.bytes_per_token(name) == pytest.approx(split["trained_bytes"] / trained_tokens)
        assert d.chars_per_token(name) == pytest.approx(split["trained_chars"] / trained_tokens)


def test_a_bad_val_fraction_names_the_parameter_in_python_and_the_flag_in_the_cli(world, tmp_path, capsys):
    """Newcomer round 2, defect 9: the library's refusal names its parameters (val_fraction, val_file=),
    `numgpt sft` the same refusal in its flags."""
    from numgpt.errors import NumgptError
    from numgpt.posttrain.sft import setup_sft
    with pytest.raises(NumgptError) as e:
        setup_sft(world / "chats.jsonl", tmp_path / "py", init=world / "base", val_fraction=1.5, prepare_only=True)
    assert str(e.value) == "val_fraction must be > 0 and < 1 (or pass val_file=), got 1.5"
    assert sft(world, tmp_path / "cli", "--val-fraction", "1.5") == 2
    assert capsys.readouterr().err == ("numgpt: error: --val-fraction must be > 0 and < 1 (or pass --val FILE), "
                                       "got 1.5\n")


def test_lora_sft_with_the_chat_token_rows_two_ranks_train_the_bits_of_two_threads(world, tmp_path):
    """setup_sft(lora=) in Python: the adapter and the new chat tokens' rows, trained by 2 ranks x 1
    thread, are bit for bit those of 1 rank x 2 threads (and the rows moved)."""
    from numgpt.posttrain import lora as L
    from numgpt.posttrain.sft import setup_sft

    assert sft(world, tmp_path / "data", "--prepare-only") == 0
    options = {"batch_size": 4, "max_iters": 3, "eval_interval": 0, "eval_iters": 2, "dropout": 0.1,
               "optim": {"lr": 1e-2, "warmup_iters": 0}}
    lora = L.LoraConfig(rank=2)
    alone = setup_sft(tmp_path / "data", tmp_path / "alone", init=world / "base", options={**options, "threads": 2},
                      lora=lora).run
    start = alone.state.params[L.TOKENS].copy()
    assert alone.tc.lora["tokens"] == list(range(alone.config.vocab_size - 4, alone.config.vocab_size))
    alone.train()
    group, runs = ThreadGroup(2), [None, None]

    def rank(r):
        runs[r] = setup_sft(tmp_path / "data", tmp_path / "ranks", init=world / "base", lora=lora,
                            options={**options, "threads": 1}, comm=group.member(r)).run
        runs[r].train(comm=group.member(r))
    with single_threaded_blas():
        run_in_threads(rank, 2)
    names = L.adapter_shapes(alone.config, L.LoraConfig.from_dict(alone.tc.lora))
    assert L.TOKENS in names and not np.array_equal(alone.state.params[L.TOKENS], start)
    for run in runs:
        for name in names:
            assert np.array_equal(run.state.params[name], alone.state.params[name]), name


def test_setup_sft_refusals_name_its_parameters_and_numgpt_sft_says_its_flags(world, tmp_path, capsys):
    """The library's words are setup_sft's parameters (newcomer defect 9); `numgpt sft` says the same
    refusal in its flags (options.flag_message with sft_flag_names), as the CLI prints it."""
    from numgpt.cli.options import flag_message
    from numgpt.cli.sft_commands import sft_flag_names
    from numgpt.errors import NumgptError
    from numgpt.posttrain.sft import setup_sft

    assert sft(world, tmp_path / "packed", "--prepare-only") == 0
    capsys.readouterr()
    (tmp_path / "done" / "latest").mkdir(parents=True)
    (tmp_path / "plain").mkdir()
    chats, base = world / "chats.jsonl", world / "base"
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"messages": [{"role": "user", "content": "count " * 200},
                                             {"role": "assistant", "content": "200"}]}) + "\n")
    cases = [  # (setup_sft's keywords, words of its message, the same said by numgpt sft's flags)
        ({"data": chats}, "init=MODEL is required", "--init MODEL is required"),
        ({"data": chats, "init": base, "run_dir": tmp_path / "done"}, "continue it with resume=True, or pass "
         "another run_dir", "continue it with --resume, or pass another --out"),
        ({"data": tmp_path / "plain", "init": base}, "not one packed with prepare_only=True",
         "not one packed with --prepare-only"),
        ({"data": tmp_path / "packed", "init": base, "block_size": 32}, "was packed for block_size 64",
         "was packed for --block-size 64"),
        ({"data": chats, "init": base, "block_size": 1000}, "block_size must be in 1..64",
         "--block-size must be in 1..64"),
        ({"data": tmp_path / "packed", "init": base, "train_on": "all"}, "packed with train_on='assistant'; the "
         "mask cannot change now: pack the JSONL again (a new run) for train_on='all'", "packed with --train-on "
         "assistant; the mask cannot change now: pack the JSONL again (a new run) for --train-on all"),
        ({"data": tmp_path / "packed", "init": base, "val_file": chats}, "val_file applies when packing JSONL",
         "--val applies when packing JSONL"),
        ({"data": chats, "resume": True, "run_dir": tmp_path / "none"}, "start one with init=MODEL",
         "start one with --init MODEL"),
        ({"data": long, "init": base, "truncate": False, "val_file": long, "block_size": 32},
         "shorten it, raise block_size, or pass truncate=True", "shorten it, raise --block-size, or pass --truncate yes"),
        ({"data": long, "init": base, "truncate": False, "val_file": long},            # the model's whole context
         "(block_size + 1 = 65); shorten it, or pass truncate=True", "shorten it, or pass --truncate yes"),
    ]
    for keywords, python_words, flag_words in cases:
        keywords = {"run_dir": tmp_path / "run", **keywords}
        with pytest.raises(NumgptError) as e:
            setup_sft(keywords.pop("data"), keywords.pop("run_dir"), **keywords)
        assert python_words in str(e.value) and "--" not in str(e.value).split(":", 1)[-1], str(e.value)
        assert flag_words in flag_message(str(e.value), sft_flag_names())
        assert not (tmp_path / "run").exists()
    argv = ["sft", str(tmp_path / "packed"), "--init", str(base), "--out", str(tmp_path / "run"), "--block-size", "32"]
    assert main(argv) == 2                                          # the CLI prints just that
    assert capsys.readouterr().err == f"numgpt: error: {tmp_path / 'packed'} was packed for --block-size 64; " \
                                      "pack it again for 32\n"


@pytest.mark.parametrize("command, lr", [("sft", 5e-6), ("dpo", 5e-7), ("rl", 1e-6)])
def test_a_lower_lr_alone_takes_the_floor_along(command, lr):
    """`--lr` below the command's default floor, without --min-lr: the floor is a tenth of it (the
    defaults' ratio), not the default floor above the peak (refused: "--min-lr must be in [0, lr]")."""
    import importlib
    from numgpt.cli import build_parser
    from numgpt.cli.train_commands import options_from_args
    from numgpt.training.run import apply_options
    from numgpt.training.loop import TrainConfig
    module = importlib.import_module(f"numgpt.cli.{command}_commands")
    args = build_parser().parse_args([command, "data.jsonl", "--init", "builtin", "--out", "runs/x", "--lr", str(lr)])
    options = module._options(args, options_from_args, new=True)
    config = apply_options(TrainConfig(), options, data_dir="d")       # validates, as the run's setup does
    assert config.optim.lr == lr and config.optim.min_lr == pytest.approx(lr / 10, rel=1e-12)
    args = build_parser().parse_args([command, "data.jsonl", "--init", "builtin", "--out", "runs/x", "--lr", str(lr),
                                      "--min-lr", "0"])
    assert module._options(args, options_from_args, new=True)["optim"]["min_lr"] == 0     # given: kept


@pytest.mark.parametrize("command", ["sft", "dpo", "rl"])
def test_help_says_its_own_defaults_as_flags(command, capsys):
    """The 'Defaults differ from numgpt train's' line names flags and values (it printed a Python dict)."""
    from numgpt.cli import main
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Defaults differ from numgpt train's: --" in text and "--max-iters " in text and "{'" not in text
