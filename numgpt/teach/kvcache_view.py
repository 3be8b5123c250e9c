"""What the KV cache saves, measured: for a prompt and N new tokens, each step's work and wall time with
the cache (prefill once, then one position per token) and without it (the whole sequence again each time).

Both paths run the real `model.forward` on the same tokens -- the greedy continuation the cached path
picks -- and the view reports the largest logit difference between them, which is float rounding only:
the cache changes the time, not the answer.

Work is counted exactly from the config as the multiply-adds of the matrix products `forward` runs
(`forward_macs`); LayerNorm, GELU, softmax and the additions of the residual stream are elementwise and
not counted. The fast path's attention multiplies query blocks against every key up to the block's last
row, so it does a little more than the causal triangle counted here.

Wall times are single measurements of each forward call (time.perf_counter), after one untimed warm-up
call so that step 0 does not time the first BLAS call's start-up: they move with the machine's load, the
counts do not.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import GPTConfig
from ..errors import whole_number
from ..kvcache import KVCache
from ..model import check_context, check_finite_logits, forward
from ..sampling import greedy
from .inputs import Prompt, prompt_ids, token_labels


def forward_macs(config: GPTConfig, new: int, past: int = 0) -> int:
    """Multiply-adds of one forward call that runs `new` positions after `past` cached ones and projects
    the last position to the vocabulary (what `forward` does without all_logits).

    Per layer and new position: c_attn C x 3C, attn.c_proj C x C, mlp.c_fc C x 4C, mlp.c_proj 4C x C
    (12 C^2 in all); attention: the position at index p attends to p + 1 keys, each costing D for q.k and
    D for the weighted sum of v, over H heads (2 C per key). The last block runs c_attn for every new
    position (the cache keeps their keys and values) but the rest for the last one alone (model.last_block_):
    3 C^2 a position, then 9 C^2 and its past + new keys. Then one C x V projection.
    """
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    keys = new * past + new * (new + 1) // 2                   # sum over new positions of keys attended
    last_block = 3 * C * C * new + 9 * C * C + 2 * C * (past + new)
    return (L - 1) * (12 * C * C * new + 2 * C * keys) + last_block + C * V


@dataclass(frozen=True)
class KVCacheStep:
    """One forward call of the generation: step 0 reads the prompt, step i > 0 the token of step i - 1."""

    step: int
    token_id: int            # the (greedy) token this step's logits choose
    token: str
    context: int             # positions in the sequence after this step's input
    computed_cached: int     # positions run through the blocks with the cache
    reused_cached: int       # positions whose keys and values came from the cache, per layer
    computed_full: int       # positions run without the cache (the whole sequence)
    macs_cached: int
    macs_full: int
    seconds_cached: float
    seconds_full: float
    max_logit_difference: float   # |cached - full| of this step's logits, at most


@dataclass(frozen=True)
class KVCacheView:
    """A generation's work and time, step by step, with and without the KV cache."""

    prompt_ids: list[int]
    prompt_tokens: list[str]
    steps: list[KVCacheStep]
    macs_cached: int          # totals over the steps
    macs_full: int
    seconds_cached: float
    seconds_full: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def kvcache_view(lm, prompt: Prompt, *, max_new_tokens: int = 16) -> KVCacheView:
    """Generate max_new_tokens greedy tokens after `prompt` (text or ids) with and without the cache,
    measuring each step."""
    n = whole_number("max_new_tokens", max_new_tokens, minimum=1)
    ids = prompt_ids(lm, prompt, max_new_tokens=n, what="prompt")
    params, config = lm.params, lm.config
    cache = KVCache.allocate(config, 1, len(ids) + n)
    sequence, steps = list(ids), []
    forward(params, config, np.asarray([ids]))                 # warm-up, untimed
    for step in range(n):
        new = sequence if step == 0 else sequence[-1:]
        past = cache.length
        cached, seconds_cached = _timed(lambda: forward(params, config, np.asarray([new]), cache=cache))
        full, seconds_full = _timed(lambda: forward(params, config, np.asarray([sequence])))
        check_finite_logits(cached, params)
        token = int(greedy(cached)[0])
        steps.append(KVCacheStep(
            step=step, token_id=token, token=lm.tokenizer.decode([token]), context=len(sequence),
            computed_cached=len(new), reused_cached=past, computed_full=len(sequence),
            macs_cached=forward_macs(config, len(new), past), macs_full=forward_macs(config, len(sequence)),
            seconds_cached=seconds_cached, seconds_full=seconds_full,
            max_logit_difference=float(np.abs(cached - full).max())))
        sequence.append(token)
    return KVCacheView(prompt_ids=ids, prompt_tokens=token_labels(lm.tokenizer, ids), steps=steps,
                       macs_cached=sum(s.macs_cached for s in steps), macs_full=sum(s.macs_full for s in steps),
                       seconds_cached=sum(s.seconds_cached for s in steps),
                       seconds_full=sum(s.seconds_full for s in steps))


def _timed(call) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


# ---- the counts of a generation the server ran ---------------------------------------------------------

@dataclass(frozen=True)
class KVCacheCounts:
    """The positions a generation of `generated` tokens after `prompt` ones ran through the blocks, and
    the multiply-adds, with the cache and without it (the counts of kvcache_view, without running it).

    Token i (from 0) comes from the logits of one forward call: call 0 reads the prompt, call i > 0 the
    token of call i - 1 and reuses the cached keys and values of the prompt + i - 1 positions before it.
    The end-of-text token a generation may stop on is not counted (the response does not return it)."""

    prompt: int
    generated: int
    computed: int             # positions run with the cache: prompt + generated - 1
    reused: int               # cached positions read, summed over the calls (per layer)
    computed_without_cache: int   # positions run when every call reads the whole sequence
    macs_cached: int
    macs_full: int
    steps: list[dict[str, int]]   # per call: step, context, computed, reused, computed_full

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def kvcache_counts(config: GPTConfig, prompt: int, generated: int) -> KVCacheCounts:
    """What the KV cache saved in a generation of `generated` tokens after `prompt` prompt tokens."""
    prompt = whole_number("the prompt's token count", prompt, minimum=1)
    generated = whole_number("the generated token count", generated, minimum=0)
    check_context(config, prompt, generated, fix="the counts cannot come from this model")
    steps = []
    for step in range(generated):
        new, past = (prompt, 0) if step == 0 else (1, prompt + step - 1)
        steps.append(dict(step=step, context=prompt + step, computed=new, reused=past, computed_full=prompt + step,
                          macs_cached=forward_macs(config, new, past), macs_full=forward_macs(config, prompt + step)))
    return KVCacheCounts(prompt=prompt, generated=generated, computed=sum(s["computed"] for s in steps),
                         reused=sum(s["reused"] for s in steps),
                         computed_without_cache=sum(s["computed_full"] for s in steps),
                         macs_cached=sum(s["macs_cached"] for s in steps), macs_full=sum(s["macs_full"] for s in steps),
                         steps=steps)
