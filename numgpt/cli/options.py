"""The decoding flags, generated from the option dataclasses: each option is defined once, as a field of
SamplingOptions or GenerationOptions with its help, metavar and flag name in the field's metadata
(sampling.option), and every command offers it with the same name, type, default and rules -- as
llama.cpp's common/arg.cpp defines each option once.

How a command uses it:

    from .options import add_decoding_flags, decoding_options_from_args
    add_decoding_flags(p)                                            # every decoding flag
    add_decoding_flags(p, only=SAMPLING_FIELDS)                      # one token's choice (explain sampling)
    add_decoding_flags(p, exclude=("num_return_sequences", "sliding_window", "window_stride"))
    ...
    options = decoding_options_from_args(args)   # a GenerationOptions, checked before any loading
    lm.stream(prompt, **options.as_mapping())    # or options.sampling, options.max_new_tokens, ...

`only` / `exclude` take field names (SAMPLING_FIELDS, GENERATION_FIELDS list them). A flag left out is
not offered, so argparse refuses it by name. Every flag defaults to "not given", so the options are the
dataclasses' defaults plus what was typed (`decoding_kwargs(args)` gives just what was typed); --help
shows the dataclasses' defaults. One rule across flags: --greedy with a sampling-only flag (temperature,
top-k, top-p, min-p: the options of sampling.RULES' sampling-only rules) is refused, as it could have no
effect.

Messages: the library's NumgptErrors name Python parameters (`max_new_tokens`, `sliding_window=True`);
`flag_message` rewrites them with the flags of the command that failed (`--max-new-tokens`,
`--sliding-window`), which numgpt.cli.main does for every command that has this group.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from dataclasses import Field, fields
from typing import Any

from ..errors import NumgptError
from ..generate import GenerationOptions
from ..sampling import SAMPLING_ONLY_OPTIONS, SamplingOptions

SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingOptions) if "help" in f.metadata)   # constraint: no flag
GENERATION_FIELDS = tuple(f.name for f in fields(GenerationOptions) if "help" in f.metadata)
# --help order: how many tokens, how each is picked, then when and how often to stop
FLAG_ORDER = ("max_new_tokens",) + SAMPLING_FIELDS + GENERATION_FIELDS[1:]
FIELDS: dict[str, Field] = {f.name: f for f in (*fields(SamplingOptions), *fields(GenerationOptions))
                            if "help" in f.metadata}


def flag_of(name: str) -> str:
    """The flag of a field: its metadata's, else --name-with-dashes."""
    return FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")


def add_decoding_flags(parser: argparse.ArgumentParser, *, only: Iterable[str] | None = None,
                       exclude: Iterable[str] = (), shown_defaults: Mapping[str, str] | None = None,
                       title: str = "decoding (names as in transformers / llama.cpp)") -> argparse._ArgumentGroup:
    """Add the decoding flags (all, or `only` these fields, minus `exclude`) as one argument group.
    shown_defaults: a field's default as --help should say it, where the command decides it itself."""
    names = list(FLAG_ORDER if only is None else only)
    unknown = sorted(set(names) - set(FIELDS) | set(exclude) - set(FIELDS))
    if unknown:
        raise ValueError(f"not a decoding option with a flag: {', '.join(unknown)}")
    names = [n for n in FLAG_ORDER if n in names and n not in set(exclude)]
    shown = dict(shown_defaults or {})
    group = parser.add_argument_group(title)
    for name in names:
        _add_flag(group, FIELDS[name], shown.get(name))
    parser.set_defaults(decoding_fields=tuple(names), flag_names=flag_vocabulary(names))
    return group


