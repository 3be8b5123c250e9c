"""Generation: prefill the prompts into a preallocated KV cache, then decode one token per step.

Two layers, each usable alone (and `generate_ids`, the ids-only twin of the text layer):

- `decode_steps` works on token ids: prefill (left-padded batch, each prompt once even with n samples
  per prompt -- the cache rows are repeated afterwards), then per step pick every running sequence's next
  token (sampling.py) and feed it back. It is a generator that yields each step's tokens and receives the
  sequences to stop, so the stopping rules live outside the loop.
- `stream_completions` / `generate_completions` work on text: tokenize, run `decode_steps`, and give each
  sequence a Finisher (numgpt/finish.py, the one end rule the server and the SQL session use too): it
  decodes with the tokenizer's UTF-8-safe stream decoder, ends at `<|endoftext|>`, at stop strings, at
  max_new_tokens or on cancel, and hands out text as soon as it can no longer be part of a stop string.

Stop strings are matched on the decoded text of the completion only (not across the end of the prompt:
transformers' StopStringCriteria also looks back into the prompt), so one may span several generated
tokens or end inside a token; the completion ends just before the earliest match (the stop string and
everything after it are dropped), and the token that completed it is the last one in `token_ids`.

Log-probabilities (options.logprobs = k > 0): each generated token's ln p under the model's raw
distribution (the softmax of the logits at temperature 1, before any filter -- what OpenAI's API and
llama.cpp report), with the k most likely alternatives. Cancel: `cancel()` is asked between steps, and
a True ends every sequence with finish_reason "cancelled"; closing the generator stops it too.

Speculative decoding (options.speculative = "ngram" or "draft", numgpt/speculative.py) is a stage of
`decode_steps`, not a loop of its own: each round drafts up to num_draft tokens per sequence, the model
verifies them in one forward through the KV cache, and the kept tokens come out one Step per position, so
the Finisher, stop strings and logprobs work unchanged. Greedy: the tokens of plain decoding; sampling: the
same distribution (not the same draws as plain decoding with the same seed, but the same text on every run).
Batches speculate row by row in one forward: a row that kept fewer drafts gets holes in the cache's mask.
Refused rather than approximated: sliding_window.

Context: by default prompt + max_new_tokens must fit in n_positions (NumgptError otherwise). With
`sliding_window=True`, when the cache is full every running row keeps its last n_positions - stride tokens,
the cache is reset and those tokens are prefilled again (GPT-2's learned absolute positions are baked into
the cached keys, so the cache cannot simply be shifted). Cost: one prefill of n_positions - stride tokens
per `stride` generated tokens; with the default stride n_positions // 2 (llama.cpp's context shift also
drops half), about one extra prefilled token per generated token, and the model then sees at least half
a context of history. In a batch the window slides for all rows when the longest row fills the cache.

Reproducibility: with a seed, sample j of every prompt draws from its own np.random.Generator made from
SeedSequence(seed, spawn_key=(j,)). The same prompt, options and seed give the same text whatever else is
in the batch -- up to float rounding: a batched (padded) forward can differ from a single one in the last
ulp, which changes a draw only when it sits on a CDF boundary. So two identical prompts in one call with
one seed give identical samples; ask for num_return_sequences to get different ones. Without a seed
every sequence gets fresh OS entropy. Greedy decoding draws nothing.

Shape legend: B prompts (or running rows), N sequences (prompts x samples), T time, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np

from .config import GPTConfig
from .errors import NumgptError, UnknownOptionError, whole_number
from .finish import Finisher
from .kvcache import KVCache, cache_bytes
from .machine import check_fits
from .model import check_context, check_finite_logits, forward
from .ops import log_softmax
from .params import Params
from .sampling import SamplingOptions, next_tokens, option, options_from_mapping
from .speculative import METHODS as SPECULATIVE_METHODS
from .speculative import Speculation, SpeculativeStats, speculation, verify_round

Progress = Callable[[int, int], None]  # (steps done, steps in all)
PAD_ID = 0  # the id written into left padding; any valid id works, the attention mask hides it


def unescape(text: str) -> str:
    """'\\n' and '\\t' typed on a command line -> newline and tab (a stop string given as a flag)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


