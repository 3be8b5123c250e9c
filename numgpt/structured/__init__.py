"""Structured outputs: generation constrained to a regular expression or a JSON schema.

    constraint = build_constraint(tokenizer, regex=r"\\d{3}-\\d{4}")          # or json_schema={...}, json_object=True
    lm.generate("Call ", regex=r"\\d{3}-\\d{4}")                              # what LanguageModel does with it

regex.py compiles a regular expression into a DFA over UTF-8 bytes; schema.py turns a JSON schema (a
supported subset) into such an expression; automaton.py lifts the DFA to the model's tokens. The result,
a Constraint, goes into SamplingOptions(constraint=...): the sampler's first stage (numgpt/sampling.py)
sets every token that would leave the language to -inf, and the end-of-text token is allowed only where
the text so far is a whole match. So a generation that ends by itself ("eos", also where a whole match
can take no more tokens) always matches; one cut by max_new_tokens ("length") may not -- as OpenAI's
API, which returns finish_reason "length" with invalid JSON then. Stop strings are refused beside a
constraint (generate.STOP_WITH_CONSTRAINT): they would cut a text that still ended as a stop.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Collection

from ..errors import NumgptError
from .automaton import Constraint, TokenAutomaton, token_bytes_of
from .regex import DFA, MAX_STATES, RegexError, compile_regex, compile_tree, parse, shown
from .schema import SchemaError, json_object, schema_to_regex

__all__ = ["Constraint", "DFA", "RegexError", "SchemaError", "TokenAutomaton", "build_constraint", "check_structured",
           "compile_regex", "schema_to_regex"]

_AUTOMATA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # tokenizer -> {key: TokenAutomaton}
_LOCK = threading.Lock()
_KEPT = 32                                                             # automata kept per tokenizer


def build_constraint(tokenizer, *, regex: str | None = None, json_schema=None, json_object_mode: bool = False,
                     end_ids: Collection[int] | None = None, vocab_size: int | None = None,
                     max_states: int = MAX_STATES) -> Constraint:
    """A Constraint for exactly one of: `regex` (the whole text must match, as re.fullmatch), `json_schema`
    (a dict or its JSON text), `json_object_mode` (any JSON object, OpenAI's json_object).

    end_ids: the tokens that end the text (default: <|endoftext|>). vocab_size: the model's, when it has
    fewer ids than the tokenizer. The automaton is kept per tokenizer (the 32 latest), so a schema used
    again reuses the allowed-token sets it already computed. Errors are one-line NumgptErrors.
    """
    pattern, what = _pattern(regex, json_schema, json_object_mode)
    ends = tuple(sorted({tokenizer.eot_id} - {None} if end_ids is None else set(end_ids)))
    key = (pattern, ends, vocab_size, max_states)
    with _LOCK:
        kept = _AUTOMATA.setdefault(tokenizer, {})
        automaton = kept.pop(key, None)
    if automaton is None:
        dfa = _compile(pattern, what, max_states)
        automaton = TokenAutomaton(dfa, token_bytes_of(tokenizer, vocab_size), ends)
        if automaton.complete(0):
            raise RegexError(f"only the empty text satisfies {what}: there is nothing to generate")
    with _LOCK:
        kept[key] = automaton                                           # newest last
        while len(kept) > _KEPT:
            kept.pop(next(iter(kept)))
    return Constraint(automaton, what if regex is None else f"regex {shown(regex)}")


def check_structured(*, regex: str | None = None, json_schema=None, json_object_mode: bool = False,
                     max_states: int = MAX_STATES) -> DFA:
    """The DFA `build_constraint` would lift to tokens, without a tokenizer: what the CLI checks before a
    model loads (the same one-line errors)."""
    pattern, what = _pattern(regex, json_schema, json_object_mode)
    return _compile(pattern, what, max_states)


def _pattern(regex: str | None, json_schema, json_object_mode: bool) -> tuple[str, str]:
    """(the regex, how errors name it) of exactly one of the three ways to constrain a text."""
    if json_object_mode not in (True, False):
        raise NumgptError(f"json_object must be True or False, got {json_object_mode!r}")
    given = [name for name, v in (("regex", regex), ("json_schema", json_schema)) if v is not None]
    given += ["json_object"] if json_object_mode else []
    if len(given) != 1:
        raise NumgptError("give exactly one of regex, json_schema, json_object" +
                          (f" (got {' and '.join(given)})" if given else ""))
    if regex is not None:
        if not isinstance(regex, str):
            raise RegexError(f"regex must be a string, got {type(regex).__name__}")
        return regex, f"the regex {shown(regex)}"
    if json_schema is not None:
        try:
            return schema_to_regex(json_schema), "the JSON schema"
        except RecursionError:
            raise SchemaError("the JSON schema is nested too deeply") from None
    return json_object(), "json_object"


def _compile(pattern: str, what: str, max_states: int) -> DFA:
    try:
        return compile_tree(parse(pattern), pattern=pattern, max_states=max_states, what=what)
    except RecursionError:                       # a backstop: the parser and the schema limit nesting first
        raise RegexError(f"{what} is nested too deeply") from None
