"""The whole training step against PyTorch autograd and torch.optim.AdamW (llm.c's test_gpt2 is the model).

The same weights go into transformers' GPT2LMHeadModel (eager attention, dropout 0); the same batch gives
the loss and every parameter's gradient; then 10 AdamW steps with the same schedule, clipping and
weight-decay groups give the same losses.
"""

import dataclasses

import numpy as np
import pytest
from references import reference

from numgpt import backprop
from numgpt.config import GPTConfig
from numgpt.training.optim import AdamWConfig, adamw_step, clip_grad_norm, decays, init_state, learning_rate
from numgpt.params import init_params

torch = reference("torch")
transformers = reference("transformers")

CONFIG = GPTConfig(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4, bos_token_id=96, eos_token_id=96)
B, T = 4, 32
TINY = 1e-12


def hf_model(config: GPTConfig, params):
    """transformers' GPT-2 holding exactly our params (Conv1D stores [in, out] as we do: no transpose)."""
    hf_config = transformers.GPT2Config(**{k: v for k, v in config.to_hf_dict().items()
                                           if k not in ("architectures", "torch_dtype")},
                                        attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(hf_config)
    sd = model.state_dict()
    with torch.no_grad():
        for name, p in params.items():
            sd["transformer." + name].copy_(torch.from_numpy(p))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    return model.train()                                  # train mode: dropout is 0 in this config


def torch_loss(model, ids, targets):
    logits = model(torch.from_numpy(ids)).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(targets).reshape(-1))


def batch(rng):
    ids = rng.integers(0, CONFIG.vocab_size, (B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def relative_error(ours, ref):
    """||ours - ref||_2 / max(||ref||_2, tiny), over the whole tensor."""
    return float(np.linalg.norm((ours - ref).ravel()) / max(np.linalg.norm(ref.ravel()), TINY))


@pytest.fixture(scope="module")
def params():
    p = init_params(CONFIG, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    # random biases and gains, so that every gradient path carries signal
    return {k: (v + 0.05 * rng.standard_normal(v.shape, dtype=np.float32)).astype(np.float32)
            for k, v in p.items()}


def test_loss_and_every_gradient_match_pytorch(params):
    torch.manual_seed(0)
    ids, targets = batch(np.random.default_rng(2))
    model = hf_model(CONFIG, params)
    ref_loss = torch_loss(model, ids, targets)
    ref_loss.backward()
    ref_grads = {n.removeprefix("transformer."): p.grad.numpy() for n, p in model.named_parameters()}
    loss, grads = backprop.loss_and_grads(params, CONFIG, ids, targets)
    # float32 throughout: the loss (~4.6) agrees to a few ulps of float32 summation order
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    assert set(ref_grads) == set(grads)
    for name, g in grads.items():
        assert g.dtype == np.float32
        # issue 4's bound: relative L2 error 1e-4 per parameter in float32 (observed <= 6e-7)
        assert relative_error(g, ref_grads[name]) < 1e-4, name


def torch_adamw(model, hp: AdamWConfig):
    """torch.optim.AdamW with our weight-decay mask as two param groups."""
    named = [(n.removeprefix("transformer."), p) for n, p in model.named_parameters()]
    decay = [p for n, p in named if decays(n, tuple(p.shape), hp)]
    no_decay = [p for n, p in named if not decays(n, tuple(p.shape), hp)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, foreach=False)


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_ten_adamw_steps_match_pytorch(params, decay_embeddings):
    # a fast schedule (warmup 3, decay by step 8) and a clip that engages, so every branch runs
    hp = AdamWConfig(lr=3e-3, min_lr=3e-4, warmup_iters=3, decay_iters=8, beta1=0.9, beta2=0.99,
                     weight_decay=0.1, decay_embeddings=decay_embeddings, grad_clip=0.5)
    ours = {k: v.copy() for k, v in params.items()}
    state = init_state(ours)
    model = hf_model(CONFIG, params)
    opt = torch_adamw(model, hp)
    rng = np.random.default_rng(3)
    for step in range(10):
        ids, targets = batch(rng)
        lr = learning_rate(hp, step)
        loss, grads = backprop.loss_and_grads(ours, CONFIG, ids, targets)
        norm = clip_grad_norm(grads, hp.grad_clip)
        adamw_step(ours, grads, state, hp, lr)

        opt.zero_grad()
        ref = torch_loss(model, ids, targets)
        ref.backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip).item()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        # issue 4's bound: losses within 1e-5 relative over 10 steps (float32 drift observed ~1e-7)
        assert loss == pytest.approx(ref.item(), rel=1e-5), step
        assert norm == pytest.approx(ref_norm, rel=1e-4), step   # the same bound as the gradients
    C = CONFIG.n_embd
    for n, p in model.named_parameters():
        ref, got = p.detach().numpy(), ours[n.removeprefix("transformer.")]
        if n.endswith("attn.c_attn.bias"):
            # subtle: the key bias adds q.b_k to every score of a row, which softmax ignores, so its true
            # gradient is 0 and both sides hold rounding noise (~1e-9) that Adam's m/sqrt(v) blows up
            # to steps of size lr. Those entries cannot agree; the query and value biases must.
            ref, got = np.delete(ref, np.s_[C:2 * C]), np.delete(got, np.s_[C:2 * C])
        start = params[n.removeprefix("transformer.")]
        if n.endswith("attn.c_attn.bias"):
            start = np.delete(start, np.s_[C:2 * C])
        # the total change of each tensor over 10 updates agrees to 1e-3 relative (L2): entries whose
        # gradient is near 0 take noise-driven steps (Adam normalises), so per-entry checks would be flaky
        assert relative_error(got - start, ref - start) < 1e-3, n


def test_dropout_is_reproducible_from_the_seed(params):
    ids, targets = batch(np.random.default_rng(4))
    run = lambda seed: backprop.loss_and_grads(params, CONFIG, ids, targets, dropout=0.1,
                                               rng=np.random.default_rng(seed))
    (l1, g1), (l2, g2), (l3, _) = run(5), run(5), run(6)
    assert l1 == l2 and all(np.array_equal(g1[k], g2[k]) for k in g1)
    assert l1 != l3
    plain, _ = backprop.loss_and_grads(params, CONFIG, ids, targets)
    assert l1 != plain


def test_float32_in_float32_out(params):
    ids, targets = batch(np.random.default_rng(5))
    logits, _ = backprop.forward_for_training(params, CONFIG, ids)
    _, grads = backprop.loss_and_grads(params, CONFIG, ids, targets, dropout=0.1, rng=np.random.default_rng(0))
    assert logits.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
