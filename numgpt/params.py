"""The parameter schema of GPT-2: one table of names and shapes, derived from the config.

Initialisation, counting, checkpoints and optimizer state all go through `param_shapes`, so adding a
tensor is one edit. Names are GPT-2's own (as in Hugging Face checkpoints, without the `transformer.`
prefix). Orientation: every linear weight is stored [in, out] and applied as `x @ w` -- the layout of
GPT-2's Conv1D and of the Hugging Face safetensors files, so weights load with no transpose. (For
inference, load_checkpoint(for_inference=True) keeps the blocks' weights as [in, out]-shaped views of
[out, in] copies; the shapes, and every `x @ w`, stay the same.)
"""

from __future__ import annotations

import numpy as np

from .config import GPTConfig

Params = dict[str, np.ndarray]


def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, in checkpoint order. The output projection is tied to wte."""
    V, P, C = config.vocab_size, config.n_positions, config.n_embd
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (V, C), "wpe.weight": (P, C)}
    for i in range(config.n_layer):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def init_params(config: GPTConfig, rng: np.random.Generator) -> Params:
    """GPT-2's initialisation: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layer),
    zero biases, unit LayerNorm gains (as in the GPT-2 paper and Hugging Face's _init_weights)."""
    std = 0.02
    proj_std = std / np.sqrt(2 * config.n_layer)
    params: Params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            params[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            params[name] = np.zeros(shape, np.float32)
        else:
            s = proj_std if name.endswith("c_proj.weight") else std
            params[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(s))
    return params


def count_params(config: GPTConfig) -> int:
    """Number of parameters, counting the tied wte/lm_head once (as GPT-2's published sizes do)."""
    return sum(int(np.prod(s)) for s in param_shapes(config).values())


def zeros_like(params: Params) -> Params:
    """A zero array for every parameter (gradients, optimizer moments)."""
    return {k: np.zeros_like(v) for k, v in params.items()}
