"""Training a new byte-level BPE vocabulary (GPT-2's kind) on text: learn the merges, most frequent first.

The algorithm (Sennrich et al. 2016, byte-level as in GPT-2; the incremental bookkeeping is that of
Hugging Face tokenizers' BpeTrainer):

1. Pre-tokenize every text with GPT-2's pattern (special token strings are cut out first, so they never
   take part in a merge) and count the distinct pieces: the word table, piece -> count.
2. Each word starts as its UTF-8 bytes; the 256 byte tokens have id = byte value.
3. Count the adjacent pairs of all words, weighted by word count, and remember which words hold each pair.
4. Repeat: take the most frequent pair, give the merged token the next id, rewrite only the words that
   hold the pair, and update the counts of the pairs that changed there. The most frequent pair comes
   from a heap with lazy invalidation: counts are never updated inside the heap; a changed count pushes a
   fresh entry, and a popped entry whose count is no longer current is dropped.
5. Append the special tokens, so that vocab_size = 256 + merges + specials.

Tie-break (deterministic): the highest count wins; among equal counts, the smallest pair by
(bytes of the left token, bytes of the right token), compared as byte strings.
If a merge spells a byte string that is already a token (two pairs can spell 'abc'), the merge is kept
and maps to the existing token, which does not grow the vocabulary.
Training stops early, with a smaller vocabulary, when no pair occurs `min_frequency` times any more.

split_digits=True learns no merge that holds a digit, so every digit stays a token of its own (as LLaMA's
tokenizer splits digits): "478" is always 4, 7, 8, whatever numbers the text held, which is what makes
column arithmetic learnable for a small model. The pre-tokenization is still GPT-2's, so the vocabulary is
an ordinary GPT-2 one that transformers' GPT2TokenizerFast reads and applies the same way.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence


from ..errors import NumgptError
from .bpe import Tokenizer, bytes_to_unicode, pretokenize, special_token_pattern

Pair = tuple[int, int]
Progress = Callable[[int, int], None]  # (merges done, merges wanted)
READ_CHARS = 1 << 24  # files are pre-tokenized in blocks of about this many characters


def train_bpe(texts: str | Iterable[str] = (), *, vocab_size: int, files: Iterable[str | os.PathLike] = (),
              special_tokens: Sequence[str] = (), min_frequency: int = 2, split_digits: bool = False,
              progress: bool | Progress = False) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `texts` (a string or strings) and `files` (UTF-8 text files).

    vocab_size counts the 256 byte tokens, the merges and the `special_tokens` (appended last, in the
    given order; none unless asked for, e.g. special_tokens=["<|endoftext|>"] as GPT-2 has). So
    vocab_size=256 gives the pure byte-level vocabulary (one token per byte: a character-level
    vocabulary for ASCII text). Pairs seen fewer than `min_frequency` times are not merged (Hugging
    Face's default is 2 as well); split_digits: no merge holds a digit (module docstring). `progress`: True shows a tqdm bar on stderr, or pass a callable
    (merges done, merges wanted). Save the result with `tok.save(folder)`.
    Example: `train_bpe(files=["input.txt"], vocab_size=4096, special_tokens=["<|endoftext|>"])`.
    """
    if isinstance(texts, str):
        texts = [texts]
    specials = _check_options(vocab_size, special_tokens, min_frequency)
    word_counts = count_words(chain(texts, _read_files(files)), specials)
    if not word_counts:
        raise NumgptError("the training text is empty (or only special tokens); give some text to learn from")
    wanted = vocab_size - 256 - len(specials)
    if progress is True:
        from tqdm import tqdm   # here: a 30 ms import that every `import numgpt` would otherwise pay
        with tqdm(total=wanted, unit="merge", desc="training BPE", leave=False) as bar:
            token_bytes, merges = learn_merges(word_counts, wanted, min_frequency,
                                               lambda done, total: bar.update(done - bar.n), split_digits)
    else:
        token_bytes, merges = learn_merges(word_counts, wanted, min_frequency, progress or None, split_digits)
    return _as_tokenizer(token_bytes, merges, specials)


