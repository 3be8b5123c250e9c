"""Speculative decoding: draft a few tokens cheaply, let the model verify them all in one forward.

A stage of generate.decode_steps (not a loop of its own). Each round, for every running sequence:

    1. a drafter proposes up to K tokens d_1..d_n (n <= K, as far as the row's drafts have held lately:
       `DraftLengths`), each with its distribution q_i;
    2. the target model runs [pending, d_1..d_n] through its KV cache in ONE forward of n+1 rows
       (all_logits=True): the logits at row j are what plain decoding would see after d_1..d_j;
    3. position by position, the sampler's rules turn row j's logits into the processed distribution p_j
       (logit bias, penalties with the history up to that position, temperature, top-k, top-p, min-p),
       and `accept_or_resample` keeps d_{j+1} or replaces it and ends the round; if all n are kept, one
       more token is drawn from p_n -- so a round gives 1..n+1 tokens for one target forward;
    4. the cache is rolled back past the rejected drafts (kvcache.KVCache.truncate; in a batch, rows that
       kept fewer get holes in the mask).

The acceptance rule (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding";
Chen et al. 2023): keep x ~ q with probability min(1, p(x)/q(x)), else draw from norm(max(0, p - q)).
The token kept at each position is then distributed exactly as p, whatever q is. Greedy: keep x iff it is
argmax p, else take argmax p -- the tokens of plain greedy decoding. Both drafters:

- prompt lookup (`PromptLookup`, "ngram"; Saxena 2023, transformers' prompt_lookup_num_tokens): find an
  earlier occurrence of the longest suffix (MAX_NGRAM down to MIN_NGRAM tokens: the last 3, as measured)
  of prompt + output and copy the K tokens that followed it (`ngram_draft` says which occurrence). No
  second model; q is a point mass, so x is kept with probability p(x), else a token is drawn from p
  with x removed.
- a draft model (`DraftModel`, "draft"): a smaller GPT-2 with the same vocabulary and its own KV cache
  drafts K tokens one by one from its processed distribution q (argmax when greedy).

Statistics per sequence (`SpeculativeStats`): tokens drafted, accepted, target forwards (the prefill
counts as one: plain decoding makes one token per forward) and tokens generated.

Shape legend: A running rows, K drafted tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import GPTConfig
from .errors import NumgptError, whole_number
from .kvcache import KVCache
from .model import check_finite_logits, forward
from .ops import softmax
from .params import Params
from .sampling import SamplingOptions, process_logits

METHODS = ("ngram", "draft")     # what --speculative takes
MAX_NGRAM = 3                    # prompt lookup: the longest suffix it matches (transformers' default is 3 too)
# ... and the shortest it drafts from (vLLM's prompt_lookup_min). Measured on the quote case (BENCHMARKS.md,
# "Prompt lookup drafts only from a 3-token match"): where the last 3 tokens occurred before, a draft of 8
# kept 6.3 tokens on average and none in 5% of positions; where only 1 or 2 did, 1.6-2.4 and none in half.
# A draft that fails still costs a verification of its rows, several times a one-row step on small models.
MIN_NGRAM = 3
# A draft model stops drafting a row where its most likely token has less than this probability (after the
# sampler's rules): a draft it doubts is likely rejected, and costs its draft step and a verification row.
# Measured on the quote case (BENCHMARKS.md, the same section). 0 drafts every token the row's length allows.
DRAFT_CONFIDENCE = 0.5
PAD_ID = 0                       # the id written where a row drafted fewer tokens than the batch; masked


@dataclass
class SpeculativeStats:
    """What speculation did for one sequence."""

    drafted: int = 0     # draft tokens proposed to the target
    accepted: int = 0    # of those, kept and output (not the ones after a stop string met inside them)
    forwards: int = 0    # target forwards this sequence took part in, the prefill included
    tokens: int = 0      # tokens decoded into the text: the end token and a stop string's last one included
                         # (forwards + accepted, less one where a stop string ended the text inside a round)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / self.forwards if self.forwards else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"drafted": self.drafted, "accepted": self.accepted, "acceptance_rate": round(self.acceptance_rate, 4),
                "target_forwards": self.forwards, "tokens": self.tokens,
                "tokens_per_forward": round(self.tokens_per_forward, 4)}

    def count_output(self, j: int, n: int) -> None:
        """Token j of a round that kept n tokens was output: the last of a round is the target's own, the ones
        before it kept drafts. Counted as output, so drafts after a stop string met inside them are not."""
        self.tokens += 1
        self.accepted += int(j < n - 1)

    def add(self, other: "SpeculativeStats") -> None:
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.forwards += other.forwards
        self.tokens += other.tokens


def check_num_draft(num_draft: int, config: GPTConfig) -> int:
    """num_draft must be 1 .. n_positions - 1 (a verification forward is num_draft + 1 rows)."""
    whole_number("num_draft", num_draft, minimum=1, extra=" (tokens drafted per target forward)")
    if num_draft >= config.n_positions:
        raise NumgptError(f"num_draft must be below the model's context of n_positions={config.n_positions}, "
                          f"got {num_draft}")
    return num_draft


# ---------------------------------------------------------------------------------------------------
# drafters


def ngram_draft(tokens: Sequence[int], k: int, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM
                ) -> list[int]:
    """Prompt lookup: the up to k tokens that followed an earlier occurrence of the longest suffix
    (max_ngram down to min_ngram tokens) of `tokens` -- the latest occurrence followed by k tokens, else the
    earliest one (the most tokens to copy; the latest match in a repeating text is right behind the
    suffix, with one token after it); [] when no such suffix occurred before. The plain loop version;
    `ngram_draft_fast` is its twin."""
    T = len(tokens)
    for n in range(min(max_ngram, T - 1), min_ngram - 1, -1):
        suffix = list(tokens[T - n:])
        starts = [s for s in range(T - n) if list(tokens[s:s + n]) == suffix]   # not the suffix itself
        if starts:
            full = [s for s in starts if s + n + k <= T]
            start = (full[-1] if full else starts[0]) + n
            return list(tokens[start:start + k])
    return []


def ngram_draft_fast(tokens: np.ndarray, k: int, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM
                     ) -> list[int]:
    """ngram_draft with one vectorised comparison for the last token, then each longer suffix only checked
    where the shorter one matched (a match of n tokens ends where one of n-1 does). [T] -> <= k ids"""
    tokens = np.asarray(tokens)
    T = len(tokens)
    ends = np.flatnonzero(tokens[:T - 1] == tokens[T - 1])   # [m] where the last token occurred before
    if T < 2 or not len(ends):
        return []
    n = 1
    for m in range(2, min(max_ngram, T - 1) + 1):
        longer = ends[ends >= m - 1]
        longer = longer[tokens[longer - (m - 1)] == tokens[T - m]]     # the m-gram ending there matches too
        if not len(longer):
            break
        ends, n = longer, m
    if n < min_ngram:
        return []
    starts = ends - n + 1                                    # [m] starts of the longest suffix's occurrences
    full = starts[starts + n + k <= T]
    start = int(full[-1] if len(full) else starts[0]) + n
    return [int(t) for t in tokens[start:start + k]]


class DraftLengths:
    """How far each row drafts next round, adapted to how far its drafts have held lately (either drafter;
    kept by `Speculation`, applied by `verify_round`).

    A round whose drafts were all kept doubles the row's next draft, up to num_draft; a round that rejected
    one drafts one more than it kept (`next_draft_length`). A wrong draft costs target rows (K + 1 for one
    token) and, with a draft model, draft forwards; the output is the same either way, only the work
    changes. `adaptive=False` drafts the caps every round (num_draft, or fewer near max_new_tokens)."""

    def __init__(self, num_draft: int, adaptive: bool = True):
        self.num_draft, self.adaptive = num_draft, adaptive
        self.limits = np.zeros(0, dtype=np.int64)        # [A] the most each row drafts next round

    def start(self, rows: int) -> None:
        self.limits = np.full(rows, self.num_draft, dtype=np.int64)

    def caps(self, caps: Sequence[int]) -> list[int]:
        """The callers' caps, lowered to each row's limit."""
        return [int(min(c, n)) for c, n in zip(caps, self.limits)] if self.adaptive else list(caps)

    def update(self, drafted: Sequence[int], kept: Sequence[int]) -> None:
        self.limits = np.array([min(next_draft_length(d, k, int(n)), self.num_draft)
                                for d, k, n in zip(drafted, kept, self.limits)], dtype=np.int64)

    def select(self, rows: np.ndarray) -> None:
        self.limits = self.limits[rows]


def next_draft_length(drafted: int, kept: int, current: int) -> int:
    """The most a row drafts next round, from this round: all kept -> twice as many (DraftLengths caps it
    at num_draft); one rejected -> one more than were kept; nothing drafted -> unchanged."""
    if drafted == 0:
        return current
    return 2 * drafted if kept == drafted else kept + 1


class PromptLookup:
    """Drafts by copying from the text so far (see the module docstring); stateless, q is a point mass.
    min_ngram: the shortest suffix match it drafts from (MIN_NGRAM)."""

    name = "ngram"

    def __init__(self, min_ngram: int = MIN_NGRAM):
        self.min_ngram = min_ngram

    def start(self, sequences: Sequence[Sequence[int]]) -> None:
        pass

    def propose(self, sequences: Sequence[list[int]], starts: Sequence[int], caps: Sequence[int],
                sampling: SamplingOptions, rngs: Sequence[np.random.Generator] | None
                ) -> tuple[list[list[int]], list[np.ndarray | None]]:
        """Each row's drafts (at most caps[a]) and their q (None: a point mass on each draft)."""
        drafts = [ngram_draft_fast(np.asarray(s), c, min_ngram=self.min_ngram) if c > 0 else []
                  for s, c in zip(sequences, caps)]
        return drafts, [None] * len(drafts)

    def accepted(self, kept: Sequence[int]) -> None:
        pass

    def select(self, rows: np.ndarray) -> None:
        pass


