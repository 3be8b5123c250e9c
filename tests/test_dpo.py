"""numgpt dpo: TRL's sigmoid DPO loss and its hand-written backward against torch autograd (float64), the
loss and rewards against TRL's DPOTrainer on the same tiny model and pairs, learning (held-out preference
accuracy and margin rise), resume and ranks against threads, the reference cache's hashes, and bad input
(issue 22 item 2). A tiny model and tokenizer made here, synthetic pairs from numgpt.posttrain.pairs."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from references import reference

from numgpt import save_checkpoint, train_bpe
from numgpt.cli import main
from numgpt.config import GPTConfig
from numgpt.errors import NumgptError
from numgpt.formats import load_checkpoint, load_tokenizer
from numgpt.params import init_params
from numgpt.posttrain.chat_format import add_chat_tokens
from numgpt.posttrain.dpo import (DpoLoss, chosen_nll_backward, chosen_nll_forward, dpo_loss_backward,
                                  dpo_loss_forward, dpo_objective, implicit_reward, reply_logps, setup_dpo)
from numgpt.posttrain.pairs import pair_length, read_pairs, render_pair, synthesize_pairs, write_pairs
from numgpt.posttrain.synth import synthesize
from numgpt.threads import run_in_threads, single_threaded_blas
from numgpt.training.comm import ThreadGroup
from numgpt.training.data import load_dataset
from numgpt.training.loop import TrainConfig, train
from numgpt.training.optim import AdamWConfig
from numgpt.training.state import new_state

torch = reference("torch")
transformers = reference("transformers")

FAST = ["--threads", "1", "--batch-size", "4", "--eval-iters", "2"]


def dpo(world, out, *extra, pairs="pairs.jsonl", init="base"):
    return main(["dpo", str(world / pairs), "--init", str(world / init), "--out", str(out), *FAST, *extra])


def evals(run):
    return [e for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if e["type"] == "eval"]
FAMILIES = ("convert", "next")     # short replies (add and sub show their working): rows of a few dozen tokens


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base model (no chat tokens) with a BPE vocabulary of the synthetic text, the same model with
    the chat tokens (chat/), and 40 training + 16 held-out synthetic pairs."""
    root = tmp_path_factory.mktemp("dpo")
    write_pairs(root / "pairs.jsonl", synthesize_pairs(40, rng=np.random.default_rng(0), families=FAMILIES))
    write_pairs(root / "heldout.jsonl", synthesize_pairs(16, rng=np.random.default_rng(1), families=FAMILIES,
                                                         split="heldout"))
    text = " ".join(m["content"] for t in synthesize(300, rng=np.random.default_rng(1)) for m in t["messages"])
    tok = train_bpe(text, vocab_size=320, special_tokens=["<|endoftext|>"])
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=tok.vocab_size,
                       bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    params = init_params(config, np.random.default_rng(0))
    save_checkpoint(root / "base", config, params, tokenizer=tok)
    config, params, tok = add_chat_tokens(config, params, tok)
    save_checkpoint(root / "chat", config, params, tokenizer=tok)
    # pairs whose rejected reply never answers: a preference a tiny model learns in a few steps
    write_pairs(root / "format.jsonl", synthesize_pairs(40, rng=np.random.default_rng(2), families=FAMILIES,
                                                        format_rate=1.0))
    write_pairs(root / "format_heldout.jsonl", synthesize_pairs(16, rng=np.random.default_rng(3), families=FAMILIES,
                                                                format_rate=1.0, split="heldout"))
    return root


def relative_error(ours, ref):
    return float(np.linalg.norm(np.ravel(ours - ref)) / max(np.linalg.norm(np.ravel(ref)), 1e-300))


def torch_dpo_loss(logps, ref, beta, sft_weight=0.0, chosen_tokens=None):
    """TRL's sigmoid loss as DPOTrainer._compute_loss writes it: -logsigmoid(beta * (chosen_logratios -
    rejected_logratios)).mean(), the batch's chosen sums first, rejected second; with sft_weight, plus
    loss_type "sft"'s -(chosen per-token logps).mean() over the batch's chosen_tokens, weighted by it."""
    chosen_logratios = logps[:, 0] - ref[:, 0]
    rejected_logratios = logps[:, 1] - ref[:, 1]
    loss = -torch.nn.functional.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    if sft_weight:
        loss = loss + sft_weight * -(logps[:, 0].sum() / chosen_tokens)
    return loss


# ---- the loss against torch ---------------------------------------------------------------------------