@dataclass(frozen=True)
class GenerationOptions:
    """What to generate; checked at construction (NumgptError with one line naming the field).

    Build it from keyword arguments, or from one flat mapping of its fields and SamplingOptions' with
    `GenerationOptions.from_mapping` (what LanguageModel's **options, the CLI's flags and a request body
    go through); `as_mapping` is the inverse.

    max_new_tokens: at most this many new tokens per sequence.
    sampling: how each token is picked (greedy, temperature, top-k, top-p, repetition penalty...).
    stop: strings that end a completion (not included in it); matched in the completion only.
    stop_at_eos: end a completion at the end-of-text token (not included in it).
    num_return_sequences: samples per prompt.
    seed: makes sampling reproducible (see the module docstring for what is guaranteed).
    sliding_window: continue past the context size by re-prefilling the last tokens (see above).
    window_stride: tokens dropped per slide (with sliding_window); None means n_positions // 2.
    logprobs: report each new token's log-probability and this many top alternatives (0 = none).
    speculative: "ngram" (prompt lookup) or "draft" (a draft model, given beside the options): draft
        num_draft tokens and verify them in one forward (numgpt/speculative.py); the same greedy tokens,
        the same distribution when sampling. None = off. num_draft: default 4.
    """

    max_new_tokens: int = option(64, "new tokens at most, per sample", metavar="N", short="-n")
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    stop: tuple[str, ...] = option((), "end at this text, not printed; matched in the new text only, not "
                                   "across the end of the prompt (repeatable; \\n and \\t escapes are "
                                   "understood)", metavar="TEXT", parse=unescape)
    stop_at_eos: bool = option(True, "do not stop at <|endoftext|>", flag="--ignore-eos")
    num_return_sequences: int = option(1, "independent samples of each prompt", metavar="N", flag="--num-samples")
    seed: int | None = option(None, "make sampling reproducible", metavar="S")
    sliding_window: bool = option(False, "go past the context size by re-reading the last tokens when it fills")
    window_stride: int | None = option(None, "with --sliding-window: tokens dropped each time the window "
                                       "slides, 1..n_positions-1; default n_positions / 2", metavar="S")
    logprobs: int = field(default=0)
    speculative: str | None = field(default=None)
    num_draft: int | None = field(default=None)

    def __post_init__(self) -> None:
        whole_number("max_new_tokens", self.max_new_tokens, minimum=0)
        whole_number("num_return_sequences", self.num_return_sequences, minimum=1)
        if not isinstance(self.sampling, SamplingOptions):
            raise NumgptError(f"sampling must be a SamplingOptions, got {type(self.sampling).__name__}")
        if self.stop is None:
            object.__setattr__(self, "stop", ())
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if not isinstance(self.stop, (tuple, list)):
            raise NumgptError(f"stop must be a string or a list of strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        bad = [s for s in self.stop if not isinstance(s, str) or not s]
        if bad:                       # (said alone: the whole tuple read as a Python repr on the command line)
            raise NumgptError(f"stop must hold non-empty strings, got {bad[0]!r}")
        if self.seed is not None:
            whole_number("seed", self.seed, minimum=0)
        whole_number("logprobs", self.logprobs, minimum=0)
        for name in ("stop_at_eos", "sliding_window"):
            if not isinstance(getattr(self, name), bool):
                raise NumgptError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.window_stride is not None:
            whole_number("window_stride", self.window_stride, minimum=1, extra=" (tokens dropped per slide)")
            if not self.sliding_window:
                raise NumgptError("window_stride applies only with sliding_window=True; add it, or drop "
                                  "window_stride")
        check_speculative_options(self)
        if self.stop and self.sampling.constraint is not None:
            raise NumgptError(STOP_WITH_CONSTRAINT)

    @classmethod
    def from_mapping(cls, given: Mapping[str, Any]) -> "GenerationOptions":
        """GenerationOptions from one flat mapping of its fields and SamplingOptions' (temperature=...,
        max_new_tokens=...), each checked; an unknown key is refused by name (UnknownOptionError)."""
        if not isinstance(given, Mapping):
            return options_from_mapping(cls, given, "generation")       # the one message for a non-mapping
        own = [f.name for f in fields(cls) if f.name != "sampling"]
        sampling_keys = [f.name for f in fields(SamplingOptions)]
        unknown = sorted(set(given) - set(own) - set(sampling_keys), key=str)
        if unknown:
            raise UnknownOptionError(f"unknown generation option {unknown[0]!r}; the options are "
                                     f"{', '.join(own + sampling_keys)}")
        sampling = SamplingOptions(**{k: v for k, v in given.items() if k in sampling_keys})
        return cls(**{k: v for k, v in given.items() if k in own}, sampling=sampling)

    def as_mapping(self) -> dict[str, Any]:
        """The flat mapping of the options that differ from the defaults (from_mapping's inverse)."""
        out = self.sampling.as_mapping()
        out.update({f.name: getattr(self, f.name) for f in fields(self)
                    if f.name != "sampling" and getattr(self, f.name) != f.default})
        return out


DEFAULT_NUM_DRAFT = 4   # tokens drafted per target forward when speculative decoding does not say
STOP_WITH_CONSTRAINT = ("stop strings cannot be combined with a regex or a JSON schema: a stop string would cut the "
                        "text short of a whole match, which would still end as a stop; let the pattern say where the "
                        "text ends")


def check_speculative_options(options: "GenerationOptions") -> None:
    """speculative and num_draft, and what speculative decoding refuses rather than approximates: the
    sliding window (its re-prefill would have to replay the drafts). Every sampler rule is honoured
    exactly (speculative.verify runs them per position with that position's history)."""
    if options.speculative is None:
        if options.num_draft is not None:
            raise NumgptError("num_draft applies only with speculative decoding: add speculative='ngram' (or "
                              "'draft' with a draft model), or drop num_draft")
        return
    if options.speculative not in SPECULATIVE_METHODS:
        raise NumgptError(f"speculative must be one of {', '.join(SPECULATIVE_METHODS)}, got {options.speculative!r}")
    if options.num_draft is not None:
        whole_number("num_draft", options.num_draft, minimum=1, extra=" (tokens drafted per target forward)")
    if options.sliding_window:
        raise NumgptError("speculative decoding cannot be combined with sliding_window=True (its re-prefill would "
                          "have to replay the drafts): drop one of them")
    if options.sampling.constraint is not None:
        raise NumgptError("speculative decoding cannot be combined with a constraint (regex, json_schema, "
                          "response_format): drafts are not checked against it; drop one of them")


def options_speculation(options: "GenerationOptions", config: GPTConfig,
                        draft: tuple[Params, GPTConfig] | None) -> Speculation | None:
    """The Speculation decode_steps runs for these options (None when off); `draft` is the draft model's
    (params, config) for speculative='draft'."""
    if options.speculative is None:
        if draft is not None:
            raise NumgptError("a draft model was given but speculative is not 'draft'; pass speculative='draft'")
        return None
    return speculation(options.speculative, options.num_draft or DEFAULT_NUM_DRAFT, config, draft=draft,
                       headroom=options.max_new_tokens)


class TokenLogprob(NamedTuple):
    """A token with its log-probability under the model's raw distribution, and the top alternatives."""

    id: int
    logprob: float                          # ln p(token | what precedes it), temperature 1, nothing filtered
    top: tuple[tuple[int, float], ...] = ()  # the most likely tokens there as (id, ln p), most likely first


def top_logprobs(logprobs: np.ndarray, k: int) -> tuple[tuple[int, float], ...]:
    """The k largest entries of one row of log-probabilities as (id, ln p), largest first, lower id on
    ties. [V] -> k pairs"""
    k = min(k, logprobs.shape[-1])
    if k <= 0:
        return ()
    best = np.argpartition(-logprobs, k - 1)[:k]
    best = best[np.lexsort((best, -logprobs[best]))]
    return tuple((int(i), float(logprobs[i])) for i in best)


def token_logprob_rows(logits: np.ndarray, tokens: np.ndarray, k: int) -> list[TokenLogprob]:
    """Each row's chosen token with its ln p and k alternatives, from raw logits. [A, V], [A] -> A entries"""
    logp = log_softmax(logits.astype(np.float64))             # [A, V]
    return [TokenLogprob(int(t), float(row[t]), top_logprobs(row, k)) for row, t in zip(logp, tokens)]


@dataclass
class Completion:
    """One generated sequence: its text, its new token ids, and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str  # one of finish.FINISH_REASONS: "length", "eos", "stop", "cancelled"
    prompt_index: int
    logprobs: list[TokenLogprob] | None = None  # per entry of token_ids, when options.logprobs > 0
    speculative: SpeculativeStats | None = None  # what speculative decoding did, when it was on


class Piece(NamedTuple):
    """What one step gave one sequence: final text (may be "" while a stop string could still match) and,
    for a generated token, the token with its log-probabilities (None for the end-of-text flush)."""

    sequence: int
    text: str
    token: TokenLogprob | None


# ---------------------------------------------------------------------------------------------------
# token level


def sequence_rngs(n_prompts: int, num_return_sequences: int, seed: int | None) -> list[np.random.Generator]:
    """One generator per sequence (prompt-major order). With a seed, sample j of every prompt uses
    `sample_rng(seed, j)`, so its draws do not depend on the other prompts in the batch."""
    if seed is None:
        children = np.random.SeedSequence().spawn(n_prompts * num_return_sequences)
        return [np.random.default_rng(c) for c in children]
    return [sample_rng(seed, j) for _ in range(n_prompts) for j in range(num_return_sequences)]


def sample_rng(seed: int, j: int) -> np.random.Generator:
    """The generator of sample j under `seed`: SeedSequence(seed, spawn_key=(j,)) (the server uses it too,
    so a seeded request draws what `numgpt generate --seed` draws)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(j,)))


