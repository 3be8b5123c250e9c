"""The reward model (posttrain/reward.py): the Bradley-Terry loss and every gradient against torch autograd
through transformers' GPT2ForSequenceClassification(num_labels=1) in float64 (and peft's LoRA), the saved
folder against transformers, a tiny real training that learns, bit-exact resume, ranks against threads,
`numgpt reward train|score`, and the one-line refusals."""

import json
import shutil

import numpy as np
import pytest
from references import reference

from numgpt import save_checkpoint, train_bpe
from numgpt.cli import main
from numgpt.config import GPTConfig
from numgpt.errors import NumgptError
from numgpt.params import init_params
from numgpt.posttrain import reward as R
from numgpt.posttrain.sft import held_out_split
from numgpt.posttrain.chat_format import with_chat_tokens
from numgpt.posttrain.classify import SCORE, pad_right, trainable_names
from numgpt.posttrain.pairs import synthesize_pairs, write_pairs
from numgpt.posttrain.synth import synthesize
from numgpt.threads import run_in_threads, single_threaded_blas
from numgpt.training.comm import ThreadGroup
from numgpt.training.loop import train

torch = reference("torch")
transformers = reference("transformers")

CONFIG = GPTConfig(vocab_size=60, n_positions=16, n_embd=16, n_layer=3, n_head=2, bos_token_id=59, eos_token_id=59)
PAD = 59
RTOL = 1e-6         # float64 on both sides: the sums differ in order only
FAMILIES = ["convert", "count", "next"]   # short replies: add and sub show their working, longer than these rows
FAST = {"batch_size": 8, "eval_iters": 1, "threads": 1, "dropout": 0.0}


# ---- the loss and its gradients against torch -------------------------------------------------------------

def float64_reward_model(seed=0):
    rng = np.random.default_rng(seed)
    params = {n: p.astype(np.float64) for n, p in init_params(CONFIG, rng).items()}
    for n in params:                     # non-trivial gains and biases, so their gradients are checked too
        if n.endswith("bias") or "ln" in n:
            params[n] = params[n] + 0.1 * rng.standard_normal(params[n].shape)
    params[SCORE] = 0.5 * rng.standard_normal((1, CONFIG.n_embd))
    return params


def pair_batch(rng, lengths):
    """ids [P, 2, T] right-padded with PAD (never a real token), last [P, 2]."""
    seqs = [rng.integers(0, PAD, n) for pair in lengths for n in pair]
    ids, last = pad_right(seqs, PAD)                                          # [2P, T], [2P]
    return ids.reshape(len(lengths), 2, -1), last.reshape(-1, 2)


