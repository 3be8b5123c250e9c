"""LoRA (posttrain/lora.py, formats/peft.py): the adapted linear layer's backward and the whole model's
adapter gradients against torch autograd and peft, the adapter folder against peft's PeftModel, the
unmerged forward against the merged model, training only the adapters (no base gradients or moments),
bit-exact resume, and the one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from references import reference

from numgpt import NumgptError
from numgpt.config import GPTConfig
from numgpt.formats import load_checkpoint, save_checkpoint
from numgpt.model import forward
from numgpt.params import param_shapes
from numgpt.posttrain import lora as L
from numgpt.training.loop import read_log

torch = reference("torch")
transformers = reference("transformers")
peft = reference("peft")

CONFIG = GPTConfig(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2)
RTOL = 1e-6     # float64 on both sides: the sums differ in order only (~1e-12 relative)


def base_params(config=CONFIG, seed=0, std=0.2):
    """A random base whose logits are not flat (std 0.2 rather than GPT-2's 0.02)."""
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * std).astype(np.float32) if len(s) > 1 else
            (1 + 0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in param_shapes(config).items()}


def adapted(params, lora, seed=1, config=CONFIG):
    """params plus an adapter whose B is not zero (a fresh one is: it would hide A's gradient), nor the
    embedding adapter's A (zero when fresh, as PEFT's)."""
    rng = np.random.default_rng(seed)
    ad = L.init_adapters(config, lora, rng)
    for name in ad:
        if name.endswith("lora_B") or name == L.EMBED_A:
            ad[name] = (0.3 * rng.standard_normal(ad[name].shape)).astype(np.float32)
    return {**params, **ad}


def test_lora_linear_backward_matches_torch():
    rng = np.random.default_rng(0)
    N, n_in, n_out, r, s = 7, 5, 6, 3, 2.5
    x, w, b = rng.standard_normal((N, n_in)), rng.standard_normal((n_in, n_out)), rng.standard_normal(n_out)
    a, bm, dy = rng.standard_normal((n_in, r)), rng.standard_normal((r, n_out)), rng.standard_normal((N, n_out))
    y, xa = L.lora_linear_forward(x, w, b, a, bm, s)
    da, dbm = np.full_like(a, 0.5), np.full_like(bm, -0.25)              # accumulates into what is there
    dx = L.lora_linear_backward(dy, x, xa, w, a, bm, s, da, dbm)

    tx, ta, tb = (torch.tensor(v, requires_grad=True) for v in (x, a, bm))
    ty = tx @ torch.tensor(w) + torch.tensor(b) + s * (tx @ ta) @ tb
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=RTOL)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=RTOL)
    np.testing.assert_allclose(da, 0.5 + ta.grad.numpy(), rtol=RTOL)
    np.testing.assert_allclose(dbm, -0.25 + tb.grad.numpy(), rtol=RTOL)


def hf_model(tmp_path, params, config=CONFIG):
    """transformers' GPT2LMHeadModel holding params (saved by numgpt, loaded by transformers)."""
    folder = save_checkpoint(tmp_path / "base", config, {k: v for k, v in params.items() if "lora" not in k})
    return folder, transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


def peft_model(model, lora):
    """peft's LoRA around a transformers GPT-2, configured as numgpt's lora."""
    cfg = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.modules),
                          fan_in_fan_out=True, lora_dropout=0.0)
    return peft.get_peft_model(model, cfg)


def set_peft_adapter(pm, params, config=CONFIG):
    """Copy numgpt's adapter tensors into peft's lora_A / lora_B (transposed: nn.Linear weights; the
    embedding's lora_embedding_A [r, V] / lora_embedding_B [C, r], transposed too)."""
    state = {}
    for name, t in params.items():
        if name in (L.EMBED_A, L.EMBED_B):
            state[f"base_model.model.transformer.{peft_embedding_name(name)}.default"] = torch.tensor(
                np.ascontiguousarray(t.T))
        elif name.endswith(("lora_A", "lora_B")):
            state[f"base_model.model.transformer.{name}.default.weight"] = torch.tensor(np.ascontiguousarray(t.T))
    missing = set(state) - set(pm.state_dict())
    assert not missing, sorted(missing)[:3]
    pm.load_state_dict(state, strict=False)


@pytest.mark.parametrize("targets", [("c_attn", "c_proj", "c_fc"), ("c_attn",), ("mlp.c_proj", "attn.c_proj")])
def test_adapter_gradients_match_torch(tmp_path, targets, torch_one_thread):
    """The whole model's adapter gradients (float64) against peft's LoRA model under torch autograd."""
    lora = L.LoraConfig(rank=3, alpha=6, targets=targets)
    params = adapted(base_params(), lora)
    folder, model = hf_model(tmp_path, params)
    pm = peft_model(model, lora).double()
    set_peft_adapter(pm, params)
    rng = np.random.default_rng(5)
    ids, targets_ = rng.integers(0, CONFIG.vocab_size, (2, 9)), rng.integers(0, CONFIG.vocab_size, (2, 9))

    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    names = sorted(L.adapter_shapes(CONFIG, lora))
    grads = {n: np.zeros_like(p64[n]) for n in names}
    loss = L.LoraLoss(lora)(p64, CONFIG, (ids, targets_), grads)

    logits = pm(torch.tensor(ids)).logits
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, CONFIG.vocab_size), torch.tensor(targets_).reshape(-1))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=RTOL)
    named = dict(pm.named_parameters())
    trained = [n for n, p in named.items() if p.requires_grad]
    assert len(trained) == len(names)                      # peft trains exactly the adapters numgpt does
    for n in names:
        ref_grad = named[f"base_model.model.transformer.{n}.default.weight"].grad.numpy().T
        # atol: ops.py's float32 constants (GELU's, LayerNorm's 1/C) differ from torch's by ~1e-7 relative
        # (test_backward.py), which cancellation in the smallest entries amplifies: 1e-6 of the tensor's scale
        np.testing.assert_allclose(grads[n], ref_grad, rtol=RTOL, atol=RTOL * np.abs(ref_grad).max(), err_msg=n)
        assert np.abs(grads[n]).max() > 1e-6, n            # a real gradient, not two zeros agreeing