def window_size(config: GPTConfig, stride: int | None) -> int:
    """Tokens kept when the window slides: n_positions - stride (stride None = n_positions // 2)."""
    stride = stride or config.n_positions // 2
    if not 0 < stride < config.n_positions:
        raise NumgptError(f"window_stride must be between 1 and {config.n_positions - 1} "
                          f"(n_positions - 1), got {stride}")
    return config.n_positions - stride


def check_room(config: GPTConfig, prompt_tokens: int, max_new_tokens: int) -> None:
    """The context rule for generation (model.check_context), its advice in this API's terms."""
    room = config.n_positions - prompt_tokens
    fix = (f"lower max_new_tokens to {room}" if room > 0 and max_new_tokens else "shorten the prompt") \
        + " or pass sliding_window=True"
    check_context(config, prompt_tokens, max_new_tokens, fix=fix)


def prefill(params: Params, config: GPTConfig, prompts: Sequence[Sequence[int]], *,
            max_len: int, panels: bool = False) -> tuple[KVCache, np.ndarray]:
    """Run the prompts (left-padded to one length) into a fresh cache of max_len positions; `panels`:
    through the weights' column panels (model.forward), for a decode that uses them anyway.

    Returns the cache and the logits of every prompt's last token [B, V].
    """
    T = max(len(p) for p in prompts)
    ids = np.full((len(prompts), T), PAD_ID, dtype=np.int64)  # [B, T]
    mask = np.zeros((len(prompts), T), dtype=bool)             # [B, T], True = real token
    for b, p in enumerate(prompts):
        if len(p):
            ids[b, T - len(p):] = p
            mask[b, T - len(p):] = True
    cache = KVCache.allocate(config, len(prompts), max(max_len, T))
    logits = forward(params, config, ids, cache=cache, attention_mask=mask, panels=panels)  # [B, T] -> [B, V]
    return cache, logits