def test_the_loss_and_its_gradient_wrt_the_sequence_log_probs_match_torch(world):
    rng = np.random.default_rng(3)
    P, beta = 7, 0.3
    logps = -rng.gamma(4.0, 5.0, (P, 2))
    ref = logps + rng.normal(0, 3, (P, 2))
    ref[0] = logps[0] + [40.0, -40.0]              # z = -24: sigmoid far in its tail, still exact
    loss, z = dpo_loss_forward(logps, ref, beta)
    dlogps = dpo_loss_backward(z, beta, scale=0.5)
    t_logps = torch.tensor(logps, requires_grad=True)
    ref_loss = torch_dpo_loss(t_logps, torch.tensor(ref), beta)
    (0.5 * ref_loss).backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-6)
    assert relative_error(dlogps, t_logps.grad.numpy()) < 1e-6
    assert np.all(np.isfinite(dlogps)) and z[0] == pytest.approx(-24.0)


def test_the_sft_term_and_its_gradient_match_trls_sft_loss_type_in_torch(world):
    """loss_type=["sigmoid", "sft"], loss_weights=[1, w]: the chosen replies' mean -log p per token over the
    whole batch, however its pairs are split into slices (each slice's mean weighted by its share of pairs)."""
    rng = np.random.default_rng(6)
    P, beta, w = 6, 0.2, 0.7
    tokens = rng.integers(1, 30, P).astype(np.float64)                   # chosen-reply tokens per pair
    logps = -rng.gamma(4.0, 5.0, (P, 2))
    ref = logps + rng.normal(0, 3, (P, 2))
    nll_scale = np.full(P, P / tokens.sum())                             # PairBatches: B / W
    t_logps = torch.tensor(logps, requires_grad=True)
    ref_loss = torch_dpo_loss(t_logps, torch.tensor(ref), beta, w, tokens.sum())
    ref_loss.backward()
    loss, grad = 0.0, np.zeros((P, 2))
    for part in (slice(0, 4), slice(4, P)):                               # two slices, weighted by rows
        share = (part.stop - part.start) / P
        value, z = dpo_loss_forward(logps[part], ref[part], beta)
        loss += share * (value + chosen_nll_forward(logps[part], nll_scale[part], w))
        grad[part] = dpo_loss_backward(z, beta, scale=share) + chosen_nll_backward(nll_scale[part], w, scale=share)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-6)
    assert relative_error(grad, t_logps.grad.numpy()) < 1e-6
    assert np.all(grad[:, 0] != dpo_loss_backward(dpo_loss_forward(logps, ref, beta)[1], beta)[:, 0])


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