def torch_reward_model(params, dtype=torch.float64):
    hf = transformers.GPT2Config(vocab_size=CONFIG.vocab_size, n_positions=CONFIG.n_positions, n_embd=CONFIG.n_embd,
                                 n_layer=CONFIG.n_layer, n_head=CONFIG.n_head, num_labels=1, pad_token_id=PAD,
                                 attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    model = transformers.GPT2ForSequenceClassification(hf).to(dtype).eval()
    with torch.no_grad():
        sd = model.state_dict()
        for name, p in params.items():
            if ".lora_" not in name:
                sd[name if name == SCORE else "transformer." + name].copy_(torch.from_numpy(np.asarray(p, np.float64)))
    return model


def torch_bt_loss(model, ids):
    """TRL RewardTrainer's loss: -logsigmoid(r_chosen - r_rejected).mean(), the rewards GPT2ForSequenceClassification's
    (it finds the last token that is not the pad itself)."""
    P, _, T = ids.shape
    r = model(torch.from_numpy(ids.reshape(2 * P, T))).logits.reshape(P, 2)
    return -torch.nn.functional.logsigmoid(r[:, 0] - r[:, 1]).mean(), r


def test_bt_pair_matches_torch():
    rng = np.random.default_rng(0)
    rc, rr = rng.standard_normal(7) * 3, rng.standard_normal(7) * 3
    rc[0], rr[0] = 40.0, -40.0                            # a far-apart pair: no overflow either way
    rc[1], rr[1] = -40.0, 40.0
    loss, d = R.bt_loss_forward(rc, rr)
    gc, gr = R.bt_loss_backward(d, scale=0.5, dtype=np.float64)
    tc, tr = torch.tensor(rc, requires_grad=True), torch.tensor(rr, requires_grad=True)
    ref = -torch.nn.functional.logsigmoid(tc - tr).mean()
    (0.5 * ref).backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(gc, tc.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gr, tr.grad.numpy(), rtol=1e-12)
    assert R.bt_loss_forward(rc + 5.0, rr + 5.0)[0] == loss      # a constant added to every reward changes nothing


@pytest.mark.parametrize("train_spec", ["all", "last-1", "head"])
def test_loss_and_gradients_match_torch_autograd(train_spec, torch_one_thread):
    """float64: the loss and every trained parameter's gradient equal torch autograd of TRL's reward loss through
    transformers' GPT2ForSequenceClassification(num_labels=1), rows of different lengths right-padded."""
    rng = np.random.default_rng(1)
    params = float64_reward_model()
    ids, last = pair_batch(rng, [(5, 9), (3, 3), (7, 2)])
    trained = trainable_names(CONFIG, train_spec)
    if train_spec == "head":             # the head-alone path runs the float32 inference body
        params = {n: p.astype(np.float32) for n, p in params.items()}
    grads = {n: np.zeros_like(params[n]) for n in trained}
    loss = R.reward_loss(params, CONFIG, (ids, last), grads, scale=1.0)

    model = torch_reward_model(params)
    ref, _ = torch_bt_loss(model, ids)
    ref.backward()
    named = dict(model.named_parameters())
    rel = RTOL if train_spec != "head" else 1e-5          # head: the body ran in float32 (rounding ~1e-7 per op)
    assert loss == pytest.approx(ref.item(), rel=rel)
    assert R.reward_value({n: p.astype(np.float32) for n, p in params.items()}, CONFIG, (ids, last)) == \
        pytest.approx(ref.item(), rel=1e-5)
    for name in trained:
        ref_g = named[name if name == SCORE else "transformer." + name].grad.numpy()
        if name == "ln_f.bias":          # it adds bias . score to BOTH rewards of a pair: the loss sees differences
            assert np.abs(ref_g).max() < 1e-12 and np.abs(grads[name]).max() < 1e-12
            continue
        assert np.abs(grads[name] - ref_g).max() / (np.abs(ref_g).max() + 1e-30) < rel, name
        assert np.abs(ref_g).max() > 1e-8, name                 # a real gradient, not two zeros agreeing


def test_lora_adapter_and_head_gradients_match_peft(tmp_path, torch_one_thread):
    peft = reference("peft")
    from numgpt.posttrain import lora as L
    lora = L.LoraConfig(rank=2, alpha=4, targets=("c_attn", "mlp.c_fc"))
    rng = np.random.default_rng(11)
    params = float64_reward_model(3)
    adapters = L.init_adapters(CONFIG, lora, rng)
    for name in adapters:                                      # B not zero, or A's gradient would be hidden
        adapters[name] = 0.3 * rng.standard_normal(adapters[name].shape)
    params.update(adapters)
    model = torch_reward_model(params)
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=list(lora.modules), fan_in_fan_out=True,
                          lora_dropout=0.0, task_type="SEQ_CLS")
    pm = peft.get_peft_model(model, cfg).double()
    state = {f"base_model.model.transformer.{n}.default.weight": torch.tensor(np.ascontiguousarray(t.T))
             for n, t in adapters.items()}
    pm.load_state_dict(state, strict=False)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if name.endswith("score.modules_to_save.default.weight"):
                p.copy_(torch.tensor(params[SCORE]))
    ids, last = pair_batch(rng, [(8, 5), (3, 6)])
    objective = R.reward_objective(frozenset(L.adapter_shapes(CONFIG, lora)) | {SCORE}, None, lora)
    grads = {n: np.zeros_like(params[n]) for n in objective.trainable}
    loss = objective.loss(params, CONFIG, (ids, last), grads)
    ref, _ = torch_bt_loss(pm, ids)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=RTOL)
    named = {n.replace(".default", "").replace(".modules_to_save", ""): p for n, p in pm.named_parameters()}
    for n, g in grads.items():
        ref_g = named[f"base_model.model.{n}"].grad.numpy() if n == SCORE else \
            named[f"base_model.model.transformer.{n}.weight"].grad.numpy().T
        np.testing.assert_allclose(g, ref_g, rtol=RTOL, atol=RTOL * np.abs(ref_g).max(), err_msg=n)