class DraftModel:
    """Drafts with a smaller model of the same vocabulary, with its own KV cache over every sequence.

    `fed[a]` is how many of row a's tokens are in the draft cache; a round first feeds the rest (the
    pending token, and the last draft when all were kept), then drafts one token per forward, a row
    stopping where the draft's most likely token has a probability below min_confidence (DRAFT_CONFIDENCE).
    subtle: the stop may depend on the draft's distribution at a position, not on the token drawn there --
    stopping at a drawn token x of small q(x) would propose x from q cut to its likely tokens while the
    acceptance rule divides by q(x), and the output would no longer be distributed as the target's (the
    chi-square test catches it).
    """

    name = "draft"

    def __init__(self, params: Params, config: GPTConfig, target: GPTConfig, *, headroom: int, num_draft: int,
                 min_confidence: float = DRAFT_CONFIDENCE):
        if config.vocab_size != target.vocab_size:
            raise NumgptError(f"the draft model's vocabulary has {config.vocab_size} tokens and the model's "
                              f"{target.vocab_size}: a draft model must share the tokenizer")
        self.params, self.config, self.headroom, self.num_draft = params, config, headroom, num_draft
        self.min_confidence = min_confidence
        self.cache: KVCache | None = None
        self.fed = np.zeros(0, dtype=np.int64)
        self.round: tuple[int, np.ndarray] | None = None    # (cache length before the fed drafts, rows' lengths)

    def start(self, sequences: Sequence[Sequence[int]]) -> None:
        """Prefill the prompts (one row per sequence, left-padded)."""
        longest = max(len(s) for s in sequences)
        if longest + self.headroom > self.config.n_positions:
            raise NumgptError(f"the draft model's context (n_positions={self.config.n_positions}) is shorter "
                              f"than prompt + max_new_tokens = {longest + self.headroom}; use a draft model "
                              "with a longer context or ask for fewer tokens")
        T = longest
        ids = np.full((len(sequences), T), PAD_ID, dtype=np.int64)      # [A, T]
        mask = np.zeros((len(sequences), T), dtype=bool)
        for a, s in enumerate(sequences):
            ids[a, T - len(s):], mask[a, T - len(s):] = s, True
        self.cache = KVCache.allocate(self.config, len(sequences), T + self.headroom + 2 * self.num_draft + 2)
        forward(self.params, self.config, ids, cache=self.cache, attention_mask=mask)
        self.fed = np.array([len(s) for s in sequences], dtype=np.int64)

    def propose(self, sequences: Sequence[list[int]], starts: Sequence[int], caps: Sequence[int],
                sampling: SamplingOptions, rngs: Sequence[np.random.Generator] | None
                ) -> tuple[list[list[int]], list[np.ndarray | None]]:
        """Each row's drafts (at most caps[a]) and q, their processed probabilities [n_a, V] (None if greedy)."""
        A, k, caps = len(sequences), max(caps), list(caps)      # caps: lowered where a row stops early
        drafts: list[list[int]] = [[] for _ in range(A)]
        qs: list[list[np.ndarray]] = [[] for _ in range(A)]
        if k == 0:
            self.round = None
            return drafts, [None] * A
        missing = [s[f:] for s, f in zip(sequences, self.fed)]          # >= 1 token each: the pending one
        T = max(len(m) for m in missing)
        self._room(T + k - 1)
        past = self.cache.length
        ids = np.full((A, T), PAD_ID, dtype=np.int64)                   # [A, T], right-aligned
        mask = np.concatenate([self.cache.mask[:, :past], np.zeros((A, T), bool)], axis=1)  # [A, past+T]
        for a, m in enumerate(missing):
            ids[a, T - len(m):] = m
            mask[a, past + T - len(m):] = True
        logits = forward(self.params, self.config, ids, cache=self.cache, panels=True,
                         attention_mask=None if mask.all() else mask)  # [A, V]; no padding: the cache's own mask
        start = self.cache.length
        history = sampling.reads_history
        for j in range(k):
            check_finite_logits(logits, self.params)
            previous = [s + d for s, d in zip(sequences, drafts)] if history else None   # (copies: only when read)
            generated = [p[b:] for p, b in zip(previous, starts)] if history else None
            processed = process_logits(logits, sampling, previous=previous, generated=generated)  # [A, V]
            if sampling.greedy:
                tokens = np.argmax(processed, axis=-1)                  # [A]
                confidence = top_probability(processed) if self.min_confidence > 0 else None   # [A]
            else:
                probs = softmax(processed.astype(np.float64))          # [A, V]
                tokens = np.array([draw(p, rng) if j < c else PAD_ID       # a row draws only its own drafts
                                   for p, rng, c in zip(probs, rngs, caps)])
                confidence = probs.max(axis=-1)                         # [A] (not q of the drawn token: below)
            for a in range(A):
                if j < caps[a] and confidence is not None and confidence[a] < self.min_confidence:
                    caps[a] = j                                        # a doubtful draft: this row stops here
                if j < caps[a]:
                    drafts[a].append(int(tokens[a]))
                    if not sampling.greedy:
                        qs[a].append(probs[a])
            if all(c <= j + 1 for c in caps):
                break                                                  # no row drafts on
            if j < k - 1:   # a row past its own cap feeds a masked hole, so its positions stay in the context
                mask = None                                            # every row drafts on: the cache's own mask
                if any(j >= c for c in caps):
                    fed = np.asarray([j < c for c in caps])[:, None]   # [A, 1]
                    mask = np.concatenate([self.cache.mask[:, :self.cache.length], fed], axis=1)
                logits = forward(self.params, self.config, tokens[:, None], cache=self.cache,
                                 attention_mask=mask, panels=True)     # [A, 1] -> [A, V]
        self.round = (start, np.array([len(s) for s in sequences], dtype=np.int64))
        return drafts, [np.stack(q) if q else None for q in qs]

    def accepted(self, kept: Sequence[int]) -> None:
        """Roll the draft cache back to each row's kept drafts (the last draft was never fed)."""
        if self.round is None:
            return
        start, lengths = self.round
        keep = np.minimum(np.asarray(kept, dtype=np.int64), self.cache.length - start)   # [A]
        for a, n in enumerate(keep):
            self.cache.mask[a, start + n:self.cache.length] = False
        self.cache.truncate(start + int(keep.max(initial=0)))
        self.fed = lengths + keep
        self.round = None

    def select(self, rows: np.ndarray) -> None:
        self.cache = self.cache.select(rows)
        self.fed = self.fed[rows]

    def _room(self, t: int) -> None:
        if self.cache.length + t > self.cache.max_len:
            self.cache.compact()