def decode_steps(params: Params, config: GPTConfig, prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int, sampling: SamplingOptions, rngs: Sequence[np.random.Generator] | None,
                 num_return_sequences: int = 1, sliding_window: bool = False, window_stride: int | None = None,
                 progress: Progress | None = None, speculative: Speculation | None = None) -> Iterator["Step"]:
    """Generate token by token; a generator speaking a small protocol:

    each step yields Step(sequences [A], tokens [A], logits [A, V]): the indices of the A running sequences
    (prompt-major: sequence i*n + j is sample j of prompt i), the token each just got, and the raw logits it
    was chosen from (for log-probabilities; valid until the next step); the caller may `send` back
    the sequence indices that should stop now (or None). It ends after max_new_tokens steps or when
    no sequence runs. Prompts must be non-empty; `rngs` has one generator per sequence (None if greedy).

    speculative: draft and verify several tokens per forward (numgpt/speculative.py). The protocol is
    the same -- one Step per token position, so a forward that kept 3 tokens of a row yields 3 Steps (a
    Step then holds the rows that got a token at that position); a sequence stopped at one of them gets
    no more. `speculative.stats` receives one SpeculativeStats per sequence.
    """
    if any(len(p) == 0 for p in prompts):
        raise NumgptError("a prompt is empty: give at least one token (e.g. <|endoftext|>)")
    n = num_return_sequences
    if max_new_tokens == 0:
        return
    if sliding_window:
        if speculative is not None:
            raise NumgptError("speculative decoding cannot be combined with sliding_window=True (its re-prefill "
                              "would have to replay the drafts): drop one of them")
        keep = window_size(config, window_stride)
        prompts = [p if len(p) <= config.n_positions else p[-keep:] for p in prompts]
        max_len = config.n_positions
    else:
        check_room(config, max(len(p) for p in prompts), max_new_tokens)
        max_len = max(len(p) for p in prompts) + max_new_tokens - 1  # the last new token is never fed
    sequences = [list(map(int, p)) for p in prompts for _ in range(n)]  # prompt + generated, per sequence
    if speculative is not None:
        max_len += speculative.num_draft        # room for a batch's rejected drafts before a compaction
        speculative.stats[:] = [SpeculativeStats(forwards=1) for _ in sequences]   # the prefill's forward
        speculative.start(sequences)
    # the panels (a copy of the decode matrices, panels.py) speed a short prompt's prefill ~1.15-1.3x, but
    # a plain batch-1 decode never multiplies more than one row: it is not worth doubling its memory for
    panels = speculative is not None or len(sequences) > 1
    cache, logits = prefill(params, config, prompts, max_len=max_len, panels=panels)   # each prompt once
    if n > 1:
        rows = np.repeat(np.arange(len(prompts)), n)                      # [B] -> [N]
        cache, logits = cache.select(rows), logits[rows]
    starts = [len(s) for s in sequences]                                  # where each completion begins
    counts = np.zeros(len(sequences), dtype=np.int64)                     # tokens generated, per sequence
    running = np.arange(len(sequences))
    while True:
        rngs_now = None if rngs is None else [rngs[i] for i in running]
        if speculative is None or not counts.any():                       # a plain step (and the first token)
            previous = [sequences[i] for i in running] if sampling.repetition_penalty != 1.0 else None
            generated = [sequences[i][starts[i]:] for i in running] if sampling.penalises_generated else None
            check_finite_logits(logits, params)
            tokens = next_tokens(logits, sampling, rngs_now, previous=previous, generated=generated)  # [A, V] -> [A]
            chosen, round_logits = tokens[:, None], logits[:, None]       # [A, 1], [A, 1, V]
        else:                                                             # draft, verify in one forward
            caps = [int(min(speculative.num_draft, max_new_tokens - counts[i] - 1)) for i in running]
            lists, round_logits = verify_round(params, config, cache, speculative, [sequences[i] for i in running],
                                               [starts[i] for i in running], caps, sampling, rngs_now,
                                               [speculative.stats[i] for i in running])
            chosen = [np.asarray(c, dtype=np.int64) for c in lists]
        stopped: set[int] = set()
        for j in range(max(len(c) for c in chosen)):                      # one Step per token position
            here = np.asarray([r for r in range(len(running)) if len(chosen[r]) > j
                               and running[r] not in stopped], dtype=np.intp)
            if len(here) == 0:
                break
            tokens = np.asarray([chosen[r][j] for r in here], dtype=np.int64)   # [A_j]
            for r, t in zip(here, tokens):
                sequences[running[r]].append(int(t))
                if speculative is not None:
                    speculative.stats[running[r]].count_output(j, len(chosen[r]))
            counts[running[here]] += 1
            step_logits = round_logits[:, j] if len(here) == len(running) else round_logits[here, j]  # [A_j, V]
            stopped.update(int(i) for i in ((yield Step(running[here], tokens, step_logits)) or ()))
            if progress is not None:
                progress(int(counts.max()), max_new_tokens)
        go_on = ~np.isin(running, np.asarray(list(stopped), dtype=np.int64)) & (counts[running] < max_new_tokens)
        if not go_on.any():
            return
        if not go_on.all():
            cache, running = cache.select(np.flatnonzero(go_on)), running[go_on]
            if speculative is not None:
                speculative.select(np.flatnonzero(go_on))
        if speculative is not None:
            continue                                                      # the next round feeds the pending tokens
        tokens = np.asarray([sequences[i][-1] for i in running], dtype=np.int64)  # [A]
        if cache.length == cache.max_len:  # only with a sliding window: keep the last tokens, re-prefill
            cache, logits = prefill(params, config, [sequences[i][-keep:] for i in running], max_len=max_len,
                                    panels=panels)
        else:
            logits = forward(params, config, tokens[:, None], cache=cache, panels=True)  # [A, 1] -> [A, V]


