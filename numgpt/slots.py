"""Slots: a decode batch whose rows sit at different cache lengths -- what continuous batching runs on.

A serving engine keeps S slots. A request takes a free slot, its prompt is prefilled into that slot
alone (`prefill_slot`), and from then on it decodes together with whatever else is running
(`decode_slots`): one token per running row per step, each row at its own position, attending to its own
cached keys only. A finished row just stops being passed in; its slot is reused by the next request
without moving anyone's cache (slots copy nothing).

Batch invariance. With `batch_invariant=True` a row's logits depend on that row alone, bit for bit,
whichever rows run beside it, in which slots, and how many -- so a seeded request samples the same text
under any load. Three things make it so:
- every step multiplies the same number of columns, the cache's slot count (at least 2), with unused
  columns zero: OpenBLAS picks its kernel by the product's shape (a matrix-vector kernel for one column,
  small-matrix paths below a size), and each path rounds differently; at one fixed shape every column
  is computed the same way wherever it sits (tests/test_slots.py checks this on the real kernels), and
  so is every row through the weights' column panels, which numgpt.load's models use for 2 .. 16 slots
  (panels.py; tests/test_panels.py);
- attention runs row by row over exactly that row's cached positions, never over another row's padding;
- LayerNorm, GELU and the residual adds work row by row.
(The block itself is model.decode_block_, beside the model's other blocks.)
The price: a step costs what a full batch costs, even for one row (BENCHMARKS.md, "numgpt serve").
With `batch_invariant=False` a lone row takes `model.forward`'s own decode path (bit-identical to
`numgpt generate`, and the fastest) and several rows are multiplied at their own count.

Shape legend: L layers, S slots, H heads, M capacity (positions), D head size, N running rows, C channels,
V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import GPTConfig
from .errors import NumgptError
from .kvcache import KVCache, cache_bytes
from .machine import check_fits
from .model import check_context, columns_product, decode_block_, embed, forward
from .ops import layer_norm_into
from .panels import head_panels
from .params import Params, layers


@dataclass
class SlotCache:
    """Keys and values of S independent sequences: keys, values [L, S, H, M, D] float32; lengths [S].

    Slot s holds positions 0 .. lengths[s]-1 of its own sequence (no padding: every slot starts at 0).
    Mutable on purpose: prefill_slot and decode_slots write into it."""

    keys: np.ndarray
    values: np.ndarray
    lengths: np.ndarray   # [S] int64

    @classmethod
    def allocate(cls, config: GPTConfig, slots: int, max_len: int | None = None) -> "SlotCache":
        """Room for `slots` sequences of up to `max_len` positions each (default n_positions); refused
        before allocating when the keys and values would not fit in the memory the machine has available."""
        max_len = config.n_positions if max_len is None else max_len
        shape = (config.n_layer, slots, config.n_head, max_len, config.head_size)
        check_fits(cache_bytes(shape), f"the keys and values of {slots} slots of {max_len} positions",
                   "ask for fewer slots (numgpt serve --max-batch)")
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(slots, np.int64))

    def touch(self) -> None:
        """Write every page of the cache now (np.zeros leaves them to the kernel's first faults): 0.06 s at
        start for 124M's 8 slots (604 MB), where the faults had added ~0.7 s to the first burst's first
        tokens (BENCHMARKS.md, numgpt serve)."""
        self.keys.fill(0)
        self.values.fill(0)

    @property
    def slots(self) -> int:
        return self.keys.shape[1]

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def view(self, slot: int) -> KVCache:
        """Slot `slot` as a one-row KVCache sharing this cache's memory (what model.forward writes into)."""
        mask = np.zeros((1, self.max_len), bool)
        mask[0, :self.lengths[slot]] = True
        return KVCache(self.keys[:, slot:slot + 1], self.values[:, slot:slot + 1], mask, int(self.lengths[slot]))


def prefill_slot(params: Params, config: GPTConfig, cache: SlotCache, slot: int, ids: Sequence[int], *,
                 all_logits: bool = False) -> np.ndarray:
    """Forget what slot `slot` held and run the prompt `ids` into it alone.

    Returns the logits of the last position [V], or of every position [T, V] if all_logits (what the
    prompt's own log-probabilities need)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise NumgptError("a prompt must be a non-empty sequence of token ids")
    check_context(config, ids.size)
    if ids.size > cache.max_len:
        raise NumgptError(f"the prompt has {ids.size} tokens but a slot holds {cache.max_len}")
    cache.lengths[slot] = 0
    view = cache.view(slot)
    logits = forward(params, config, ids[None], cache=view, all_logits=all_logits, panels=True)  # [1, (T,) V]
    cache.lengths[slot] = view.length
    return logits[0]


def prefill_slots(params: Params, config: GPTConfig, cache: SlotCache, slots: Sequence[int],
                  prompts: Sequence[Sequence[int]], *, all_logits: bool = False) -> list[np.ndarray]:
    """`prefill_slot` for several prompts in one forward (left-padded to the longest), each written
    into its own slot: one pass over the weights instead of one per prompt, which is what a burst of
    newcomers costs. Each row equals its prompt prefilled alone up to float rounding, not bit for bit
    (a padded batch sums in another order), so a seeded request is prefilled alone instead.

    Returns each prompt's logits: [V] for its last position, or [T_i, V] if all_logits."""
    if len(slots) != len(prompts) or len(set(map(int, slots))) != len(slots):
        raise NumgptError("prefill_slots needs one distinct slot per prompt")
    if any(len(p) == 0 for p in prompts):
        raise NumgptError("a prompt must be a non-empty sequence of token ids")
    T = max(len(p) for p in prompts)
    check_context(config, T)
    if T > cache.max_len:
        raise NumgptError(f"a prompt has {T} tokens but a slot holds {cache.max_len}")
    ids = np.zeros((len(prompts), T), np.int64)                # [B, T], left-padded
    mask = np.zeros((len(prompts), T), bool)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], mask[b, T - len(p):] = p, True
    batch = KVCache.allocate(config, len(prompts), T)
    logits = forward(params, config, ids, cache=batch, attention_mask=mask, all_logits=all_logits, panels=True)
    out = []
    for b, (slot, p) in enumerate(zip(slots, prompts)):
        n = len(p)
        cache.keys[:, slot, :, :n] = batch.keys[:, b, :, T - n:]    # drop the row's padding columns
        cache.values[:, slot, :, :n] = batch.values[:, b, :, T - n:]
        cache.lengths[slot] = n
        out.append(logits[b, T - n:] if all_logits else logits[b])
    return out


