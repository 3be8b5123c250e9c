"""The parameter schema (numgpt/params.py): the layer view is the flat dict's own arrays under GPT-2's
names, and the tensor kinds give transformers' initialisation and nanoGPT's weight-decay groups."""

import dataclasses

import numpy as np
import pytest
from references import reference

from numgpt import GPTConfig, NumgptError
from numgpt.params import BLOCK, Kind, decays, init_params, layer, layers, param_shapes, tensor_kind

torch = reference("torch")
transformers = reference("transformers")

CONFIG = GPTConfig(vocab_size=97, n_positions=32, n_embd=24, n_layer=3, n_head=3)


def leaf_paths(view, prefix=""):
    """Every array in a view with its dotted attribute path: [("ln_1.weight", array), ...]."""
    out = []
    for f in dataclasses.fields(view):
        value = getattr(view, f.name)
        if dataclasses.is_dataclass(value):
            out += leaf_paths(value, prefix + f.name + ".")
        elif isinstance(value, np.ndarray):
            out.append((prefix + f.name, value))
    return out


def test_the_layer_view_is_the_dicts_arrays_under_their_names():
    """layer(params, i).attn.c_attn.weight IS params["h.i.attn.c_attn.weight"] (no copy), for every
    tensor of the block and nothing else, in the schema's order."""
    params = init_params(CONFIG, np.random.default_rng(0))
    for i, view in enumerate(layers(params, CONFIG)):
        assert view.index == i
        paths = leaf_paths(view)
        assert [p for p, _ in paths] == list(BLOCK)
        assert all(array is params[f"h.{i}.{p}"] for p, array in paths)


def test_the_view_is_frozen():
    view = layer(init_params(CONFIG, np.random.default_rng(0)), 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.attn.c_attn.weight = np.zeros(3)                  # would leave the dict (the storage) unchanged


def test_kinds_and_weight_decay_groups():
    """Decayed: the linear weights, and the embeddings unless decay_embeddings is off; never biases or
    LayerNorm gains (nanoGPT: every tensor with two dimensions)."""
    shapes = param_shapes(CONFIG)
    matrices = {n for n, s in shapes.items() if len(s) == 2}
    assert {n for n, s in shapes.items() if decays(n, s)} == matrices
    assert {n for n, s in shapes.items() if decays(n, s, decay_embeddings=False)} == \
        matrices - {"wte.weight", "wpe.weight"}
    assert decays("lora.A", (4, 2)) and not decays("lora.b", (2,))   # outside the schema: by shape
    assert {n for n in shapes if tensor_kind(n) is Kind.RESIDUAL_WEIGHT} == \
        {f"h.{i}.{m}.c_proj.weight" for i in range(CONFIG.n_layer) for m in ("attn", "mlp")}
    assert {n for n in shapes if tensor_kind(n) is Kind.GAIN} == \
        {f"h.{i}.{ln}.weight" for i in range(CONFIG.n_layer) for ln in ("ln_1", "ln_2")} | {"ln_f.weight"}
    for bad in ("lm_head.weight", "h.0.attn.bias", "h.x.ln_1.weight"):
        with pytest.raises(NumgptError, match="not a GPT-2 parameter name") as e:
            tensor_kind(bad)
        assert "\n" not in str(e.value)


def test_init_matches_transformers_gpt2_init():
    """Each tensor's kind gives transformers' GPT-2 initialisation: the same zeros and ones, and normal
    weights of the same standard deviation, residual projections scaled by 1/sqrt(2 n_layer)."""
    config = GPTConfig(vocab_size=500, n_positions=64, n_embd=64, n_layer=8, n_head=4)
    ours = init_params(config, np.random.default_rng(0))
    torch.manual_seed(0)
    hf = transformers.GPT2Model(transformers.GPT2Config(vocab_size=500, n_positions=64, n_embd=64, n_layer=8,
                                                        n_head=4, initializer_range=0.02))
    theirs = {name: t.detach().numpy() for name, t in hf.state_dict().items() if name in ours}
    assert theirs.keys() == ours.keys()
    for name, w in ours.items():
        assert w.dtype == np.float32 and w.shape == theirs[name].shape
        if tensor_kind(name) in (Kind.GAIN, Kind.BIAS):
            np.testing.assert_array_equal(w, theirs[name], err_msg=name)
        else:
            # two samples of >= 4096 normals: their std differ by ~2%; the wrong scale (1 vs 1/4) by 4x
            assert w.std() == pytest.approx(theirs[name].std(), rel=0.1), name
            assert abs(w.mean()) < 0.1 * w.std(), name
    assert ours["h.0.mlp.c_proj.weight"].std() == pytest.approx(0.02 / 4, rel=0.05)   # sqrt(2 * 8) = 4