class Step(NamedTuple):
    """One decode step: which sequences ran, the token each got, the raw logits they came from."""

    sequences: np.ndarray  # [A] int
    tokens: np.ndarray     # [A] int64
    logits: np.ndarray     # [A, V] float32


# a decode step's memory beyond the KV cache, per sequence (tracemalloc, the built-in and chat models at 2,000-8,000
# samples: 19-63 kB a row besides the cache, 4.6-7.7 [V] float32 arrays): the logits and the sampler's copies of
# them, and the row's generator, finisher and lists (~0.9 kB for the generator alone)
LOGIT_COPIES = 8
ROW_BYTES = 4096


def check_batch_fits(config: GPTConfig, rows: int, positions: int) -> None:
    """Refuse, before anything is allocated, a batch of `rows` sequences of up to `positions` positions whose
    cache and per-step arrays the machine cannot hold (the cache alone was checked: 100,000 samples of a few
    tokens grew without bound in their per-row state)."""
    positions = min(positions, config.n_positions)
    need = cache_bytes((config.n_layer, rows, config.n_head, positions, config.head_size)) + \
        rows * (LOGIT_COPIES * 4 * config.vocab_size + ROW_BYTES)
    check_fits(need, f"{rows:,} sequences of {positions} positions (their keys, values and logits)",
               "fewer sequences (num_return_sequences) or fewer new tokens")


