"""The tokenizer's own account of a text, as plain data: each pre-tokenized piece, its bytes, the merges
applied step by step with their ranks, and its ids. The steps come from `Tokenizer.explain` (the debug
twin of encode, whose ids concatenate to the encoding); this module only turns bytes into the display
strings `numgpt tokenize --explain` prints (tokenizer.show_bytes: a token's text repr-quoted, or its
bytes where they are not whole UTF-8)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import NumgptError
from ..tokenizer import show_bytes


@dataclass(frozen=True)
class MergeView:
    """One BPE step: the leftmost pair of lowest rank merged; tokens is the piece after it."""

    rank: int
    pair: list[str]
    tokens: list[str]


@dataclass(frozen=True)
class PieceView:
    piece: str
    special: bool
    start: list[str]          # the piece's bytes, one token each
    steps: list[MergeView]
    ids: list[int]


@dataclass(frozen=True)
class TokensView:
    text: str
    pieces: list[PieceView]
    ids: list[int]            # the whole text's encoding (the pieces' ids in order)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tokens_view(tokenizer, text: str) -> TokensView:
    """How `tokenizer` encodes `text`, step by step (special tokens written in the text count, as
    LanguageModel.encode allows them)."""
    if not isinstance(text, str) or not text:
        raise NumgptError("the text is empty: give some text to tokenize" if text == "" else
                          f"the text must be a str, got {type(text).__name__}")
    traces = tokenizer.explain(text, allowed_special="all")
    pieces = [PieceView(piece=t.piece, special=t.special, start=[show_bytes(b) for b in t.start],
                        steps=[MergeView(rank=s.rank, pair=[show_bytes(s.pair[0]), show_bytes(s.pair[1])],
                                         tokens=[show_bytes(b) for b in s.tokens]) for s in t.steps],
                        ids=list(t.ids)) for t in traces]
    return TokensView(text=text, pieces=pieces, ids=[i for p in pieces for i in p.ids])
