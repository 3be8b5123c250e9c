"""The sampler's distribution after each of its filters, in its own order: raw, repetition penalty,
temperature, top-k, top-p.

`stage_logits` calls numgpt.sampling's own rules (apply_repetition_penalty, apply_temperature,
apply_top_k, apply_top_p) under the same conditions as `sampling.process_logits`, so the last stage is
what the sampler draws from: the tests hold it bit-equal to process_logits, and its probabilities equal
to softmax in float64, the distribution `sampling.sample` inverts. A stage that is off (a setting at its
neutral value, or temperature/top-k/top-p under greedy decoding) is listed with applied=False and the
distribution unchanged, so every view has the same five stages.

Each Stage reports one shared list of tokens -- the union of every stage's most likely kept tokens,
ordered by raw probability -- so bars and table rows line up across stages; plus the kept set (tokens
whose logit is still finite) and its mass, the probability the distribution entering the filter gave the
tokens it kept (for top-p: at least p).

Shapes: V vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NumgptError, whole_number
from ..model import check_finite_logits, forward
from ..ops import softmax
from ..sampling import (SamplingOptions, apply_repetition_penalty, apply_temperature, apply_top_k,
                        apply_top_p)
from .inputs import Prompt, prompt_ids, token_labels

STAGES = ("raw", "repetition_penalty", "temperature", "top_k", "top_p")   # the sampler's order


@dataclass(frozen=True)
class TokenProbability:
    """One token's standing at one stage."""

    id: int
    token: str | None      # its text, when the caller gave a decoder
    probability: float     # softmax of this stage's logits (float64, as the sampler draws)
    logit: float | None    # this stage's logit; None once a filter removed the token (-inf)


@dataclass(frozen=True)
class Stage:
    """The next-token distribution after one filter."""

    name: str                   # one of STAGES
    applied: bool               # False: the filter is off here, the distribution is the previous one
    setting: float | int | None  # the option's value (None for raw)
    note: str                   # what the filter did, in words
    top: list[TokenProbability]  # the shared tokens, most likely raw first
    kept: int                   # tokens still possible
    kept_ids: list[int] | None  # those tokens' ids, ascending; None when all V are kept
    kept_mass: float            # probability the incoming distribution gave the kept tokens

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def stage_logits(logits: np.ndarray, previous_ids: Sequence[int], options: SamplingOptions
                 ) -> list[tuple[str, bool, np.ndarray]]:
    """(name, applied, logits [V]) after each stage, in process_logits' order with its conditions."""
    row = np.asarray(logits, dtype=np.float32)
    if row.ndim != 1:
        raise NumgptError(f"logits must be one row [V], got shape {row.shape}")
    row = row[None]                                            # [V] -> [1, V], the sampler's batch shape
    sampling = not options.greedy
    out = [("raw", True, row[0])]
    penalty = options.repetition_penalty != 1.0
    if penalty:
        row = apply_repetition_penalty(row, [list(previous_ids)], options.repetition_penalty)
    out.append(("repetition_penalty", penalty, row[0]))
    temperature = sampling and options.temperature != 1.0
    if temperature:
        row = apply_temperature(row, options.temperature)
    out.append(("temperature", temperature, row[0]))
    top_k = sampling and bool(options.top_k)
    if top_k:
        row = apply_top_k(row, options.top_k)
    out.append(("top_k", top_k, row[0]))
    top_p = sampling and options.top_p < 1.0
    if top_p:
        row = apply_top_p(row, options.top_p)
    out.append(("top_p", top_p, row[0]))
    return out


def sampling_stages(logits: np.ndarray, previous_ids: Sequence[int], options: SamplingOptions, *,
                    top: int = 10, decode: Callable[[int], str] | None = None) -> list[Stage]:
    """The distribution after each filter for next-token logits [V], `previous_ids` being the tokens so
    far (what the repetition penalty looks at), `top` the most likely kept tokens of each stage to show."""
    top = whole_number("top", top, minimum=1)
    stages = stage_logits(logits, previous_ids, options)
    probs = [softmax(row.astype(np.float64)) for _, _, row in stages]   # [V] each, as sampling.sample
    shown = _shown_tokens(probs, top)
    out, incoming = [], probs[0]
    for (name, applied, row), p in zip(stages, probs):
        kept = np.isfinite(row)                                # [V]
        n_kept = int(kept.sum())
        out.append(Stage(
            name=name, applied=applied, setting=_setting(name, options), note=_note(name, applied, options, n_kept),
            top=[TokenProbability(id=int(i), token=None if decode is None else decode(int(i)),
                                  probability=float(p[i]), logit=float(row[i]) if kept[i] else None)
                 for i in shown],
            kept=n_kept, kept_ids=None if n_kept == row.shape[0] else np.flatnonzero(kept).tolist(),
            kept_mass=float(incoming[kept].sum())))
        incoming = p
    return out


def _shown_tokens(probs: list[np.ndarray], top: int) -> list[int]:
    """The union of each stage's `top` most likely possible tokens, most likely raw first (ties: lower id)."""
    ids: set[int] = set()
    for p in probs:
        order = np.lexsort((np.arange(p.shape[0]), -p))[:top]  # by probability, descending; ties by id
        ids.update(int(i) for i in order if p[i] > 0)
    raw = probs[0]
    return sorted(ids, key=lambda i: (-raw[i], i))


def _setting(name: str, options: SamplingOptions) -> float | int | None:
    return None if name == "raw" else getattr(options, name)


def _note(name: str, applied: bool, options: SamplingOptions, kept: int) -> str:
    """The stage in words, for tables and tooltips."""
    if name == "raw":
        return "softmax of the model's logits"
    if name != "repetition_penalty" and options.greedy:
        return "not applied: greedy decoding takes the most likely token"
    if not applied:
        return {"repetition_penalty": "off (1.0)", "temperature": "off (1.0)", "top_k": "off (0)",
                "top_p": "off (1.0)"}[name]
    if name == "repetition_penalty":
        return f"tokens already in the text: positive logits / {options.repetition_penalty:g}, negative ones x it"
    if name == "temperature":
        return f"logits / {options.temperature:g}"
    if name == "top_k":
        return f"keep the {options.top_k} most likely (ties kept): {kept} left"
    return f"keep the fewest most likely tokens holding >= {options.top_p:g} of the probability: {kept} left"


# ---- the view an endpoint returns ----------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingView:
    """The next-token distribution after a prompt, stage by stage, as plain data."""

    prompt_ids: list[int]
    prompt_tokens: list[str]
    options: dict[str, Any]     # the SamplingOptions fields
    stages: list[Stage]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sampling_view(lm, prompt: Prompt, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  repetition_penalty: float = 1.0, do_sample: bool = True, top: int = 10) -> SamplingView:
    """The sampler's stages for the token after `prompt` (text, or token ids: the prefix up to any
    position of a completion), with the options named as in transformers."""
    options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=repetition_penalty, do_sample=do_sample)
    ids = prompt_ids(lm, prompt, what="prompt")
    logits = forward(lm.params, lm.config, np.asarray([ids]))  # [1, T] -> [1, V]
    check_finite_logits(logits, lm.params)
    stages = sampling_stages(logits[0], ids, options, top=top, decode=lambda i: lm.tokenizer.decode([i]))
    return SamplingView(prompt_ids=ids, prompt_tokens=token_labels(lm.tokenizer, ids),
                        options=dataclasses.asdict(options), stages=stages)