def generate_ids(params: Params, config: GPTConfig, prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int, sampling: SamplingOptions, seed: int | None = None,
                 num_return_sequences: int = 1, stop_ids: Sequence[int] = (), sliding_window: bool = False,
                 window_stride: int | None = None, speculative: Speculation | None = None) -> list[list[int]]:
    """The new token ids of every sequence (prompt-major), without text: stops only at `stop_ids`
    (which are included). The ids-level twin of `generate_completions`; LanguageModel.generate_ids.
    speculative: see decode_steps."""
    check_batch_fits(config, len(prompts) * num_return_sequences, max(map(len, prompts)) + max_new_tokens)
    rngs = None if sampling.greedy else sequence_rngs(len(prompts), num_return_sequences, seed)
    out: list[list[int]] = [[] for _ in range(len(prompts) * num_return_sequences)]
    steps = decode_steps(params, config, prompts, max_new_tokens=max_new_tokens, sampling=sampling, rngs=rngs,
                         num_return_sequences=num_return_sequences, sliding_window=sliding_window,
                         window_stride=window_stride, speculative=speculative)
    stopped = None
    while True:
        try:
            running, tokens, _ = steps.send(stopped)
        except StopIteration:
            return out
        for i, t in zip(running, tokens):
            out[i].append(int(t))
        stopped = [i for i, t in zip(running, tokens) if int(t) in stop_ids]


