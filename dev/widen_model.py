"""Widen a GPT-2 checkpoint by a whole factor r without changing what it computes (Net2WiderNet, Chen et al.
2016): every channel, head and hidden unit repeated r times. A benchmark's device: a model that has learned
a behaviour (the quote model copies its context) at the cost per forward of a wider one, where a decode
step's time is its weights' bytes -- the regime speculative decoding is for. Train it further afterwards
(numgpt train --init OUT) so that the copies drift apart; a little noise (--noise) starts that.

Why it computes the same: the residual stream becomes x' = [x, x, ..., x] (r copies). LayerNorm of x' is
the copies of LayerNorm(x) (same mean and variance) with the gains repeated. A linear layer's rows are
repeated and divided by r (so x' @ W' = x @ W) and its columns repeated (so the output is copied too); the
query/key/value columns are repeated block by block, so head h + k*H is head h again (same head size, same
scale). The tied output projection would sum r copies, so ln_f's gain and bias are divided by r.

    python dev/widen_model.py runs/quote8/latest runs/quote8-wide --factor 3 [--noise 1e-3]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

import numgpt
from numgpt.formats.hf import save_checkpoint
from numgpt.model import forward


def repeat_in(w: np.ndarray, r: int) -> np.ndarray:
    """Rows repeated r times and divided by r: [in, out] -> [r*in, out], x' @ w' = x @ w."""
    return np.concatenate([w / r] * r, axis=0)


def repeat_out(w: np.ndarray, r: int) -> np.ndarray:
    """The last axis repeated r times: [..., n] -> [..., r*n]."""
    return np.concatenate([w] * r, axis=-1)


def widen(params: dict, config, r: int) -> tuple[dict, object]:
    """The r-times wider model that computes what (params, config) does."""
    C = config.n_embd
    out: dict[str, np.ndarray] = {}
    for name, w in params.items():
        w = np.asarray(w, np.float32)
        if name in ("wte.weight", "wpe.weight") or name.endswith(("ln_1.weight", "ln_1.bias", "ln_2.weight",
                                                                 "ln_2.bias", "mlp.c_fc.bias", "attn.c_proj.bias",
                                                                 "mlp.c_proj.bias")):
            out[name] = repeat_out(w, r)
        elif name.endswith("attn.c_attn.weight"):                     # [C, 3C]: q, k, v blocks, each repeated
            out[name] = np.concatenate([repeat_out(repeat_in(w[:, i * C:(i + 1) * C], r), r) for i in range(3)], axis=1)
        elif name.endswith("attn.c_attn.bias"):
            out[name] = np.concatenate([repeat_out(w[i * C:(i + 1) * C], r) for i in range(3)])
        elif name.endswith(("attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
            out[name] = repeat_out(repeat_in(w, r), r)
        elif name in ("ln_f.weight", "ln_f.bias"):
            out[name] = repeat_out(w, r) / r                            # the tied head sums r copies
        else:
            raise SystemExit(f"widen_model: no rule for {name}")
    return out, replace(config, n_embd=r * C, n_head=r * config.n_head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model"), ap.add_argument("out")
    ap.add_argument("--factor", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.0, help="relative std of the noise added to each weight")
    args = ap.parse_args()
    lm = numgpt.load(args.model, mmap=True)
    params, config = widen(dict(lm.params), lm.config, args.factor)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 48))
    before, after = forward(dict(lm.params), lm.config, ids), forward(params, config, ids)
    print(f"{args.model}: {lm.config.n_layer} layers x {lm.config.n_embd} -> x {config.n_embd}; logits differ by "
          f"at most {np.abs(before - after).max():.2e}")
    if args.noise:
        rng = np.random.default_rng(1)
        params = {k: v + rng.standard_normal(v.shape).astype(np.float32) * args.noise * v.std() if v.ndim == 2 else v
                  for k, v in params.items()}
    save_checkpoint(args.out, config, params, tokenizer=lm.tokenizer)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
