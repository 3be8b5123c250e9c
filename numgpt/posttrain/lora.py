"""LoRA: low-rank adapters on the blocks' linear layers, trained while the base model stays frozen.

    y = x W + b + (alpha / r) * (x A) B          W [in, out] frozen; A [in, r], B [r, out] trained

(Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"). A starts as PEFT's
kaiming-uniform (U(-1/sqrt(in), 1/sqrt(in))), B as zeros, so a new adapter leaves the model unchanged.

Orientation: numgpt keeps every weight [in, out] (GPT-2's Conv1D), so A is [in, r] and B [r, out]; PEFT's
lora_A / lora_B are nn.Linear weights, [r, in] and [out, r]: the adapter file (formats/peft.py) transposes.

Names: an adapter tensor is its layer's name plus lora_A / lora_B, 'h.3.attn.c_attn.lora_A', kept in the
same Params dict as the base (so the training state, checkpoints and the optimizer treat them like any
tensor); the Objective's trainable set is exactly these names, so the base gets no gradient buffers and no
optimizer moments. Targets follow PEFT's target_modules rule: a module is adapted if its name within the
block (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) equals a target or ends with '.' + target, so
'c_proj' adapts both projections.

The training forward/backward (`lora_hidden_forward` / `lora_hidden_backward`, and with the tied vocabulary
projection `lora_forward_for_training` / `lora_backward`) runs backprop.py's block over a frozen base
(frozen_block_forward/backward) with each linear layer an `AdaptedLinear`: the pair `lora_linear_forward` /
`lora_linear_backward`. The frozen tensors' gradients are never computed (no x^T dy for W, no [V, C] product
for the tied wte), which is where LoRA's step saves its time. The losses: next-token and SFT's weighted
(`LoraLoss`), classify's head (`LoraClassificationLoss`). Tests hold the pair and the whole model's adapter
gradients equal to torch autograd with peft, and the unmerged forward equal to the merged model's.

The embedding (PEFT's LoRA on an nn.Embedding, target 'wte'): x = wte[ids] + (alpha / r) A_e[ids] B_e with
A_e [V, r] (PEFT's lora_embedding_A [r, V], transposed) starting at zeros and B_e [r, C] (lora_embedding_B
[C, r]) at N(0, 1), PEFT's init; `embedding_adapter_forward` / `embedding_adapter_backward`. PEFT adapts
the input lookup only, never GPT-2's tied vocabulary projection, so a merged model (wte + the delta) would
change the head too: the target is for the commands with a head of their own (`classify train`, `reward
train`) and refused by the language-model ones (`lora_from_args(..., embedding=False)`). On a small model
classifying text it is what brought LoRA level with full fine-tuning (BENCHMARKS.md).

Token rows (PEFT's trainable_token_indices): `LoraConfig(tokens=ids)` also trains wte's rows `ids` as
one more tensor, TOKENS [k, C] (initialised as those rows), that takes their place in the embedding and
in the tied vocabulary projection; the rest of wte stays frozen. What `numgpt sft --lora-rank` needs when
it has just added the chat tokens (their rows all the same mean): without it the model could not tell
<|user|> from <|assistant|>. Saved as peft saves it, and peft loads it with the same logits (tested).

Every training command shares `add_lora_flags`, `lora_from_args`, `lora_adapter_size` (setup_run's memory
check counts the adapter's gradients and moments, not the frozen base's), `with_lora` (a training.Run made
to train an adapter) and `export_adapter` (RUN/adapter).

Shape legend: B batch, T time, N = B * T rows, C channels, r rank, V vocabulary.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..backprop import (Workspace, check_batch, frozen_block_backward, frozen_block_forward, maybe_dropout,
                        weighted_cross_entropy_backward, weighted_cross_entropy_forward)
from ..config import GPTConfig
from ..errors import NumgptError
from ..formats import peft
from ..ops import (cross_entropy_backward, cross_entropy_forward, embedding_backward, layer_norm_backward,
                   layer_norm_forward, linear_forward)
from ..params import Params, layer, param_shapes
from ..training.loop import TrainConfig, keep_trained_moments
from ..training.objective import BatchFn, Objective, next_token_batch
from ..training.run import Run

MODULES = peft.BLOCK_MODULES             # a block's linear layers, PEFT's names (attn.c_attn, ..., mlp.c_proj)
DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")                        # every one of them
EMBEDDING = "wte"                        # the target that adapts the token embedding (PEFT's name for it)
EMBED_A, EMBED_B = peft.EMBED_A, peft.EMBED_B    # 'wte.lora_A' [V, r], 'wte.lora_B' [r, C]
A, B = "lora_A", "lora_B"
TOKENS = peft.TOKENS                     # 'wte.trainable_tokens' [k, C]: the trained rows of wte (LoraConfig.tokens)


@dataclass(frozen=True)
class LoraConfig:
    """An adapter's shape: rank r, alpha (the update is scaled by alpha / r; default alpha = r, PEFT's
    r=8, alpha=8 scale), the target modules (PEFT's suffix rule, see the module docstring), and the token
    ids whose wte rows train too (PEFT's trainable_token_indices; none by default)."""

    rank: int = 8
    alpha: float | None = None
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS, compare=False)   # as given; equal configs adapt
    modules: tuple[str, ...] = field(init=False)     # the MODULES the targets select, in MODULES' order
    embedding: bool = field(init=False)              # whether a target is the token embedding (EMBEDDING)
    # not compared: the caller (sft) chooses them, not the flags, so a resumed run's --lora-* flags match it
    tokens: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise NumgptError(f"the LoRA rank (--lora-rank) must be a whole number >= 1, got {self.rank!r}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", float(self.rank))
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (
                math.isfinite(self.alpha) and self.alpha > 0):
            raise NumgptError(f"the LoRA alpha (--lora-alpha) must be a finite number > 0, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise NumgptError(f"LoRA targets (--lora-targets) must be module names such as "
                              f"{','.join(MODULES)}, got {self.targets!r}")
        for t in targets:
            if not any(_matches(m, t) for m in (*MODULES, EMBEDDING)):
                raise NumgptError(f"LoRA target {t!r} names no linear layer of a GPT-2 block and not the "
                                  f"embedding; use {', '.join(MODULES)} (or a suffix: c_attn, c_proj, c_fc), "
                                  f"or {EMBEDDING}")
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "modules", tuple(m for m in MODULES if any(_matches(m, t) for t in targets)))
        object.__setattr__(self, "embedding", any(_matches(EMBEDDING, t) for t in targets))
        if not self.modules and not self.embedding:
            raise NumgptError(f"LoRA targets {targets!r} select no layer")
        tokens = tuple(self.tokens)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in tokens) or (
                len(set(tokens)) != len(tokens)):
            raise NumgptError(f"LoRA's trained tokens must be distinct token ids >= 0, got {self.tokens!r}")
        object.__setattr__(self, "tokens", tuple(int(i) for i in tokens))
        if self.tokens and self.embedding:
            raise NumgptError(f"LoRA on the embedding ({EMBEDDING}) and trained token rows both change wte; "
                              "use one of them")

    @property
    def scale(self) -> float:
        """alpha / r, what the low-rank update is multiplied by."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets), "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoraConfig":
        try:
            return cls(rank=d["rank"], alpha=d["alpha"], targets=tuple(d["targets"]), tokens=tuple(d.get("tokens", ())))
        except (KeyError, TypeError) as e:
            raise NumgptError(f"a damaged LoRA config {d!r} ({e})") from None


def _matches(module: str, target: str) -> bool:
    """PEFT's target_modules rule for one name: equal, or a suffix after a dot."""
    return module == target or module.endswith("." + target)