@pytest.mark.parametrize("sft_weight", [0.0, 0.7])
def test_the_loss_and_every_parameter_gradient_match_torch_in_float64(world, sft_weight):
    """DpoLoss through the whole model (per-row weighted cross-entropy backward) against autograd of TRL's
    loss over transformers' GPT-2 in float64, with reply masks of different lengths and right padding; with
    an SFT term too, the batch split into two slices as the data-parallel loop splits it."""
    config = GPTConfig(vocab_size=37, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    rng = np.random.default_rng(4)
    params = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float64)
              for k, v in init_params(config, np.random.default_rng(0)).items()}
    B, T, beta = 3, 15, 0.5
    tokens = rng.integers(0, config.vocab_size, (B, 2, T + 1))
    mask = np.zeros((B, 2, T))
    for i in range(B):
        for j in range(2):
            start, stop = rng.integers(2, 7), rng.integers(8, T + 1)     # prompt, reply, then padding
            mask[i, j, start:stop] = 1
    ref = -rng.gamma(4.0, 5.0, (B, 2))
    ids, targets = tokens[..., :-1], tokens[..., 1:]
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    nll_scale = np.full(B, B / mask[:, 0].sum())                      # PairBatches: B / W of the whole batch
    loss = 0.0
    for part in (slice(0, 2), slice(2, B)):
        share = (part.stop - part.start) / B
        loss += share * DpoLoss(beta, sft_weight)(params, config, (ids[part], targets[part], mask[part], ref[part],
                                                                   nll_scale[part]), grads, scale=share)

    model = hf_double(config, params)
    logits = model(torch.from_numpy(ids.reshape(2 * B, T))).logits               # [2B, T, V]
    token_logps = torch.log_softmax(logits, -1).gather(-1, torch.from_numpy(targets.reshape(2 * B, T, 1)))[..., 0]
    logps = (token_logps * torch.from_numpy(mask.reshape(2 * B, T))).sum(-1).reshape(B, 2)
    ref_loss = torch_dpo_loss(logps, torch.from_numpy(ref), beta, sft_weight, mask[:, 0].sum())
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-6)
    for name, p in model.named_parameters():
        if name == "lm_head.weight":
            continue                                                   # tied to wte
        assert relative_error(grads[name.removeprefix("transformer.")], p.grad.numpy()) < 1e-6, name
    # the sums themselves, and the same sums by the plain inference forward, one sequence at a time
    ours = reply_logps(params, config, ids.reshape(2 * B, T), targets.reshape(2 * B, T), mask.reshape(2 * B, T))
    assert relative_error(ours, logps.detach().numpy().reshape(-1)) < 1e-9
    from numgpt.model import reference_forward
    for r in range(2 * B):
        row_logits = reference_forward(params, config, ids.reshape(2 * B, T)[r:r + 1])[0]     # [T, V]
        lp = row_logits - np.log(np.exp(row_logits - row_logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - row_logits.max(-1, keepdims=True)
        plain = (lp[np.arange(T), targets.reshape(2 * B, T)[r]] * mask.reshape(2 * B, T)[r]).sum()
        assert plain == pytest.approx(ours[r], rel=1e-9)


# ---- against TRL's DPOTrainer ------------------------------------------------------------------------------

@pytest.mark.parametrize("sft_weight", [0.0, 0.7])
def test_loss_rewards_and_accuracy_match_trls_dpo_trainer_on_the_same_model_and_pairs(world, tmp_path, sft_weight,
                                                                                     torch_one_thread):
    """The chat model as reference, a perturbed copy as policy, 6 pairs: TRL tokenizes them with the model's
    own chat template (transformers), numgpt with render_pair; the reference sums come from numgpt's cache
    (prepare_dpo) and TRL's ref_model; the loss and TRL's logged rewards must agree. With sft_weight, TRL's
    loss_type=["sigmoid", "sft"], loss_weights=[1, sft_weight]."""
    trl = reference("trl")
    datasets = reference("datasets")
    from numgpt.posttrain.dpo import dpo_metrics, load_pair_arrays, prepare_dpo
    from numgpt.posttrain.pairs import read_pairs
    pairs = read_pairs(world / "pairs.jsonl")[:6]
    write_pairs(tmp_path / "six.jsonl", pairs)
    config, ref_params = load_checkpoint(world / "chat")
    tok = load_tokenizer(world / "chat", config)
    rng = np.random.default_rng(5)
    policy = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in ref_params.items()}
    save_checkpoint(tmp_path / "policy", config, policy, tokenizer=tok)
    beta = 0.2

    scored = []                      # progress(pairs scored, all pairs): the train split, then the val split
    meta = prepare_dpo(tmp_path / "six.jsonl", tmp_path / "data", tok, (config, ref_params), val_file=tmp_path /
                       "six.jsonl", progress=lambda done, total: scored.append((done, total)))
    assert scored == [(6, 12), (12, 12)]
    masks, refs = load_pair_arrays(tmp_path / "data", meta)
    rows = load_dataset(tmp_path / "data").train.reshape(6, 2, -1).astype(np.int64)          # [P, 2, L]
    ids, targets, mask = rows[..., :-1].reshape(12, -1), rows[..., 1:].reshape(12, -1), masks["train"][..., 1:]
    logps = reply_logps(policy, config, ids, targets, mask.reshape(12, -1)).reshape(6, 2)
    ours = dpo_metrics(logps, refs["train"], beta, mask[:, 0].sum(axis=1), sft_weight)
    nll_scale = np.full(6, 6 / mask[:, 0].sum())
    loss = DpoLoss(beta, sft_weight).value(policy, config, (rows[..., :-1], rows[..., 1:], mask.astype(np.float64),
                                                            refs["train"], nll_scale))

    hf_tok = transformers.AutoTokenizer.from_pretrained(world / "chat")
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "policy").eval()      # eval: no dropout
    ref_model = transformers.GPT2LMHeadModel.from_pretrained(world / "chat").eval()
    data = datasets.Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]} if sft_weight else \
        {"loss_type": ["sigmoid"]}
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, **losses, max_length=None,
                         per_device_eval_batch_size=6, report_to=[], use_cpu=True, save_strategy="no",
                         bf16=False)        # TRL defaults to bf16 autocast, which accelerate puts on ref_model
    trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=data, processing_class=hf_tok)
    for i, pair in enumerate(pairs):                      # TRL's tokens are render_pair's
        prompt, chosen, rejected = render_pair(tok, pair)
        row = trainer.train_dataset[i]
        assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == (prompt, chosen, rejected)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch).item()
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    # both sides run float32 models: a sum of ~50 nats of log-probabilities is exact to ~5e-6 nats, a
    # reward (beta times a difference of two sums) to ~2e-6
    assert loss == pytest.approx(trl_loss, rel=1e-6) and ours["loss"] == pytest.approx(loss, rel=1e-12)
    assert ours["chosen_reward"] == pytest.approx(logged["rewards/chosen"], abs=5e-6)
    assert ours["rejected_reward"] == pytest.approx(logged["rewards/rejected"], abs=5e-6)
    assert ours["margin"] == pytest.approx(logged["rewards/margins"], abs=5e-6)
    assert ours["accuracy"] == pytest.approx(logged["rewards/accuracies"], rel=1e-6)   # TRL logs float32
    assert logps[:, 0].mean() == pytest.approx(logged["logps/chosen"], rel=1e-5)
    assert abs(ours["margin"]) > 1000 * 5e-6 and 0 < ours["accuracy"] < 1   # far above the tolerance: can fail