def test_sft_weighted_adapter_gradients_match_torch(tmp_path, torch_one_thread):
    """SFT's batch (ids, targets, weights): loss sum(weights * nll) / B, as backprop.accumulate_weighted_grads."""
    lora = L.LoraConfig(rank=2, alpha=3)
    params = adapted(base_params(), lora)
    _, model = hf_model(tmp_path, params)
    pm = peft_model(model, lora).double()
    set_peft_adapter(pm, params)
    rng = np.random.default_rng(8)
    ids, targets = rng.integers(0, CONFIG.vocab_size, (3, 7)), rng.integers(0, CONFIG.vocab_size, (3, 7))
    weights = rng.random((3, 7)) * (rng.random((3, 7)) < 0.6)         # ~40% of the positions not trained on
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    grads = {n: np.zeros_like(p64[n]) for n in L.adapter_shapes(CONFIG, lora)}
    loss = L.LoraLoss(lora)(p64, CONFIG, (ids, targets, weights), grads, scale=0.5)

    logits = pm(torch.tensor(ids)).logits.reshape(-1, CONFIG.vocab_size)
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(targets).reshape(-1), reduction="none")
    ref = (torch.tensor(weights).reshape(-1) * nll).sum() / 3
    (0.5 * ref).backward()
    assert loss == pytest.approx(ref.item(), rel=RTOL)
    assert L.LoraValue(lora)(p64, CONFIG, (ids, targets, weights)) == pytest.approx(ref.item(), rel=RTOL)
    named = dict(pm.named_parameters())
    for n, g in grads.items():
        ref_grad = named[f"base_model.model.transformer.{n}.default.weight"].grad.numpy().T
        np.testing.assert_allclose(g, ref_grad, rtol=RTOL, atol=RTOL * np.abs(ref_grad).max(), err_msg=n)


def test_unmerged_forward_equals_merged_model():
    lora = L.LoraConfig(rank=4, alpha=8)
    params = adapted(base_params(), lora)
    ids = np.random.default_rng(2).integers(0, CONFIG.vocab_size, (2, 11))
    unmerged = L.lora_logits(params, CONFIG, lora, ids)
    merged = forward(L.merge(params, CONFIG, lora), CONFIG, ids, all_logits=True)
    base = forward(base_params(), CONFIG, ids, all_logits=True)
    assert np.abs(unmerged - base).max() > 0.1             # the adapter changes the model
    # float32: the merged weight rounds W + s A B once, the unmerged path its three products
    np.testing.assert_allclose(unmerged, merged, rtol=1e-4, atol=1e-4)


def test_embedding_adapter_unmerged_equals_merged_and_starts_as_the_base():
    """LoRA on wte (the classifier's body): the adapted final hidden states equal the merged model's, and a
    fresh embedding adapter (A_e = 0, B_e ~ N(0, 1), PEFT's init) changes nothing."""
    from numgpt.model import hidden_states

    lora = L.LoraConfig(rank=3, alpha=6, targets=("c_fc", "wte"))
    fresh = L.init_adapters(CONFIG, lora, np.random.default_rng(0))
    assert fresh[L.EMBED_A].shape == (CONFIG.vocab_size, 3) and not fresh[L.EMBED_A].any()
    assert fresh[L.EMBED_B].shape == (3, CONFIG.n_embd) and 0.5 < fresh[L.EMBED_B].std() < 1.5
    ids = np.random.default_rng(2).integers(0, CONFIG.vocab_size, (2, 11))
    base = hidden_states(base_params(), CONFIG, ids)
    start, _ = L.lora_hidden_forward({**base_params(), **fresh, "h.0.mlp.c_fc.lora_B": 0 * fresh["h.0.mlp.c_fc.lora_B"]},
                                     CONFIG, lora, ids)
    np.testing.assert_allclose(start.reshape(base.shape), base, rtol=1e-6, atol=1e-6)
    params = adapted(base_params(), lora)
    unmerged, _ = L.lora_hidden_forward(params, CONFIG, lora, ids)
    merged = hidden_states(L.merge(params, CONFIG, lora), CONFIG, ids)
    assert np.abs(unmerged.reshape(base.shape) - base).max() > 0.1
    np.testing.assert_allclose(unmerged.reshape(merged.shape), merged, rtol=1e-4, atol=1e-4)


def test_embedding_adapter_is_refused_where_a_tied_head_would_miss_it():
    lora = L.LoraConfig(rank=2, targets=("wte",))
    assert lora.embedding and lora.modules == ()
    with pytest.raises(NumgptError, match="LoRA on the embedding"):
        L.lora_objective(CONFIG, lora)
    with pytest.raises(NumgptError, match="both change wte"):
        L.LoraConfig(rank=2, targets=("wte",), tokens=(3,))


def test_fresh_adapter_leaves_the_model_unchanged():
    lora = L.LoraConfig(rank=2)
    params = {**base_params(), **L.init_adapters(CONFIG, lora, np.random.default_rng(0))}
    a = params["h.0.attn.c_attn.lora_A"]
    assert a.shape == (16, 2) and 0 < np.abs(a).max() <= 1 / np.sqrt(16)    # PEFT's kaiming-uniform bound
    assert not params["h.0.attn.c_attn.lora_B"].any()
    ids = np.arange(10)[None]
    np.testing.assert_array_equal(L.lora_logits(params, CONFIG, lora, ids),
                                  L.lora_logits({**params, **{k: 0 * v for k, v in params.items() if "lora" in k}},
                                                CONFIG, lora, ids))


