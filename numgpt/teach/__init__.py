"""The teaching views: every step of GPT-2 at work on real weights, with numbers that are the model's own.

    attention.py       attention_weights / traced_forward: each layer's causal softmax attention, from the
                       plain forward itself; attention_view for one layer of a text
    sampling_view.py   sampling_stages: the next-token distribution after each rule, in the sampler's
                       order (logit bias, penalties, temperature, top-k, top-p, min-p), made by numgpt.sampling's own rules; sampling_view for a prompt
    kvcache_view.py    kvcache_view: each generation step's work (exact multiply-adds) and time with and
                       without the KV cache; forward_macs; kvcache_counts for a generation the server ran
    tokens_view.py     tokens_view: the tokenizer's explain as plain data
    plots.py           the pictures (matplotlib, the `plot` extra, imported only when drawing)

A room: it imports the core and nothing imports it but the CLI (and the server). The *_view functions
take a LanguageModel and plain data and return frozen dataclasses whose `to_json()` is JSON-ready, so an
HTTP endpoint can return them as they are.
"""

from .attention import AttentionTrace, AttentionView, attention_view, attention_weights, traced_forward
from .kvcache_view import KVCacheCounts, KVCacheStep, KVCacheView, forward_macs, kvcache_counts, kvcache_view
from .sampling_view import STAGES, SamplingView, Stage, TokenProbability, sampling_stages, sampling_view
from .tokens_view import MergeView, PieceView, TokensView, tokens_view

__all__ = ["AttentionTrace", "AttentionView", "attention_view", "attention_weights", "traced_forward",
           "KVCacheCounts", "KVCacheStep", "KVCacheView", "forward_macs", "kvcache_counts", "kvcache_view", "STAGES", "SamplingView", "Stage",
           "TokenProbability", "sampling_stages", "sampling_view", "MergeView", "PieceView", "TokensView",
           "tokens_view"]
