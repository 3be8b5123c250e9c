"""KVCache: the keys and values of every layer for the positions seen so far, preallocated; plain data.

The caller allocates a cache and passes it to `model.forward`, which writes the new positions' keys and
values at `length` and advances `length`; a decode step then costs one position, not the whole prefix.
Nothing creates or resizes a cache behind the caller's back.

`mask` records which cached positions are real tokens (False for left padding), so that after a padded
prefill the decode steps need no mask argument: the model derives each row's next position from it
(position = number of real tokens before it, as Hugging Face's generate does).

Rows leave with `select` (generate drops the finished ones, or repeats a prompt's row for n samples).
Because each row's positions come from its mask, a row decodes the same whether it is alone or in a
left-padded batch (tested against the plain forward). Continuous batching, where rows join and leave
between steps at their own lengths, runs on slots.SlotCache instead, which moves no cache at all.

Speculative decoding (speculative.py) appends a drafted block of tokens, then takes back the rejected
ones: `truncate(length)` rolls every row back to `length` positions, and in a batch, where rows accept
different numbers of tokens, the rejected positions of the other rows become holes (`mask` False), which
attention skips and positions ignore, exactly as left padding. `compact()` squeezes the holes out
(each row's real positions moved right-aligned, order kept) when the cache runs out of room.

Sliding window: GPT-2 bakes absolute positions (wpe) into every cached key, so a full cache cannot be
shifted. To continue past n_positions, keep the last n_positions - k tokens, `reset()` the cache and
prefill them again (positions restart at 0), then decode k more steps.

Shape legend: L layers, B batch, H heads, M max_len (capacity), D head size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import GPTConfig
from .machine import check_fits


@dataclass
class KVCache:
    """Preallocated attention keys/values: keys, values [L, B, H, M, D] float32; mask [B, M] bool.

    Positions 0 .. length-1 are filled. Mutable on purpose: `model.forward` appends to it in place.
    """

    keys: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    length: int = 0

    @classmethod
    def allocate(cls, config: GPTConfig, batch_size: int, max_len: int | None = None) -> "KVCache":
        """An empty cache for `batch_size` rows and up to `max_len` positions (default n_positions); refused
        before allocating when it would not fit in the memory the machine has available (machine.check_fits)."""
        max_len = config.n_positions if max_len is None else max_len
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_size)
        check_cache_fits(shape)
        return cls(keys=np.zeros(shape, np.float32), values=np.zeros(shape, np.float32),
                   mask=np.zeros((batch_size, max_len), bool))

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes + self.mask.nbytes

    def select(self, rows) -> "KVCache":
        """A new cache holding the given rows (in that order, repeats allowed) of this one.

        For n samples per prompt: prefill each prompt once, then `cache.select(np.repeat(np.arange(B), n))`.
        To drop finished rows: `cache.select(still_running)`. Only the filled positions are copied.
        """
        rows = np.asarray(rows, dtype=np.intp)
        n = self.length
        shape = self.keys.shape[:1] + (len(rows),) + self.keys.shape[2:]
        if len(rows) > self.batch_size:                             # only a selection that grows can outgrow
            check_cache_fits(shape)
        out = KVCache(keys=np.zeros(shape, np.float32), values=np.zeros(shape, np.float32),
                      mask=np.zeros((len(rows), self.max_len), bool), length=n)
        out.keys[:, :, :, :n] = self.keys[:, rows, :, :n]
        out.values[:, :, :, :n] = self.values[:, rows, :, :n]
        out.mask[:, :n] = self.mask[rows, :n]
        return out

    def reset(self) -> None:
        """Forget every position (the memory is kept for reuse, e.g. a sliding-window re-prefill)."""
        self.length = 0
        self.mask[:] = False

    def truncate(self, length: int) -> None:
        """Roll back to the first `length` positions (the rest are forgotten: rejected draft tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate to {length}: the cache holds {self.length} positions")
        self.mask[:, length:self.length] = False
        self.length = length

    def compact(self) -> None:
        """Squeeze out the holes: each row's real positions move to the end of the first m positions
        (m = the most any row has), in order, left-padded -- the same attention and positions as before.
        Costs a copy of the filled cache; speculative decoding calls it only when the cache is full."""
        n = self.length
        valid = self.mask[:, :n]                                        # [B, n]
        m = int(valid.sum(axis=1).max(initial=0))
        for b in range(self.batch_size):
            idx = np.flatnonzero(valid[b])                              # [n_b] real positions, in order
            start = m - len(idx)
            self.keys[:, b, :, start:m] = self.keys[:, b][:, :, idx]    # [L, H, n_b, D], gathered (a copy) first
            self.values[:, b, :, start:m] = self.values[:, b][:, :, idx]
            self.mask[b, :start] = False
            self.mask[b, start:m] = True
        self.mask[:, m:n] = False
        self.length = m


def cache_bytes(shape: tuple[int, ...]) -> int:
    """Bytes of float32 keys and values of `shape` each."""
    return 2 * 4 * int(np.prod(shape, dtype=np.int64))


def check_cache_fits(shape: tuple[int, ...]) -> None:
    """Refuse a cache of `shape` [L, B, H, M, D] that the machine's memory cannot hold (machine.check_fits)."""
    check_fits(cache_bytes(shape), f"the keys and values of {shape[1]} sequences of {shape[3]} positions",
               "fewer sequences or fewer new tokens")