def test_adapter_folder_loads_in_peft_with_the_same_logits(tmp_path, torch_one_thread):
    lora = L.LoraConfig(rank=4, alpha=16, targets=("c_attn", "mlp.c_fc"))
    params = adapted(base_params(), lora)
    base, model = hf_model(tmp_path, base_params())
    folder = L.save_adapter(tmp_path / "adapter", params, CONFIG, lora, base=str(base))
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    pm = peft.PeftModel.from_pretrained(model, folder).eval()
    ids = np.random.default_rng(3).integers(0, CONFIG.vocab_size, (2, 12))
    with torch.no_grad():
        ref = pm(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(L.lora_logits(params, CONFIG, lora, ids), ref, rtol=1e-4, atol=1e-5)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and config["target_modules"] == ["attn.c_attn", "mlp.c_fc"]


def test_peft_made_adapter_loads_in_numgpt(tmp_path, torch_one_thread):
    """The other way: an adapter peft trained and saved runs in numgpt as in peft."""
    lora = L.LoraConfig(rank=2, alpha=4, targets=("c_attn", "c_proj"))
    base, model = hf_model(tmp_path, base_params())
    pm = peft_model(model, lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    pm.save_pretrained(tmp_path / "peft")
    ids = np.random.default_rng(4).integers(0, CONFIG.vocab_size, (1, 10))
    with torch.no_grad():
        ref = pm.eval()(torch.tensor(ids)).logits.numpy()
    config, params = load_checkpoint(base, mmap=False)
    read, tensors = L.read_adapter(tmp_path / "peft", config, params)
    assert read.modules == lora.modules and read.scale == lora.scale
    np.testing.assert_allclose(L.lora_logits({**params, **tensors}, config, read, ids), ref, rtol=1e-4, atol=1e-5)


def test_a_peft_adapter_on_the_embedding_of_a_language_model_is_refused_by_name(tmp_path, torch_one_thread):
    """peft's LoRA on GPT2LMHeadModel's wte changes the input only, not the tied head; numgpt's merged model
    could not be that, so the folder is refused in one line naming the tensor."""
    base, model = hf_model(tmp_path, base_params())
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "wte"], fan_in_fan_out=True)
    peft.get_peft_model(model, cfg).save_pretrained(tmp_path / "peft")
    config, params = load_checkpoint(base, mmap=False)
    with pytest.raises(NumgptError, match=r"wte\.lora_embedding_A.* adapts the token embedding") as e:
        L.read_adapter(tmp_path / "peft", config, params)
    assert "\n" not in str(e.value)


def test_numgpt_load_with_adapter_runs_the_merged_model(tmp_path):
    import numgpt

    config = GPTConfig(vocab_size=256, n_positions=32, n_embd=16, n_layer=2, n_head=2)   # bytes only
    lora = L.LoraConfig(rank=3)
    params = adapted(base_params(config), lora, config=config)
    base = save_checkpoint(tmp_path / "base", config, base_params(config), tokenizer=numgpt.train_bpe("abc", vocab_size=256))
    folder = L.save_adapter(tmp_path / "adapter", params, config, lora)
    lm = numgpt.load(str(base), adapter=folder)            # merged into the decode layout's arrays
    ids = np.random.default_rng(6).integers(0, config.vocab_size, (1, 8))
    got = forward(lm.params, lm.config, ids, all_logits=True)
    np.testing.assert_allclose(got, L.lora_logits(params, config, lora, ids), rtol=1e-4, atol=1e-5)
    plain = numgpt.load(str(base))
    for name in ("h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight", "h.1.mlp.c_fc.weight"):
        assert lm.params[name].strides == plain.params[name].strides      # decode's fast layout kept
    with pytest.raises(NumgptError, match="trained on another base model"):
        numgpt.load(str(save_checkpoint(tmp_path / "other", config, base_params(config, seed=3),
                                        tokenizer=numgpt.train_bpe("abc", vocab_size=256))), adapter=folder)


def test_adapter_for_another_base_is_one_line(tmp_path):
    lora = L.LoraConfig(rank=2)
    folder = L.save_adapter(tmp_path / "adapter", adapted(base_params(), lora), CONFIG, lora)
    other_shape = GPTConfig(vocab_size=64, n_positions=32, n_embd=24, n_layer=2, n_head=2)
    with pytest.raises(NumgptError, match=r"made for another base model \(2 layers, n_embd 24 here\)"):
        L.read_adapter(folder, other_shape, base_params(other_shape))
    with pytest.raises(NumgptError, match="trained on another base model"):
        L.read_adapter(folder, CONFIG, base_params(seed=9))     # same shapes, other weights
    lora_cfg, tensors = L.read_adapter(folder, CONFIG, base_params())
    assert lora_cfg.rank == 2 and len(tensors) == 2 * 4 * CONFIG.n_layer
    named = L.save_adapter(tmp_path / "named", adapted(base_params(), lora), CONFIG, lora, base="runs/sft/init")
    with pytest.raises(NumgptError, match=r"made for another base model \(runs/sft/init, as its adapter_config.json "
                                          r"records\) \(2 layers, n_embd 24 here\)"):
        L.read_adapter(named, other_shape, base_params(other_shape))      # the base it names, to pass as --model


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, r"LoRA rank \(--lora-rank\) must be a whole number >= 1, got 0"),
    ({"rank": 4, "alpha": 0.0}, r"LoRA alpha \(--lora-alpha\) must be a finite number > 0"),
    ({"rank": 4, "targets": ("c_attnn",)}, "LoRA target 'c_attnn' names no linear layer"),
    ({"rank": 4, "targets": ()}, "LoRA targets"),
])
def test_bad_lora_options_are_one_line(kwargs, message):
    with pytest.raises(NumgptError, match=message):
        L.LoraConfig(**kwargs)


def test_targets_follow_peft_suffix_rule():
    assert L.LoraConfig(targets=("c_proj",)).modules == ("attn.c_proj", "mlp.c_proj")
    assert L.LoraConfig(targets=("mlp.c_proj",)).modules == ("mlp.c_proj",)
    assert L.LoraConfig().modules == L.MODULES


# ---- training the adapter: `numgpt train --lora-rank R` ---------------------------------------------------

