"""What every teaching view takes in: a text (or token ids) for a model, checked once, and the tokens'
labels for display.

A view shows the model at work on real input, so its input rules are the model's own: the text is
encoded as `LanguageModel.encode` does (special tokens written in it count); a prompt to continue may be
empty, and then starts from <|endoftext|> as in `generate` and `next` (generate.encode_prompt), while a
text to look at may not; and it must fit in the model's context (`model.check_context`, the one context
rule). Errors are one-line NumgptErrors that say what to change.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import NumgptError, describe, whole_number
from ..generate import encode_prompt
from ..model import check_context

Prompt = str | Sequence[int]   # text, or token ids


def prompt_ids(lm, prompt: Prompt, *, max_new_tokens: int = 0, what: str = "text") -> list[int]:
    """The token ids of `prompt` (text, or ids already) for lm, checked: in the vocabulary, with
    max_new_tokens more within the context, and not empty (what="prompt": empty text is <|endoftext|>)."""
    if isinstance(prompt, str) and what == "prompt":
        ids = encode_prompt(lm.tokenizer, prompt)
    elif isinstance(prompt, str):
        ids = lm.encode(prompt)
    elif isinstance(prompt, (list, tuple)) or hasattr(prompt, "__array__"):
        ids = [whole_number(f"{what} token id", t, minimum=0) for t in list(prompt)]
        bad = [t for t in ids if t >= lm.config.vocab_size]
        if bad:
            raise NumgptError(f"token id {bad[0]} is outside the model's vocabulary (0..{lm.config.vocab_size - 1})")
    else:
        raise NumgptError(f"the {what} must be a str or a list of token ids, got {describe(prompt)}")
    if not ids:
        raise NumgptError(f"the {what} is empty: give at least one token's worth of text")
    check_context(lm.config, len(ids), max_new_tokens,
                  fix=f"shorten the {what}" + (" or ask for fewer new tokens" if max_new_tokens else ""))
    return ids


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's own text (U+FFFD where a token holds part of a UTF-8 character), for labels."""
    return [tokenizer.decode([int(i)]) for i in ids]


def index_in_range(name: str, value: object, count: int, what: str) -> int:
    """A layer or head number checked against how many the model has: one line naming the range."""
    index = whole_number(name, value, minimum=0)
    if index >= count:
        raise NumgptError(f"{name} {index} is out of range: the model has {count} {what} (0..{count - 1})")
    return index
