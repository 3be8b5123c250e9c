"""The parameter schema of GPT-2: one table of names, shapes and kinds, derived from the config, and a
per-layer view of the parameters named like the table.

Initialisation, counting, checkpoints, optimizer state and weight decay all go through the schema, so
adding a tensor is one row of `BEFORE_BLOCKS`, `BLOCK` or `AFTER_BLOCKS` (and, in a block, a field of the
view the forward reads it through). Names are GPT-2's own (as in Hugging Face checkpoints, without the
`transformer.` prefix). A tensor's kind (embedding, linear weight, residual projection, bias, LayerNorm
gain) decides how it is initialised and whether AdamW decays it.

Orientation: every linear weight is stored [in, out] and applied as `x @ w` -- the layout of GPT-2's
Conv1D and of the Hugging Face safetensors files, so weights load with no transpose. (For inference,
load_checkpoint(for_inference=True) keeps the c_proj weights and wte as transposed views of row-major
copies, so that every matrix a decode step multiplies has its longer side contiguous; the shapes, and
every `x @ w`, stay the same.)

Storage is the flat dict `Params` (name -> array: what checkpoints and the optimizer hold). The forward
passes read it through `layer(params, i)`, a frozen tree of references to the same arrays whose
attribute path is the name: `layer(params, 3).attn.c_attn.weight` is `params["h.3.attn.c_attn.weight"]`.

Shape legend: V vocabulary, P positions (n_positions), C channels (n_embd).
"""

from __future__ import annotations

import enum
import functools
import operator
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .config import GPTConfig
from .errors import NumgptError

if TYPE_CHECKING:
    from .panels import Panels

Params = dict[str, np.ndarray]


class Kind(enum.Enum):
    """What a tensor is to the model: decides its initialisation and its weight decay (`init_tensor`,
    `decays`)."""

    EMBEDDING = "embedding"             # wte, wpe: N(0, 0.02); decayed unless decay_embeddings is off
    WEIGHT = "linear weight"            # [in, out]: N(0, 0.02); decayed
    RESIDUAL_WEIGHT = "residual projection"  # a c_proj weight, whose output is added to the residual
                                        # stream: N(0, 0.02 / sqrt(2 n_layer)); decayed
    BIAS = "bias"                       # zeros; never decayed
    GAIN = "LayerNorm gain"             # ones; never decayed


# The one table: every tensor before the blocks, in each block (named h.N.<name>) and after them, in
# checkpoint order, with its kind and its shape in the legend's letters.
BEFORE_BLOCKS: dict[str, tuple[Kind, tuple[str, ...]]] = {
    "wte.weight": (Kind.EMBEDDING, ("V", "C")),        # also the output projection (tied)
    "wpe.weight": (Kind.EMBEDDING, ("P", "C")),
}
BLOCK: dict[str, tuple[Kind, tuple[str, ...]]] = {
    "ln_1.weight": (Kind.GAIN, ("C",)),
    "ln_1.bias": (Kind.BIAS, ("C",)),
    "attn.c_attn.weight": (Kind.WEIGHT, ("C", "3C")),
    "attn.c_attn.bias": (Kind.BIAS, ("3C",)),
    "attn.c_proj.weight": (Kind.RESIDUAL_WEIGHT, ("C", "C")),
    "attn.c_proj.bias": (Kind.BIAS, ("C",)),
    "ln_2.weight": (Kind.GAIN, ("C",)),
    "ln_2.bias": (Kind.BIAS, ("C",)),
    "mlp.c_fc.weight": (Kind.WEIGHT, ("C", "4C")),
    "mlp.c_fc.bias": (Kind.BIAS, ("4C",)),
    "mlp.c_proj.weight": (Kind.RESIDUAL_WEIGHT, ("4C", "C")),
    "mlp.c_proj.bias": (Kind.BIAS, ("C",)),
}
# A block's matrices (the rest are vectors): what a decode step multiplies, with wte (formats.hf, panels.py).
BLOCK_MATRICES = tuple(name for name, (kind, _) in BLOCK.items() if kind in (Kind.WEIGHT, Kind.RESIDUAL_WEIGHT))
AFTER_BLOCKS: dict[str, tuple[Kind, tuple[str, ...]]] = {
    "ln_f.weight": (Kind.GAIN, ("C",)),
    "ln_f.bias": (Kind.BIAS, ("C",)),
}
INIT_STD = 0.02                                        # GPT-2's initializer_range

_BLOCK_NAME = re.compile(r"h\.\d+\.(.+)")