TEXT = ("ROMEO: But soft, what light through yonder window breaks?\n"
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n") * 40
SMALL = ["--block-size", "16", "--batch-size", "4", "--eval-iters", "2", "--lr", "1e-2", "--warmup-iters", "2"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """Byte-level data, and a random model with its tokenizer (the base the adapters go on; std 0.2 so
    that its frozen wte turns hidden-state changes into logit changes an adapter can learn from)."""
    from numgpt.cli import main

    folder = tmp_path_factory.mktemp("lora_data")
    (folder / "in.txt").write_text(TEXT, encoding="utf-8")
    assert main(["prepare", str(folder / "in.txt"), "--out", str(folder / "char"), "--vocab-size", "256"]) == 0
    config = GPTConfig(vocab_size=256, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    from numgpt import Tokenizer
    base = save_checkpoint(folder / "base", config, base_params(config), tokenizer=Tokenizer.load(folder / "char" / "tokenizer"))
    return folder / "char", base


def train_cli(*args):
    from numgpt.cli import main
    return main(["train", *map(str, args)])


def losses(run):
    return [e["loss"] for e in read_log(run) if e["type"] == "step"]


def test_train_with_lora_trains_only_the_adapter_and_exports_it(base_run, tmp_path, capsys):
    import numgpt
    from numgpt.formats.safetensors import read_safetensors

    data, base = base_run
    run = tmp_path / "run"
    assert train_cli(data, "--init", base, "--out", run, *SMALL, "--max-iters", 30, "--eval-interval", 30,
                     "--lr", 3e-2, "--lora-rank", 4, "--lora-alpha", 8, "--lora-targets", "c_attn,mlp.c_proj") == 0
    err = capsys.readouterr().err
    assert "LoRA rank 4, alpha 8 on c_attn,mlp.c_proj: 0.001M trained parameters" in err
    assert f"adapter: {run / 'adapter'} (PEFT LoRA for {base} of the last step, 30, as {run / 'latest'}; --model " \
           f"{run} loads {run / 'best'}" in err                  # which checkpoint each one is, said
    from numgpt.cli.train_commands import adapter_line
    stopped = tmp_path / "stopped"                           # stopped before any evaluation: no RUN/best to name
    assert adapter_line(stopped / "adapter", stopped, 2, str(base)) == \
        f"adapter: {stopped / 'adapter'} (PEFT LoRA for {base} of the last step, 2, as {stopped / 'latest'}; " \
        f"numgpt generate --model {base} --adapter {stopped / 'adapter'})"
    evals = [e for e in read_log(run) if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 30] and evals[1]["train_loss"] < evals[0]["train_loss"] - 0.05
    config, base_params_ = load_checkpoint(base)
    _, saved = load_checkpoint(run / "latest")
    for name, p in base_params_.items():                     # the base is frozen, bit for bit
        assert np.array_equal(saved[name], p), name
    moments, _ = read_safetensors(run / "latest" / "optimizer.safetensors")
    lora = L.LoraConfig(rank=4, alpha=8, targets=("c_attn", "mlp.c_proj"))
    names = set(L.adapter_shapes(config, lora))
    assert set(moments) == {f"{k}.{n}" for k in "mv" for n in names}      # no moments for the frozen base
    lm = numgpt.load(str(base), adapter=run / "adapter")
    read, tensors = L.read_adapter(run / "adapter", config, base_params_)
    assert read == lora and any(np.abs(t).max() > 0 for n, t in tensors.items() if n.endswith("lora_B"))
    ids = np.frombuffer(b"ROMEO: But soft", np.uint8).astype(np.int64)[None]
    np.testing.assert_allclose(forward(lm.params, config, ids, all_logits=True),
                               L.lora_logits({**base_params_, **tensors}, config, lora, ids), rtol=1e-4, atol=1e-5)
    for folder in (run, run / "latest"):                      # --model RUN runs what the run trained, not its base
        got = numgpt.load(str(folder))
        np.testing.assert_array_equal(forward(got.params, config, ids, all_logits=True),
                                      forward(lm.params, config, ids, all_logits=True))


def test_the_run_checkpoint_names_agree():
    from numgpt.formats import peft
    from numgpt.training import state
    assert (peft.RUN_EXTRA_FILE, peft.RUN_STATE_FILE) == (state.EXTRA_FILE, state.STATE_FILE)


def test_lora_resume_is_bit_exact(base_run, tmp_path):
    data, base = base_run
    common = ["--init", base, *SMALL, "--eval-interval", 5, "--dropout", 0.1, "--lora-rank", 2,
              "--lr-decay-iters", 16]
    assert train_cli(data, "--out", tmp_path / "a", *common, "--max-iters", 16) == 0
    assert train_cli(data, "--out", tmp_path / "b", *common, "--max-iters", 8) == 0
    assert train_cli(data, "--out", tmp_path / "b", "--resume", "--max-iters", 16) == 0
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    a = L.peft.load_adapter(tmp_path / "a" / "adapter")[1]
    b = L.peft.load_adapter(tmp_path / "b" / "adapter")[1]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_lora_keeps_no_gradients_or_moments_for_the_base(base_run, tmp_path):
    """Memory, counted in buffer bytes: the optimizer's gradients and moments are the adapter's size."""
    from numgpt.training.loop import make_optimizer
    from numgpt.training.comm import SingleProcess
    from numgpt.training.run import setup_run

    data, base = base_run
    run = L.with_lora(setup_run(data, tmp_path / "run", init=base, options={"threads": 1, "block_size": 16}),
                      L.LoraConfig(rank=2), resumed=False)
    adapter_bytes = sum(run.state.params[n].nbytes for n in L.adapter_shapes(run.config, L.LoraConfig(rank=2)))
    base_bytes = sum(p.nbytes for n, p in run.state.params.items() if "lora" not in n)
    opt = make_optimizer(run.state, run.config, run.tc, run.objective, SingleProcess(), 1)
    assert sum(g.nbytes for g in opt.grads.values()) == adapter_bytes
    moments = sum(a.nbytes for t in (run.state.optim.m, run.state.optim.v) for a in t.values())
    assert moments == 2 * adapter_bytes and adapter_bytes < base_bytes / 10


def test_lora_flag_errors_are_one_line(base_run, tmp_path, capsys):
    data, base = base_run
    for flags, message in ((["--lora-rank", 0], "LoRA rank (--lora-rank) must be a whole number >= 1, got 0"),
                           (["--lora-alpha", 4], "--lora-alpha and --lora-targets need --lora-rank R"),
                           (["--lora-rank", 2, "--lora-targets", "wpe"], "LoRA target 'wpe' names no linear layer"),
                           (["--lora-rank", 2, "--lora-targets", "c_attn,wte"],
                            "--lora-targets wte: LoRA on the embedding is for `classify train` and `reward train`"),
                           (["--lora-rank", 2, "--init", ""], "--lora-rank adapts a trained model")):
        assert train_cli(data, "--init", base, "--out", tmp_path / "r", *SMALL, *flags) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "r").exists()
    assert train_cli(data, "--init", base, "--out", tmp_path / "r", *SMALL, "--max-iters", 1, "--lora-rank", 2) == 0
    capsys.readouterr()
    assert train_cli(data, "--out", tmp_path / "r", "--resume", "--max-iters", 2, "--lora-rank", 3) == 2
    assert "trains a LoRA adapter of rank 2" in capsys.readouterr().err


def test_merge_lora_writes_the_plain_model_and_the_cli_takes_adapter(base_run, tmp_path, capsys):
    from numgpt.cli import main

    data, base = base_run
    config, params = load_checkpoint(base, mmap=False)
    lora = L.LoraConfig(rank=3, alpha=5, targets=("c_fc", "attn.c_proj"))
    params = adapted(params, lora, config=config)
    adapter = L.save_adapter(tmp_path / "adapter", params, config, lora)
    assert main(["merge-lora", "--model", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    _, merged = load_checkpoint(tmp_path / "merged")
    for name, p in L.merge(params, config, lora).items():
        assert np.array_equal(merged[name], p), name
    ids = np.frombuffer(b"JULIET: O Romeo", np.uint8).astype(np.int64)[None]
    with torch.no_grad():                                   # transformers runs the merged folder as numgpt does
        ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()(torch.tensor(ids)).logits
    np.testing.assert_allclose(L.lora_logits(params, config, lora, ids), ref.numpy(), rtol=1e-4, atol=1e-5)

    capsys.readouterr()
    assert main(["next", "--model", str(base), "--adapter", str(adapter), "--json", "ROMEO"]) == 0
    with_adapter = json.loads(capsys.readouterr().out)
    assert main(["next", "--model", str(tmp_path / "merged"), "--json", "ROMEO"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in with_adapter] == [t["id"] for t in plain]
    np.testing.assert_allclose([t["probability"] for t in with_adapter], [t["probability"] for t in plain], rtol=1e-4)

    other = save_checkpoint(tmp_path / "other", config, base_params(config, seed=7), tokenizer=None)
    for argv in (["merge-lora", "--model", str(other), "--adapter", str(adapter), "--out", str(tmp_path / "m2")],
                 ["next", "--model", str(base), "--adapter", str(tmp_path / "nowhere"), "ROMEO"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("another base model" in err or "no such folder; pass an adapter folder" in err), err
    assert not (tmp_path / "m2").exists()
    # --force with --out at the adapter or the base replaced it with the merged model
    for out, what in ((adapter, "the adapter"), (base, "the base")):
        before = {f.name: f.read_bytes() for f in Path(out).iterdir() if f.is_file()}
        argv = ["merge-lora", "--model", str(base), "--adapter", str(adapter), "--out", str(out), "--force"]
        assert main(argv) == 2
        assert f"--out {out}: overlaps {what}" in capsys.readouterr().err
        assert {f.name: f.read_bytes() for f in Path(out).iterdir() if f.is_file()} == before


@pytest.mark.parametrize("zero", [0, 1])
def test_lora_data_parallel_is_bit_identical(base_run, tmp_path, zero):
    """2 ranks x 1 thread (every moment on each, or ZeRO-1's shards) give the bits of 1 rank x 2 threads."""
    from numgpt.threads import run_in_threads
    from numgpt.training.comm import ThreadGroup
    from numgpt.training.run import setup_run

    data, base = base_run
    options = {"block_size": 16, "batch_size": 4, "max_iters": 5, "eval_interval": 5, "eval_iters": 2, "dropout": 0.1}

    def lora_run(folder, comm=None, **more):
        run = setup_run(data, folder, init=base, options={**options, **more}, comm=comm)
        return L.with_lora(run, L.LoraConfig(rank=2), resumed=False)
    alone = lora_run(tmp_path / "alone", threads=2)
    alone.train()
    group, runs = ThreadGroup(2), [None, None]

    def rank(r):
        runs[r] = lora_run(tmp_path / "ranks", group.member(r), threads=1, zero=zero)
        runs[r].train(comm=group.member(r))
    run_in_threads(rank, 2)
    assert losses(tmp_path / "ranks") == losses(tmp_path / "alone")
    for name in L.adapter_shapes(alone.config, L.LoraConfig(rank=2)):
        assert np.array_equal(runs[0].state.params[name], alone.state.params[name]), name
        assert np.array_equal(runs[1].state.params[name], alone.state.params[name]), name


def peft_embedding_name(name):
    """peft's name of numgpt's embedding adapter tensor: 'wte.lora_A' -> 'wte.lora_embedding_A'."""
    return name.replace("lora_", "lora_embedding_")


@pytest.mark.parametrize("targets", [("c_attn", "mlp.c_fc"), ("c_attn", "c_proj", "c_fc", "wte"), ("wte",)])
def test_classification_head_over_an_adapter_matches_peft_seq_cls(tmp_path, targets, torch_one_thread):
    """classify's head and loss over the adapted model: adapter and head gradients against peft's SEQ_CLS
    LoRA (score in modules_to_save) on transformers' GPT2ForSequenceClassification, float64; with the
    token embedding among the targets, peft's LoRA Embedding layer."""
    from numgpt.posttrain.classify import SCORE

    lora = L.LoraConfig(rank=2, alpha=4, targets=targets)
    rng = np.random.default_rng(11)
    params = {**adapted(base_params(), lora), SCORE: (0.3 * rng.standard_normal((3, CONFIG.n_embd))).astype(np.float32)}
    folder = save_checkpoint(tmp_path / "base", CONFIG, {k: v for k, v in params.items() if k in param_shapes(CONFIG)})
    model = transformers.GPT2ForSequenceClassification.from_pretrained(folder, num_labels=3, pad_token_id=0).eval()
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=list(targets), fan_in_fan_out=True,
                          lora_dropout=0.0, task_type="SEQ_CLS")
    pm = peft.get_peft_model(model, cfg).double()
    set_peft_adapter(pm, params)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if name.endswith("score.modules_to_save.default.weight"):
                p.copy_(torch.tensor(params[SCORE], dtype=torch.float64))
    ids = rng.integers(1, CONFIG.vocab_size, (3, 8))
    lengths = np.array([8, 5, 3])
    ids[np.arange(8)[None] >= lengths[:, None]] = 0                          # right padding with pad id 0
    labels = np.array([2, 0, 1])
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    objective = L.lora_classification_objective(CONFIG, lora)
    grads = {n: np.zeros_like(p64[n]) for n in objective.trainable}
    loss = objective.loss(p64, CONFIG, (ids, lengths - 1, labels), grads)

    out = pm(input_ids=torch.tensor(ids), labels=torch.tensor(labels))
    out.loss.backward()
    assert loss == pytest.approx(out.loss.item(), rel=RTOL)
    assert objective.evaluate(p64, CONFIG, (ids, lengths - 1, labels)) == pytest.approx(out.loss.item(), rel=RTOL)
    named = {n.replace(".default", "").replace(".modules_to_save", ""): p for n, p in pm.named_parameters()}
    for n, g in grads.items():
        key = (f"base_model.model.{n}" if n == SCORE else
               f"base_model.model.transformer.{peft_embedding_name(n)}" if n in (L.EMBED_A, L.EMBED_B) else
               f"base_model.model.transformer.{n}.weight")
        ref_grad = named[key].grad.numpy()
        ref_grad = ref_grad if n == SCORE else ref_grad.T
        np.testing.assert_allclose(g, ref_grad, rtol=RTOL, atol=RTOL * np.abs(ref_grad).max(), err_msg=n)
        assert np.abs(g).max() > 1e-6, n                                    # a real gradient
    assert sum(p.requires_grad for p in pm.parameters()) == len(grads)      # peft trains what numgpt trains


# ---- the same flags on `numgpt sft` ---------------------------------------------------------------------

def test_sft_with_lora_trains_only_the_adapter_and_resumes_bit_exact(tmp_path, capsys, monkeypatch):
    """numgpt sft --lora-rank: SFT's masked loss through the adapter (the base, grown with the chat tokens
    into RUN/init, frozen), RUN/adapter for that base, and a bit-exact resume."""
    import numgpt
    from numgpt.cli import main
    from numgpt.posttrain.chatdata import write_conversations
    from numgpt.posttrain.synth import synthesize

    tasks = synthesize(30, rng=np.random.default_rng(0))
    write_conversations(tmp_path / "chats.jsonl", tasks)
    text = " ".join(m["content"] for t in synthesize(200, rng=np.random.default_rng(1)) for m in t["messages"])
    tok = numgpt.train_bpe(text, vocab_size=300, special_tokens=["<|endoftext|>"])
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, n_positions=64, vocab_size=tok.vocab_size,
                       bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    save_checkpoint(tmp_path / "base", config, base_params(config), tokenizer=tok)
    common = ["--init", tmp_path / "base", "--block-size", 64, "--threads", 1, "--batch-size", 4, "--eval-iters", 2,
              "--eval-interval", 3, "--lora-rank", 2, "--lr", 1e-2, "--max-iters", 6]

    def sft(out, *extra):
        return main(["sft", str(tmp_path / "chats.jsonl"), "--out", str(out), *map(str, extra)])
    assert sft(tmp_path / "a", *common) == 0
    grown = tmp_path / "a" / "init"                                  # the base with the chat tokens
    gconfig, gparams = load_checkpoint(grown)
    _, saved = load_checkpoint(tmp_path / "a" / "latest")
    assert all(np.array_equal(saved[n], p) for n, p in gparams.items())    # frozen
    lora, tensors = L.read_adapter(tmp_path / "a" / "adapter", gconfig, gparams)
    assert lora == L.LoraConfig(rank=2) and any(t.any() for n, t in tensors.items() if n.endswith("lora_B"))

    assert f"(PEFT LoRA for {grown} of the last step" in capsys.readouterr().err      # the grown base, RUN/init
    monkeypatch.chdir(tmp_path)          # a base as typed, not where it resolved (the package's path for `chat`)
    assert sft(tmp_path / "c", *common[2:-1], 1, "--init", "a/init") == 0
    assert "(PEFT LoRA for a/init of the last step" in capsys.readouterr().err

    assert sft(tmp_path / "b", *common[:-1], 3) == 0
    assert sft(tmp_path / "b", "--resume", "--max-iters", 6) == 0
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    again = L.peft.load_adapter(tmp_path / "b" / "adapter")[1]
    assert all(np.array_equal(again[n], t) for n, t in tensors.items())


def test_the_memory_check_counts_the_adapter_not_the_frozen_base(base_run, tmp_path, capsys, monkeypatch):
    """A LoRA run needs gradients and AdamW moments for the adapter only: with memory for that but not for
    full fine-tuning, `numgpt train --lora-rank` trains and the full run is refused; with less than even the
    LoRA run needs, it is refused before anything is written (resumed too: the saved adapter is counted)."""
    from numgpt.training import memory
    from numgpt.training.loop import TrainConfig

    data, base = base_run
    config, _ = load_checkpoint(base)
    tc = TrainConfig(batch_size=4, block_size=16)
    full = memory.training_memory(config, tc, threads=1).total
    lora_need = memory.training_memory(config, tc, threads=1, adapter=L.adapter_size(config, L.LoraConfig(rank=2)))
    assert lora_need.gradients * 10 < full and lora_need.total < full
    flags = [data, "--init", base, *SMALL, "--threads", 1, "--max-iters", 1]
    monkeypatch.setattr(memory, "available_memory", lambda: (lora_need.total + full) // 2)
    assert train_cli(*flags, "--out", tmp_path / "full") == 2
    assert "this shape needs" in capsys.readouterr().err and not (tmp_path / "full").exists()
    assert train_cli(*flags, "--out", tmp_path / "lora", "--lora-rank", 2) == 0
    assert (tmp_path / "lora" / "adapter").is_dir()
    monkeypatch.setattr(memory, "available_memory", lambda: lora_need.total - 1)
    capsys.readouterr()
    assert train_cli(*flags, "--out", tmp_path / "small", "--lora-rank", 2) == 2
    err = capsys.readouterr().err.strip()
    assert f"needs ~{memory.gib(lora_need.total)} GiB" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "small").exists()
    assert train_cli(data, "--out", tmp_path / "lora", "--resume", "--max-iters", 2) == 2     # the saved adapter's
    assert f"needs ~{memory.gib(lora_need.total)} GiB" in capsys.readouterr().err
    monkeypatch.setattr(memory, "available_memory", lambda: lora_need.total)
    assert train_cli(data, "--out", tmp_path / "lora", "--resume", "--max-iters", 2) == 0


# ---- trained token rows (PEFT's trainable_token_indices): the chat tokens sft adds ------------------------

TOKEN_IDS = (61, 62, 63)          # the last rows, as add_chat_tokens appends them


def with_token_rows(params, lora, seed=12):
    """params plus lora's token rows, moved off the base's (a fresh copy would hide the difference)."""
    rows = L.init_token_rows(params, lora)[L.TOKENS]
    moved = rows + 0.3 * np.random.default_rng(seed).standard_normal(rows.shape)
    return {**params, L.TOKENS: moved.astype(np.float32)}


def peft_with_tokens(model, lora):
    cfg = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.modules), fan_in_fan_out=True,
                          lora_dropout=0.0, trainable_token_indices=list(lora.tokens))
    return peft.get_peft_model(model, cfg)


def test_token_row_gradients_match_peft_trainable_tokens(tmp_path, torch_one_thread):
    """SFT's weighted loss over an adapter that also trains wte's rows TOKEN_IDS (in the input and the tied
    head): the loss and every gradient (the rows' included) against peft's trainable_token_indices under
    torch autograd, float64. The ids hold the trained tokens several times."""
    lora = L.LoraConfig(rank=2, alpha=4, targets=("c_attn", "mlp.c_proj"), tokens=TOKEN_IDS)
    params = with_token_rows(adapted(base_params(), lora), lora)
    _, model = hf_model(tmp_path, base_params())
    pm = peft_with_tokens(model, lora).double()
    set_peft_adapter(pm, params)
    with torch.no_grad():
        pm.get_parameter("base_model.model.transformer.wte.token_adapter.trainable_tokens_delta.default").copy_(
            torch.tensor(params[L.TOKENS], dtype=torch.float64))
    rng = np.random.default_rng(13)
    ids, targets = rng.integers(0, CONFIG.vocab_size, (3, 8)), rng.integers(0, CONFIG.vocab_size, (3, 8))
    ids[:, [1, 4]], targets[:, 2] = 62, 61                                   # the trained rows in and out
    weights = rng.random((3, 8))
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    objective = L.lora_objective(CONFIG, lora)
    assert L.TOKENS in objective.trainable
    grads = {n: np.zeros_like(p64[n]) for n in objective.trainable}
    loss = objective.loss(p64, CONFIG, (ids, targets, weights), grads)

    logits = pm(torch.tensor(ids)).logits.reshape(-1, CONFIG.vocab_size)
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(targets).reshape(-1), reduction="none")
    ref = (torch.tensor(weights).reshape(-1) * nll).sum() / 3
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=RTOL)
    named = {n.replace(".default", ""): p for n, p in pm.named_parameters() if p.requires_grad}
    assert len(named) == len(grads)                          # peft trains what numgpt trains
    for n, g in grads.items():
        key = ("base_model.model.transformer.wte.token_adapter.trainable_tokens_delta" if n == L.TOKENS else
               f"base_model.model.transformer.{n}.weight")
        ref_grad = named[key].grad.numpy() if n == L.TOKENS else named[key].grad.numpy().T
        np.testing.assert_allclose(g, ref_grad, rtol=RTOL, atol=RTOL * np.abs(ref_grad).max(), err_msg=n)
        assert np.abs(g).max() > 1e-6, n
    assert np.abs(grads[L.TOKENS]).max(axis=1).min() > 0     # every trained row has a gradient (in or out)


def test_token_rows_save_as_peft_does_and_load_in_peft_and_numgpt(tmp_path, torch_one_thread):
    """The adapter folder with trained rows: peft's own layout (the key and trainable_token_indices that
    peft's save_pretrained writes), PeftModel.from_pretrained gives numgpt's logits, numgpt.load(base,
    adapter=) and merge give them too, and a folder peft saved reads back into numgpt."""
    import numgpt
    from numgpt.formats.safetensors import read_safetensors

    config = GPTConfig(vocab_size=256, n_positions=32, n_embd=16, n_layer=2, n_head=2)   # bytes only
    lora = L.LoraConfig(rank=3, alpha=3, targets=("c_attn",), tokens=(97, 98, 99))       # 'a', 'b', 'c'
    base = base_params(config)
    params = with_token_rows(adapted(base, lora, config=config), lora)
    base_dir = save_checkpoint(tmp_path / "base", config, base, tokenizer=numgpt.train_bpe("abc", vocab_size=256))
    folder = L.save_adapter(tmp_path / "adapter", params, config, lora, base=str(base_dir))
    ids = np.frombuffer(b"abcabc xyz cab", np.uint8).astype(np.int64)[None]
    want = L.lora_logits(params, config, lora, ids)
    assert np.abs(want - L.lora_logits({**params, L.TOKENS: L.init_token_rows(base, lora)[L.TOKENS]}, config, lora,
                                       ids)).max() > 0.1      # the rows matter

    pm = peft_with_tokens(transformers.GPT2LMHeadModel.from_pretrained(base_dir), lora)
    pm.save_pretrained(tmp_path / "peft")                    # what peft itself writes for these settings
    theirs, _ = read_safetensors(tmp_path / "peft" / "adapter_model.safetensors")
    ours, _ = read_safetensors(folder / "adapter_model.safetensors")
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert json.loads((folder / "adapter_config.json").read_text())["trainable_token_indices"] == \
        saved["trainable_token_indices"] == [97, 98, 99]

    loaded = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base_dir), folder).eval()
    with torch.no_grad():
        ref = loaded(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(want, ref, rtol=1e-4, atol=1e-5)
    lm = numgpt.load(str(base_dir), adapter=folder)
    np.testing.assert_allclose(forward(lm.params, config, ids, all_logits=True), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(forward(L.merge(params, config, lora), config, ids, all_logits=True), want,
                               rtol=1e-4, atol=1e-5)
    read, tensors = L.read_adapter(tmp_path / "peft", config, base)   # peft's folder into numgpt
    assert read.tokens == lora.tokens and np.array_equal(tensors[L.TOKENS], base["wte.weight"][[97, 98, 99]])


def test_token_rows_in_an_adapter_for_a_smaller_vocabulary_are_refused(tmp_path):
    config = GPTConfig(vocab_size=256, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    lora = L.LoraConfig(rank=2, tokens=(255,))
    folder = L.save_adapter(tmp_path / "adapter", with_token_rows(adapted(base_params(config), lora, config=config),
                                                                  lora), config, lora)
    small = GPTConfig(vocab_size=200, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    with pytest.raises(NumgptError, match="trains token 255, beyond this base's vocabulary of 200"):
        L.read_adapter(folder, small, base_params(small))
    with pytest.raises(NumgptError, match="distinct token ids"):
        L.LoraConfig(rank=2, tokens=(3, 3))


def test_sft_with_lora_trains_the_new_chat_tokens_rows_and_peft_runs_the_adapter(tmp_path, capsys, torch_one_thread):
    """numgpt sft --lora-rank on a model that just got the chat tokens: their wte rows (all the mean at
    first) train with the adapter, so after a few steps they differ from each other and from the mean; the
    rest of wte stays frozen; RUN/adapter (peft's trainable_token_indices) on RUN/init gives numgpt's
    logits in peft."""
    import numgpt
    from numgpt.cli import main
    from numgpt.posttrain.chat_format import chat_template
    from numgpt.posttrain.chatdata import write_conversations
    from numgpt.posttrain.synth import synthesize

    write_conversations(tmp_path / "chats.jsonl", synthesize(30, rng=np.random.default_rng(0)))
    text = " ".join(m["content"] for t in synthesize(200, rng=np.random.default_rng(1)) for m in t["messages"])
    tok = numgpt.train_bpe(text, vocab_size=300, special_tokens=["<|endoftext|>"])
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, n_positions=64, vocab_size=tok.vocab_size,
                       bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    save_checkpoint(tmp_path / "base", config, base_params(config), tokenizer=tok)
    assert main(["sft", str(tmp_path / "chats.jsonl"), "--out", str(tmp_path / "run"), "--init", str(tmp_path / "base"),
                 *map(str, ["--block-size", 64, "--threads", 1, "--batch-size", 4, "--eval-iters", 2, "--lora-rank", 2,
                            "--lr", 1e-2, "--max-iters", 6])]) == 0
    err = capsys.readouterr().err
    assert "LoRA rank 2, alpha 2 on c_attn,c_proj,c_fc and the wte rows of 4 tokens" in err
    grown = tmp_path / "run" / "init"
    gconfig, gparams = load_checkpoint(grown, mmap=False)
    added = tuple(range(config.vocab_size, gconfig.vocab_size))              # <|system|> ... <|end|>
    lora, tensors = L.read_adapter(tmp_path / "run" / "adapter", gconfig, gparams)
    assert lora.tokens == added and len(added) == 4
    rows, mean = tensors[L.TOKENS], gparams["wte.weight"][added[0]]
    assert all(np.array_equal(gparams["wte.weight"][i], mean) for i in added)        # RUN/init: all the mean
    assert min(np.abs(rows[i] - mean).max() for i in range(4)) > 1e-3                # each moved off the mean
    assert min(np.abs(rows[i] - rows[j]).max() for i in range(4) for j in range(i)) > 1e-3   # and apart
    _, latest = load_checkpoint(tmp_path / "run" / "latest")
    assert np.array_equal(latest["wte.weight"], gparams["wte.weight"])               # wte itself frozen

    template = chat_template(numgpt.load(str(grown)).tokenizer)
    ids = np.array([template.render([{"role": "user", "content": "what is 2 + 3?"},
                                     {"role": "assistant", "content": "5"}])], np.int64)
    lm = numgpt.load(str(grown), adapter=tmp_path / "run" / "adapter")
    want = forward(lm.params, gconfig, ids, all_logits=True)
    np.testing.assert_allclose(want, L.lora_logits({**gparams, **tensors}, gconfig, lora, ids), rtol=1e-4, atol=1e-5)
    run_lm = numgpt.load(str(tmp_path / "run"))                                       # --model RUN: the same
    np.testing.assert_array_equal(forward(run_lm.params, gconfig, ids, all_logits=True), want)
    pm = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(grown),
                                        tmp_path / "run" / "adapter").eval()
    with torch.no_grad():
        ref = pm(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(want, ref, rtol=1e-4, atol=1e-5)


def test_average_takes_a_lora_run_with_its_adapter_merged(base_run, tmp_path):
    """numgpt average on a LoRA run's checkpoint averages what the run trained (base + adapter), not its base."""
    from numgpt.cli import main

    data, base = base_run
    assert train_cli(data, "--init", base, "--out", tmp_path / "r", *SMALL, "--max-iters", 2, "--lora-rank", 2) == 0
    from numgpt import load
    trained = load(tmp_path / "r" / "latest").params
    _, plain = load_checkpoint(tmp_path / "r" / "latest")                 # the frozen base, stored as is
    assert not np.array_equal(trained["h.0.attn.c_attn.weight"], plain["h.0.attn.c_attn.weight"])
    assert main(["average", str(tmp_path / "r" / "latest"), str(base), "--weights", "1,0",
                 "--out", str(tmp_path / "soup")]) == 0
    _, soup = load_checkpoint(tmp_path / "soup")
    for name, p in trained.items():
        assert np.array_equal(soup[name], np.asarray(p)), name


def test_a_rank_not_below_the_width_is_refused():
    """A rank-r adapter of a C-wide matrix is smaller than it only for r < C: refused at the start."""
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=20)
    L.init_adapters(config, L.LoraConfig(rank=15), np.random.default_rng(0))
    with pytest.raises(NumgptError, match=r"--lora-rank 16 is not below the model's width \(n_embd 16\)"):
        L.init_adapters(config, L.LoraConfig(rank=16), np.random.default_rng(0))


def test_a_rank_too_big_for_memory_is_told_to_lower_the_rank(base_run, tmp_path, capsys, monkeypatch):
    """When the adapter itself (its weights, gradients and moments) is most of what does not fit, the refusal
    says to lower --lora-rank (it said to train a smaller model, or `preset=`)."""
    from numgpt.training import memory
    from numgpt.training.loop import TrainConfig

    data, base = base_run
    config, _ = load_checkpoint(base)
    need = memory.training_memory(config, TrainConfig(batch_size=4, block_size=16), threads=1,
                                  adapter=L.adapter_size(config, L.LoraConfig(rank=512)))
    assert need.activations < need.total / 2
    monkeypatch.setattr(memory, "available_memory", lambda: need.total // 2)
    flags = [data, "--init", base, *SMALL, "--threads", 1, "--max-iters", 1, "--out", tmp_path / "big"]
    assert train_cli(*flags, "--lora-rank", 512) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("lower --lora-rank, the adapter's rank"), err