def _add_flag(group: argparse._ArgumentGroup, f: Field, shown_default: str | None) -> None:
    meta = f.metadata
    flags = [flag_of(f.name)] + ([meta["short"]] if meta["short"] else [])
    common = dict(dest=f.name, default=None)
    if isinstance(f.default, bool):                 # a switch; an inverting flag (--greedy) sets not-default
        group.add_argument(*flags, action="store_const", const=not f.default, help=meta["help"], **common)
        return
    default = shown_default or (None if f.default in (None, ()) else str(f.default))
    text = meta["help"] + (f" (default {default})" if default else "")
    if isinstance(f.default, tuple):                # repeatable; each item parsed in decoding_kwargs
        group.add_argument(*flags, action="append", metavar=meta["metavar"], help=text, **common)
        return
    kind = float if "float" in str(f.type) else int
    group.add_argument(*flags, type=kind, metavar=meta["metavar"], help=text, **common)


def decoding_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options typed on the command line, as keyword options (field name -> value), checked
    together (GenerationOptions) before any loading."""
    given: dict[str, Any] = {}
    for name in getattr(args, "decoding_fields", ()):
        value = getattr(args, name)
        if value is None:
            continue
        parse = FIELDS[name].metadata["parse"]
        given[name] = tuple(parse(v) for v in value) if parse else value
    if given.get("do_sample") is False:
        pointless = [n for n in given if n in SAMPLING_ONLY_OPTIONS or n == "seed"]   # (no draw to seed)
        if pointless:
            raise NumgptError(f"--greedy always takes the most likely token, so {flag_of(pointless[0])} has no "
                              "effect; drop one of them")
    GenerationOptions.from_mapping(given)
    return given


def decoding_options_from_args(args: argparse.Namespace) -> GenerationOptions:
    """The GenerationOptions of the decoding flags (defaults for those not typed), checked; its
    .sampling is the SamplingOptions for commands that pick one token."""
    return GenerationOptions.from_mapping(decoding_kwargs(args))


def flag_vocabulary(names: Iterable[str]) -> dict[str, str]:
    """Python spelling -> flag for `flag_message`: a field's name, and a switch as name=value
    (sliding_window=True -> --sliding-window, do_sample=False -> --greedy)."""
    out = {}
    for name in names:
        f = FIELDS[name]
        key = f"{name}={not f.default}" if isinstance(f.default, bool) else name
        out[key] = flag_of(name)
    return out


def command_flag_names(args: argparse.Namespace) -> dict[str, str]:
    """The vocabulary that says a library message's Python names as the command's flags: every option of
    the command (cli.name_flags: dest -> its long option), under the names it lists by hand (`flag_names`:
    those that differ, such as "lr=" or "force=True")."""
    return {**getattr(args, "own_flag_names", {}), **getattr(args, "flag_names", {})}


def flag_message(message: str, vocabulary: Mapping[str, str]) -> str:
    """A library message with its Python option names replaced by the command's flags. A name with an
    underscore or '=' is replaced wherever it stands as a word; a one-word name (temperature, seed, stop)
    only where it starts a rule ('seed must be ...'), so the English words are left alone."""
    if not vocabulary:
        return message
    words = sorted(vocabulary, key=len, reverse=True)
    pattern = "|".join(re.escape(w) + ("" if "_" in w or "=" in w else "(?= must)") for w in words)
    return re.sub(rf"(?<![\w.=-])(?:{pattern})(?![\w=])", lambda m: vocabulary[m.group(0)], message)


# ---- speculative decoding: the flags of `numgpt generate` and `numgpt serve` (one definition) -----------

SPECULATIVE_FLAGS = {"speculative": "--speculative", "num_draft": "--num-draft", "draft_model": "--draft-model",
                     "speculative='ngram'": "--speculative ngram", "speculative='draft'": "--speculative draft"}


def add_speculative_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--speculative ngram|draft, --draft-model M, --num-draft K (numgpt/speculative.py). Call it after
    add_decoding_flags: their messages' Python names are said as these flags too."""
    from ..generate import DEFAULT_NUM_DRAFT
    from ..speculative import METHODS

    group = parser.add_argument_group("speculative decoding (fewer forwards of the model: greedy gives the same "
                                      "tokens as without it, sampling the same distribution)")
    group.add_argument("--speculative", choices=METHODS, default=None,
                       help="ngram: draft tokens by copying what followed the last 3 tokens where they occurred "
                            "earlier in the prompt and output (prompt lookup); draft: draft them with --draft-model, "
                            "while it is confident")
    group.add_argument("--draft-model", metavar="NAME_OR_FOLDER", default=None,
                       help="with --speculative draft: a smaller model with the same tokenizer")
    group.add_argument("--num-draft", type=int, metavar="K", default=None,
                       help=f"the most tokens drafted per forward of the model, >= 1 (default {DEFAULT_NUM_DRAFT}); "
                            "each sequence drafts fewer after a rejected draft and doubles again while its drafts "
                            "hold")
    parser.set_defaults(flag_names={**(parser.get_default("flag_names") or {}), **SPECULATIVE_FLAGS})
    return group


