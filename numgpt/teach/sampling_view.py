"""The sampler's distribution after each of its rules, in its own order: raw, logit bias,
presence/frequency penalties, repetition penalty, then (when sampling) temperature, top-k, top-p, min-p.

`stage_logits` walks the sampler's own list of rules (sampling.RULES: each knows when it is on and how
to apply it), the list `sampling.process_logits` runs, so the last stage is what the sampler draws
from: the tests hold it bit-equal to process_logits, and its probabilities equal to softmax in float64,
the distribution `sampling.sample` inverts. A stage that is off (a setting at its neutral value, or a sampling-only rule
under greedy decoding) is listed with applied=False and the distribution unchanged, so every view has
the same eight stages.

The presence/frequency penalties look at the generated tokens only, the repetition penalty at every
token so far (prompt + generated), as in the sampler: a view of a position inside a completion passes
the completion's tokens before it as `generated`.

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
from ..model import check_context, check_finite_logits, forward
from ..ops import softmax
from ..sampling import RULES as SAMPLER_RULES
from ..sampling import SamplingOptions
from .inputs import Prompt, prompt_ids, token_labels

RULES = tuple(r for r in SAMPLER_RULES if r.name != "constraint")   # a constraint (structured output) needs a
# row's automaton state, which this one-distribution view has not: it shows the unconstrained stages
STAGES = ("raw",) + tuple(rule.name for rule in RULES)   # the sampler's order (sampling.RULES)
SAMPLING_ONLY = tuple(rule.name for rule in RULES if rule.sampling_only)   # skipped under greedy decoding


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
    setting: Any                # the option's value: a number; [presence, frequency]; [[id, bias], ...];
                                # None for raw
    note: str                   # what the filter did, in words
    top: list[TokenProbability]  # the shared tokens, most likely raw first
    kept: int                   # tokens still possible
    kept_ids: list[int] | None  # those tokens' ids, ascending; None when all V are kept
    kept_mass: float            # probability the incoming distribution gave the kept tokens

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def stage_logits(logits: np.ndarray, previous_ids: Sequence[int], options: SamplingOptions, *,
                 generated_ids: Sequence[int] = ()) -> list[tuple[str, bool, np.ndarray]]:
    """(name, applied, logits [V]) after each stage, in process_logits' order with its conditions.
    previous_ids: every token so far (prompt + generated); generated_ids: the generated ones among them."""
    row = np.asarray(logits, dtype=np.float32)
    if row.ndim != 1:
        raise NumgptError(f"logits must be one row [V], got shape {row.shape}")
    row = row[None]                                            # [V] -> [1, V], the sampler's batch shape
    out = [("raw", True, row[0])]
    for rule in RULES:                                         # the sampler's own list, in its order
        applied = rule.on(options)
        if applied:
            row = rule.apply(row, options, [list(previous_ids)], [list(generated_ids)])
        out.append((rule.name, applied, row[0]))
    return out


def sampling_stages(logits: np.ndarray, previous_ids: Sequence[int], options: SamplingOptions, *,
                    generated_ids: Sequence[int] = (), top: int = 10,
                    decode: Callable[[int], str] | None = None) -> list[Stage]:
    """The distribution after each rule for next-token logits [V], `previous_ids` being the tokens so
    far (what the repetition penalty looks at), `generated_ids` the generated ones among them (what the
    presence/frequency penalties look at), `top` the most likely kept tokens of each stage to show."""
    top = whole_number("top", top, minimum=1)
    stages = stage_logits(logits, previous_ids, options, generated_ids=generated_ids)
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


def _setting(name: str, options: SamplingOptions) -> Any:
    if name == "raw":
        return None
    if name == "presence_frequency_penalty":
        return [options.presence_penalty, options.frequency_penalty]
    if name == "logit_bias":
        return [list(pair) for pair in options.logit_bias]
    return getattr(options, name)


OFF = {"logit_bias": "off (no bias)", "presence_frequency_penalty": "off (0, 0)", "repetition_penalty": "off (1.0)",
       "temperature": "off (1.0)", "top_k": "off (0)", "top_p": "off (1.0)", "min_p": "off (0)"}


def _note(name: str, applied: bool, options: SamplingOptions, kept: int) -> str:
    """The stage in words, for tables and tooltips."""
    if name == "raw":
        return "softmax of the model's logits"
    if name in SAMPLING_ONLY and options.greedy:
        return "not applied: greedy decoding takes the most likely token"
    if not applied:
        return OFF[name]
    if name == "logit_bias":
        return "added to the logits: " + ", ".join(f"token {t} {b:+g}" for t, b in options.logit_bias)
    if name == "presence_frequency_penalty":
        return (f"generated tokens: logit - {options.frequency_penalty:g} x count - {options.presence_penalty:g} "
                "if present")
    if name == "repetition_penalty":
        return f"tokens already in the text: positive logits / {options.repetition_penalty:g}, negative ones x it"
    if name == "temperature":
        return f"logits / {options.temperature:g}"
    if name == "top_k":
        return f"keep the {options.top_k} most likely (ties kept): {kept} left"
    if name == "top_p":
        return f"keep the fewest most likely tokens holding >= {options.top_p:g} of the probability: {kept} left"
    return f"keep the tokens at least {options.min_p:g} x as likely as the most likely: {kept} left"


# ---- the view an endpoint returns ----------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingView:
    """The next-token distribution after a prompt, stage by stage, as plain data."""

    prompt_ids: list[int]       # every token before the next one (prompt + generated)
    prompt_tokens: list[str]
    generated: int              # how many of the last prompt_ids were generated (the penalties' tokens)
    options: dict[str, Any]     # the SamplingOptions fields
    stages: list[Stage]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sampling_view(lm, prompt: Prompt, *, generated: Sequence[int] = (), top: int = 10,
                  **options: Any) -> SamplingView:
    """The sampler's stages for the token after `prompt` + `generated` (text or token ids; generated: the
    ids a completion has made so far, which the presence/frequency penalties look at). `options` are
    SamplingOptions' fields (temperature=..., top_k=..., logit_bias=...), read by
    SamplingOptions.from_mapping: an unknown name is refused by name."""
    options = SamplingOptions.from_mapping(options)
    ids = prompt_ids(lm, prompt, what="prompt")
    if len(generated):                                         # the context holds prompt + generated
        check_context(lm.config, len(ids) + len(generated), fix="shorten the prompt or pass fewer generated tokens")
        generated = prompt_ids(lm, list(generated), what="generated")
    ids = ids + list(generated)
    for token, _ in options.logit_bias:
        if token >= lm.config.vocab_size:
            raise NumgptError(f"logit_bias names token {token}, outside the model's vocabulary "
                              f"(0..{lm.config.vocab_size - 1})")
    logits = forward(lm.params, lm.config, np.asarray([ids]))  # [1, T] -> [1, V]
    check_finite_logits(logits, lm.params)
    stages = sampling_stages(logits[0], ids, options, generated_ids=generated, top=top,
                             decode=lambda i: lm.tokenizer.decode([i]))
    return SamplingView(prompt_ids=ids, prompt_tokens=token_labels(lm.tokenizer, ids), generated=len(generated),
                        options=dataclasses.asdict(options), stages=stages)
