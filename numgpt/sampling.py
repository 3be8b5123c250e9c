"""Sampling: next-token logits -> next-token ids (greedy, temperature, top-k, top-p, repetition penalty).

Each rule is a small pure function "logits -> processed logits" that sets filtered tokens to -inf; RULES
lists them once, in order, each knowing when it is on, and `process_logits` runs that list (the teaching
view walks the same one). The order is Hugging Face's `generate` (transformers 5.x,
`GenerationMixin._get_logits_processor`): repetition penalty, then -- only when sampling -- temperature,
top-k, top-p, min-p. The semantics match transformers' RepetitionPenaltyLogitsProcessor,
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper and MinPLogitsWarper (min_tokens_to_keep=1);
tests/test_sampling.py checks them against those classes. OpenAI's API adds two rules that come first
(they are edits of the raw logits, applied to greedy decoding too): logit_bias (a number added to chosen
tokens' logits) and the presence/frequency penalties (subtracted per token for having appeared / per
appearance in the generated text, as OpenAI documents them). Before all of them runs the constraint stage
(structured outputs: a regex or JSON schema compiled by numgpt/structured into a token automaton), which
sets every token that would leave the constrained language to -inf, so no later rule can pick one.
Randomness is passed in as np.random.Generator objects, one per sequence, so that a
sequence's draws do not depend on which other sequences share its batch.

Greedy rule: decoding is greedy (argmax of the processed logits) when `do_sample=False` or the
temperature is below GREEDY_BELOW (0, and any temperature too small to divide float32 logits by: vLLM's
rule); otherwise it samples. As in transformers, the repetition penalty also applies to
greedy decoding, and temperature/top-k/top-p do not (they cannot change the argmax).

Shapes: B batch (sequences), V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import NumgptError, UnknownOptionError, describe, real_number, whole_number
from .ops import softmax

FILTERED = -np.inf  # the logit of a token a rule has removed: probability exactly 0, never NaN


@runtime_checkable
class Constraint(Protocol):
    """A constraint on the generated text (numgpt/structured's Constraint is the one there is): it knows
    which tokens keep each row's text valid after the tokens it generated so far."""

    def mask(self, logits: np.ndarray, generated: Sequence[Sequence[int]]) -> np.ndarray:
        """[B, V] -> [B, V] with each row's disallowed tokens at -inf."""
        ...

    def complete(self, generated: Sequence[int]) -> bool:
        """True when a row's generated tokens are a whole match no token can extend (the loop ends it)."""
        ...


def option(default: Any = MISSING, help: str = "", *, metavar: str | None = None, flag: str | None = None,
           short: str | None = None, parse: Callable[[str], Any] | None = None,
           default_factory: Any = MISSING) -> Any:
    """A dataclass field that also carries what a command line needs to offer it (numgpt/cli/options.py
    builds the decoding flags from these, so each option is defined once, as llama.cpp's common/arg.cpp).

    help: what it does (the CLI adds the default). flag: the flag if not --field-name; for a bool whose
    flag turns it off (--greedy for do_sample) the flag sets the opposite of the default. short: e.g. -n.
    parse: for a tuple field, turns one repeated flag's text into one item. A field made with plain
    `field()` has no flag.
    """
    metadata = {"help": help, "metavar": metavar, "flag": flag, "short": short, "parse": parse}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def parse_logit_bias(given: str) -> tuple[int, float]:
    """'ID=BIAS' (a command line's spelling of one logit_bias entry) as (id, bias); the ranges are
    SamplingOptions' to check."""
    token, _, bias = given.partition("=")
    try:
        return int(token), float(bias)
    except ValueError:
        raise NumgptError(f"logit_bias must be ID=BIAS such as 321=-100, got {given!r}") from None


def options_from_mapping(cls: type, given: Mapping[str, Any], what: str, **nested: Any) -> Any:
    """cls(**given) with every key checked against cls's fields first (`nested` are fields already built,
    such as GenerationOptions' sampling): the one way options are read from keyword arguments, a
    request body or parsed flags. An unknown key is an UnknownOptionError naming it and the known ones."""
    if not isinstance(given, Mapping):
        raise NumgptError(f"{what} options must be a mapping of option name -> value, got {describe(given)}")
    known = [f.name for f in fields(cls) if f.name not in nested]
    unknown = sorted(set(given) - set(known), key=str)
    if unknown:
        raise UnknownOptionError(f"unknown {what} option {unknown[0]!r}; the options are {', '.join(known)}")
    return cls(**given, **nested)


# subtle: logits / T overflows float32 once T is tiny (1e-39 gave noise, 1e-45 divided by zero), and
# below 1e-5 sampling is the argmax but for near-exact ties; so such a temperature is greedy, as in vLLM
GREEDY_BELOW = 1e-5

@dataclass(frozen=True)
class SamplingOptions:
    """How to pick the next token from the logits; checked at construction (one-line NumgptError naming
    the field). Build it from keyword arguments, or from any mapping with `SamplingOptions.from_mapping`.

    temperature: divide the logits by it (< 1 sharper, > 1 flatter); 0 (or below GREEDY_BELOW) means greedy.
    top_k: keep the k most likely tokens (ties at the k-th logit are kept, as in transformers); 0 = off.
    top_p: nucleus sampling, keep the smallest set of most likely tokens whose probability is >= top_p;
        1.0 = off.
    repetition_penalty: > 1 discourages tokens already in the sequence (prompt + generated), < 1
        encourages them; 1.0 = off (CTRL paper, as in transformers).
    do_sample: False means greedy whatever the temperature.
    min_p: keep the tokens whose probability is >= min_p times the most likely one's; 0 = off.
    presence_penalty, frequency_penalty: OpenAI's, in [-2, 2]; subtracted from a token's logit once if it
        occurs in the generated text / once per occurrence; 0 = off.
    logit_bias: (token id, bias) pairs added to those logits (OpenAI's, bias in [-100, 100]); a dict
        {id: bias} is accepted too.
    constraint: only tokens that keep the text in a regular language (a Constraint from numgpt.structured,
        built from a regex or a JSON schema); None = off. Not a flag: --regex / --json-schema build it.
    """

    temperature: float = option(1.0, "< 1 sharper, > 1 flatter, 0 = greedy", metavar="T")
    top_k: int = option(0, "sample from the K most likely; 0 = off", metavar="K")
    top_p: float = option(1.0, "sample from the smallest set with probability >= P, in (0, 1]; 1 = off",
                          metavar="P")
    repetition_penalty: float = option(1.0, "> 1 discourages tokens already in the text (1.2 is typical); "
                                       "1 = off", metavar="R")
    do_sample: bool = option(True, "always take the most likely token (no sampling)", flag="--greedy")
    min_p: float = option(0.0, "sample from the tokens at least M x as likely as the most likely, in [0, 1]; "
                          "0 = off", metavar="M")
    presence_penalty: float = option(0.0, "subtract P from the logit of every token already generated, "
                                     "in [-2, 2] (OpenAI's); 0 = off", metavar="P")
    frequency_penalty: float = option(0.0, "subtract F from a token's logit per time it was generated, "
                                      "in [-2, 2] (OpenAI's); 0 = off", metavar="F")
    logit_bias: tuple[tuple[int, float], ...] = option((), "add BIAS (-100..100) to token ID's logit "
                                                       "(repeatable)", metavar="ID=BIAS", parse=parse_logit_bias)
    constraint: Constraint | None = field(default=None)

    @classmethod
    def from_mapping(cls, given: Mapping[str, Any]) -> "SamplingOptions":
        """SamplingOptions(**given), an unknown key refused by name (UnknownOptionError)."""
        return options_from_mapping(cls, given, "sampling")

    def as_mapping(self) -> dict[str, Any]:
        """The options that differ from the defaults, as keyword options (from_mapping's inverse)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def __post_init__(self) -> None:
        if real_number("temperature", self.temperature, rule=" >= 0 (0 = greedy)") < 0:
            raise NumgptError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        whole_number("top_k", self.top_k, minimum=0, extra=" (0 = off)")
        if not 0 < real_number("top_p", self.top_p, rule=" in (0, 1] (1 = off)") <= 1:
            raise NumgptError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        rule = " > 0 (1 = off, 1.2 is typical)"
        if real_number("repetition_penalty", self.repetition_penalty, rule=rule) <= 0:
            raise NumgptError(f"repetition_penalty must be{rule}, got {self.repetition_penalty}")
        if not isinstance(self.do_sample, (bool, np.bool_)):
            raise NumgptError(f"do_sample must be True or False, got {describe(self.do_sample)}")
        if not 0 <= real_number("min_p", self.min_p, rule=" in [0, 1] (0 = off)") <= 1:
            raise NumgptError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= real_number(name, getattr(self, name), rule=" in [-2, 2] (0 = off)") <= 2:
                raise NumgptError(f"{name} must be in [-2, 2] (0 = off), got {getattr(self, name)}")
        if self.logit_bias is None:
            object.__setattr__(self, "logit_bias", ())
        if isinstance(self.logit_bias, Mapping):
            object.__setattr__(self, "logit_bias", tuple(self.logit_bias.items()))
        if not isinstance(self.logit_bias, (tuple, list)):
            raise NumgptError(f"logit_bias must map token ids to numbers, got {describe(self.logit_bias)}")
        for pair in self.logit_bias:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise NumgptError(f"logit_bias must map token ids to numbers, got {describe(pair)}")
            whole_number("a logit_bias token id", pair[0], minimum=0)
            if not -100 <= real_number("a logit_bias value", pair[1], rule=" in [-100, 100]") <= 100:
                raise NumgptError(f"a logit_bias value must be in [-100, 100], got {pair[1]}")
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in self.logit_bias))
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise NumgptError("constraint must be a numgpt.structured Constraint (from a regex or a JSON schema), "
                              f"got {describe(self.constraint)}")

    @property
    def penalises_generated(self) -> bool:
        """True when a rule needs each row's generated tokens (presence or frequency penalty, a constraint)."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.constraint is not None

    @property
    def reads_history(self) -> bool:
        """True when a rule reads the tokens before the logits (the repetition penalty, or a rule on the
        generated ones): then each position's logits need that position's own history."""
        return self.repetition_penalty != 1.0 or self.penalises_generated

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax: do_sample=False or a temperature below GREEDY_BELOW."""
        return not self.do_sample or self.temperature < GREEDY_BELOW


GREEDY = SamplingOptions(do_sample=False)


def apply_logit_bias(logits: np.ndarray, bias: Sequence[tuple[int, float]]) -> np.ndarray:
    """Add each (token id, bias) to that token's logit in every row (OpenAI's logit_bias: -100 all but
    bans a token, +100 all but forces it). Ids beyond the vocabulary are an error."""
    out = np.array(logits, dtype=np.float32, copy=True)  # [B, V]
    for token, b in bias:
        if token >= out.shape[-1]:
            raise NumgptError(f"logit_bias names token {token}, but the vocabulary has {out.shape[-1]} tokens")
        out[..., token] += np.float32(b)
    return out


def apply_presence_frequency_penalty(logits: np.ndarray, generated: Sequence[Sequence[int]],
                                     presence: float, frequency: float) -> np.ndarray:
    """OpenAI's penalties: logit[j] -= frequency * count[j] + presence * (count[j] > 0), where count is
    how often token j occurs in the row's generated tokens (not the prompt, as OpenAI and vLLM)."""
    out = np.array(logits, dtype=np.float32, copy=True)  # [B, V]
    for row, ids in zip(out, generated):
        ids = np.asarray(ids, dtype=np.int64)
        tokens, counts = np.unique(ids[ids < row.shape[0]], return_counts=True)  # [n_distinct]
        row[tokens] -= (np.float32(frequency) * counts + np.float32(presence)).astype(np.float32)
    return out


