"""The token-level automaton: which of the model's tokens keep the text in a regular language.

A DFA (regex.py) reads bytes; the model writes tokens, each a string of bytes (GPT-2's byte-level BPE:
a token may hold half of a UTF-8 character, which is why everything here is bytes). For a DFA state s,
token t is allowed when reading t's bytes from s stays alive; the text may end (the end-of-text token is
allowed) only in an accepting state. Every DFA state can reach an accepting one (regex.trim), so as long
as the vocabulary holds every single byte (byte-level BPE does), a constrained generation never gets
stuck: it can always go on, and end.

Per state the allowed tokens and the state each leads to are computed when the state is first reached
and cached (lazily: a schema's automaton may have thousands of states a generation never visits).
One computation runs every token through the DFA at once: `TokenBytes` holds the vocabulary as a byte
matrix, and each byte position is one NumPy gather over the tokens still alive -- about the total length
of the vocabulary's tokens in element operations (~330k for GPT-2), not a Python loop per token.
`allowed_slow` is the obvious per-token loop beside it (the tests check that they agree).

Shapes: V vocabulary, L longest token in bytes, A tokens alive.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Collection, Sequence

import numpy as np

from ..errors import NumgptError
from .regex import DEAD, DFA

FILTERED = -np.inf     # a disallowed token's logit (sampling.FILTERED)


class TokenBytes:
    """A vocabulary's ordinary tokens as bytes, for the DFA walk: ids [n], lengths [n], bytes [n, L]
    (zero-padded). Special tokens (<|endoftext|>, a chat template's markers) are left out: they spell no
    text; the end tokens are handled apart."""

    def __init__(self, tokenizer, vocab_size: int | None = None):
        special = set(tokenizer.special_tokens.values())
        n = tokenizer.vocab_size if vocab_size is None else min(vocab_size, tokenizer.vocab_size)
        ids = [i for i in range(n) if i not in special]
        spelled = [tokenizer.token_bytes(i) for i in ids]
        self.ids = np.asarray(ids, dtype=np.int64)                       # [n]
        self.lengths = np.asarray([len(b) for b in spelled], dtype=np.int64)  # [n]
        L = int(self.lengths.max()) if len(spelled) else 0
        self.bytes = np.zeros((len(ids), L), dtype=np.uint8)             # [n, L]
        for k, b in enumerate(spelled):
            self.bytes[k, :len(b)] = np.frombuffer(b, dtype=np.uint8)
        self.columns = np.ascontiguousarray(self.bytes.T).astype(np.int64)  # [L, n]: byte j of every token, contiguous
        # the same, longest tokens first: the tokens with a byte j are a prefix, of length longer[j]
        self.by_length = np.argsort(-self.lengths, kind="stable")          # [n] positions into ids
        self.sorted_columns = np.ascontiguousarray(self.columns[:, self.by_length])  # [L, n]
        self.longer = (self.lengths[None, :] > np.arange(L)[:, None]).sum(axis=1)   # [L]
        self.spelled = spelled
        self.vocab_size = n


_VOCABULARIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_VOCABULARIES_LOCK = threading.Lock()


def token_bytes_of(tokenizer, vocab_size: int | None = None) -> TokenBytes:
    """TokenBytes of a tokenizer, built once per tokenizer object (~0.1 s for GPT-2) and kept while it lives."""
    with _VOCABULARIES_LOCK:
        per = _VOCABULARIES.setdefault(tokenizer, {})
        if vocab_size not in per:
            per[vocab_size] = TokenBytes(tokenizer, vocab_size)
        return per[vocab_size]


class TokenAutomaton:
    """A DFA lifted to tokens: `allowed(state)` -> (token ids, next states), cached per state.

    end_ids: the tokens that end the text (end-of-text, a chat model's end of turn): allowed exactly in
    accepting states. A token state FINISHED follows one of them (only end tokens again). With no end
    token (a vocabulary without one, or stop_at_eos=False) a text ends when it is `complete`: accepted,
    and no token can follow (the decode loops check that); else at max_new_tokens.
    """

    FINISHED = -2

    def __init__(self, dfa: DFA, vocabulary: TokenBytes, end_ids: Collection[int]):
        self.dfa, self.vocabulary = dfa, vocabulary
        self.end_ids = np.asarray(sorted(set(int(i) for i in end_ids)), dtype=np.int64)
        S = dfa.n_states
        self._table = np.where(dfa.table >= 0, dfa.table, S).astype(np.int64)   # [S, 256], DEAD -> sink S
        self._table = np.vstack([self._table, np.full((1, 256), S, dtype=np.int64)])  # [S+1, 256]
        self._flat = (self._table * 256).reshape(-1)        # [(S+1) * 256]: next state * 256, indexed by state*256 + byte
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._steps: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()
        self.computed_states = 0          # states whose allowed sets are cached (what the benchmark reports)
        self.compute_seconds = 0.0        # time spent computing them

    # ---- one state's allowed tokens -----------------------------------------------------------------

    def allowed(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids [K] sorted, next states [K]) of the ordinary tokens allowed in `state`; cached."""
        got = self._cache.get(state)
        if got is None:
            start = time.perf_counter()
            got = self._compute(state)
            with self._lock:
                self._cache[state] = got
                self.computed_states = len(self._cache)
                self.compute_seconds += time.perf_counter() - start
        return got

    def _compute(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """Every token through the DFA from `state`, one byte position at a time over the live ones.
        States are carried as state * 256 so that a step is one gather from the flat table: [A] -> [A]."""
        v, sink = self.vocabulary, self.dfa.n_states * 256
        if not v.columns.shape[0]:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        first = self._flat[state * 256 + v.columns[0]]                 # [n]
        alive = np.flatnonzero(first != sink)                          # [A] indices into v.ids
        if len(alive) > len(first) // 4:
            return self._compute_dense(state)
        states = first[alive]                                          # [A]
        done_idx, done_states = [], []
        for j in range(1, v.columns.shape[0] + 1):
            ended = v.lengths[alive] == j                              # these tokens have no byte j
            done_idx.append(alive[ended])
            done_states.append(states[ended])
            alive, states = alive[~ended], states[~ended]
            if not len(alive):
                break
            states = self._flat[states + v.columns[j][alive]]          # [A] one gather per byte position
            keep = states != sink
            alive, states = alive[keep], states[keep]
        idx = np.concatenate(done_idx)                                 # ids ascending: v.ids is sorted
        order = np.argsort(idx, kind="stable")
        return v.ids[idx[order]], np.concatenate(done_states)[order] // 256

    def _compute_dense(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """_compute for a state that allows most tokens: no compaction, each byte position one gather over
        the tokens that long (a prefix, longest first); a dead token stays in the sink."""
        v, sink = self.vocabulary, self.dfa.n_states * 256
        states = np.full(len(v.ids), state * 256, dtype=np.int64)     # [n] in longest-first order
        for j in range(v.sorted_columns.shape[0]):
            k = v.longer[j]
            states[:k] = self._flat[states[:k] + v.sorted_columns[j, :k]]
        ok = states != sink
        positions = v.by_length[ok]                                    # back to positions in v.ids
        order = np.argsort(positions, kind="stable")
        return v.ids[positions[order]], states[ok][order] // 256

    def allowed_slow(self, state: int) -> dict[int, int]:
        """The obvious twin of allowed(): each token's bytes through DFA.run, one by one. {id: next state}"""
        out = {}
        for token, spelled in zip(self.vocabulary.ids.tolist(), self.vocabulary.spelled):
            s = self.dfa.run(spelled, state)
            if s != DEAD:
                out[token] = s
        return out

    def can_end(self, state: int) -> bool:
        return state == self.FINISHED or bool(self.dfa.accepting[state])

    def complete(self, state: int) -> bool:
        """True when the text is a whole match and no ordinary token can follow: it is done."""
        return state == self.FINISHED or (bool(self.dfa.accepting[state]) and not len(self.allowed(state)[0]))

    # ---- walking a sequence -------------------------------------------------------------------------

    def step(self, state: int, token: int) -> int:
        """The state after `token` (NumgptError if the token is not allowed there)."""
        key = (state, token)
        got = self._steps.get(key)
        if got is not None:
            return got
        if state == self.FINISHED or token in self.end_ids:
            if not self.can_end(state):
                raise NumgptError("the text ended before it matched the constraint")
            got = self.FINISHED
        else:
            ids, nxt = self.allowed(state)
            k = int(np.searchsorted(ids, token))
            if k == len(ids) or ids[k] != token:
                raise NumgptError(f"token {token} breaks the constraint here (a text given to continue that "
                                  "does not match it?)")
            got = int(nxt[k])
        self._steps[key] = got
        return got

    def state_after(self, tokens: Sequence[int]) -> int:
        """The state after a sequence of generated tokens, from the start (a dict lookup per token once
        seen: ~0.1 ms for 1,000 tokens, which keeps every decode loop free of per-row state)."""
        state = 0
        for t in tokens:
            state = self.step(state, int(t))
        return state

    def mask_row(self, row: np.ndarray, state: int) -> np.ndarray:
        """`row` [V] with every token not allowed in `state` at -inf."""
        out = np.full_like(row, FILTERED)
        if state != self.FINISHED:
            ids, _ = self.allowed(state)
            ids = ids[ids < row.shape[0]]
            out[ids] = row[ids]
        if self.can_end(state):
            ends = self.end_ids[self.end_ids < row.shape[0]]
            out[ends] = row[ends]
        if not np.isfinite(out).any():
            raise NumgptError("the constraint leaves no token to choose here: the text is complete (end it), or "
                              "the vocabulary cannot spell the next character")
        return out


class Constraint:
    """What the sampler's constraint stage holds (sampling.SamplingOptions.constraint): a token automaton
    and what it was made from. `mask(logits, generated)` sets each row's disallowed tokens to -inf, the
    row's state found by walking its generated tokens."""

    def __init__(self, automaton: TokenAutomaton, description: str):
        self.automaton, self.description = automaton, description

    def mask(self, logits: np.ndarray, generated: Sequence[Sequence[int]]) -> np.ndarray:
        """[B, V] -> [B, V] float32: disallowed tokens at -inf."""
        logits = np.asarray(logits, dtype=np.float32)
        return np.stack([self.automaton.mask_row(row, self.automaton.state_after(ids))
                         for row, ids in zip(logits, generated)])

    def complete(self, generated: Sequence[int]) -> bool:
        """True when these generated tokens are a whole match that no token can extend: the decode loops
        end the sequence there (finish_reason "eos"), which is how a vocabulary without an end token ends,
        and why a match made by the last token max_new_tokens allows is "eos", not "length"."""
        return self.automaton.complete(self.automaton.state_after(generated))

    def completed_by(self, generated: Sequence[int], token: int) -> bool:
        """`complete(generated + [token])`, without the copy: what the decode loops ask of each new token."""
        state = self.automaton.state_after(generated)
        return self.automaton.complete(self.automaton.step(state, token))

    def __repr__(self) -> str:
        return f"Constraint({self.description})"