def decode_slots(params: Params, config: GPTConfig, cache: SlotCache, slots: Sequence[int],
                 ids: Sequence[int], *, batch_invariant: bool = True, head: np.ndarray | None = None) -> np.ndarray:
    """One decode step: token ids[i] goes into slot slots[i] at that slot's next position.

    Returns logits [N, V]; every slot's length grows by one. See the module docstring for what
    batch_invariant guarantees and costs. head: wte.T as a C-ordered [C, V] copy (`vocabulary_head`), for
    batched steps: x @ head takes 0.6x the time of wte @ x.T at 8 rows (BENCHMARKS.md, "numgpt serve")."""
    slots = np.asarray(slots, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if slots.ndim != 1 or slots.shape != ids.shape or slots.size == 0:
        raise NumgptError("decode_slots needs one token id per slot, and at least one slot")
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise NumgptError(f"token ids must be in 0..{config.vocab_size - 1}, got {ids.min()}..{ids.max()}")
    if len(set(slots.tolist())) != slots.size:
        raise NumgptError("a slot appears twice in one decode step")
    if int(cache.lengths[slots].max()) >= min(cache.max_len, config.n_positions):
        raise NumgptError(f"a slot is full ({cache.max_len} positions, context {config.n_positions}); "
                          "end that sequence before decoding it further")
    if slots.size == 1 and not batch_invariant:
        view = cache.view(int(slots[0]))
        logits = forward(params, config, ids[:, None], cache=view)  # [1, 1] -> [1, V]
        cache.lengths[slots[0]] = view.length
        return logits
    width = max(cache.slots, 2) if batch_invariant else slots.size   # columns every product gets
    x = np.zeros((width, config.n_embd), np.float32)                  # [W, C]; rows past N stay zero
    at = cache.lengths[slots]                                          # [N] each row's new position
    x[:slots.size] = embed(params, ids, at)                            # [N] -> [N, C]
    for layer in layers(params, config, panels=True):
        decode_block_(layer, config, x, cache.keys[layer.index], cache.values[layer.index], slots, at)  # [W, C]
    cache.lengths[slots] += 1
    ln = np.empty_like(x)
    layer_norm_into(x, params["ln_f.weight"], params["ln_f.bias"], config.layer_norm_epsilon, ln)
    panels = head_panels(params)
    if panels is not None and panels.takes(width):                 # wte's panels (panels.py), row by row alike
        return panels.linear_into(ln, None, np.empty((width, config.vocab_size), np.float32))[:slots.size]
    if head is not None:
        return (ln @ head)[:slots.size]                                          # [W, C] x [C, V] -> [N, V]
    return columns_product(params["wte.weight"], ln)[:slots.size]              # [W, C] -> [N, V]


def vocabulary_head(params: Params) -> np.ndarray:
    """The tied output projection as a C-ordered [C, V] array, the layout batched decode steps multiply
    fastest: wte's own memory in numgpt.load's decode layout, else one more copy of wte (154 MB for
    GPT-2's vocabulary at 768 channels)."""
    return np.ascontiguousarray(params["wte.weight"].T)