def apply_repetition_penalty(logits: np.ndarray, previous: Sequence[Sequence[int]],
                             penalty: float) -> np.ndarray:
    """Penalise every token that already occurs in its row's sequence, once per distinct token.

    A negative logit is multiplied by the penalty and a non-negative one divided by it, so a penalty
    > 1 always makes the token less likely (transformers' RepetitionPenaltyLogitsProcessor).
    `previous[b]` is row b's token ids so far (prompt + generated, no padding).
    """
    out = np.array(logits, dtype=np.float32, copy=True)  # [B, V]
    if penalty == 1.0:
        return out
    p = np.float32(penalty)
    for row, ids in zip(out, previous):
        seen = np.unique(np.asarray(ids, dtype=np.int64))  # [n_distinct]
        seen = seen[seen < row.shape[0]]  # ids beyond the output vocabulary cannot be generated anyway
        score = row[seen]
        row[seen] = np.where(score < 0, score * p, score / p)
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """logits / temperature, in float32 (transformers' TemperatureLogitsWarper)."""
    if temperature <= 0:
        raise NumgptError(f"temperature must be > 0 to scale logits, got {temperature} (0 means greedy)")
    return np.asarray(logits, dtype=np.float32) / np.float32(temperature)


def apply_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the tokens whose logit is >= the k-th largest of the row; the rest get -inf.

    Ties with the k-th logit are all kept (transformers' TopKLogitsWarper), so a row may keep more than k.
    """
    logits = np.asarray(logits, dtype=np.float32)
    k = min(int(k), logits.shape[-1])
    if k <= 0:
        return logits.copy()
    kth = np.partition(logits, -k, axis=-1)[..., -k, None]  # [B, V] -> [B, 1]
    return np.where(logits < kth, np.float32(FILTERED), logits)


def apply_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter: drop the least likely tokens whose total probability is <= 1 - p; keep >= 1 token.

    transformers' TopPLogitsWarper's rule: sort ascending, cumulative softmax, remove where
    cumsum <= 1 - p, never remove the most likely token. The cumulative sum accumulates in float64 and
    rounds each partial sum to float32 (a plain float32 cumsum drifts by a few ulps over 50k tokens);
    among equal logits the lower token id comes first (a stable sort).

    What is guaranteed against torch: the same kept set whenever no two logits tie at the boundary and
    no partial sum lies within a float32 ulp of 1 - p. Not bit for bit beyond that: on a 50257-wide row
    torch's CPU sort is not stable (tied logits may come in either order) and its cumsum can differ from
    ours in the last bit, so a token sitting exactly on the threshold may be kept by one and not the other.
    """
    logits = np.asarray(logits, dtype=np.float32)
    if p >= 1.0:
        return logits.copy()
    order = stable_argsort(logits)  # [B, V] ascending
    sorted_logits = np.take_along_axis(logits, order, axis=-1)  # [B, V]
    cumulative = np.cumsum(softmax(sorted_logits), axis=-1, dtype=np.float64).astype(np.float32)
    remove_sorted = cumulative <= np.float32(1 - p)  # 1 - p computed in float64, compared in float32 as torch
    remove_sorted[..., -1] = False  # min_tokens_to_keep = 1: the most likely token stays
    remove = np.empty_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)  # back to vocabulary order
    return np.where(remove, np.float32(FILTERED), logits)