# ---- the adapter tensors -----------------------------------------------------------------------------

def adapter_shapes(config: GPTConfig, lora: LoraConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every adapter tensor: h.N.<module>.lora_A [in, r] and .lora_B [r, out], EMBED_A [V, r]
    and EMBED_B [r, C] when the embedding is a target, and TOKENS [k, C] when lora trains k token rows."""
    base = param_shapes(config)
    shapes = {}
    for i in range(config.n_layer):
        for m in lora.modules:
            n_in, n_out = base[module_tensor(i, m, "weight")]
            shapes[module_tensor(i, m, A)] = (n_in, lora.rank)
            shapes[module_tensor(i, m, B)] = (lora.rank, n_out)
    if lora.embedding:
        shapes[EMBED_A], shapes[EMBED_B] = (config.vocab_size, lora.rank), (lora.rank, config.n_embd)
    if lora.tokens:
        if max(lora.tokens) >= config.vocab_size:
            raise NumgptError(f"LoRA's trained token {max(lora.tokens)} is beyond the vocabulary of "
                              f"{config.vocab_size} tokens")
        shapes[TOKENS] = (len(lora.tokens), config.n_embd)
    return shapes


def adapter_size(config: GPTConfig, lora: LoraConfig) -> int:
    """The number of parameters of lora's adapter on a model of `config` (what the run trains)."""
    return sum(math.prod(shape) for shape in adapter_shapes(config, lora).values())


def init_adapters(config: GPTConfig, lora: LoraConfig, rng: np.random.Generator) -> Params:
    """A new adapter's matrices: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform_(a=sqrt(5)) bound),
    B = 0; the embedding's the other way round, as PEFT's: A_e = 0, B_e ~ N(0, 1). Either way the product
    starts at zero (the token rows, if any, start as the base's: `init_token_rows`)."""
    if lora.rank >= config.n_embd:                      # every adapted matrix has a side of n_embd
        raise NumgptError(f"--lora-rank {lora.rank} is not below the model's width (n_embd {config.n_embd}): such an "
                          "adapter is no smaller than the weights it adapts; pick a rank below it, or train the "
                          "weights themselves")
    out = {}
    for name, shape in adapter_shapes(config, lora).items():
        if name == TOKENS:
            continue
        if name == EMBED_A:
            out[name] = np.zeros(shape, np.float32)
        elif name == EMBED_B:
            out[name] = rng.standard_normal(shape).astype(np.float32)
        elif name.endswith(A):
            bound = 1.0 / math.sqrt(shape[0])
            out[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        else:
            out[name] = np.zeros(shape, np.float32)
    return out


def init_token_rows(params: Params, lora: LoraConfig) -> Params:
    """{TOKENS: a copy of wte's rows lora.tokens} (PEFT's init: the rows as they are), or {} without tokens."""
    if not lora.tokens:
        return {}
    return {TOKENS: np.array(params["wte.weight"][list(lora.tokens)], np.float32)}       # [k, C]


def adapter_names(params: Params) -> list[str]:
    """The adapter tensors among params (names ending in lora_A / lora_B)."""
    return [n for n in params if n.endswith("." + A) or n.endswith("." + B)]


def merge(params: Params, config: GPTConfig, lora: LoraConfig) -> Params:
    """The plain model the adapter stands for: W + (alpha/r) A B for every adapted layer, the other
    tensors as they are (a classifier's head too; new arrays for the merged weights, the adapter dropped)."""
    adapter = adapter_shapes(config, lora)
    base = {name: p for name, p in params.items() if name not in adapter}
    return peft.merge_tensors(base, config, list(lora.modules), {n: params[n] for n in adapter}, lora.scale,
                              lora.tokens)


def save_adapter(folder: str | os.PathLike, params: Params, config: GPTConfig, lora: LoraConfig, *,
                 base: str = "") -> Path:
    """Write params' adapter as a PEFT folder (formats/peft.py), with the base's fingerprint; base: the
    base model's name or folder, recorded as peft's base_model_name_or_path."""
    tensors = {name: params[name] for name in adapter_shapes(config, lora)}
    return peft.save_adapter(folder, rank=lora.rank, alpha=lora.alpha, modules=list(lora.modules), tensors=tensors,
                             base=base, fingerprint=peft.base_fingerprint(params, list(param_shapes(config))),
                             tokens=lora.tokens)


def read_adapter(folder: str | os.PathLike, config: GPTConfig, params: Params) -> tuple[LoraConfig, Params]:
    """(LoraConfig, adapter tensors) of a PEFT folder, checked against the base (config, params): another
    base's adapter is a one-line NumgptError (formats.peft.checked_adapter)."""
    rank, alpha, modules, tensors, tokens = peft.checked_adapter(folder, config, params)
    if not modules:
        raise NumgptError(f"{folder}: the adapter holds no LoRA matrices")
    return LoraConfig(rank=rank, alpha=alpha, targets=tuple(modules), tokens=tuple(tokens)), tensors


# ---- one adapted linear layer: forward and backward side by side ------------------------------------

def lora_linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, a: np.ndarray, bm: np.ndarray,
                        scale: float) -> tuple[np.ndarray, np.ndarray]:
    """y = x w + b + scale * (x a) bm on rows x [N, in]; returns y [N, out] and xa [N, r] (the backward's)."""
    y = linear_forward(x, w, b)                                # [N, in] -> [N, out]
    xa = x @ a                                                 # [N, in] x [in, r] -> [N, r]
    y += (xa * np.asarray(scale, x.dtype)) @ bm                # [N, r] x [r, out] -> [N, out]
    return y, xa


def lora_linear_backward(dy: np.ndarray, x: np.ndarray, xa: np.ndarray, w: np.ndarray, a: np.ndarray,
                         bm: np.ndarray, scale: float, da: np.ndarray, dbm: np.ndarray) -> np.ndarray:
    """Differentiates y = x w + b + s (x a) bm with w and b frozen: accumulates
    da += x^T (s dy bm^T), dbm += s (x a)^T dy; returns dx = dy w^T + (s dy bm^T) a^T."""
    s = np.asarray(scale, dy.dtype)
    dxa = (dy @ bm.T) * s                                      # [N, out] x [out, r] -> [N, r]
    dbm += (xa * s).T @ dy                                     # [r, N] x [N, out] -> [r, out]
    da += x.T @ dxa                                            # [in, N] x [N, r] -> [in, r]
    dx = dy @ w.T                                              # [N, out] x [out, in] -> [N, in]
    dx += dxa @ a.T                                            # [N, r] x [r, in] -> [N, in]
    return dx


@dataclass(frozen=True)
class AdaptedLinear:
    """A linear layer with a frozen base and, if adapted, its adapter and where the adapter's gradients go
    (a backprop.FrozenBaseLinear: the block's structure is backprop.frozen_block_forward/backward's)."""

    w: np.ndarray                       # [in, out], frozen
    b: np.ndarray                       # [out], frozen
    scale: float = 1.0                  # alpha / r
    a: np.ndarray | None = None         # [in, r]; None: a plain frozen linear layer
    bm: np.ndarray | None = None        # [r, out]
    da: np.ndarray | None = None        # their gradients (None: not trained, e.g. evaluation)
    dbm: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(y, x a) of the adapted layer; (x w + b, None) of a plain one."""
        if self.a is None:
            return linear_forward(x, self.w, self.b), None
        return lora_linear_forward(x, self.w, self.b, self.a, self.bm, self.scale)

    def backward(self, dy: np.ndarray, x: np.ndarray, xa: np.ndarray | None) -> np.ndarray:
        """dx; the adapter's gradients accumulated if it has one (the base's are never formed)."""
        if self.a is None:
            return dy @ self.w.T                               # [N, out] x [out, in] -> [N, in]
        da = np.zeros_like(self.a) if self.da is None else self.da
        dbm = np.zeros_like(self.bm) if self.dbm is None else self.dbm
        return lora_linear_backward(dy, x, xa, self.w, self.a, self.bm, self.scale, da, dbm)


def module_tensor(i: int, module: str, part: str) -> str:
    """The name of block i's tensor `part` (weight, bias, lora_A, lora_B) of `module` (attn.c_attn, ...):
    the one place adapter names are spelled."""
    return f"h.{i}.{module}.{part}"


def adapted_linears(params: Params, config: GPTConfig, lora: LoraConfig, i: int, grads: Params | None = None
                    ) -> dict[str, AdaptedLinear]:
    """Block i's four linear layers keyed by module name, adapted where lora targets them; their base
    tensors read through the layer view, their adapters' gradients into grads (the names it holds)."""
    p, grads = layer(params, i), {} if grads is None else grads
    out = {}
    for m in MODULES:
        lin = operator.attrgetter(m)(p)                        # p.attn.c_attn, ...
        if m not in lora.modules:
            out[m] = AdaptedLinear(lin.weight, lin.bias)
            continue
        na, nb = module_tensor(i, m, A), module_tensor(i, m, B)
        out[m] = AdaptedLinear(lin.weight, lin.bias, lora.scale, params[na], params[nb], grads.get(na), grads.get(nb))
    return out


