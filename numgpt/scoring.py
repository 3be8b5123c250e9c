"""Scoring text: per-token log-probabilities, perplexity and bits per byte, with exact definitions.

Published GPT-2 perplexities are hard to reproduce because the definitions differ in three places;
numgpt fixes them as follows (shown by `numgpt perplexity`, see DEFINITIONS):

1. What is predicted. With `bos=True` (the default wherever the vocabulary has one) `<|endoftext|>` is prepended as a beginning-of-text
   token and EVERY token of the text is predicted -- the first one from `<|endoftext|>` alone. This is
   what lm-evaluation-harness does for rolling log-likelihoods (its prefix token is GPT-2's end-of-text).
   With `bos=False` (the default for a vocabulary without `<|endoftext|>`, such as a BPE trained on one
   text) the first token is context only and tokens 2..n are predicted, as in Hugging Face's
   guide "Perplexity of fixed-length models".
2. Token-level perplexity = exp(mean over predicted tokens of -ln p(token | preceding tokens)).
   Bits per byte = (sum over predicted tokens of -log2 p) / (UTF-8 bytes of the predicted tokens); with
   bos=True that is every byte of the text, which makes it comparable across tokenizers.
3. Texts longer than the context (n_positions): the strided sliding window of Hugging Face's guide,
   exactly: windows of n_positions tokens start at 0, S, 2S, ...; each window scores only the tokens the
   previous window did not reach, so every token is scored once, with at least n_positions - S tokens of
   left context (the first window: whatever precedes it). S must be < n_positions (with S = n_positions the
   guide silently skips the first token of every window); the default S = n_positions // 2 (512 for
   GPT-2, as in the guide). Smaller S = more context per token, more compute: about n_tokens / S windows.

The logits are float32 (as the model's); each token's log-probability is reduced in float64 and the sums
over tokens are float64, so a long text's perplexity is not limited by float32 accumulation.

Shape legend: T window length, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .config import GPTConfig
from .errors import NumgptError
from .kvcache import KVCache
from .model import check_finite_logits, forward
from .ops import log_softmax_at
from .params import Params

Progress = Callable[[int, int], None]  # (windows done, windows in all)

DEFINITIONS = (
    "perplexity = exp(mean of -ln p(token | preceding tokens) over predicted tokens); "
    "bits per byte = sum of -log2 p / UTF-8 bytes of the predicted tokens; "
    "bos: <|endoftext|> is prepended so every token is predicted (off: the first token is context only); "
    "texts longer than the context: Hugging Face's strided sliding window, each token scored once with "
    ">= n_positions - stride tokens of context"
)


@dataclass(frozen=True)
class Perplexity:
    """The score of a text; `perplexity` and `bits_per_byte` follow the module's definitions."""

    n_tokens: int        # predicted tokens
    n_bytes: int         # UTF-8 bytes of the predicted tokens
    nll: float           # sum of -ln p over predicted tokens (nats)
    stride: int
    window: int          # n_positions
    bos: bool

    @property
    def mean_nll(self) -> float:
        """Mean -ln p per predicted token (the cross-entropy loss, nats)."""
        return self.nll / self.n_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.n_bytes

    def as_dict(self) -> dict:
        return {"tokens": self.n_tokens, "bytes": self.n_bytes, "nll": self.nll, "mean_nll": self.mean_nll,
                "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte, "stride": self.stride,
                "window": self.window, "bos": self.bos, "definitions": DEFINITIONS}


def default_stride(config: GPTConfig) -> int:
    """Half the context, as Hugging Face's perplexity guide uses for GPT-2 (512 of 1024)."""
    return max(1, config.n_positions // 2)


def windows(n_tokens: int, n_positions: int, stride: int) -> list[tuple[int, int, int]]:
    """Hugging Face's strided windows as (begin, end, first_scored): window ids[begin:end], scoring the
    tokens first_scored..end-1 (a token at position t is predicted from ids[begin:t])."""
    if not 0 < stride < n_positions:
        raise NumgptError(f"stride must be between 1 and n_positions - 1 = {n_positions - 1}, got {stride} "
                          "(with stride = n_positions the first token of every window would have no context)")
    out = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + n_positions, n_tokens)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return out