def top_probability(logits: np.ndarray) -> np.ndarray:
    """The softmax probability of each row's largest logit, 1 / sum(exp(x - max)). [A, V] -> [A]"""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    with np.errstate(under="ignore"):
        return 1.0 / np.exp(shifted, dtype=np.float64).sum(axis=-1)


Drafter = PromptLookup | DraftModel


@dataclass
class Speculation:
    """What decode_steps needs to speculate: the drafter, K, how far each row drafts (`DraftLengths`), and
    where to count (one entry per sequence, filled in by decode_steps)."""

    drafter: Drafter
    lengths: DraftLengths
    stats: list[SpeculativeStats] = field(default_factory=list)

    @property
    def num_draft(self) -> int:
        """K: the most tokens a row drafts in a round."""
        return self.lengths.num_draft

    def start(self, sequences: Sequence[Sequence[int]]) -> None:
        """Before the first round: the drafter sees the prompts, every row may draft num_draft."""
        self.drafter.start(sequences)
        self.lengths.start(len(sequences))

    def select(self, rows: np.ndarray) -> None:
        """Keep only these running rows (the others finished)."""
        self.drafter.select(rows)
        self.lengths.select(rows)


def speculation(method: str, num_draft: int, config: GPTConfig, *, draft: tuple[Params, GPTConfig] | None = None,
                headroom: int = 0, adaptive: bool = True, min_ngram: int = MIN_NGRAM,
                draft_confidence: float = DRAFT_CONFIDENCE) -> Speculation:
    """A checked Speculation: method 'ngram' or 'draft' (then `draft` is the draft model's params and
    config; headroom: prompt + max_new_tokens it must hold). adaptive: each row's draft length follows
    its recent acceptance (`DraftLengths`); False drafts num_draft every round. min_ngram: prompt
    lookup's shortest suffix match (1..MAX_NGRAM). draft_confidence: the draft model's DRAFT_CONFIDENCE."""
    if method not in METHODS:
        raise NumgptError(f"speculative must be one of {', '.join(METHODS)}, got {method!r}")
    check_num_draft(num_draft, config)
    if method == "ngram":
        if draft is not None:
            raise NumgptError("a draft model applies only with speculative='draft'")
        if min_ngram not in range(1, MAX_NGRAM + 1):
            raise NumgptError(f"min_ngram must be 1 .. {MAX_NGRAM}, got {min_ngram!r}")
        return Speculation(PromptLookup(min_ngram), DraftLengths(num_draft, adaptive))
    if draft is None:
        raise NumgptError("speculative='draft' needs a draft model (draft_model=..., --draft-model M)")
    if not 0.0 <= draft_confidence < 1.0:
        raise NumgptError(f"draft_confidence must be in [0, 1), got {draft_confidence!r}")
    return Speculation(DraftModel(draft[0], draft[1], config, headroom=headroom, num_draft=num_draft,
                                  min_confidence=draft_confidence),
                       DraftLengths(num_draft, adaptive))