# ---- the trained token rows: wte's rows lora.tokens replaced by params[TOKENS], in and out ----------------

def token_positions(tokens: tuple[int, ...], flat_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where [N] bool, pos [n]): the rows of flat_ids [N] that hold one of `tokens`, and its index there."""
    pos = np.full(flat_ids.shape, -1)
    for j, t in enumerate(tokens):                                     # k is a handful (the chat tokens)
        pos[flat_ids == t] = j
    where = pos >= 0
    return where, pos[where]


def lora_embed_forward(params: Params, lora: LoraConfig, ids: np.ndarray, dropout: float,
                       rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray | None]:
    """x = dropout(wte'[ids] + wpe[0..T-1]) as rows [N, C], and dropout's mask: backprop.embed_forward with
    wte' = wte whose rows lora.tokens are params[TOKENS] (the same mask drawn)."""
    B, T = ids.shape
    flat = ids.reshape(-1)
    x = params["wte.weight"][flat]                                     # [N] -> [N, C]
    if lora.tokens:
        where, pos = token_positions(lora.tokens, flat)
        x[where] = params[TOKENS][pos]                                 # [n, C]: the trained rows instead
    if lora.embedding:
        x += embedding_adapter_forward(params, lora, flat)             # [N, C]
    x = x.reshape(B, T, -1)
    x += params["wpe.weight"][:T]                                      # [B, T, C] + [T, C]
    return maybe_dropout(x.reshape(B * T, -1), dropout, rng)


def embedding_adapter_forward(params: Params, lora: LoraConfig, flat_ids: np.ndarray) -> np.ndarray:
    """The embedding adapter's rows (alpha / r) A_e[ids] B_e [N, C] for flat_ids [N] (PEFT's
    `(embedding(x, lora_embedding_A.T) @ lora_embedding_B.T) * scaling`)."""
    ea = params[EMBED_A][flat_ids]                                     # [N] -> [N, r]
    return (ea @ params[EMBED_B]) * np.float32(lora.scale)             # [N, r] x [r, C] -> [N, C]


def embedding_adapter_backward(dx: np.ndarray, ids: np.ndarray, keep: np.ndarray | None, params: Params,
                               lora: LoraConfig, grads: Params) -> None:
    """Differentiates `embedding_adapter_forward` from dx [N, C] (through dropout's mask): d B_e += s A_e[ids]^T dx,
    and row ids[n] of d A_e gets s dx[n] B_e^T (summed over repeats); accumulated into the grads it holds."""
    if keep is not None:
        dx = dx * keep
    flat = ids.reshape(-1)
    s = np.float32(lora.scale)
    if EMBED_B in grads:
        grads[EMBED_B] += (params[EMBED_A][flat].T @ dx) * s           # [r, N] x [N, C] -> [r, C]
    if EMBED_A in grads:
        embedding_backward((dx @ params[EMBED_B].T) * s, flat, grads[EMBED_A])   # [N, C] x [C, r] into [V, r]


def token_rows_backward(dx: np.ndarray, ids: np.ndarray, keep: np.ndarray | None, lora: LoraConfig,
                        dtokens: np.ndarray) -> None:
    """Differentiates `lora_embed_forward` for the trained rows: dtokens[j] += the sum of dx [N, C] (through
    dropout's mask) over the positions holding lora.tokens[j]; the frozen rows get nothing."""
    if keep is not None:
        dx = dx * keep
    where, pos = token_positions(lora.tokens, ids.reshape(-1))
    embedding_backward(dx[where], pos, dtokens)                        # [n, C] into [k, C]


def project_forward(xf: np.ndarray, params: Params, lora: LoraConfig, out: np.ndarray | None) -> np.ndarray:
    """Logits xf wte'^T [N, V] of the tied projection, wte' = wte with rows lora.tokens from params[TOKENS]."""
    logits = np.matmul(xf, params["wte.weight"].T, out=out)            # [N, C] x [C, V] -> [N, V]
    if lora.tokens:
        logits[:, list(lora.tokens)] = xf @ params[TOKENS].T           # [N, C] x [C, k] -> [N, k]
    return logits


def project_backward(dlogits: np.ndarray, xf: np.ndarray, params: Params, lora: LoraConfig, grads: Params
                     ) -> np.ndarray:
    """Differentiates `project_forward`: returns dxf = dlogits wte' [N, C]; accumulates grads[TOKENS] +=
    dlogits[:, tokens]^T xf when it is trained (wte's own gradient is never formed)."""
    wte = params["wte.weight"]
    dxf = dlogits @ wte                                                # [N, V] x [V, C] -> [N, C]
    if lora.tokens:
        idx = list(lora.tokens)
        d = dlogits[:, idx]                                            # [N, k]
        dxf += d @ (params[TOKENS] - wte[idx])                         # the trained rows in place of wte's
        if TOKENS in grads:
            grads[TOKENS] += d.T @ xf                                  # [k, N] x [N, C] -> [k, C]
    return dxf


# ---- the whole model: backprop.py's forward and backward over the frozen base with adapted linear layers ---

def lora_hidden_forward(params: Params, config: GPTConfig, lora: LoraConfig, ids: np.ndarray, *,
                        dropout: float = 0.0, rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict]:
    """The adapted model's final hidden states ln_f(x) [N, C] for ids [B, T] (what a head reads: the
    vocabulary projection here, a classifier's score elsewhere), and the tape `lora_hidden_backward` walks.
    The dropout masks are drawn as backprop.forward_for_training draws them."""
    B, T = ids.shape
    x, keep = lora_embed_forward(params, lora, ids, dropout, rng)      # [B, T] -> [N, C]
    blocks = []
    for i in range(config.n_layer):
        x, ctx = frozen_block_forward(layer(params, i), adapted_linears(params, config, lora, i), config, x, (B, T),
                                      dropout, rng)                    # [N, C] -> [N, C]
        blocks.append(ctx)
    xf, ln_f = layer_norm_forward(x, params["ln_f.weight"], params["ln_f.bias"], config.layer_norm_epsilon)
    return xf, {"blocks": blocks, "ln_f": ln_f, "ids": ids, "embed_keep": keep, "xf": xf}


def lora_hidden_backward(dxf: np.ndarray, tape: dict, params: Params, config: GPTConfig, lora: LoraConfig,
                         grads: Params) -> None:
    """From d(loss)/d(final hidden states) [N, C], accumulate the adapters' gradients into grads (the names
    it holds; the trained token rows' too); the frozen tensors get none (LayerNorm's go to a small
    scratch, the embeddings' are never formed)."""
    C = config.n_embd
    scratch = np.zeros(C, np.float32), np.zeros(C, np.float32)         # frozen LayerNorm gain/bias gradients
    dx = layer_norm_backward(dxf, tape["ln_f"], *scratch)
    for i in reversed(range(config.n_layer)):
        dx = frozen_block_backward(dx, tape["blocks"][i], adapted_linears(params, config, lora, i, grads), scratch)
    if lora.tokens and TOKENS in grads:
        token_rows_backward(dx, tape["ids"], tape["embed_keep"], lora, grads[TOKENS])
    if lora.embedding:
        embedding_adapter_backward(dx, tape["ids"], tape["embed_keep"], params, lora, grads)


def lora_forward_for_training(params: Params, config: GPTConfig, lora: LoraConfig, ids: np.ndarray, *,
                              dropout: float = 0.0, rng: np.random.Generator | None = None,
                              workspace: Workspace | None = None) -> tuple[np.ndarray, dict]:
    """Logits [N, V] of the adapted model for ids [B, T] (in the workspace's 'logits' buffer if given),
    and the tape `lora_backward` walks."""
    xf, tape = lora_hidden_forward(params, config, lora, ids, dropout=dropout, rng=rng)
    V = params["wte.weight"].shape[0]
    out = None if workspace is None else workspace.get("logits", (xf.shape[0], V), xf.dtype)
    return project_forward(xf, params, lora, out), tape


def lora_backward(dlogits: np.ndarray, tape: dict, params: Params, config: GPTConfig, lora: LoraConfig,
                  grads: Params) -> None:
    """From d(loss)/d(logits) [N, V] through the frozen tied projection, the adapters' gradients into grads."""
    dxf = project_backward(dlogits, tape["xf"], params, lora, grads)  # [N, V] -> [N, C]
    lora_hidden_backward(dxf, tape, params, config, lora, grads)


# ---- the training objective ----------------------------------------------------------------------------

def token_loss(logits: np.ndarray, batch: tuple[np.ndarray, ...], *, scale: float | None) -> tuple[float, np.ndarray | None]:
    """The loss of a batch's logits [N, V] and, unless scale is None, d(scale * loss)/d(logits): mean
    cross-entropy of (ids, targets) as `numgpt train`'s, or SFT's weighted sum(weights * nll) / B of
    (ids, targets, weights [B, T]) as backprop.accumulate_weighted_grads'. Overwrites logits."""
    targets = batch[1].reshape(-1)
    if len(batch) == 2:
        loss, probs = cross_entropy_forward(logits, targets)            # [N, V], [N]
        return loss, None if scale is None else cross_entropy_backward(probs, targets, scale=scale)
    B, weights = batch[0].shape[0], batch[2].reshape(-1)                # [B, T] -> [N]
    loss, probs = weighted_cross_entropy_forward(logits, targets, weights)
    dlogits = None if scale is None else weighted_cross_entropy_backward(probs, targets, weights, scale=scale / B)
    return loss / B, dlogits


@dataclass(frozen=True)
class LoraLoss:
    """The next-token loss of the adapted model (plain, or SFT's weighted: `token_loss`), gradients of the
    adapters only (an objective.LossFn)."""

    lora: LoraConfig

    def __call__(self, params: Params, config: GPTConfig, batch: tuple[np.ndarray, ...], grads: Params, *,
                 scale: float = 1.0, dropout: float = 0.0, rng: np.random.Generator | None = None,
                 workspace: Workspace | None = None, block_done: Callable[[int], None] | None = None) -> float:
        check_batch(config, batch[0], batch[1])
        if dropout > 0 and rng is None:
            raise NumgptError("dropout > 0 needs an rng (np.random.Generator)")
        logits, tape = lora_forward_for_training(params, config, self.lora, batch[0], dropout=dropout, rng=rng,
                                                 workspace=workspace)
        loss, dlogits = token_loss(logits, batch, scale=scale)
        lora_backward(dlogits, tape, params, config, self.lora, grads)
        return loss


@dataclass(frozen=True)
class LoraValue:
    """The adapted model's loss of a batch (as LoraLoss), no dropout, no gradients (an objective.ValueFn)."""

    lora: LoraConfig

    def __call__(self, params: Params, config: GPTConfig, batch: tuple[np.ndarray, ...],
                 workspace: Workspace | None = None) -> float:
        check_batch(config, batch[0], batch[1])
        logits, _ = lora_forward_for_training(params, config, self.lora, batch[0], workspace=workspace)
        return token_loss(logits, batch, scale=None)[0]


@dataclass(frozen=True)
class LoraClassificationLoss:
    """classify.py's loss (a linear head over the last real token, class-weighted cross-entropy) over the
    adapted model: gradients of the adapters and of the head (classify.SCORE, when grads holds it) only.
    An objective.LossFn of classification batches (ids [B, T], last [B], labels [B])."""

    lora: LoraConfig
    class_weights: np.ndarray | None = None

    def __call__(self, params: Params, config: GPTConfig, batch: tuple[np.ndarray, ...], grads: Params, *,
                 scale: float = 1.0, dropout: float = 0.0, rng: np.random.Generator | None = None,
                 workspace: Workspace | None = None, block_done: Callable[[int], None] | None = None) -> float:
        from .classify import SCORE, class_loss_backward, class_loss_forward, head_backward, head_forward

        ids, last, labels = batch
        if dropout > 0 and rng is None:
            raise NumgptError("dropout > 0 needs an rng (np.random.Generator)")
        score = params[SCORE]
        xf, tape = lora_hidden_forward(params, config, self.lora, ids, dropout=dropout, rng=rng)   # [N, C]
        logits, head = head_forward(xf, last, ids.shape[1], score)                                  # [B, K]
        loss, probs = class_loss_forward(logits, labels, self.class_weights)
        dlogits = class_loss_backward(probs, labels, self.class_weights, scale=scale, dtype=xf.dtype)
        dxf = head_backward(dlogits, head, score, grads[SCORE] if SCORE in grads else np.zeros_like(score))
        lora_hidden_backward(dxf, tape, params, config, self.lora, grads)
        return loss


def lora_classification_objective(config: GPTConfig, lora: LoraConfig, class_weights: np.ndarray | None = None,
                                  *, train_head: bool = True) -> Objective:
    """classify's training task over an adapter: its batches, LoraClassificationLoss, its evaluation on the
    adapted model; the adapters trainable, and the head (PEFT's modules_to_save=["score"]) if train_head."""
    from .classify import SCORE, classification_batch, class_loss_forward

    def evaluate(params: Params, config: GPTConfig, batch: tuple[np.ndarray, ...],
                 workspace: Workspace | None = None) -> float:
        ids, last, labels = batch
        xf, _ = lora_hidden_forward(params, config, lora, ids)                                       # [N, C]
        pooled = xf[np.arange(len(last)) * ids.shape[1] + last]                                      # [B, C]
        return class_loss_forward(pooled @ params[SCORE].T, labels, class_weights)[0]

    trainable = set(adapter_shapes(config, lora)) | ({SCORE} if train_head else set())
    return Objective(batch=classification_batch, loss=LoraClassificationLoss(lora, class_weights),
                     evaluate=evaluate, trainable=frozenset(trainable))


def lora_objective(config: GPTConfig, lora: LoraConfig, batch: BatchFn | None = None) -> Objective:
    """The training objective of an adapter: the adapted model's next-token loss on `batch`'s batches (an
    objective.BatchFn; default next_token_batch, SFT's PackedBatches carry weights too), adapters trainable.
    Not on the embedding: the tied projection would be left out of it (see the module docstring)."""
    check_language_model_lora(lora)
    return Objective(batch=next_token_batch if batch is None else batch, loss=LoraLoss(lora), evaluate=LoraValue(lora),
                     trainable=frozenset(adapter_shapes(config, lora)))


def lora_logits(params: Params, config: GPTConfig, lora: LoraConfig, ids: np.ndarray) -> np.ndarray:
    """Logits [B, T, V] of the unmerged adapted model (the reference `merge` is checked against)."""
    B, T = ids.shape
    logits, _ = lora_forward_for_training(params, config, lora, ids)
    return logits.reshape(B, T, -1)


# ---- a training run with an adapter: what `numgpt train|sft|classify train --lora-rank R` share ------------

LORA_STREAM = 2          # the rng stream of the adapters' initialisation (apart from batches and evaluation)
ADAPTER_DIR = "adapter"  # RUN/adapter: the PEFT folder of the run's last state


def add_lora_flags(parser: argparse.ArgumentParser, saved: str = "saved as a PEFT folder in RUN_DIR/adapter") -> None:
    """The --lora-* flags, on any training command (argparse parser or group); saved: where the command
    puts the trained adapter, as its --help says."""
    g = parser.add_argument_group("LoRA (train low-rank adapters; the model's own weights stay frozen)")
    g.add_argument("--lora-rank", type=int, metavar="R", help="train a rank-R adapter on the blocks' linear layers "
                   f"instead of the weights; {saved}")
    g.add_argument("--lora-alpha", type=float, metavar="A", help="the adapter's update is scaled by A / R (A = R)")
    g.add_argument("--lora-targets", metavar="NAMES", help="comma-separated layers to adapt, PEFT's target_modules "
                   f"(suffixes of {','.join(MODULES)}; default {','.join(DEFAULT_TARGETS)}: all four; "
                   f"classify and reward also take {EMBEDDING}, the token embedding)")


def lora_from_args(args: argparse.Namespace, *, embedding: bool = False) -> LoraConfig | None:
    """The LoraConfig of the --lora-* flags; None without --lora-rank (alpha or targets alone are refused).
    embedding: whether the command may adapt wte (one with its own head; not a language model's)."""
    if args.lora_rank is None:
        if args.lora_alpha is not None or args.lora_targets is not None:
            raise NumgptError("--lora-alpha and --lora-targets need --lora-rank R")
        return None
    targets = DEFAULT_TARGETS if args.lora_targets is None else tuple(t.strip() for t in args.lora_targets.split(","))
    lora = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=targets)
    if not embedding:
        check_language_model_lora(lora)
    return lora


