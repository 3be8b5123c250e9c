"""AdamW, the weight-decay mask, clipping and the schedule, against torch.optim and torch's clipping."""

import math

import numpy as np
import pytest
from references import reference

from numgpt.config import GPTConfig
from numgpt.training.optim import (AdamWConfig, adamw_step, clip_grad_norm, decays, global_norm, init_state,
                          learning_rate)
from numgpt.params import param_shapes

torch = reference("torch")


def test_schedule_warms_up_linearly_then_cosine_to_the_floor():
    hp = AdamWConfig(lr=1.0, min_lr=0.1, warmup_iters=10, decay_iters=110)
    warm = [learning_rate(hp, s) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 11 for s in range(10)])          # nanoGPT: lr (it+1)/(warmup+1)
    assert learning_rate(hp, 10) == pytest.approx(1.0)                        # cosine starts at the peak
    assert learning_rate(hp, 60) == pytest.approx(0.55)                       # halfway: the mean of both
    assert learning_rate(hp, 110) == pytest.approx(0.1)
    assert learning_rate(hp, 5000) == 0.1                                     # then stays at the floor
    cosine = [learning_rate(hp, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))


def test_schedule_matches_torch_cosine_annealing():
    hp = AdamWConfig(lr=0.5, min_lr=0.05, warmup_iters=0, decay_iters=40)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=hp.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40, eta_min=hp.min_lr)
    for step in range(40):
        assert learning_rate(hp, step) == pytest.approx(sched.get_last_lr()[0], rel=1e-12)
        opt.step()
        sched.step()


def test_weight_decay_mask():
    shapes = param_shapes(GPTConfig(vocab_size=10, n_positions=4, n_embd=4, n_layer=1, n_head=1))
    on = AdamWConfig()
    off = AdamWConfig(decay_embeddings=False)
    decayed = {n for n, s in shapes.items() if decays(n, s, on)}
    assert decayed == {"wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight",
                       "h.0.mlp.c_fc.weight", "h.0.mlp.c_proj.weight"}
    assert {n for n, s in shapes.items() if decays(n, s, off)} == decayed - {"wte.weight", "wpe.weight"}


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((5, 3), dtype=np.float32), "b": rng.standard_normal(7, dtype=np.float32)}
    tg = [torch.from_numpy(g.copy()) for g in grads.values()]
    params = [torch.zeros_like(g, requires_grad=True) for g in tg]
    for p, g in zip(params, tg):
        p.grad = g
    ref_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(ref_norm, rel=1e-6)                          # float32 vs float64 summing
    for g, p in zip(grads.values(), params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-6)
    assert global_norm(grads) == pytest.approx(min(norm, max_norm), rel=1e-5)


def test_no_clipping_when_zero_and_nan_norm_left_alone():
    g = {"a": np.full(4, 10, np.float32)}
    assert clip_grad_norm(g, 0) == 20 and g["a"][0] == 10
    g = {"a": np.array([np.nan, 1], np.float32)}
    assert math.isnan(clip_grad_norm(g, 1.0))


@pytest.mark.parametrize("shape", [(6, 4), (700, 300)], ids=["small", "threaded"])  # 210k elements: split over threads
def test_adamw_matches_torch_over_steps(shape):
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal(shape, dtype=np.float32), "b": rng.standard_normal(4, dtype=np.float32)}
    hp = AdamWConfig(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.3)
    tw = torch.tensor(params["w"], requires_grad=True)
    tb = torch.tensor(params["b"], requires_grad=True)
    opt = torch.optim.AdamW([{"params": [tw], "weight_decay": hp.weight_decay}, {"params": [tb], "weight_decay": 0}],
                            lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, foreach=False)
    state = init_state(params)
    for step in range(6):
        grads = {"w": rng.standard_normal(shape, dtype=np.float32), "b": rng.standard_normal(4, dtype=np.float32)}
        lr = hp.lr * (step + 1) / 6
        adamw_step(params, grads, state, hp, lr, threads=2)
        tw.grad, tb.grad = torch.from_numpy(grads["w"]), torch.from_numpy(grads["b"])
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    assert state.step == 6
    # the same float32 operations in the same order: equal up to a few float32 ulps (~1e-7 of values ~1)
    np.testing.assert_allclose(params["w"], tw.detach().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(params["b"], tb.detach().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(state.v["w"], opt.state[tw]["exp_avg_sq"].numpy(), rtol=1e-6)


@pytest.mark.parametrize("bad", [dict(lr=0), dict(lr=-1), dict(min_lr=2.0, lr=1.0), dict(beta2=1.0),
                                 dict(weight_decay=-0.1), dict(eps=0)])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError):
        AdamWConfig(**bad)


def test_chunked_update_equals_whole_tensor_update():
    from numgpt.training.optim import CHUNK, adamw_update
    rng = np.random.default_rng(2)
    shape = (CHUNK // 100 + 7, 100)                           # more than one chunk, the last one partial
    p, g, m = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    v = rng.random(shape, dtype=np.float32)
    params, grads = {"w": p.copy(), "t": p.T.copy().T}, {"w": g, "t": g}   # "t": not C-contiguous
    state = init_state(params)
    state.m = {"w": m.copy(), "t": m.copy()}
    state.v = {"w": v.copy(), "t": v.copy()}
    hp = AdamWConfig(lr=0.01, weight_decay=0.1)
    adamw_step(params, grads, state, hp, 0.01)
    ref_p, ref_m, ref_v = p.copy(), m.copy(), v.copy()
    adamw_update(ref_p, g, ref_m, ref_v, b1=hp.beta1, b2=hp.beta2, eps=hp.eps, step_size=np.float32(0.01 / (1 - 0.9)),
                 sqrt_bc2=np.float32(math.sqrt(1 - 0.99)), decay=np.float32(0.01 * 0.1))
    for name in ("w", "t"):                                   # the same operations on the same floats
        np.testing.assert_array_equal(params[name], ref_p)
        np.testing.assert_array_equal(state.m[name], ref_m)
        np.testing.assert_array_equal(state.v[name], ref_v)


def test_config_fields_of_the_wrong_kind_are_named():
    """A damaged train_config.json (or a caller's typo) gives the field's name, not a TypeError."""
    from numgpt.errors import NumgptError
    from numgpt.training.loop import TrainConfig
    for make, words in [(lambda: TrainConfig(batch_size="4"), "TrainConfig.batch_size must be a whole number, got '4'"),
                        (lambda: TrainConfig(seed=1.5), "TrainConfig.seed must be a whole number, got 1.5"),
                        (lambda: TrainConfig(dropout=None), "TrainConfig.dropout must be a number, got None"),
                        (lambda: AdamWConfig(lr="x"), "AdamWConfig.lr must be a number, got 'x'"),
                        (lambda: AdamWConfig(warmup_iters=True), "AdamWConfig.warmup_iters must be a whole number")]:
        with pytest.raises(NumgptError) as e:
            make()
        assert words in str(e.value)
    for damaged in ({"bogus": 1}, {"optim": {"lrr": 1}}, {"optim": 5}):   # train_config of a trainstate.json
        with pytest.raises(NumgptError, match="damaged training config|optim must be an AdamWConfig"):
            TrainConfig.from_dict(damaged)
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