# ---------------------------------------------------------------------------------------------------
# verification


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token from a probability vector [V] (float64, sums to > 0) by the inverse CDF, one uniform."""
    cdf = np.cumsum(probs)                                              # [V]
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return i if i < len(cdf) else int(np.flatnonzero(probs > 0)[-1])


def accept_or_resample(p: np.ndarray, q: np.ndarray | None, x: int, rng: np.random.Generator) -> tuple[int, bool]:
    """The speculative sampling rule at one position: (the token, whether it is the draft x).

    p: the target's processed probabilities [V]; q: the draft's [V], or None for a point mass on x.
    Keep x with probability min(1, p(x) / q(x)); else draw from max(0, p - q), normalised. The result
    is distributed as p (the module docstring's references)."""
    qx = 1.0 if q is None else float(q[x])
    if rng.random() * qx < p[x]:                                        # u < p(x)/q(x), without dividing
        return x, True
    residual = p.copy()
    if q is None:
        residual[x] = 0.0
    else:
        residual = np.maximum(residual - q, 0.0)
    if residual.sum() <= 0.0:           # p == q up to rounding: x was kept with probability ~1; take it
        return x, True
    return draw(residual, rng), False


def verify(logits: np.ndarray, drafts: Sequence[list[int]], qs: Sequence[np.ndarray | None],
           sequences: Sequence[list[int]], starts: Sequence[int], sampling: SamplingOptions,
           rngs: Sequence[np.random.Generator] | None, params: Params) -> list[list[int]]:
    """Each row's tokens for this round (the kept drafts, then one corrected or extra token).

    logits [A, T, V]: row a's position j follows its pending token and drafts[a][:j]. Position j's
    logits are processed with that row's history up to there (penalties see the drafts before j); with
    no penalty, no rule reads the history, and every position is processed in one call.
    """
    A = len(drafts)
    out: list[list[int]] = [[] for _ in range(A)]
    all_greedy = all_probs = None
    history_free = not sampling.reads_history
    if history_free:                                   # no rule reads the history: every position in one call
        check_finite_logits(logits, params)
        processed = process_logits(logits.reshape(-1, logits.shape[-1]), sampling).reshape(logits.shape)  # [A, T, V]
        if sampling.greedy:
            all_greedy = np.argmax(processed, axis=-1)                  # [A, T]
        else:
            all_probs = softmax(processed.astype(np.float64))          # [A, T, V]
    alive = list(range(A))                                              # rows whose drafts so far were kept
    j = 0
    while alive:
        rows = np.asarray(alive)
        if history_free:
            greedy = None if all_greedy is None else all_greedy[rows, j]
            probs = None if all_probs is None else all_probs[rows, j]
        else:
            check_finite_logits(logits[rows, j], params)
            previous = [sequences[a] + drafts[a][:j] for a in alive]
            generated = [p[starts[a]:] for a, p in zip(alive, previous)]
            processed = process_logits(logits[rows, j], sampling, previous=previous, generated=generated)  # [A_j, V]
            greedy = np.argmax(processed, axis=-1) if sampling.greedy else None
            probs = None if sampling.greedy else softmax(processed.astype(np.float64))
        still = []
        for r, a in enumerate(alive):
            drafted = j < len(drafts[a])
            if sampling.greedy:
                token = int(greedy[r])
                kept = drafted and token == drafts[a][j]
            elif drafted:
                token, kept = accept_or_resample(probs[r], None if qs[a] is None else qs[a][j], drafts[a][j], rngs[a])
            else:
                token, kept = draw(probs[r], rngs[a]), False
            out[a].append(token)
            if kept:
                still.append(a)
        alive, j = still, j + 1
    return out


def verify_round(params: Params, config: GPTConfig, cache: KVCache, spec: Speculation, sequences: Sequence[list[int]],
                 starts: Sequence[int], caps: Sequence[int], sampling: SamplingOptions,
                 rngs: Sequence[np.random.Generator] | None, stats: Sequence[SpeculativeStats]
                 ) -> tuple[list[list[int]], np.ndarray]:
    """One speculative round over the running rows: draft, verify in one forward, roll the cache back.

    sequences[a] is row a's prompt + generated tokens, its last one (pending) not yet in `cache`; row a
    drafts at most caps[a] tokens, fewer when its recent drafts failed (spec.lengths). Returns each row's
    new tokens (1..caps[a]+1) and the raw logits they were chosen from [A, T, V] (row a's token j from
    logits[a, j]).
    """
    drafts, qs = spec.drafter.propose(sequences, starts, spec.lengths.caps(caps), sampling, rngs)
    A, T = len(sequences), 1 + max(len(d) for d in drafts)
    if cache.length + T > cache.max_len:         # only in a batch, where rejected drafts left holes
        cache.compact()
    past = cache.length
    ids = np.full((A, T), PAD_ID, dtype=np.int64)                      # [A, T]: pending, drafts, padding
    for a, (s, d) in enumerate(zip(sequences, drafts)):
        ids[a, :1 + len(d)] = [s[-1], *d]
    mask = None
    if any(len(d) + 1 < T for d in drafts):   # a row that drafted fewer: its padding is masked
        mask = np.concatenate([cache.mask[:, :past], np.arange(T)[None] <= np.array([len(d) for d in drafts])[:, None]],
                              axis=1)                                   # [A, past + T]
    logits = forward(params, config, ids, cache=cache, attention_mask=mask, all_logits=True, panels=True)  # [A, T, V]
    chosen = verify(logits, drafts, qs, sequences, starts, sampling, rngs, params)
    kept = [len(c) - 1 for c in chosen]
    for a, k in enumerate(kept):
        cache.mask[a, past + 1 + k:cache.length] = False                # rejected drafts: holes (or cut below)
    cache.truncate(past + 1 + max(kept))
    spec.drafter.accepted(kept)
    spec.lengths.update([len(d) for d in drafts], kept)
    for s, d, k in zip(stats, drafts, kept):
        s.drafted, s.forwards = s.drafted + len(d), s.forwards + 1   # accepted: counted as output (count_output)
    return chosen, logits