def apply_min_p(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Keep the tokens whose probability is >= min_p x the largest probability of the row (always the
    most likely one); the rest get -inf (transformers' MinPLogitsWarper)."""
    logits = np.asarray(logits, dtype=np.float32)
    if min_p <= 0:
        return logits.copy()
    probs = softmax(logits)                                          # [B, V]
    threshold = np.float32(min_p) * probs.max(axis=-1, keepdims=True)  # [B, 1]
    remove = probs < threshold
    remove[np.arange(len(logits)), np.argmax(logits, axis=-1)] = False  # min_tokens_to_keep = 1
    return np.where(remove, np.float32(FILTERED), logits)


def stable_argsort(logits: np.ndarray) -> np.ndarray:
    """argsort(logits, kind="stable") along the last axis, ~5x faster for a 50k vocabulary.

    Each float32 is mapped to a uint32 with the same order (flip all bits of negatives, set the sign bit
    of non-negatives), shifted up, and or-ed with the token id: the uint64 keys are distinct, so numpy's
    fast unstable sort gives the stable order (ties by ascending id). -0.0 is first made +0.0 so the two
    zeros tie, as they compare equal. [B, V] -> [B, V]
    """
    bits = (np.asarray(logits, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = +0.0
    negative = (bits & np.uint32(0x80000000)) != 0
    ordered = np.where(negative, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
    keys = (ordered << np.uint64(32)) | np.arange(bits.shape[-1], dtype=np.uint64)
    return (np.sort(keys, axis=-1) & np.uint64(0xFFFFFFFF)).astype(np.intp)


Rows = Sequence[Sequence[int]] | None   # each row's tokens (previous or generated), when a rule needs them


def _needed(rows: Rows, what: str) -> Sequence[Sequence[int]]:
    if rows is None:
        raise NumgptError(f"the {what} of each row")
    return rows


def _constraint(logits: np.ndarray, o: SamplingOptions, previous: Rows, generated: Rows) -> np.ndarray:
    return o.constraint.mask(logits, _needed(generated, "a constraint needs the generated tokens"))


def _logit_bias(logits: np.ndarray, o: SamplingOptions, previous: Rows, generated: Rows) -> np.ndarray:
    return apply_logit_bias(logits, o.logit_bias)


def _presence_frequency(logits: np.ndarray, o: SamplingOptions, previous: Rows, generated: Rows) -> np.ndarray:
    rows = _needed(generated, "presence/frequency penalties need the generated tokens")
    return apply_presence_frequency_penalty(logits, rows, o.presence_penalty, o.frequency_penalty)


def _repetition(logits: np.ndarray, o: SamplingOptions, previous: Rows, generated: Rows) -> np.ndarray:
    return apply_repetition_penalty(logits, _needed(previous, "repetition penalty needs the previous tokens"),
                                    o.repetition_penalty)


@dataclass(frozen=True)
class Rule:
    """One stage of the sampler: its name, the options it reads, whether it only applies when sampling
    (it cannot change the argmax), and how it changes [B, V] logits. It is on when any of its options is
    not at its neutral default (and, if sampling_only, when the options sample)."""

    name: str
    options: tuple[str, ...]
    sampling_only: bool
    apply: Callable[[np.ndarray, SamplingOptions, Rows, Rows], np.ndarray]   # (logits, options, previous, generated)

    def on(self, options: SamplingOptions) -> bool:
        if self.sampling_only and options.greedy:
            return False
        for name in self.options:                        # a loop, not any(...): this runs per token
            if getattr(options, name) != NEUTRAL[name]:
                return True
        return False


NEUTRAL = {f.name: f.default for f in fields(SamplingOptions)}   # each option's "off" value

# The sampler's rules in the order they run (the module docstring says whose order): process_logits runs
# this list, teach/sampling_view walks it, and the CLI's --greedy check reads which rules are sampling-only.
RULES = (
    Rule("constraint", ("constraint",), False, _constraint),
    Rule("logit_bias", ("logit_bias",), False, _logit_bias),
    Rule("presence_frequency_penalty", ("presence_penalty", "frequency_penalty"), False, _presence_frequency),
    Rule("repetition_penalty", ("repetition_penalty",), False, _repetition),
    Rule("temperature", ("temperature",), True, lambda x, o, p, g: apply_temperature(x, o.temperature)),
    Rule("top_k", ("top_k",), True, lambda x, o, p, g: apply_top_k(x, o.top_k)),
    Rule("top_p", ("top_p",), True, lambda x, o, p, g: apply_top_p(x, o.top_p)),
    Rule("min_p", ("min_p",), True, lambda x, o, p, g: apply_min_p(x, o.min_p)),
)
SAMPLING_ONLY_OPTIONS = tuple(name for rule in RULES if rule.sampling_only for name in rule.options)


def process_logits(logits: np.ndarray, options: SamplingOptions, *,
                   previous: Sequence[Sequence[int]] | None = None,
                   generated: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Every rule of RULES that is on, in order: logit bias, presence/frequency penalties, repetition
    penalty; then, when sampling, temperature, top-k, top-p, min-p.

    [B, V] -> [B, V] float32; removed tokens are -inf. `previous` is each row's tokens so far (prompt +
    generated), needed only for the repetition penalty; `generated` only the generated ones, needed only
    for the presence/frequency penalties.
    """
    logits = np.asarray(logits, dtype=np.float32)
    for rule in RULES:
        if rule.on(options):
            logits = rule.apply(logits, options, previous, generated)
    return logits


def greedy(logits: np.ndarray) -> np.ndarray:
    """The most likely token of each row; the lowest id wins a tie (as torch.argmax). [B, V] -> [B]"""
    return np.argmax(logits, axis=-1)


def sample(logits: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Draw one token per row from softmax(logits), row b with its own generator rngs[b]. [B, V] -> [B]

    Inverse-CDF sampling with one uniform draw per row. The probabilities and their cumulative sum are
    float64 so that the CDF of a 50k-token vocabulary is exact to ~1e-16, and a token with probability 0
    (a -inf logit) has an empty interval and can never be drawn.
    """
    logits = np.asarray(logits)
    if len(rngs) != logits.shape[0]:
        raise NumgptError(f"need one generator per row: {len(rngs)} generators for {logits.shape[0]} rows")
    cdf = np.cumsum(softmax(logits.astype(np.float64)), axis=-1)  # [B, V]
    ids = np.empty(logits.shape[0], dtype=np.int64)
    for b, rng in enumerate(rngs):
        u = rng.random() * cdf[b, -1]
        i = int(np.searchsorted(cdf[b], u, side="right"))
        # u < cdf[-1] in exact arithmetic; if rounding puts it at the end, take the last possible token
        ids[b] = i if i < cdf.shape[1] else int(np.flatnonzero(np.isfinite(logits[b]))[-1])
    return ids


def next_tokens(logits: np.ndarray, options: SamplingOptions, rngs: Sequence[np.random.Generator] | None,
                *, previous: Sequence[Sequence[int]] | None = None,
                generated: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """The next id of every row: process the logits, then argmax or sample. [B, V] -> [B] int64"""
    processed = process_logits(logits, options, previous=previous, generated=generated)
    if options.greedy:
        return greedy(processed).astype(np.int64)
    if rngs is None:
        raise NumgptError("sampling needs one np.random.Generator per row (or greedy options)")
    return sample(processed, rngs)