def check_language_model_lora(lora: LoraConfig) -> None:
    """A language model's adapter may not target the embedding (the one rule; `lora_objective` and the
    LM commands' flags both ask it)."""
    if lora.embedding:
        raise NumgptError(f"--lora-targets {EMBEDDING}: LoRA on the embedding is for `classify train` and `reward "
                          "train`; a language model's vocabulary projection is wte itself, which PEFT's adapter "
                          "leaves alone, so the merged model would not be the trained one")


def lora_adapter_size(lora: LoraConfig | None) -> Callable[[GPTConfig, TrainConfig], int]:
    """setup_run's adapter_size for a run that will train `lora` (None: the model's weights): the resumed
    run's own adapter (its saved tc.lora) when it has one, else lora's; 0 when neither. The memory check
    then counts gradients and moments for the adapter alone, so a LoRA run that fits is not refused."""
    def size(config: GPTConfig, tc: TrainConfig) -> int:
        chosen = LoraConfig.from_dict(tc.lora) if tc.lora is not None else lora
        return 0 if chosen is None else adapter_size(config, chosen)
    return size


def with_lora(run: Run, lora: LoraConfig | None, *, resumed: bool) -> Run:
    """The training.Run `run` set up to train `lora`'s adapter: a new run gets fresh adapters (seeded from
    the run's seed) in its state and keeps optimizer moments for them only; a resumed LoRA run continues
    its own adapter (the flags, if given, must repeat it). The run's objective trains the adapters only."""
    saved = None if run.tc.lora is None else LoraConfig.from_dict(run.tc.lora)
    if resumed:
        if saved is None and lora is not None:
            raise NumgptError(f"{run.folder} trains the model's own weights; --lora-rank starts a new run "
                              "(another --out, with --init MODEL)")
        if saved is not None and lora is not None and lora != saved:
            raise NumgptError(f"{run.folder} trains a LoRA adapter of rank {saved.rank}, alpha {saved.alpha}, "
                              f"targets {','.join(saved.targets)}; resume without the --lora flags")
        lora = saved
    if lora is None:
        return run
    if not resumed and not run.tc.init:
        raise NumgptError("--lora-rank adapts a trained model, whose weights stay frozen: pass --init MODEL")
    params, config = run.state.params, run.config
    if not resumed:
        params.update(init_adapters(config, lora, np.random.default_rng([run.tc.seed, LORA_STREAM])))
        params.update(init_token_rows(params, lora))                   # the rows of lora.tokens, if any
    missing = [n for n in adapter_shapes(config, lora) if n not in params]
    if missing:
        raise NumgptError(f"{run.folder}: the checkpoint has no {missing[0]}; it is damaged")
    objective = lora_objective(config, lora, None if run.objective is None else run.objective.batch)
    keep_trained_moments(run.state, objective.trainable_params(params))   # the base's moments freed now
    return dataclasses.replace(run, tc=dataclasses.replace(run.tc, lora=lora.to_dict()), objective=objective)


def lora_summary(run: Run) -> str | None:
    """The line a training command prints about a LoRA run (None for a run without LoRA)."""
    if run.tc.lora is None:
        return None
    lora = LoraConfig.from_dict(run.tc.lora)
    trained = sum(p.size for p in run.objective.trainable_params(run.state.params).values())
    rows = f" and the wte rows of {len(lora.tokens)} tokens" if lora.tokens else ""
    return (f"LoRA rank {lora.rank}, alpha {lora.alpha:g} on {','.join(lora.targets)}{rows}: {trained / 1e6:.3f}M "
            "trained parameters, the base frozen")


def export_adapter(run: Run) -> Path | None:
    """Write RUN/adapter, the PEFT folder of a LoRA run's current state (None for a run without LoRA)."""
    if run.tc.lora is None:
        return None
    return save_adapter(run.folder / ADAPTER_DIR, run.state.params, run.config, LoraConfig.from_dict(run.tc.lora),
                        base=run.tc.init)