# ---------------------------------------------------------------------------------------------------
# text level


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt text -> ids; an empty prompt starts from <|endoftext|>, as GPT-2's unconditional samples.
    Special tokens written in the prompt are allowed (a document boundary is a normal thing to prompt)."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    if ids:
        return ids
    if tokenizer.eot_id is None:
        raise NumgptError("the prompt is empty and the tokenizer has no <|endoftext|> to start from; "
                          "give a prompt")
    return [tokenizer.eot_id]


def stream_completions(params: Params, config: GPTConfig, tokenizer, prompts: Sequence[str | Sequence[int]],
                       options: GenerationOptions, *, progress: Progress | None = None,
                       completions: list[Completion] | None = None,
                       cancel: Callable[[], bool] | None = None,
                       draft: tuple[Params, GPTConfig] | None = None) -> Iterator[Piece]:
    """Yield a Piece per sequence per step as text becomes final; the texts of one sequence concatenate to
    its completion. Sequence i*n + j is sample j of prompt i; a prompt is text or a list of token ids.
    If `completions` is a list, the finished Completion objects are appended to it (in sequence order)
    when the generator ends. `cancel()` is asked between steps (see the module docstring). `draft`: the
    draft model's (params, config) for options.speculative='draft'."""
    prompt_ids = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    n = options.num_return_sequences
    check_batch_fits(config, len(prompts) * n, max(map(len, prompt_ids)) + options.max_new_tokens)
    rngs = None if options.sampling.greedy else sequence_rngs(len(prompts), n, options.seed)
    eos = tokenizer.eot_id if options.stop_at_eos else None
    finishers = [Finisher(tokenizer.stream_decoder(), max_new_tokens=options.max_new_tokens, stop=options.stop,
                          eos_id=eos) for _ in range(len(prompts) * n)]
    token_ids: list[list[int]] = [[] for _ in finishers]
    logprobs: list[list[TokenLogprob]] = [[] for _ in finishers]
    spec = options_speculation(options, config, draft)
    steps = decode_steps(params, config, prompt_ids, max_new_tokens=options.max_new_tokens,
                         sampling=options.sampling, rngs=rngs, num_return_sequences=n,
                         sliding_window=options.sliding_window, window_stride=options.window_stride,
                         progress=progress, speculative=spec)
    stopped = None
    while True:
        if cancel is not None and cancel():
            steps.close()
            for f in finishers:
                f.poll(cancelled=True)
            break
        try:
            running, tokens, logits = steps.send(stopped)
        except StopIteration:
            break
        chosen = (token_logprob_rows(logits, tokens, options.logprobs) if options.logprobs
                  else [None] * len(tokens))
        stopped = []
        for i, t, lp in zip(running.tolist(), tokens.tolist(), chosen):
            f = finishers[i]
            constraint = options.sampling.constraint
            whole = constraint is not None and constraint.completed_by(token_ids[i], t)   # structured: done
            if f.add(t, whole=whole):
                token_ids[i].append(t)
                if lp is not None:
                    logprobs[i].append(lp)
            else:
                lp = None                                   # the end-of-text token is not reported
            if f.reason is not None:
                stopped.append(i)
            yield Piece(i, f.release(), lp)
    for i, f in enumerate(finishers):
        f.end("length")                                     # no-op: every sequence has its reason by now
        piece = f.release()
        if piece:
            yield Piece(i, piece, None)
    if completions is not None:
        completions.extend(Completion(text=f.text, token_ids=ids, finish_reason=f.reason, prompt_index=i // n,
                                      logprobs=lps if options.logprobs else None,
                                      speculative=spec.stats[i] if spec is not None and spec.stats else None)
                           for i, (f, ids, lps) in enumerate(zip(finishers, token_ids, logprobs)))


def generate_completions(params: Params, config: GPTConfig, tokenizer, prompts: Sequence[str | Sequence[int]],
                         options: GenerationOptions, *, progress: Progress | None = None,
                         cancel: Callable[[], bool] | None = None,
                         draft: tuple[Params, GPTConfig] | None = None) -> list[Completion]:
    """Every sequence's Completion (prompt-major: sample j of prompt i at index i*n + j)."""
    completions: list[Completion] = []
    for _ in stream_completions(params, config, tokenizer, prompts, options, progress=progress,
                                completions=completions, cancel=cancel, draft=draft):
        pass
    return completions