def test_two_threads_give_the_one_thread_loss_and_gradients():
    from numgpt.training.parallel import DataParallel, flat_zeros_like
    params = {n: p.astype(np.float32) for n, p in float64_reward_model().items()}
    ids, last = pair_batch(np.random.default_rng(4), [(5, 2), (8, 4), (6, 6), (3, 7), (2, 2)])
    objective = R.reward_objective(trainable_names(CONFIG, "last-1"), None)
    results = []
    for threads in (1, 2):
        _, grads = flat_zeros_like(objective.trainable_params(params))
        loss = DataParallel(threads).forward_backward(objective.loss, params, CONFIG, (ids, last), grads)
        results.append((loss, grads))
    (loss1, g1), (loss2, g2) = results
    assert loss2 == pytest.approx(loss1, rel=1e-6)               # a mean over pairs: the slices' weighted mean
    scale = max(np.abs(g).max() for g in g1.values())
    for name in g1:
        if name == "ln_f.bias":          # exactly 0 (see above): both sides are float32 rounding of cancelling terms
            assert np.abs(g1[name]).max() < 1e-4 * scale and np.abs(g2[name]).max() < 1e-4 * scale
            continue
        # float32 sums in another order; a pair's two rows push the weights in opposite directions, and the
        # cancellation costs about a digit more than classify's 1e-6 of the tensor's scale
        np.testing.assert_allclose(g2[name], g1[name], rtol=1e-4, atol=1e-5 * np.abs(g1[name]).max(), err_msg=name)


# ---- a tiny chat model, pairs, and runs ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny chat model (numgpt's chat tokens and template, a BPE vocabulary of the synthetic text) and pairs."""
    root = tmp_path_factory.mktemp("reward")
    text = " ".join(m["content"] for t in synthesize(300, rng=np.random.default_rng(1)) for m in t["messages"])
    tok = with_chat_tokens(train_bpe(text, vocab_size=320, special_tokens=["<|endoftext|>"]))
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=tok.vocab_size,
                       bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    save_checkpoint(root / "chat", config, init_params(config, np.random.default_rng(0)), tokenizer=tok)
    write_pairs(root / "pairs.jsonl", synthesize_pairs(160, rng=np.random.default_rng(0), families=FAMILIES,
                                                       format_rate=0.5))
    return root


def setup(world, out, *, options=None, **kw):
    return R.setup_reward(world / "pairs.jsonl", out, init=kw.pop("init", world / "chat"),
                          options={**FAST, **(options or {})}, val_fraction=0.25, **kw)