def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, in checkpoint order. The output projection is tied to wte."""
    dims = {"V": config.vocab_size, "P": config.n_positions, "C": config.n_embd,
            "3C": 3 * config.n_embd, "4C": 4 * config.n_embd}
    names = [*BEFORE_BLOCKS, *(f"h.{i}.{name}" for i in range(config.n_layer) for name in BLOCK), *AFTER_BLOCKS]
    return {name: tuple(dims[d] for d in _entry(name)[1]) for name in names}


def tensor_kind(name: str) -> Kind:
    """The kind of the parameter called `name` (a GPT-2 name: `param_shapes`' keys)."""
    return _entry(name)[0]


def _entry(name: str) -> tuple[Kind, tuple[str, ...]]:
    entry = _lookup(name)
    if entry is None:
        raise NumgptError(f"{name!r} is not a GPT-2 parameter name (see numgpt/params.py)")
    return entry


def _lookup(name: str) -> tuple[Kind, tuple[str, ...]] | None:
    block = _BLOCK_NAME.fullmatch(name)
    return BLOCK.get(block.group(1)) if block else BEFORE_BLOCKS.get(name) or AFTER_BLOCKS.get(name)


def decays(name: str, shape: tuple[int, ...], *, decay_embeddings: bool = True) -> bool:
    """Whether AdamW's weight decay applies to a parameter: linear weights yes, the embeddings if
    decay_embeddings, biases and LayerNorm gains never (nanoGPT, minGPT). A tensor outside GPT-2's schema
    (a test's, an adapter's) goes by its shape: matrices yes, vectors no (nanoGPT's rule)."""
    entry = _lookup(name)
    if entry is None:
        return len(shape) >= 2
    kind = entry[0]
    return kind in (Kind.WEIGHT, Kind.RESIDUAL_WEIGHT) or (kind is Kind.EMBEDDING and decay_embeddings)


def init_tensor(kind: Kind, shape: tuple[int, ...], config: GPTConfig, rng: np.random.Generator) -> np.ndarray:
    """GPT-2's initialisation of one tensor of a kind: N(0, 0.02) weights and embeddings, residual
    projections scaled by 1/sqrt(2 n_layer) (two residual additions per block), zero biases, unit gains
    (as in the GPT-2 paper and Hugging Face's _init_weights)."""
    if kind is Kind.GAIN:
        return np.ones(shape, np.float32)
    if kind is Kind.BIAS:
        return np.zeros(shape, np.float32)
    std = INIT_STD / np.sqrt(2 * config.n_layer) if kind is Kind.RESIDUAL_WEIGHT else INIT_STD
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def init_params(config: GPTConfig, rng: np.random.Generator) -> Params:
    """A freshly initialised model (`init_tensor` for each tensor, drawn in checkpoint order)."""
    shapes = param_shapes(config)
    return {name: init_tensor(tensor_kind(name), shape, config, rng) for name, shape in shapes.items()}


def count_params(config: GPTConfig) -> int:
    """Number of parameters, counting the tied wte/lm_head once (as GPT-2's published sizes do)."""
    return sum(int(np.prod(s)) for s in param_shapes(config).values())


def zeros_like(params: Params) -> Params:
    """A zero array for every parameter (gradients, optimizer moments)."""
    return {k: np.zeros_like(v) for k, v in params.items()}


# ---- the view: GPT-2's names as attributes ---------------------------------------------------------------
# Frozen so that `layer.attn.c_attn.weight = w` fails instead of silently leaving the dict (the storage)
# unchanged; slots so that building a layer's 9 objects costs a few microseconds (once per forward call).

@dataclass(frozen=True, slots=True)
class Linear:
    """A linear layer's tensors: y = x @ weight + bias."""

    weight: np.ndarray   # [in, out]
    bias: np.ndarray     # [out]
    panels: "Panels | None" = None   # the weight's column panels for few-row products (numgpt.load's models)


@dataclass(frozen=True, slots=True)
class LayerNorm:
    """A LayerNorm's tensors: y = (x - mean) / std * weight + bias."""

    weight: np.ndarray   # [C] gain
    bias: np.ndarray     # [C]


@dataclass(frozen=True, slots=True)
class Attention:
    c_attn: Linear       # C -> 3C: q, k, v side by side
    c_proj: Linear       # C -> C, into the residual stream


@dataclass(frozen=True, slots=True)
class MLP:
    c_fc: Linear         # C -> 4C
    c_proj: Linear       # 4C -> C, into the residual stream


@dataclass(frozen=True, slots=True)
class Layer:
    """Block h.{index}'s tensors: `layer.attn.c_attn.weight` is params[f"h.{index}.attn.c_attn.weight"],
    the same array (a gradient dict gives the same tree of gradients)."""

    index: int
    ln_1: LayerNorm
    attn: Attention
    ln_2: LayerNorm
    mlp: MLP


def layer(params: Params, i: int, *, panels: bool = False) -> Layer:
    """Block i of params (or of gradients keyed like them) as a `Layer`: references, no copies (and, for
    a panels.DecodeParams and `panels`, each weight's panels)."""
    (ln_1_w, ln_1_b, c_attn_w, c_attn_b, attn_proj_w, attn_proj_b,
     ln_2_w, ln_2_b, c_fc_w, c_fc_b, mlp_proj_w, mlp_proj_b) = _block_tensors(i)(params)   # BLOCK's order
    store = getattr(params, "panels", None) if panels else None
    if store:
        p_attn, p_attn_proj, p_fc, p_mlp_proj = _block_weights(i)(store)
    else:
        p_attn = p_attn_proj = p_fc = p_mlp_proj = None
    return Layer(i, LayerNorm(ln_1_w, ln_1_b),
                 Attention(Linear(c_attn_w, c_attn_b, p_attn), Linear(attn_proj_w, attn_proj_b, p_attn_proj)),
                 LayerNorm(ln_2_w, ln_2_b),
                 MLP(Linear(c_fc_w, c_fc_b, p_fc), Linear(mlp_proj_w, mlp_proj_b, p_mlp_proj)))


@functools.cache
def _block_tensors(i: int) -> operator.itemgetter:
    """Fetches block i's tensors from a params dict in BLOCK's order (one C call, no string building)."""
    return operator.itemgetter(*(f"h.{i}.{name}" for name in BLOCK))


@functools.cache
def _block_weights(i: int) -> operator.itemgetter:
    """Fetches block i's BLOCK_MATRICES entries (a panels store's, by name) in BLOCK's order."""
    return operator.itemgetter(*(f"h.{i}.{name}" for name in BLOCK_MATRICES))


def layers(params: Params, config: GPTConfig, *, panels: bool = False) -> list[Layer]:
    """Every block's view, in order (what a forward builds once per call); panels: as `layer`."""
    return [layer(params, i, panels=panels) for i in range(config.n_layer)]