def speculative_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The speculative options typed (speculative, num_draft; the draft model is the caller's to load),
    checked before any loading."""
    given = {k: getattr(args, k) for k in ("speculative", "num_draft") if getattr(args, k, None) is not None}
    if getattr(args, "draft_model", None) is not None and given.get("speculative") != "draft":
        raise NumgptError("--draft-model applies only with --speculative draft; add it, or drop --draft-model")
    if given.get("speculative") == "draft" and getattr(args, "draft_model", None) is None:
        raise NumgptError("--speculative draft needs --draft-model M (a smaller model with the same tokenizer)")
    GenerationOptions.from_mapping(given)
    return given


STRUCTURED_FLAGS = {"regex": "--regex", "json_schema": "--json-schema"}


def add_structured_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--regex R and --json-schema FILE (structured outputs, numgpt/structured)."""
    group = parser.add_argument_group("structured output (the text can end only where it matches)")
    group.add_argument("--regex", metavar="R", default=None,
                       help=r"the whole new text matches R (as Python's re.fullmatch), e.g. '\d{3}-\d{4}'")
    group.add_argument("--json-schema", metavar="FILE", default=None,
                       help="the new text is JSON valid against the schema in FILE. The subset of JSON Schema "
                            "OpenAI's structured outputs take, plus bounds: every type; properties, required, "
                            "additionalProperties; items, minItems/maxItems; minLength/maxLength or pattern; "
                            "integer minimum/maximum (exclusive too); enum, const, anyOf; $ref into $defs. "
                            "Others (oneOf, allOf, not, format, number bounds, ...) are refused by name")
    parser.set_defaults(flag_names={**(parser.get_default("flag_names") or {}), **STRUCTURED_FLAGS})
    return group


def structured_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """{"regex": R} or {"json_schema": schema} from the flags, the file read and the expression compiled
    (errors in one line) before any model loads."""
    import json
    from pathlib import Path

    from ..structured import check_structured
    regex, schema_file = getattr(args, "regex", None), getattr(args, "json_schema", None)
    if regex is not None and schema_file is not None:
        raise NumgptError("--regex and --json-schema both constrain the text: give one of them")
    if regex is not None:
        check_structured(regex=regex)
        return {"regex": regex}
    if schema_file is None:
        return {}
    try:
        schema = json.loads(Path(schema_file).read_text(encoding="utf-8"))
    except OSError as e:
        raise NumgptError(f"cannot read --json-schema {schema_file}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NumgptError(f"--json-schema {schema_file} is not JSON: {e}") from None
    check_structured(json_schema=schema)
    return {"json_schema": schema}


def name_list(text: str, flag: str) -> list[str]:
    """A comma-separated list of names (--families, --categories), blanks dropped; a name given twice is
    refused (it doubled that name's share of the data, and a held-out split drew the same records twice)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise NumgptError(f"{flag}: {', '.join(twice)} named twice; give each once")
    return names
