"""Byte-level BPE exactly as GPT-2 does it: encode, decode, streaming decode, special tokens, load/save.

How GPT-2 turns text into ids (openai/gpt-2 src/encoder.py; Sennrich et al. 2016 for BPE itself):

1. Pre-tokenize: GPT2_SPLIT_PATTERN cuts the text into pieces (a word with its leading space, a number,
   a run of punctuation, a run of whitespace). Merges never cross a piece boundary.
2. Each piece becomes its UTF-8 bytes, one symbol per byte. The 256 byte tokens mean that any text can be
   encoded: there is no unknown token.
3. Merges apply by rank: repeatedly merge the adjacent pair of symbols whose merge was learned earliest
   (lowest rank; the leftmost one on a tie), until no adjacent pair is a merge. (GPT-2's encoder.py
   merges all occurrences of the best pair in one step; that is the same whenever every merge comes after
   the merges that made its parts, as in GPT-2's list. One merge at a time is what tiktoken and Hugging
   Face do, so it is the rule for other merge lists too.)
4. Each remaining symbol is a token; its id comes from the vocabulary.

The vocabulary files store tokens as text over a stand-in alphabet: `bytes_to_unicode()` maps every byte to
a visible character (space -> 'Ġ', newline -> 'Ċ', printable ASCII to itself) so that the files are plain,
whitespace-free text. Inside this module tokens are ids and byte strings; the stand-in alphabet only
appears at the file boundary and in `id_to_token`.

Special tokens (policy, the same as tiktoken's): a special token such as '<|endoftext|>' (id 50256) is
never produced from ordinary text unless the caller asks for it. `encode(text)` refuses text that contains
a special token's string, with a NumgptError saying how to proceed: pass `allowed_special={...}` (or "all")
to encode such strings as their special ids, or `disallowed_special=()` to encode them as plain text like
any other characters. `encode_ordinary(text)` always treats everything as plain text.

Speed: pieces repeat (Zipf), so each Tokenizer keeps a bounded dict from piece to ids and only cache misses
run BPE; with GPT-2's vocabulary a miss that is spelled exactly like a token skips BPE (half the distinct
pieces of English; every such token encodes to itself, checked against tiktoken for the whole vocabulary);
ASCII text is split with an equivalent stdlib-`re` pattern (3x faster than `regex` here). BPE
itself has a plain quadratic reference (`_merge_steps`, which `explain` and the tests use) and two fast
twins: a list of pair ranks searched in C for short pieces, and per-rank buckets of positions over a
linked list, O(n log n), for long ones (a 1 MB piece stays fast).

References: openai/gpt-2 src/encoder.py (the algorithm and files), tiktoken (special-token policy; the
reference ids in the tests), Hugging Face tokenizers/transformers (the vocab.json + merges.txt layout),
karpathy/minbpe (structure).
"""

from __future__ import annotations

import codecs
import heapq
import os
import re
import weakref
from dataclasses import dataclass
from importlib import resources
from itertools import chain, repeat
from operator import lshift, or_
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Literal, Mapping, Sequence

import regex

from ..errors import NumgptError
from .files import ENDOFTEXT, read_chat_template, read_vocabulary, write_vocabulary

GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT_ID = 50256
GPT2_SHA256 = {  # the official files, as published by OpenAI; checked whenever the built-in vocabulary loads
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
LONG_PIECE = 100  # pieces with more bytes than this merge by rank buckets, shorter ones lowest-first
NO_RANK = 1 << 62  # the rank of a pair that is not a merge: above every real rank
PIECE_CACHE_SIZE = 1 << 16  # pieces remembered per Tokenizer before the cache is cleared
LONGEST_CACHED_PIECE = 256  # longer pieces are not worth remembering

_GPT2_SPLIT = regex.compile(GPT2_SPLIT_PATTERN)
# The same pattern for ASCII-only text, where \p{L} is [A-Za-z], \p{N} is [0-9] and \s (Unicode White_Space,
# as in `regex` and tiktoken) is [\t\n\v\f\r ]. subtle: not stdlib \s, which also matches \x1c-\x1f.
_WS = r"\t\n\x0b\x0c\r "
_ASCII_SPLIT = re.compile(
    rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+""")
_SURROGATE = re.compile("[\ud800-\udfff]")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's stand-in alphabet: byte -> a printable character, so that vocabulary files are plain text.

    Bytes that are printable Latin-1 characters (other than space) stand for themselves; the other 68
    bytes (controls, space, 0x7f-0xa0, 0xad) take the characters 256, 257, ... in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return dict(sorted(table.items()))


def pretokenize(text: str) -> list[str]:
    """GPT-2's pre-tokenization: the pieces that BPE merges within (never across)."""
    if text.isascii():
        return _ASCII_SPLIT.findall(text)  # same pieces as _GPT2_SPLIT on ASCII text, 3x faster
    return _GPT2_SPLIT.findall(text)


def show_bytes(token: bytes) -> str:
    """A token for display: the repr of its text, or of its bytes when they are not whole UTF-8."""
    try:
        return repr(token.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(token)


def _replace_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8: like tiktoken, join valid pairs and replace the rest with U+FFFD."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@dataclass(frozen=True)
class MergeStep:
    """One BPE step on a piece: the leftmost `pair` of lowest `rank` merged; `tokens` is the piece after."""
    rank: int
    pair: tuple[bytes, bytes]
    tokens: tuple[bytes, ...]


@dataclass(frozen=True)
class PieceTrace:
    """How one pre-tokenized piece became ids: its bytes, each merge step with its rank, the final ids."""
    piece: str
    start: tuple[bytes, ...]
    steps: tuple[MergeStep, ...]
    ids: tuple[int, ...]
    special: bool = False


class StreamDecoder:
    """Decodes ids one at a time as they arrive, never emitting half of a multi-byte character.

    `push(id)` returns the text that is complete so far (possibly ''); `flush()` returns what is left at
    the end (an incomplete character becomes U+FFFD). The pieces concatenate to `tok.decode(ids)`.
    """

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text completed by this token; bytes of an unfinished character wait for the next ids."""
        return self._utf8.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        """The end of the stream: whatever bytes are pending, with an unfinished character replaced."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


class _PieceCache(dict):
    """piece -> ids; a miss runs BPE (`dict.__missing__`), so the hot path is one C-level lookup per piece.
    It starts from `base` (the pieces spelled exactly like a trusted token, see `_trust_whole_tokens`),
    as tiktoken looks a piece up in the vocabulary before running BPE: half of the distinct pieces of
    English text then never leave C (a cold encode of tinyshakespeare 10% faster, measured).

    It holds its tokenizer's `_encode_piece` weakly. subtle: a plain bound method would make a reference
    cycle (tokenizer -> cache -> method -> tokenizer), so a discarded Tokenizer would wait for the cyclic
    garbage collector, whose full pass then lands inside some later call (250 ms inside a cold encode,
    measured); without the cycle it is freed at once.
    """

    def __init__(self, encode_piece: Callable[[str], Sequence[int]], size: int):
        super().__init__()
        self._encode_piece = weakref.WeakMethod(encode_piece)
        self._size = size
        self._base: Mapping[str, Sequence[int]] = {}

    def seed(self, base: Mapping[str, Sequence[int]]) -> None:
        """Start over from these entries, which stay through every clearing (they do not count in size)."""
        self._base = base
        self.clear()
        self.update(base)

    def __missing__(self, piece: str) -> Sequence[int]:
        ids = self._encode_piece()(piece)
        if len(piece) <= LONGEST_CACHED_PIECE:
            if len(self) >= self._size + len(self._base):
                self.seed(self._base)  # bounded: start over rather than track recency
            self[piece] = ids
        return ids


class Tokenizer:
    """GPT-2's byte-level BPE over a vocabulary (GPT-2's own, one loaded from files, or one trained).

    Make one with `Tokenizer.gpt2()`, `Tokenizer.load(folder)` or `numgpt.train_bpe(...)`. The
    constructor takes the contents of the files: `vocab` maps token strings in the stand-in alphabet of
    `bytes_to_unicode()` to ids, `merges` lists the merged pairs of token strings by rank, and
    `special_tokens` maps special strings to ids (see the module docstring for their policy).

    Attributes: `vocab_size` (number of ids, specials included), `eot_id` (the id of '<|endoftext|>', or
    None if the vocabulary has none), `special_tokens` (a copy of the str -> id map), `chat_template` (the
    Jinja text of tokenizer_config.json's "chat_template", or None: carried from load to save untouched,
    as transformers' tokenizers carry it; numgpt.posttrain.chat_format reads it).
    """

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]],
                 special_tokens: Mapping[str, int] | None = None, *,
                 names: tuple[str, str] = ("vocab", "merges"), cache_size: int = PIECE_CACHE_SIZE,
                 chat_template: str | None = None):
        """`names` are the vocabulary and merges file names that error messages mention."""
        self.chat_template = chat_template
        special_tokens = dict(special_tokens or {})
        self._vocab = dict(vocab)
        self._vocab.update(special_tokens)
        self._id_to_token = _invert(self._vocab, names[0])
        self._merges = [tuple(m) for m in merges]
        byte_symbols = bytes_to_unicode()
        self._byte_ids = _byte_ids(self._vocab, byte_symbols, names[0])
        self._ranks, self._merged = _index_merges(self._vocab, self._merges, names)
        # the fast merge loops look pairs up as one int, a << shift | b (no tuple to build and hash);
        # `_ranks`, keyed by (a, b), serves the plain reference `_merge_steps` that `explain` shows
        self._pair_shift = max(self._id_to_token).bit_length()
        self._pair_ranks = {(a << self._pair_shift) | b: rank for (a, b), rank in self._ranks.items()}
        self._byte_table = bytes(self._byte_ids) if max(self._byte_ids) < 256 else None
        self._whole_tokens: dict[str, tuple[int]] = {}  # see `_trust_whole_tokens`; empty: all run BPE
        self._pairs = [(self._vocab[a], self._vocab[b]) for a, b in self._merges]  # rank -> pair of ids
        self._special = special_tokens
        to_latin1 = str.maketrans({c: chr(b) for b, c in byte_symbols.items()})
        alphabet = frozenset(byte_symbols.values())
        self._id_to_bytes = {i: _token_bytes(t, to_latin1, alphabet) for i, t in self._id_to_token.items()}
        self._id_to_bytes.update({i: s.encode("utf-8") for s, i in special_tokens.items()})
        self._cache = _PieceCache(self._encode_piece, cache_size)

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2's vocabulary (50257 ids, '<|endoftext|>' = 50256), from the package data, sha256-checked."""
        folder = resources.files("numgpt").joinpath("assets", "gpt2")
        with resources.as_file(folder) as path:
            tok = cls.load(path, sha256=GPT2_SHA256)
        tok._trust_whole_tokens()  # true of these (sha256-pinned) files: test_every_token_alone checks it
        return tok

    @classmethod
    def load(cls, folder: str | os.PathLike, *, sha256: Mapping[str, str] | None = None) -> Tokenizer:
        """A vocabulary folder: Hugging Face (vocab.json + merges.txt, plus special tokens from
        tokenizer_config.json, special_tokens_map.json and added_tokens.json when present) or OpenAI
        (encoder.json + vocab.bpe). `sha256` maps file names to expected digests to check first.
        """
        vocab, merges, special, names = read_vocabulary(folder, sha256=sha256, check_ids=_invert)
        _check_reachable(vocab, merges, special, names)
        return cls(vocab, merges, special, names=names, chat_template=read_chat_template(folder))

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the Hugging Face layout: vocab.json, merges.txt, tokenizer_config.json and
        special_tokens_map.json, so that transformers' GPT2TokenizerFast.from_pretrained(folder) loads it.
        A folder that already holds a vocabulary is refused unless overwrite=True (nothing is lost silently)."""
        write_vocabulary(folder, self._vocab, self._merges, self._special, overwrite=overwrite,
                         chat_template=self.chat_template)

    def with_special_tokens(self, tokens: Sequence[str], *, chat_template: str | None = None) -> Tokenizer:
        """A new tokenizer with `tokens` added as special tokens, with ids after the current ones (in the
        given order; a token that is already special keeps its id), and `chat_template` if given (else
        this one's). A string that is an ordinary token of this vocabulary is refused: it has an id already.
        """
        special_ids = set(self._special.values())
        ordinary = {b: i for i, b in self._id_to_bytes.items() if i not in special_ids}   # bytes -> id
        for token in tokens:
            if token.encode("utf-8") in ordinary:
                raise NumgptError(f"{token!r} is an ordinary token of this vocabulary (id "
                                  f"{ordinary[token.encode('utf-8')]}), not a special token; it cannot be added "
                                  "as one")
        if max(self._id_to_token) != self.vocab_size - 1:
            raise NumgptError(f"this vocabulary's ids are not 0..{self.vocab_size - 1} (the largest is "
                              f"{max(self._id_to_token)}), so new ids cannot follow them")
        special = dict(self._special)
        for token in tokens:
            special.setdefault(token, self.vocab_size + len(special) - len(self._special))
        vocab = {t: i for t, i in self._vocab.items() if t not in self._special}
        return Tokenizer(vocab, self._merges, special,
                         chat_template=self.chat_template if chat_template is None else chat_template)

    # ---- attributes ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """The number of ids, special tokens included (the model's embedding needs this many rows)."""
        return len(self._id_to_token)

    @property
    def eot_id(self) -> int | None:
        """The id of '<|endoftext|>' (50256 for GPT-2), or None when this vocabulary has no such token."""
        return self._special.get(ENDOFTEXT)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> id (a copy)."""
        return dict(self._special)

    def id_to_token(self, token_id: int) -> str:
        """The token as the vocabulary file spells it (stand-in alphabet: ' world' is 'Ġworld')."""
        self._check_id(token_id)
        return self._id_to_token[token_id]

    def token_to_id(self, token: str) -> int:
        """The id of a token spelled as in the vocabulary file ('Ġworld'); NumgptError if absent."""
        if token not in self._vocab:
            raise NumgptError(f"{token!r} is not a token of this vocabulary")
        return self._vocab[token]

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes that one token stands for."""
        self._check_id(token_id)
        return self._id_to_bytes[token_id]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, special_tokens={self._special})"

    # ---- encoding -----------------------------------------------------------------------------------

    def encode(self, text: str, *, allowed_special: Collection[str] | Literal["all"] = frozenset(),
               disallowed_special: Collection[str] | Literal["all"] = "all") -> list[int]:
        """Text -> ids. Special token strings in `text` are refused unless allowed (module docstring):
        `allowed_special` ("all" or a set) become their special ids, `disallowed_special` ("all" means every
        special not allowed) raise NumgptError, and the rest are encoded as plain text.
        Lone surrogates (not encodable as UTF-8) become U+FFFD, as in tiktoken.
        """
        allowed = self._check_special(_check_text(text), allowed_special, disallowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for part, special in self._split_special(text, allowed):
            ids.extend([self._special[special]] if special else self.encode_ordinary(part))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, with special token strings encoded as plain text (no check, no special ids)."""
        pieces = pretokenize(_replace_surrogates(_check_text(text)))
        return list(chain.from_iterable(map(self._cache.__getitem__, pieces)))  # misses run BPE

    def explain(self, text: str, *, allowed_special: Collection[str] | Literal["all"] = frozenset(),
                disallowed_special: Collection[str] | Literal["all"] = "all") -> list[PieceTrace]:
        """The debug twin of `encode`: for each pre-tokenized piece, its bytes, the merges applied step by
        step with their ranks, and its ids. The ids concatenate to `encode(text, ...)` (same options)."""
        allowed = self._check_special(_check_text(text), allowed_special, disallowed_special)
        traces = []
        for part, special in self._split_special(text, allowed):
            if special:
                token = special.encode("utf-8")
                traces.append(PieceTrace(special, (token,), (), (self._special[special],), special=True))
            else:
                traces.extend(map(self._trace_piece, pretokenize(_replace_surrogates(part))))
        return traces

    def _trust_whole_tokens(self) -> None:
        """Let pieces that are spelled exactly like a token skip BPE: for a vocabulary where every token
        that is whole UTF-8 text encodes to itself alone, the cold path's cheapest win (half the distinct
        pieces of English text are single tokens). Not true of every merge list (a token made by (ab, c)
        is out of reach when (b, c) ranks first and (a, bc) is no merge), so only `gpt2()` calls this,
        for the files whose every token the tests run through `_merge_steps` and tiktoken.

        The values are made once here, (id,) tuples, so that a cold encode allocates nothing for these
        pieces: half the allocations, half the garbage-collector passes over the young text and ids
        lists (10% of a cold encode, measured)."""
        self._whole_tokens = {text: (token_id,) for text, token_id in
                              _whole_token_ids(self._id_to_bytes, self._special).items()}
        self._cache.seed(self._whole_tokens)

    def _encode_piece(self, piece: str) -> Sequence[int]:
        """One piece -> ids by BPE (the cache's miss path); a piece that is a trusted token is that token."""
        whole = self._whole_tokens.get(piece)
        if whole is not None:
            return whole
        symbols = self._byte_symbols(piece)
        if len(symbols) > LONG_PIECE:
            return self._merge_by_rank_buckets(symbols)
        return self._merge_lowest_first(symbols)

    def _byte_symbols(self, piece: str) -> list[int]:
        """A piece as the ids of its UTF-8 bytes, the starting point of BPE."""
        if self._byte_table is not None:  # every byte id is below 256 (GPT-2's are): bytes.translate, in C
            return list(piece.encode("utf-8").translate(self._byte_table))
        return [self._byte_ids[b] for b in piece.encode("utf-8")]

    def _merge_steps(self, symbols: list[int]) -> Iterator[tuple[int, tuple[int, int], list[int]]]:
        """BPE, the plain reference: merge the leftmost lowest-rank adjacent pair, one merge per step,
        until no adjacent pair is a merge; yields (rank, pair, symbols after) per step. O(n^2); `explain`
        and the tests use it, encoding uses the two fast twins below."""
        ranks = self._ranks
        while len(symbols) > 1:
            rank, i = min((ranks.get(pair, NO_RANK), i) for i, pair in enumerate(zip(symbols, symbols[1:])))
            if rank == NO_RANK:
                return
            pair = (symbols[i], symbols[i + 1])
            symbols = [*symbols[:i], self._merged[rank], *symbols[i + 2:]]
            yield rank, pair, symbols

    def _merge_lowest_first(self, symbols: list[int]) -> list[int]:
        """`_merge_steps` for short pieces, fast: the ranks of adjacent pairs live in a list, so finding
        the lowest (min, index) and merging (slice assignment) run in C; only the two pairs next to a
        merge get new ranks. Pairs are looked up as one int, `left << shift | right`, not a tuple (no
        tuple to build, a cheaper hash: 13% faster). 2x faster than the bucketed twin below ~100 bytes
        (tiktoken's algorithm)."""
        pair_ranks, merged, shift = self._pair_ranks, self._merged, self._pair_shift
        get = pair_ranks.get
        ranks = list(map(get, map(or_, map(lshift, symbols, repeat(shift)), symbols[1:]), repeat(NO_RANK)))
        while ranks:
            rank = min(ranks)
            if rank == NO_RANK:
                break
            i = ranks.index(rank)  # the leftmost
            new = merged[rank]
            symbols[i:i + 2] = (new,)
            del ranks[i]
            if i > 0:
                ranks[i - 1] = get((symbols[i - 1] << shift) | new, NO_RANK)
            if i < len(ranks):
                ranks[i] = get((new << shift) | symbols[i + 1], NO_RANK)
        return symbols

    def _merge_by_rank_buckets(self, symbols: list[int]) -> list[int]:
        """`_merge_steps` for long pieces in O(n log n), without rescanning the piece after each merge.

        The symbols form a linked list (nxt/prv), and `buckets` maps each rank to the positions where its
        pair was seen; a heap holds the ranks. The lowest rank is popped and its positions are merged left
        to right, skipping the ones that changed since (checked against the pair itself). A merge normally
        creates only pairs of higher rank (a merge is learned after its parts), which wait in their own
        buckets. 2x faster than `_merge_lowest_first` at 256 bytes, 3x faster than a heap of (rank,
        position), and linear-ish on the 100 kB pieces that made tiktoken quadratic.
        """
        get, merged, pairs, shift = self._pair_ranks.get, self._merged, self._pairs, self._pair_shift
        sym: list[int | None] = list(symbols)
        n = len(sym)
        nxt = [*range(1, n), -1]
        prv = [*range(-1, n - 1)]
        buckets: dict[int, list[int]] = {}
        heap: list[int] = []

        def note(rank: int, i: int) -> int:  # the pair starting at position i has this rank now
            if rank == NO_RANK:
                return rank
            if rank in buckets:
                buckets[rank].append(i)
            else:
                buckets[rank] = [i]
                heapq.heappush(heap, rank)
            return rank

        for i, (left, right) in enumerate(zip(symbols, symbols[1:])):
            note(get((left << shift) | right, NO_RANK), i)
        while heap:
            rank = heapq.heappop(heap)
            first, second = pairs[rank]
            new = merged[rank]
            positions = sorted(buckets.pop(rank))
            for done, i in enumerate(positions, start=1):
                j = nxt[i]
                if sym[i] != first or j < 0 or sym[j] != second:
                    continue  # merged away or changed since it was noted
                sym[i], sym[j] = new, None  # i absorbs j
                k = nxt[j]
                nxt[i] = k
                lowest = NO_RANK
                if k >= 0:
                    prv[k] = i
                    lowest = note(get((new << shift) | sym[k], NO_RANK), i)
                if (h := prv[i]) >= 0:
                    lowest = min(lowest, note(get((sym[h] << shift) | new, NO_RANK), h))
                if lowest < rank:
                    # subtle: a pair that ranks below the merge that just made one of its parts (possible
                    # when two pairs spell the same token) goes first, as in `_merge_steps`; the rest of
                    # this rank's positions wait in its bucket again.
                    for rest in positions[done:]:
                        note(rank, rest)
                    break
        return [s for s in sym if s is not None]

    def _trace_piece(self, piece: str) -> PieceTrace:
        """`explain` for one ordinary piece (always the rank loop: it is the one that has steps)."""
        symbols = self._byte_symbols(piece)
        show = self._id_to_bytes.__getitem__
        steps = tuple(MergeStep(rank, (show(a), show(b)), tuple(map(show, after)))
                      for rank, (a, b), after in self._merge_steps(symbols))
        ids = tuple(self._encode_piece(piece))
        return PieceTrace(piece, tuple(map(show, symbols)), steps, ids)

    # ---- special tokens -----------------------------------------------------------------------------

    def _check_special(self, text: str, allowed_special: Collection[str] | Literal["all"],
                       disallowed_special: Collection[str] | Literal["all"]) -> set[str]:
        """The allowed special tokens, after refusing `text` if it contains a disallowed one."""
        allowed = self._special_set(allowed_special, "allowed_special")
        disallowed = (set(self._special) - allowed if disallowed_special == "all"
                      else self._special_set(disallowed_special, "disallowed_special"))
        if disallowed:
            self._refuse_special(text, disallowed)
        return allowed

    def _special_set(self, chosen: Collection[str] | Literal["all"], option: str) -> set[str]:
        """An allowed/disallowed option as a set of this vocabulary's special tokens."""
        if chosen == "all":
            return set(self._special)
        if isinstance(chosen, str):
            raise NumgptError(f"{option} must be 'all' or a set of special tokens, not the string {chosen!r}; "
                              f"write {option}={{{chosen!r}}}")
        unknown = set(chosen) - set(self._special)
        if unknown:
            raise NumgptError(f"{option}: {sorted(unknown)[0]!r} is not a special token of this vocabulary "
                              f"(it has {sorted(self._special) or 'none'})")
        return set(chosen)

    def find_special(self, text: str, tokens: Collection[str] | None = None) -> tuple[str, int] | None:
        """The first of `tokens` (default: every special token of this vocabulary) written in `text`, as
        (token, character position); None if there is none."""
        found = special_token_pattern(self._special if tokens is None else tokens).search(text)
        return None if found is None else (found.group(), found.start())

    def _refuse_special(self, text: str, disallowed: set[str]) -> None:
        """Raise (one line: what, where, how to proceed) if `text` contains a disallowed special token."""
        found = self.find_special(text, disallowed)
        if found:
            token, position = found
            raise NumgptError(
                f"text contains the special token {token!r} at position {position}; pass "
                f"allowed_special={{{token!r}}} to encode it as id {self._special[token]}, or "
                "disallowed_special=() to encode it as plain text")

    def _split_special(self, text: str, allowed: set[str]) -> Iterator[tuple[str, str | None]]:
        """(plain text, None) and ('', special token) parts, in order; plain parts may be ''."""
        if not allowed:
            yield text, None
            return
        start = 0
        for found in special_token_pattern(allowed).finditer(text):
            yield text[start:found.start()], None
            yield "", found.group()
            start = found.end()
        yield text[start:], None

    # ---- decoding -----------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the exact bytes they stand for (which need not be valid UTF-8)."""
        try:
            return b"".join(map(self._id_to_bytes.__getitem__, ids))
        except KeyError as e:
            raise NumgptError(f"token id {e.args[0]!r} is not in the vocabulary "
                              f"(ids 0..{self.vocab_size - 1})") from None
        except TypeError as e:
            raise NumgptError(f"token ids must be integers ({e})") from None

    def decode(self, ids: Iterable[int], *, errors: str = "replace") -> str:
        """Ids -> text; bytes that are not valid UTF-8 become U+FFFD (errors="replace"), never raising."""
        return self.decode_bytes(ids).decode("utf-8", errors)

    def stream_decoder(self) -> StreamDecoder:
        """A decoder for ids arriving one at a time (streaming generation): `.push(id) -> str`, `.flush()`."""
        return StreamDecoder(self.token_bytes)

    def _check_id(self, token_id: int) -> None:
        if token_id not in self._id_to_bytes:
            raise NumgptError(f"token id {token_id!r} is not in the vocabulary (ids 0..{self.vocab_size - 1})")


def _check_text(text: object) -> str:
    """Text to encode must be a str (bytes are decoded by the caller, who knows their encoding)."""
    if not isinstance(text, str):
        extra = "; decode bytes to str first" if isinstance(text, (bytes, bytearray)) else ""
        raise NumgptError(f"the text to encode must be a str, got {type(text).__name__}{extra}")
    return text


def special_token_pattern(strings: Iterable[str]) -> re.Pattern:
    """A pattern matching any of `strings`, longest first (so that a special containing another wins)."""
    ordered = sorted(strings, key=lambda s: (-len(s), s))
    return re.compile("|".join(map(re.escape, ordered))) if ordered else re.compile("(?!)")


def _token_bytes(token: str, to_latin1: dict[int, str], alphabet: frozenset[str]) -> bytes:
    """A vocabulary string -> its bytes; strings outside the stand-in alphabet (added tokens) are UTF-8."""
    if alphabet.issuperset(token):
        return token.translate(to_latin1).encode("latin-1")  # stand-in char -> chr(byte) -> byte
    return token.encode("utf-8")


# ---- checking a vocabulary ---------------------------------------------------------------------------

def _invert(vocab: Mapping[str, int], vocab_name: str) -> dict[int, str]:
    """id -> token, refusing ids that are not non-negative ints or that two tokens share."""
    inverse: dict[int, str] = {}
    for token, token_id in vocab.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise NumgptError(f"{vocab_name}: token {token!r} has id {token_id!r}; ids must be integers >= 0")
        if token_id in inverse:
            raise NumgptError(f"{vocab_name}: tokens {inverse[token_id]!r} and {token!r} share id {token_id}")
        inverse[token_id] = token
    return inverse


def _byte_ids(vocab: Mapping[str, int], byte_symbols: Mapping[int, str], vocab_name: str) -> list[int]:
    """byte -> id of its single-byte token; a byte-level vocabulary must have all 256."""
    missing = [b for b in range(256) if byte_symbols[b] not in vocab]
    if missing:
        raise NumgptError(f"{vocab_name}: no token for byte 0x{missing[0]:02x} ({byte_symbols[missing[0]]!r}) "
                          f"and {len(missing) - 1} more; a byte-level BPE vocabulary needs all 256")
    return [vocab[byte_symbols[b]] for b in range(256)]


def _whole_token_ids(id_to_bytes: Mapping[int, bytes], special: Mapping[str, int]) -> dict[str, int]:
    """text -> id for every ordinary token whose bytes are whole UTF-8 text."""
    special_ids = set(special.values())
    whole = {}
    for token_id, token in id_to_bytes.items():
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            continue  # part of a multi-byte character: no piece is spelled like it
        if token_id not in special_ids:
            whole[text] = token_id
    return whole


UNREACHABLE_SHARE = 0.01   # a vocabulary file whose merges make fewer of its tokens than this is refused


def _check_reachable(vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], special: Mapping[str, int],
                     names: tuple[str, str]) -> None:
    """Refuse a merges file that makes too few of the vocabulary's tokens (more than UNREACHABLE_SHARE of
    them neither a byte, a special token nor any merge's result): an empty or cut-short merges.txt, or one
    from another tokenizer, which would otherwise spell every text in single bytes without a word."""
    made = {a + b for a, b in merges}
    single = set(bytes_to_unicode().values())
    unreachable = [t for t in vocab if t not in made and t not in single and t not in special]
    if len(unreachable) > UNREACHABLE_SHARE * len(vocab):
        raise NumgptError(f"{names[1]}: {len(unreachable):,} of the {len(vocab):,} tokens in {names[0]} (such as "
                          f"{unreachable[0]!r}) are no byte, no special token and made by none of its "
                          f"{len(merges):,} merges: the two files do not belong together, or "
                          f"{Path(names[1]).name} was cut short")


def _index_merges(vocab: Mapping[str, int], merges: Sequence[tuple[str, str]],
                  names: tuple[str, str]) -> tuple[dict[tuple[int, int], int], list[int]]:
    """(pair of ids -> rank, rank -> id of the merged token), refusing merges of unknown tokens."""
    try:
        pairs = [(vocab[first], vocab[second]) for first, second in merges]
        merged = [vocab[first + second] for first, second in merges]
    except KeyError:
        rank, first, second, token = next((r, a, b, t) for r, (a, b) in enumerate(merges)
                                          for t in (a, b, a + b) if t not in vocab)
        raise NumgptError(f"{names[1]}: merge {rank + 1} ({first} {second}) needs the token {token!r}, "
                          f"which is not in {names[0]}") from None
    ranks: dict[tuple[int, int], int] = {}
    for rank, pair in enumerate(pairs):
        ranks.setdefault(pair, rank)  # a repeated merge keeps its first (lowest) rank
    return ranks, merged