# ---- training ---------------------------------------------------------------------------------------------

def test_a_tiny_run_raises_held_out_preference_accuracy_and_margin(world, tmp_path, capsys):
    run = tmp_path / "run"
    assert dpo(world, run, "--max-iters", "12", "--eval-interval", "12", "--lr", "3e-3", "--eval-iters", "4",
               "--val", str(world / "format_heldout.jsonl"),
               pairs="format.jsonl") == 0
    out, err = capsys.readouterr()
    assert "40 training and 16 held-out pairs" in err and "has no chat tokens; added" in err
    first, last = evals(run)
    # step 0: the policy is the reference, every reward exactly 0 (the same forward made the cache)
    assert (first["val_margin"], first["val_accuracy"], first["val_kl"]) == (0.0, 0.0, 0.0)
    assert first["val_loss"] == pytest.approx(math.log(2))
    # after 12 steps (seen: accuracy 1.0, margin 0.43, loss 0.50 at step 10; 1.0, 1.21 at step 20)
    assert last["val_accuracy"] >= 0.9 and last["val_margin"] > 0.3 and last["val_loss"] < 0.6
    assert last["val_chosen_reward"] > last["val_rejected_reward"]
    assert last["train_accuracy"] >= 0.9 and last["train_margin"] > 0.3
    assert out.startswith("done: step 12, held-out preference accuracy")
    assert json.loads((run / "dpo.json").read_text()) == {"beta": 0.1, "sft_weight": 0.0}


def test_resume_after_ctrl_c_is_bit_exact(world, tmp_path, monkeypatch):
    common = ["--max-iters", "8", "--eval-interval", "4", "--seed", "7", "--lr", "1e-3"]
    assert dpo(world, tmp_path / "straight", *common) == 0
    from numgpt.cli import train_commands
    step = train_commands.TimeEstimate.step

    def ctrl_c_at_step_5(self, ev):                       # Ctrl-C lands in the loop after step 5's update
        if ev["step"] == 5:
            raise KeyboardInterrupt
        return step(self, ev)
    monkeypatch.setattr(train_commands.TimeEstimate, "step", ctrl_c_at_step_5)
    assert dpo(world, tmp_path / "halves", *common) == 130
    monkeypatch.undo()
    assert json.loads((tmp_path / "halves" / "latest" / "trainstate.json").read_text())["step"] == 5
    assert main(["dpo", str(world / "pairs.jsonl"), "--out", str(tmp_path / "halves"), "--resume"]) == 0
    _, a = load_checkpoint(tmp_path / "straight" / "latest")
    _, b = load_checkpoint(tmp_path / "halves" / "latest")
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert evals(tmp_path / "straight")[-1] == evals(tmp_path / "halves")[-1]


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_two_ranks_of_one_thread_train_the_weights_of_two_threads(world, tmp_path, sft_weight):
    assert dpo(world, tmp_path / "data", "--prepare-only", init="chat") == 0
    data = load_dataset(tmp_path / "data")
    objective = dpo_objective(data, 0.1, sft_weight=sft_weight)
    config, params = load_checkpoint(world / "chat")

    def tc(threads):
        return TrainConfig(batch_size=4, block_size=data.meta["dpo"]["block_size"], max_iters=3, eval_interval=0,
                           eval_iters=2, threads=threads, optim=AdamWConfig(lr=1e-3, warmup_iters=0))
    fresh = lambda: new_state({k: v.copy() for k, v in params.items()}, seed=3)  # noqa: E731
    ref = train(fresh(), config, tc(2), data, tmp_path / "threads", objective=objective)
    group = ThreadGroup(2)
    out = [None, None]

    def rank(r):
        out[r] = train(fresh(), config, tc(1), data, tmp_path / f"rank{r}", comm=group.member(r), objective=objective)
    with single_threaded_blas():
        run_in_threads(rank, 2)
    assert ref.last_eval["val_margin"] != 0                          # it moved
    for result in out:
        for k, v in ref.state.params.items():
            assert np.array_equal(result.state.params[k], v), k
        assert result.last_eval == ref.last_eval                     # every logged figure, bit for bit