def count_words(texts: Iterable[str], special_tokens: Sequence[str] = ()) -> Counter[str]:
    """The word table: each GPT-2 pre-tokenized piece and how often it occurs; special token strings
    are cut out of the texts first."""
    cut = special_token_pattern(special_tokens)
    counts: Counter[str] = Counter()
    for text in texts:
        for part in cut.split(text):
            counts.update(pretokenize(part))
    return counts


def learn_merges(word_counts: Mapping[str, int], wanted: int, min_frequency: int = 2,
                 progress: Progress | None = None, split_digits: bool = False
                 ) -> tuple[list[bytes], list[tuple[Pair, int]]]:
    """Up to `wanted` new tokens by BPE on a word table (module docstring: algorithm and tie-break);
    split_digits: pairs with a digit on either side are never merged.

    Returns the bytes of every token by id (the first 256 are the bytes themselves) and the merges in
    rank order as ((left id, right id), merged id).
    """
    token_bytes = [bytes([b]) for b in range(256)]
    token_ids = {t: i for i, t in enumerate(token_bytes)}
    words = [list(w.encode("utf-8")) for w in word_counts]
    counts = list(word_counts.values())
    pair_counts, where = count_pairs(words, counts)
    heap = [_heap_entry(pair, count, token_bytes) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[Pair, int]] = []
    merged_pairs: set[Pair] = set()
    while len(token_bytes) < 256 + wanted and heap:
        negative_count, left, right, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -negative_count or pair in merged_pairs:
            continue  # stale entry; or a pair that reappeared next to a reused token (already a merge)
        if split_digits and (_has_digit(left) or _has_digit(right)):
            continue  # never merged (its count stays, but nothing it could merge into is ever made)
        if count < min_frequency:
            break
        new_id = token_ids.setdefault(left + right, len(token_bytes))
        if new_id == len(token_bytes):
            token_bytes.append(left + right)
        merges.append((pair, new_id))
        merged_pairs.add(pair)
        for changed in apply_merge(pair, new_id, words, counts, pair_counts, where):
            if pair_counts.get(changed, 0) > 0:
                heapq.heappush(heap, _heap_entry(changed, pair_counts[changed], token_bytes))
        if progress:
            progress(len(token_bytes) - 256, wanted)
    return token_bytes, merges


DIGITS = frozenset(b"0123456789")


def _has_digit(token: bytes) -> bool:
    return not DIGITS.isdisjoint(token)


def count_pairs(words: Sequence[Sequence[int]], counts: Sequence[int]) -> tuple[dict[Pair, int], dict[Pair, set[int]]]:
    """pair -> occurrences over all words (weighted by word count), and pair -> indices of words holding it."""
    pair_counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}
    for w, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
            where.setdefault(pair, set()).add(w)
    return pair_counts, where


def apply_merge(pair: Pair, new_id: int, words: list[list[int]], counts: Sequence[int],
                pair_counts: dict[Pair, int], where: dict[Pair, set[int]]) -> set[Pair]:
    """Rewrite the words that hold `pair` with `new_id` and update the pair counts; returns the pairs
    whose count changed. Word sets are only added to: a word that no longer holds a pair is skipped
    when that pair's turn comes (its rewrite changes nothing)."""
    changed: set[Pair] = set()
    for w in where.pop(pair, ()):
        word = words[w]
        new_word = merge_pair(word, pair, new_id)
        if len(new_word) == len(word):
            continue
        delta = Counter(zip(new_word, new_word[1:]))
        delta.subtract(zip(word, word[1:]))
        for p, d in delta.items():
            if d:
                pair_counts[p] = pair_counts.get(p, 0) + d * counts[w]
                changed.add(p)
                if d > 0:
                    where.setdefault(p, set()).add(w)
        words[w] = new_word
    for p in changed:
        if pair_counts[p] <= 0:
            del pair_counts[p]
    return changed


def merge_pair(symbols: list[int], pair: Pair, merged: int) -> list[int]:
    """Replace every occurrence of `pair` in `symbols` by `merged`, scanning left to right."""
    first, second = pair
    out: list[int] = []
    i, n = 0, len(symbols)
    while i < n:
        if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _heap_entry(pair: Pair, count: int, token_bytes: Sequence[bytes]) -> tuple[int, bytes, bytes, Pair]:
    """Heap order = priority: the highest count, then the smallest (left bytes, right bytes)."""
    return -count, token_bytes[pair[0]], token_bytes[pair[1]], pair