def test_a_tiny_training_learns_to_rank_the_held_out_pairs(world, tmp_path):
    """--train all, 24 steps of 8 pairs: the held-out pairwise accuracy goes from chance to well above it.
    Observed (seed 1337, 37 held-out pairs): accuracy 0.46 -> 0.73, loss 0.697 -> 0.442, margin -0.006 -> 0.873;
    half the rejected replies give no answer (format_rate 0.5), the easiest thing to learn."""
    run = setup(world, tmp_path / "rm", train="all",
                options={"max_iters": 24, "eval_interval": 12, "optim": {"lr": 3e-3, "warmup_iters": 0}}).run
    evals = []
    result = run.train(on_event=lambda e: evals.append(e) if e["type"] == "eval" else None)
    assert [e["step"] for e in evals] == [0, 12, 24] and not result.interrupted
    assert 0.3 < evals[0]["val_accuracy"] < 0.7                   # chance, before training
    assert evals[-1]["val_accuracy"] > 0.6 and evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.15
    assert evals[-1]["val_margin"] > evals[0]["val_margin"] + 0.5
    # the exported model (the best checkpoint) scores the held-out pairs as the evaluation did
    folder = R.export_reward_model(run)
    rm = R.load_reward_model(tmp_path / "rm")
    assert rm.classifier.labels == ["reward"] and folder == tmp_path / "rm" / "model"
    best = min(evals, key=lambda e: e["val_loss"])
    from numgpt.posttrain.pairs import read_pairs
    held = [p for p in held_out_split(read_pairs(world / "pairs.jsonl"), 0.25, 1337, noun="pair")[1] if rm.pair_fits(p)]
    assert len(held) == run.data.meta["splits"]["val"]["pairs"]     # the context is the training's max tokens too
    metrics = R.pair_metrics(rm.score_pairs(held))
    assert metrics["accuracy"] == best["val_accuracy"]
    assert metrics["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_the_head_alone_on_cached_states_makes_the_updates_of_the_whole_forward(world, tmp_path):
    """--train head trains on the body's states computed once (PooledPairs): the same pairs drawn step for step
    and the same updates as reward_loss running the body at every step (float32: states from batches padded
    to other lengths, 1e-6)."""
    options = {"max_iters": 5, "eval_interval": 5, "optim": {"lr": 1e-2, "warmup_iters": 0}}
    cached = setup(world, tmp_path / "cached", train="head", options=options).run
    assert isinstance(cached.objective.batch, R.PooledPairs)
    whole = setup(world, tmp_path / "whole", train="head", options=options).run
    whole.objective = R.reward_objective(frozenset([SCORE]), R.PairBatches(R.load_lasts(whole.data)))
    head = cached.state.params[SCORE].copy()
    a, b = cached.train(), whole.train()
    assert np.abs(a.state.params[SCORE] - head).max() > 1e-3                  # it trained
    np.testing.assert_allclose(a.state.params[SCORE], b.state.params[SCORE], rtol=1e-5, atol=1e-7)
    assert a.last_eval["val_loss"] == pytest.approx(b.last_eval["val_loss"], rel=1e-6)
    assert a.last_eval["val_accuracy"] == b.last_eval["val_accuracy"]
    resumed_objective = R.setup_reward(world / "pairs.jsonl", tmp_path / "cached", resume=True,
                                       options={"max_iters": 6}).run.objective
    assert isinstance(resumed_objective.batch, R.PooledPairs)      # a resumed head-alone run caches too


def test_the_reward_model_folder_loads_in_transformers_with_the_same_rewards(world, tmp_path, torch_one_thread):
    run = setup(world, tmp_path / "rm", train="head", options={"max_iters": 2, "eval_interval": 0}).run
    run.state.params[SCORE] = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)  # not ~0
    folder = R.export_reward_model(run)
    rm = R.load_reward_model(folder)
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert hf.config.pad_token_id == rm.tokenizer.eot_id and hf_tok.pad_token == "<|endoftext|>"
    convs = [[{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": reply}]
             for reply in ("4", "The sum is 5.", "I am not sure about that one, sorry.")]
    convs.append([{"role": "system", "content": "Be brief."}, *convs[0]])
    ours = rm.score(convs)
    batch = hf_tok.apply_chat_template(convs, return_dict=True, return_tensors="pt", padding=True,
                                       sanitize_control_tokens=True)
    assert (batch["input_ids"][:, 0] == rm.tokenizer.eot_id).all()     # each starts with the pad token's id
    with torch.no_grad():
        theirs = hf(input_ids=batch["input_ids"]).logits[:, 0].numpy()   # the rightmost non-pad token: <|end|>
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert len(set(np.round(ours, 4))) == 4


def test_resume_after_ctrl_c_is_bit_exact(world, tmp_path):
    options = {"max_iters": 6, "eval_interval": 4, "seed": 7}
    straight = setup(world, tmp_path / "straight", train="last-1", options=options).run
    straight.train()

    def ctrl_c_at_step_5(event):                 # after the evaluation at step 4: best and latest differ later
        if event["type"] == "step" and event["step"] == 5:
            raise KeyboardInterrupt
    halves = setup(world, tmp_path / "halves", train="last-1", options=options).run
    assert halves.train(on_event=ctrl_c_at_step_5).interrupted
    resumed = R.setup_reward(world / "pairs.jsonl", tmp_path / "halves", resume=True).run
    assert resumed.state.step == 5 and resumed.objective.trainable == straight.objective.trainable
    resumed.train()
    for name, p in straight.state.params.items():
        assert np.array_equal(p, resumed.state.params[name]), name
    assert straight.state.best_val_loss == resumed.state.best_val_loss


def test_two_ranks_of_one_thread_train_the_weights_of_two_threads(world, tmp_path):
    def fresh(out, threads):
        return setup(world, out, train="last-1", options={"max_iters": 3, "eval_interval": 0, "threads": threads}).run
    ref = fresh(tmp_path / "threads", 2)
    ref_result = ref.train()
    runs = [fresh(tmp_path / f"rank{r}", 1) for r in range(2)]
    group, out = ThreadGroup(2), [None, None]

    def rank(r):
        run = runs[r]
        out[r] = train(run.state, run.config, run.tc, run.data, run.folder, comm=group.member(r), objective=run.objective)
    with single_threaded_blas():
        run_in_threads(rank, 2)
    for result in out:
        for k, v in ref.state.params.items():
            assert np.array_equal(result.state.params[k], v), k
        assert result.last_eval["val_loss"] == ref_result.last_eval["val_loss"]


@pytest.mark.parametrize("targets", [("c_attn", "c_proj", "c_fc"), ("c_attn", "wte")])
def test_a_lora_run_trains_the_adapter_and_head_resumes_with_them_and_exports_the_merged_model(world, tmp_path,
                                                                                               targets):
    from numgpt.posttrain.lora import LoraConfig, adapter_shapes, merge
    lora = LoraConfig(rank=2, alpha=4, targets=targets)
    run = setup(world, tmp_path / "rm", lora=lora, options={"max_iters": 2, "eval_interval": 0}).run
    base = {k: v.copy() for k, v in run.state.params.items()}
    run.train()
    trained = set(adapter_shapes(run.config, lora)) | {SCORE}
    assert run.objective.trainable == trained and set(run.state.optim.m) == trained
    for name, p in run.state.params.items():                   # the base frozen, the adapter and head moved
        assert np.array_equal(p, base[name]) != (name in trained), name
    resumed = R.setup_reward(world / "pairs.jsonl", tmp_path / "rm", resume=True, options={"max_iters": 3}).run
    assert resumed.objective.trainable == trained and resumed.tc.lora == lora.to_dict()
    resumed.train()
    rm = R.load_reward_model(R.export_reward_model(resumed))
    merged = {**merge(resumed.state.params, resumed.config, lora), SCORE: resumed.state.params[SCORE]}
    lasts = resumed.objective.batch.lasts["val"]
    expected = R.rewards_of_pairs(merged, resumed.config, resumed.objective.batch.rows(resumed.data, "val"), lasts)
    from numgpt.posttrain.pairs import read_pairs
    held = [p for p in held_out_split(read_pairs(world / "pairs.jsonl"), 0.25, 1337, noun="pair")[1] if rm.pair_fits(p)]
    np.testing.assert_allclose(rm.score_pairs(held), expected, rtol=1e-5, atol=1e-6)


def test_train_and_score_through_the_cli(world, tmp_path, capsys):
    out = tmp_path / "rm"
    assert main(["reward", "train", str(world / "pairs.jsonl"), "--init", str(world / "chat"), "--out", str(out),
                 "--max-iters", "4", "--eval-interval", "2", "--batch-size", "4", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "done: step 4, held-out pairwise accuracy" in captured.out and "step 2: train loss" in captured.err
    meta = json.loads((out / "data" / "meta.json").read_text())
    n, dropped = {k: v["pairs"] for k, v in meta["splits"].items()}, meta["reward"]["dropped"]
    assert n["train"] + dropped["train"] == 144 and n["val"] + dropped["val"] == 16      # --val-fraction 0.1
    assert f"{n['train']} train and {n['val']} held-out pairs" in captured.err
    assert f"note: {dropped['train']} train and {dropped['val']} held-out pairs were longer than 64" in captured.err
    assert (out / "model" / "config.json").is_file() and (out / "best").is_dir()
    assert main(["next", "--model", str(out / "latest"), "What"]) == 2          # a head, not a language model
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "classifier or reward model" in err and "not a language model" in err, err
    assert main(["info", "--model", str(out), "--json"]) == 0     # it said "a chat model", which chat then refused
    assert json.loads(capsys.readouterr().out)["kind"]["kind"] == "classifier checkpoint"
    assert main(["reward", "score", str(out), "--prompt", "What is 2 + 2?", "--reply", "4", "--reply", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rm = R.load_reward_model(out)
    expected = rm.score([[{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": r}]
                         for r in ("4", "5")])
    assert lines == [f"{expected[0]:.4f}\t4", f"{expected[1]:.4f}\t5"]
    for checkpoint in ("best", "latest"):       # the run's checkpoints: told which folder scores
        assert main(["reward", "score", str(out / checkpoint), "--prompt", "q", "--reply", "a"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "a training checkpoint of `numgpt reward train`" in err and \
            f"score with {out} (its model/" in err, err
    assert main(["reward", "score", str(out / "model"), "--pairs", str(world / "pairs.jsonl")]) == 0
    printed = capsys.readouterr().out
    kept = 160 - sum(json.loads((out / "data" / "meta.json").read_text())["reward"]["dropped"].values())
    assert printed.startswith(f"{kept} pairs ({160 - kept} longer than the model's context left out): pairwise "
                              "accuracy") and "  convert: accuracy" in printed
    # a reward model where a language model is wanted: refused by every command that starts from one
    for argv in (["sft", str(world / "pairs.jsonl"), "--init", str(out), "--out", str(tmp_path / "s")],
                 ["dpo", str(world / "pairs.jsonl"), "--init", str(out), "--out", str(tmp_path / "d")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds a sequence classifier or reward model" in err, (argv, err)
    assert main(["classify", "predict", "hi", "--model", str(out / "model")]) == 2    # one score: softmax 1.0
    assert "a reward model (one score, no labels to choose between); score replies with `numgpt reward score" in \
        capsys.readouterr().err


# ---- bad input ----------------------------------------------------------------------------------------------

def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("content, message", [
    ('{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}], '
     '"rejected": [{"role": "assistant", "content": "a"}]}', ':1: "chosen" and "rejected" are the same reply'),
    ('{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}]}',
     ':1: no "rejected" key'),
    ("\n", ": no preference pairs (the file is empty)"),
])
def test_bad_pairs_are_one_line_and_leave_nothing(world, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content + "\n")
    code, err = run_cli(["reward", "train", str(bad), "--init", str(world / "chat"), "--out", str(tmp_path / "rm")],
                        capsys)
    assert code == 2 and err == f"numgpt: error: {bad}{message}" + err.split(message, 1)[1]
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rm").exists()


def test_other_refusals_are_one_line(world, tmp_path, capsys):
    pairs = str(world / "pairs.jsonl")
    code, err = run_cli(["reward", "train", pairs, "--out", str(tmp_path / "rm")], capsys)
    assert code == 2 and "--init MODEL is required" in err and not (tmp_path / "rm").exists()
    base = tmp_path / "base"                                   # a language model without the chat template
    tok = train_bpe("some text " * 50, vocab_size=300, special_tokens=["<|endoftext|>"])
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=tok.vocab_size)
    save_checkpoint(base, config, init_params(config, np.random.default_rng(0)), tokenizer=tok)
    code, err = run_cli(["reward", "train", pairs, "--init", str(base), "--out", str(tmp_path / "rm")], capsys)
    assert code == 2 and "has no chat template" in err and "numgpt sft" in err
    code, err = run_cli(["reward", "train", pairs, "--init", str(world / "chat"), "--out", str(tmp_path / "rm"),
                         "--train", "last-9"], capsys)
    assert code == 2 and "--train 'last-9'" in err and not (tmp_path / "rm").exists()
    for flag, message in (("0", "--max-tokens must be >= 1, got 0"),        # dpo's rule too (pairs.short_pairs)
                          ("5", "every train pair is longer than 5 tokens; pass a larger --max-tokens (at most the "
                                "model's context, 64)")):
        code, err = run_cli(["reward", "train", pairs, "--init", str(world / "chat"), "--out", str(tmp_path / "rm"),
                             "--max-tokens", flag], capsys)
        assert (code, err) == (2, f"numgpt: error: {message}\n") and not (tmp_path / "rm").exists()
    code, err = run_cli(["reward", "train", pairs, "--init", str(world / "chat"), "--out", str(tmp_path / "rm"),
                         "--max-iters", "-3"], capsys)                 # it named --warmup-iters, never given
    assert (code, err) == (2, "numgpt: error: --max-iters must be >= 0, got -3\n")
    rm = tmp_path / "rm-model"                                 # a reward model is no model to start one from
    R.export_reward_model(setup(world, rm, options={"max_iters": 1, "eval_interval": 0}).run)
    code, err = run_cli(["reward", "train", pairs, "--init", str(rm / "model"), "--out", str(tmp_path / "rm2")],
                        capsys)
    assert code == 2 and "a reward model or classifier (it has a score head)" in err and not (tmp_path / "rm2").exists()
    code, err = run_cli(["reward", "train", pairs, "--out", str(tmp_path / "rm-model"), "--resume", "--train", "all"],
                        capsys)
    assert code == 2 and "its own data, model and trained set: drop --train" in err
    code, err = run_cli(["reward", "train", pairs, "--out", str(tmp_path / "none"), "--resume"], capsys)
    assert code == 2 and "holds no reward-model run to resume" in err
    shutil.copytree(world / "chat", tmp_path / "chat-run" / "best")    # a run folder: said what its model is
    for folder, words in ((world / "chat", "not a reward model (no score head"), (tmp_path, "no config.json"),
                          (tmp_path / "chat-run", "chat-run/best: not a reward model (no score head")):
        code, err = run_cli(["reward", "score", str(folder), "--prompt", "q", "--reply", "a"], capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    code, err = run_cli(["reward", "score", str(world / "chat"), "--reply", "a"], capsys)
    assert code == 2 and "--reply needs --prompt" in err


def test_resume_with_another_file_and_a_reward_model_for_another_tokenizer_are_refused(world, tmp_path):
    run = setup(world, tmp_path / "rm", options={"max_iters": 2, "eval_interval": 0}).run
    run.train()
    other = tmp_path / "other.jsonl"
    write_pairs(other, synthesize_pairs(20, rng=np.random.default_rng(5)))
    with pytest.raises(NumgptError, match="is not the file .* was prepared from"):
        R.setup_reward(other, tmp_path / "rm", resume=True, options={"max_iters": 4})
    rm = R.load_reward_model(R.export_reward_model(run))
    R.check_same_tokenizer(rm.tokenizer, rm.tokenizer, "--reward-model")       # the same: fine
    other_tok = with_chat_tokens(train_bpe("a b c " * 40, vocab_size=270, special_tokens=["<|endoftext|>"]))
    with pytest.raises(NumgptError, match=r"^--reward-model: a reward model for another tokenizer \(\d+ tokens\) than "
                       r"the policy's \(\d+ tokens\)"):
        R.check_same_tokenizer(rm.tokenizer, other_tok, "--reward-model")
    with pytest.raises(NumgptError, match="ends with the assistant's reply"):
        rm.score([[{"role": "user", "content": "q"}]])


def test_mpiexec_two_ranks_train_the_bits_of_two_threads(world, tmp_path):
    """Real `mpiexec -n 2 numgpt reward train` (rank 0 packs the pairs, the other waits at the barrier) against
    --threads 2 in one process: the same checkpoint bytes and the same reward model."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    reference("mpi4py").get_include                               # skips without mpi4py
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec beside this Python or on PATH")
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}
    args = ["reward", "train", world / "pairs.jsonl", "--init", world / "chat", "--train", "last-1",
            "--batch-size", 4, "--eval-iters", 1, "--max-iters", 3, "--eval-interval", 2]
    numgpt = [sys.executable, "-m", "numgpt", *map(str, args)]

    def run(*cmd):
        return subprocess.run([*cmd], capture_output=True, text=True, timeout=300, env=env)
    threads = run(*numgpt, "--out", str(tmp_path / "threads"), "--threads", "2")
    assert threads.returncode == 0, threads.stderr
    ranks = run(mpiexec, "-n", "2", *numgpt, "--out", str(tmp_path / "ranks"), "--threads", "1")
    assert ranks.returncode == 0, ranks.stderr
    assert "on 2 ranks x 1 threads" in ranks.stderr
    for name in ("latest/model.safetensors", "latest/extra_params.safetensors", "latest/optimizer.safetensors",
                 "model/model.safetensors"):
        saved = [(tmp_path / which / name).read_bytes() for which in ("threads", "ranks")]
        assert saved[0] == saved[1], name


def test_the_trained_set_is_said_from_the_run_not_the_flag():
    """A resumed run keeps the set it started with: the line it prints names that set, whatever --train says."""
    from numgpt.cli.reward_commands import trained_set
    params = {"wte.weight": 0, "h.0.attn.c_attn.weight": 0, "h.1.attn.c_attn.weight": 0, "score.weight": 0}
    assert trained_set(None, params) == "all" and trained_set(frozenset(params), params) == "all"
    assert trained_set(frozenset({"score.weight"}), params) == "head"
    assert trained_set(frozenset({"score.weight", "h.1.attn.c_attn.weight"}), params) == "last-1"