def test_setup_dpo_in_python_trains_what_the_cli_trains(world, tmp_path):
    options = {"max_iters": 2, "eval_interval": 0, "eval_iters": 2, "batch_size": 4, "threads": 1, "dropout": 0.0,
               "optim": {"lr": 1e-5, "min_lr": 1e-6, "warmup_iters": 10}}         # the CLI's DPO defaults
    setup = setup_dpo(world / "pairs.jsonl", tmp_path / "py", init=world / "base", beta=0.25, options=options)
    assert setup.meta["dpo"]["pairs"] == {"train": 36, "val": 4} and setup.added_chat_tokens and setup.beta == 0.25
    result = setup.run.train()
    assert setup.run.state.step == 2 and math.isfinite(result.last_eval["val_margin"])
    assert dpo(world, tmp_path / "cli", "--beta", "0.25", "--max-iters", "2", "--eval-interval", "0") == 0
    _, cli = load_checkpoint(tmp_path / "cli" / "latest")
    for name, p in setup.run.state.params.items():
        assert np.array_equal(cli[name], p), name


def test_implicit_reward_is_beta_times_the_reply_log_ratio(world):
    config, ref = load_checkpoint(world / "chat")
    tok = load_tokenizer(world / "chat", config)
    policy = {k: v * np.float32(1.5) for k, v in ref.items()}
    prompt, chosen, _ = render_pair(tok, json.loads((world / "pairs.jsonl").read_text().splitlines()[0]))
    seq = np.array([prompt + chosen])
    mask = np.zeros((1, seq.shape[1] - 1))
    mask[0, len(prompt) - 1:] = 1
    pi, pi_ref = (reply_logps(p, config, seq[:, :-1], seq[:, 1:], mask)[0] for p in (policy, ref))
    assert implicit_reward(policy, ref, config, prompt, chosen, 0.3) == pytest.approx(0.3 * (pi - pi_ref), rel=1e-12)
    assert implicit_reward(ref, ref, config, prompt, chosen, 0.3) == 0.0 and abs(pi - pi_ref) > 0.05
    with pytest.raises(NumgptError, match="beta must be a finite number > 0"):
        implicit_reward(policy, ref, config, prompt, chosen, -1.0)


# ---- bad input -----------------------------------------------------------------------------------------------

def one_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("numgpt: error: "), err
    return err


def test_a_reference_cache_from_another_model_or_other_data_is_refused(world, tmp_path, capsys):
    import shutil
    assert dpo(world, tmp_path / "data", "--prepare-only", init="chat") == 0
    capsys.readouterr()
    # the chat tokens added to base make exactly chat's weights: the same reference, accepted
    assert main(["dpo", str(tmp_path / "data"), "--init", str(world / "base"), "--out", str(tmp_path / "ok"), *FAST,
                 "--max-iters", "1", "--eval-iters", "1"]) == 0
    capsys.readouterr()
    config, params = load_checkpoint(world / "chat")
    save_checkpoint(tmp_path / "other", config, {k: v * np.float32(0.5) for k, v in params.items()},
                    tokenizer=load_tokenizer(world / "chat", config))
    run = tmp_path / "run"
    assert main(["dpo", str(tmp_path / "data"), "--init", str(tmp_path / "other"), "--out", str(run), *FAST]) == 2
    err = one_line(capsys)
    assert "reference.json: the reference log-probabilities were computed with another model" in err
    assert f"not {tmp_path / 'other'}" in err and not run.exists()
    for name, damage in (("val_reference.npy", "other values than these"), ("train.bin", "other pair rows")):
        copy = tmp_path / f"damaged_{name}"
        shutil.copytree(tmp_path / "data", copy)
        if name.endswith(".npy"):
            np.save(copy / name, np.load(copy / name) + 1.0)                  # the sums of another model
        else:
            raw = bytearray((copy / name).read_bytes())
            raw[10] ^= 1                                                      # another token in a pair
            (copy / name).write_bytes(bytes(raw))
        assert main(["dpo", str(copy), "--init", str(world / "chat"), "--out", str(run), *FAST]) == 2
        err = one_line(capsys)
        assert "cached reference log-probabilities were made for " + damage in err and not run.exists(), err