def _as_tokenizer(token_bytes: Sequence[bytes], merges: Sequence[tuple[Pair, int]],
                  specials: Sequence[str]) -> Tokenizer:
    """The learned tokens and merges in GPT-2's file vocabulary (stand-in alphabet), specials last."""
    stand_in = bytes_to_unicode()
    spelled = ["".join(stand_in[b] for b in t) for t in token_bytes]
    vocab = {s: i for i, s in enumerate(spelled)}
    merge_strings = [(spelled[a], spelled[b]) for (a, b), _ in merges]
    ordinary = set(token_bytes)
    taken = [s for s in specials if s in vocab or s.encode("utf-8") in ordinary]
    if taken:        # it would replace that token's entry in vocab.json, and the token would be gone
        raise NumgptError(f"special token {taken[0]!r} is also an ordinary token (a merge learned from the text, "
                          f"written {taken[0]!r} in vocab.json); pick a string that is not a token, such as "
                          f"{'<|' + taken[0] + '|>'!r}")
    special_ids = {s: len(spelled) + i for i, s in enumerate(specials)}
    return Tokenizer(vocab, merge_strings, special_ids)


def _check_options(vocab_size: int, special_tokens: Sequence[str], min_frequency: int) -> list[str]:
    if isinstance(special_tokens, str):
        raise NumgptError(f"special_tokens must be a list of strings, not the string {special_tokens!r}")
    specials = list(special_tokens)
    if any(not isinstance(s, str) or not s for s in specials) or len(set(specials)) != len(specials):
        raise NumgptError(f"special tokens must be distinct non-empty strings, got {specials!r}")
    byte_tokens = set(bytes_to_unicode().values())             # how vocab.json spells the 256 byte tokens
    taken = [s for s in specials if s in byte_tokens or len(s.encode("utf-8")) == 1]
    if taken:
        raise NumgptError(f"special token {taken[0]!r} is also a byte token: the byte would lose its entry in "
                          "vocab.json or every text containing it would be refused; pick a string that is not a "
                          f"token, such as {'<|' + taken[0] + '|>'!r}")
    smallest = 256 + len(specials)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        hint = " (or no special tokens: --no-special, special_tokens=[])" if specials else ""
        raise NumgptError(f"vocab size {vocab_size!r} is too small: it must be at least 256 byte tokens + "
                          f"{len(specials)} special token(s) = {smallest}{hint}")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise NumgptError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
    return specials


def _read_files(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """The text of each file in blocks of about READ_CHARS characters, cut where pre-tokenization
    restarts anyway (so the word table is the same as for the whole file at once)."""
    for path in map(Path, paths):
        if path.is_dir():
            raise NumgptError(f"{path}: is a folder; pass text files")
        if not path.exists():                 # (a pipe such as <(...) is not is_file(), and reads as one)
            raise NumgptError(f"{path}: no such file")
        try:
            with open(path, encoding="utf-8", newline="") as f:
                yield from _blocks(f)
        except UnicodeDecodeError as e:
            raise NumgptError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a block)") from None


def _blocks(f) -> Iterator[str]:
    """Read `f` in blocks, each ending at a safe cut (see `safe_cut`)."""
    carry = ""
    while block := f.read(READ_CHARS):
        text = carry + block
        cut = safe_cut(text)
        yield text[:cut]
        carry = text[cut:]
    yield carry


def safe_cut(text: str) -> int:
    """The last position p where pre-tokenizing text[:p] and text[p:] separately gives the same pieces
    as the whole text (0 if none): just after a newline that has non-space characters on both sides.

    Why: no piece holds both whitespace and non-whitespace except ' ' + word, and the pattern has no
    look-behind; a lone '\\n' between non-spaces is a piece of its own whatever follows it.
    subtle: str.isspace is a superset of the pattern's \\s, so it may only skip a valid cut.
    """
    p = text.rfind("\n", 0, len(text) - 1)
    while p >= 1:
        if not text[p - 1].isspace() and not text[p + 1].isspace():
            return p + 1
        p = text.rfind("\n", 0, p)
    return 0