def token_logprobs(params: Params, config: GPTConfig, ids: Sequence[int], *, stride: int | None = None,
                   progress: Progress | None = None) -> np.ndarray:
    """ln p(ids[t] | ids[..t]) for t = 1 .. len(ids)-1 (float64 [len(ids) - 1]), with the strided window
    when ids are longer than n_positions. Prepend a BOS id yourself to score the first token too."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) < 2:
        raise NumgptError(f"need at least 2 tokens to score (got {len(ids)}): the first one is only context")
    stride = default_stride(config) if stride is None else stride
    out = np.empty(len(ids) - 1, dtype=np.float64)
    plan = windows(len(ids), config.n_positions, stride)
    for k, (begin, end, first) in enumerate(plan):
        out[first - 1:end - 1] = window_logprobs(params, config, ids[begin:end], first - begin)
        if progress is not None:
            progress(k + 1, len(plan))
    return out


def window_logprobs(params: Params, config: GPTConfig, window: np.ndarray, first: int) -> np.ndarray:
    """ln p(window[t] | window[:t]) for t = first .. len(window)-1, first >= 1. [T] -> [T - first]

    The tokens before first - 1 are only context: they are prefilled into a KV cache (logits for their
    last position only), and the output projection runs just for the positions that predict scored
    tokens -- on a stride-512 window of GPT-2 that skips half of the 50257-wide projections.
    """
    cache = KVCache.allocate(config, 1, len(window) - 1)
    if first > 1:
        forward(params, config, window[None, :first - 1], cache=cache)                # context only
    logits = forward(params, config, window[None, first - 1:-1], cache=cache, all_logits=True)[0]  # -> [T', V]
    check_finite_logits(logits, params)
    return log_softmax_at(logits, window[first:])


def encode_text(tokenizer, text: str) -> list[int]:
    """The text's ids; special tokens written in it (a document separator) count as special tokens."""
    return tokenizer.encode(text, allowed_special="all")


def with_bos(tokenizer, ids: list[int], bos: bool | None) -> tuple[list[int], bool]:
    """(ids to score, whether BOS was prepended). bos=None: prepend <|endoftext|> when the vocabulary has
    it; bos=True without one is an error."""
    if bos is None:
        bos = tokenizer.eot_id is not None
    if not bos:
        return ids, False
    if tokenizer.eot_id is None:
        raise NumgptError("the tokenizer has no <|endoftext|> token to prepend as BOS; score with bos=False")
    return [tokenizer.eot_id] + ids, True


def perplexity(params: Params, config: GPTConfig, tokenizer, text: str, *, stride: int | None = None,
               bos: bool | None = None, progress: Progress | None = None) -> Perplexity:
    """Perplexity and bits per byte of a text, by the module's definitions (bos=None: BOS when the
    vocabulary has <|endoftext|>)."""
    ids, bos = with_bos(tokenizer, encode_text(tokenizer, text), bos)
    if len(ids) < 2:
        raise NumgptError("the text is too short to score: it needs at least "
                          + ("1 token" if bos else "2 tokens (the first one is context only)"))
    stride = default_stride(config) if stride is None else stride
    logprobs = token_logprobs(params, config, ids, stride=stride, progress=progress)
    n_bytes = sum(len(tokenizer.decode_bytes([t])) for t in ids[1:])
    if n_bytes == 0:
        raise NumgptError("the predicted tokens have no bytes, bits per byte is undefined")
    return Perplexity(n_tokens=len(logprobs), n_bytes=n_bytes, nll=float(-logprobs.sum()), stride=stride,
                      window=config.n_positions, bos=bos)