@pytest.mark.parametrize("beta, shown", [("0", "0.0"), ("-0.1", "-0.1"), ("nan", "nan"), ("inf", "inf")])
def test_beta_must_be_a_finite_positive_number(world, tmp_path, capsys, beta, shown):
    run = tmp_path / "run"
    assert dpo(world, run, "--beta", beta) == 2
    err = one_line(capsys)
    assert err == f"numgpt: error: --beta must be a finite number > 0 (0.1 is TRL's default), got {shown}\n"
    assert not run.exists()
    with pytest.raises(NumgptError, match=r"^beta must be a finite number > 0"):
        setup_dpo(world / "pairs.jsonl", run, init=world / "base", beta=float(beta))
    assert not run.exists()


@pytest.mark.parametrize("weight, shown", [("-1", "-1.0"), ("nan", "nan"), ("inf", "inf")])
def test_the_sft_weight_must_be_a_finite_number_at_least_0(world, tmp_path, capsys, weight, shown):
    run = tmp_path / "run"
    assert dpo(world, run, "--sft-weight", weight) == 2
    assert one_line(capsys) == f"numgpt: error: --sft-weight must be a finite number >= 0 (0: plain DPO), got {shown}\n"
    assert not run.exists()


def test_the_sft_term_keeps_the_chosen_replies_more_likely_than_plain_dpo(world, tmp_path, capsys):
    """The reason for --sft-weight: DPO only asks for a margin, and on pairs that differ by a digit or a word
    it can widen it by moving both replies; the SFT term also pulls the chosen reply up. Same seed, same
    steps, only the weight differs: the chosen replies' NLL per token ends lower, their drift from the
    reference (train_kl, mean per-token log pi - log pi_ref) higher, and the preference is still learnt."""
    common = ["--max-iters", "10", "--eval-interval", "10", "--lr", "3e-3", "--seed", "3"]
    assert dpo(world, tmp_path / "plain", *common) == 0
    assert dpo(world, tmp_path / "sft", *common, "--sft-weight", "1") == 0
    err = capsys.readouterr().err
    assert "beta 0.1, SFT term x 1.0;" in err and "chosen NLL" in err
    plain, sft = evals(tmp_path / "plain")[-1], evals(tmp_path / "sft")[-1]
    assert sft["train_chosen_nll"] < plain["train_chosen_nll"] and sft["train_kl"] > plain["train_kl"]
    assert sft["train_chosen_nll"] < evals(tmp_path / "sft")[0]["train_chosen_nll"]
    assert sft["train_accuracy"] > 0.5 and sft["train_margin"] > 0
    assert json.loads((tmp_path / "sft" / "dpo.json").read_text()) == {"beta": 0.1, "sft_weight": 1.0}


@pytest.mark.parametrize("change, words", [
    (lambda p: {**p, "rejected": p["chosen"]}, '"chosen" and "rejected" are the same reply'),
    (lambda p: {k: v for k, v in p.items() if k != "rejected"}, 'no "rejected" key'),
    (lambda p: {**p, "chosen": [{"role": "user", "content": "x"}]}, "an assistant message (the reply) is needed here"),
])
def test_bad_pairs_are_one_line_errors_naming_the_line_and_leave_nothing(world, tmp_path, capsys, change, words):
    lines = (world / "pairs.jsonl").read_text().splitlines()[:5]
    lines[3] = json.dumps(change(json.loads(lines[3])))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    assert main(["dpo", str(bad), "--init", str(world / "base"), "--out", str(run), *FAST]) == 2
    err = one_line(capsys)
    assert f"{bad}:4:" in err and words in err, err
    assert not run.exists()


def test_resume_refuses_another_pairs_file_or_beta(world, tmp_path, capsys):
    run = tmp_path / "run"
    assert dpo(world, run, "--max-iters", "1", "--eval-iters", "1") == 0
    capsys.readouterr()
    changed = tmp_path / "changed.jsonl"
    changed.write_text((world / "pairs.jsonl").read_text().replace("What", "Which"))
    assert main(["dpo", str(changed), "--out", str(run), "--resume", "--max-iters", "2"]) == 2
    assert "is not the file" in one_line(capsys)
    assert main(["dpo", str(world / "pairs.jsonl"), "--out", str(run), "--resume", "--max-iters", "2",
                 "--beta", "0.5"]) == 2
    assert "trains with beta 0.1; a resumed run keeps it: leave out --beta" in one_line(capsys)
    assert main(["dpo", str(world / "pairs.jsonl"), "--out", str(run), "--resume", "--max-iters", "2",
                 "--sft-weight", "1"]) == 2
    assert "trains with --sft-weight 0.0; a resumed run keeps it: leave out --sft-weight" in one_line(capsys)
    assert main(["dpo", str(world / "pairs.jsonl"), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "holds no DPO run to resume" in one_line(capsys)
    assert dpo(world, tmp_path / "prepared", "--prepare-only") == 0
    capsys.readouterr()
    before = (tmp_path / "prepared" / "train.bin").read_bytes()      # prepared again over it: replaced, silently
    assert dpo(world, tmp_path / "prepared", "--prepare-only", pairs="pairs.jsonl") == 2
    assert one_line(capsys) == (f"numgpt: error: {tmp_path / 'prepared'} is not empty, and --prepare-only writes a new "
                                "folder there: pass a new or empty --out\n")
    assert (tmp_path / "prepared" / "train.bin").read_bytes() == before
    assert main(["dpo", str(tmp_path / "prepared"), "--init", str(world / "base"), "--out", str(tmp_path / "p2"),
                 "--prepare-only"]) == 2                                # printed nothing, made nothing, exit 0
    assert "is prepared already, so --prepare-only has nothing to do" in one_line(capsys)
    assert main(["dpo", str(tmp_path / "prepared"), "--out", str(run), "--resume", "--max-iters", "2"]) == 2
    assert f"trains on {run / 'data'}, not {tmp_path / 'prepared'}" in one_line(capsys)
    # the pairs are the run's (or the prepared folder's): another --max-tokens is refused, saying the limit
    assert main(["dpo", str(world / "pairs.jsonl"), "--out", str(run), "--resume", "--max-tokens", "64"]) == 2
    assert one_line(capsys) == (f"numgpt: error: {run} keeps the pairs it was prepared with (none over 128 tokens); "
                                "--max-tokens applies to a new run\n")
    assert main(["dpo", str(tmp_path / "prepared"), "--init", str(world / "base"), "--out", str(tmp_path / "new"),
                 "--max-tokens", "64"]) == 2
    assert one_line(capsys) == (f"numgpt: error: {tmp_path / 'prepared'} is already prepared with its pairs (none over "
                                "128 tokens); --max-tokens applies to pairs JSONL\n")
    assert not (tmp_path / "new").exists()


def with_long_pairs(world, tmp_path, lines_to_lengthen, name="long.jsonl"):
    """pairs.jsonl with the chosen reply of these lines (0-based) made 200 words long: over the context (128)."""
    lines = (world / "pairs.jsonl").read_text().splitlines()
    for i in lines_to_lengthen:
        long = json.loads(lines[i])
        long["chosen"] = [{"role": "assistant", "content": "count " * 200}]
        lines[i] = json.dumps(long)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def pair_lengths(world, path):
    """Each pair's tokens (prompt + the longer reply) in the chat model's format, as numgpt dpo renders it."""
    config, _ = load_checkpoint(world / "chat")
    tok = load_tokenizer(world / "chat", config)
    return [pair_length(render_pair(tok, p)) for p in read_pairs(path)]


def test_a_pair_longer_than_the_context_is_left_out_and_counted_not_refusing_the_file(world, tmp_path, capsys):
    """A new user's file: one pair longer than the model's context (128). It used to refuse the whole file;
    now, as `numgpt reward train` does (the one rule, pairs.short_pairs), the pair is left out, the run
    trains on the rest, and a note says how many pairs and the limit."""
    bad = with_long_pairs(world, tmp_path, [2])
    run = tmp_path / "run"
    assert main(["dpo", str(bad), "--init", str(world / "chat"), "--out", str(run), "--val",
                 str(world / "heldout.jsonl"), *FAST, "--max-iters", "1", "--eval-iters", "1"]) == 0
    err = capsys.readouterr().err
    assert "39 training and 16 held-out pairs" in err
    assert "note: 1 train and 0 held-out pairs were longer than 128 tokens and were left out (--max-tokens)" in err
    info = json.loads((run / "data" / "meta.json").read_text())["dpo"]
    assert info["max_tokens"] == 128 and info["dropped"] == {"train": 1, "val": 0}   # the context: below 256
    kept = [n for n in pair_lengths(world, bad) + pair_lengths(world, world / "heldout.jsonl") if n <= 128]
    assert len(kept) == 39 + 16 and info["block_size"] + 1 == max(kept)              # rows fit the longest kept
    assert (run / "latest").is_dir()
    assert main(["dpo", str(world / "pairs.jsonl"), "--out", str(run), *FAST]) == 2
    assert "--init MODEL is required" in one_line(capsys)


def test_max_tokens_leaves_out_the_longer_pairs_and_says_what_to_do_when_none_is_left(world, tmp_path, capsys):
    """--max-tokens at the median pair: the longer half left out of each split, counted in the note and the
    meta, the rows as long as the longest pair kept; then the one-line refusals: none left under --max-tokens,
    none under the context, --max-tokens 0, and rows (--block-size) shorter than the pairs kept."""
    pairs, held = world / "pairs.jsonl", world / "heldout.jsonl"
    lengths, held_lengths = pair_lengths(world, pairs), pair_lengths(world, held)
    limit = sorted(lengths)[len(lengths) // 2]                                       # the median pair
    expected = {"train": sum(n > limit for n in lengths), "val": sum(n > limit for n in held_lengths)}
    assert 0 < expected["train"] < 40 and expected["val"] < 16, expected            # some left out, some kept
    data = tmp_path / "data"
    common = ["--init", str(world / "chat"), "--val", str(held), *FAST]
    assert main(["dpo", str(pairs), "--out", str(data), "--max-tokens", str(limit), "--prepare-only", *common]) == 0
    err = capsys.readouterr().err
    assert (f"note: {expected['train']} train and {expected['val']} held-out pairs were longer than {limit} tokens and "
            "were left out (--max-tokens)") in err
    meta = json.loads((data / "meta.json").read_text())
    assert meta["dpo"]["max_tokens"] == limit and meta["dpo"]["dropped"] == expected
    assert meta["splits"]["train"]["pairs"] == 40 - expected["train"]
    assert meta["splits"]["val"]["pairs"] == 16 - expected["val"]
    assert meta["dpo"]["block_size"] + 1 == max(n for n in lengths + held_lengths if n <= limit)
    run = tmp_path / "run"
    shortest = min(lengths)
    for argv, message in (
        (["--max-tokens", str(shortest - 1)], f"every train pair is longer than {shortest - 1} tokens; pass a larger "
                                              "--max-tokens (at most the model's context, 128)"),
        (["--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
        (["--block-size", str(shortest - 1)], f"tokens, longer than a row (--block-size + 1 = {shortest}); raise "
                                              f"--block-size, or leave such pairs out with --max-tokens {shortest}"),
        (["--block-size", "0"], "--block-size must be a whole number >= 1, got 0")):
        assert main(["dpo", str(pairs), "--out", str(run), *argv, *common]) == 2
        assert message in one_line(capsys) and not run.exists()
    every = with_long_pairs(world, tmp_path, range(40), name="all_long.jsonl")
    assert main(["dpo", str(every), "--out", str(run), "--max-tokens", "500", *common]) == 2
    assert one_line(capsys) == ("numgpt: error: every train pair is longer than 128 tokens; that is the model's "
                                "context: shorten the pairs, or start from a model with a longer context\n")
    assert not run.exists()


def test_mpiexec_two_ranks_train_the_bits_of_two_threads_and_a_rank_0_refusal_ends_the_job(world, tmp_path):
    """Real `mpiexec -n 2 numgpt dpo` (rank 0 prepares and grows the model, the other waits and is told which
    model folder to train), against --threads 2 in one process."""
    import os
    import shutil
    import subprocess
    import sys
    reference("mpi4py").get_include                               # skips without mpi4py
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec beside this Python or on PATH")
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}

    def run(*cmd):
        return subprocess.run([*cmd], capture_output=True, text=True, timeout=300, env=env)
    args = ["dpo", world / "pairs.jsonl", "--init", world / "base", "--batch-size", 4, "--eval-iters", 2,
            "--max-iters", 3, "--eval-interval", 3, "--lr", "1e-3"]
    numgpt = [sys.executable, "-m", "numgpt", *map(str, args)]
    threads = run(*numgpt, "--out", str(tmp_path / "threads"), "--threads", "2")
    assert threads.returncode == 0, threads.stderr
    ranks = run(mpiexec, "-n", "2", *numgpt, "--out", str(tmp_path / "ranks"), "--threads", "1")
    assert ranks.returncode == 0, ranks.stderr
    assert "on 2 ranks x 1 threads" in ranks.stderr
    for name in ("model.safetensors", "optimizer.safetensors"):
        saved = [(tmp_path / which / "latest" / name).read_bytes() for which in ("threads", "ranks")]
        assert saved[0] == saved[1], name
    assert evals(tmp_path / "threads") == evals(tmp_path / "ranks")
    bad = tmp_path / "bad.jsonl"                                  # rank 0 alone reads it: the others wait
    same = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}]}
    bad.write_text(json.dumps({**same, "rejected": same["chosen"]}) + "\n")
    refused = run(mpiexec, "-n", "2", sys.executable, "-m", "numgpt", "dpo", str(bad), "--init", str(world / "base"),
                  "--out", str(tmp_path / "refused"), "--threads", "1")
    assert refused.returncode == 2 and f'{bad}:1: "chosen" and "rejected" are the same reply' in refused.stderr
    assert not (tmp_path / "refused").exists()
