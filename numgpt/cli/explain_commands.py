"""`numgpt explain attention|sampling|kvcache|tokens`: the teaching views of numgpt.teach, as tables on
the terminal, JSON (--json, the shape the server returns) or PNG pictures (-o, the `plot` extra).

This module reads flags and prints; the numbers come from numgpt.teach, which computes them with the
model's own functions. Output paths and matplotlib are checked before the model loads, so a mistake
costs nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import NumgptError
from .options import SAMPLING_FIELDS, add_decoding_flags, decoding_options_from_args
from .inference_commands import MODEL_HELP
from .paths import png_file

EXPLAIN_DESCRIPTION = """\
See GPT-2 at work on real weights: each view's numbers are the model's own (attention from the forward
pass itself, the sampler's stages from the sampler's own rules, the KV cache's work counted exactly).
docs/walkthrough.md maps every step of GPT-2 to the numgpt function that does it.
"""

EXPLAIN_EXAMPLES = """\
examples: (the built-in Shakespeare model unless --model says another)
  numgpt explain attention "ROMEO: I will not go" --layer 1 --head 2 -o attn.png
  numgpt explain attention "ROMEO: I will not go" --layer 1            every head of layer 1, as tables
  numgpt explain sampling "ROMEO: I will" --temperature 0.8 --top-k 8 --top-p 0.9 -o sampling.png
  numgpt explain kvcache "ROMEO: I will" --max-new-tokens 20 -o kv.png
  numgpt explain tokens "ROMEO: Mississippi"
"""

ATTENTION_EXAMPLES = """\
examples:
  numgpt explain attention "ROMEO: I will not go" --layer 1 --head 2 -o attn.png   one head's heatmap
  numgpt explain attention "ROMEO: I will not go" --layer 1 -o grid.png            every head of a layer
  numgpt explain attention "ROMEO: I will" --layer 0 --head 3                      the matrix as a table
  numgpt explain attention --model gpt2 "The cat sat on the mat" --layer 5 --json

Row t of a head's matrix is how token t spreads its attention over tokens 0..t (the causal mask: nothing
above the diagonal); each row sums to 1. Layers and heads count from 0.
"""

SAMPLING_EXAMPLES = """\
examples:
  numgpt explain sampling "ROMEO: I will" --temperature 0.8 --top-k 8 --top-p 0.9
  numgpt explain sampling "ROMEO: I will" --repetition-penalty 1.3 --top-p 0.9 -o sampling.png
  numgpt explain sampling "ROMEO: I will" --min-p 0.1 --logit-bias 321=-100
  numgpt explain sampling "ROMEO: I will" --greedy --json

The rules run in the sampler's order (numgpt.sampling.process_logits): logit bias, presence/frequency
penalties (over generated tokens: none here, so `numgpt serve`'s explain endpoint shows them), repetition
penalty, then, when sampling, temperature, top-k, top-p, min-p. The table's columns are the raw
distribution and the rules that are on. "-" marks a token a filter removed; "kept mass" is the
probability the distribution entering a filter gave the tokens it kept.
"""

KVCACHE_EXAMPLES = """\
examples:
  numgpt explain kvcache "ROMEO: I will" --max-new-tokens 20
  numgpt explain kvcache "ROMEO: I will" --max-new-tokens 40 -o kv.png
  numgpt explain kvcache --model gpt2 "The cat sat" --max-new-tokens 10 --json

Each step runs the real forward twice on the same (greedy) tokens: with the cache (the prompt once, then
one position per token) and without it (the whole sequence again). Multiply-adds are counted exactly
from the config (the matrix products the forward runs); times are measured, once per call.
"""

TOKENS_EXAMPLES = """\
examples:
  numgpt explain tokens "ROMEO: Mississippi"
  numgpt explain tokens --model gpt2 "Mississippilessly" --json

The model's own tokenizer, step by step: what `numgpt tokenize --explain` shows for GPT-2's vocabulary.
"""


def register(sub) -> None:
    """Add `explain` and its views to the `numgpt` subcommands."""
    p = sub.add_parser("explain", help="see each step of GPT-2 at work: attention, sampling, KV cache, tokens",
                       description=EXPLAIN_DESCRIPTION, epilog=EXPLAIN_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    views = p.add_subparsers(dest="view", metavar="VIEW")
    _register_attention(views)
    _register_sampling(views)
    _register_kvcache(views)
    _register_tokens(views)
    p.set_defaults(run=lambda args: _no_view(p))


def _no_view(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _view(views, name: str, help: str, epilog: str, text_help: str) -> argparse.ArgumentParser:
    p = views.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", metavar="TEXT", help=text_help)
    p.add_argument("--model", "-m", metavar="NAME_OR_FOLDER", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print the view as JSON (what the server returns)")
    return p


def _add_output(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-o", "--output", "--out", dest="output", metavar="PNG", help=f"draw {what} to this PNG (needs matplotlib: "
                   "pip install \"numgpt[plot]\"); .png is added if the name has no suffix")


def _register_attention(views) -> None:
    p = _view(views, "attention", "a layer's attention probabilities, one head or all", ATTENTION_EXAMPLES,
              "the text whose tokens attend to each other")
    p.add_argument("--layer", "-l", type=int, default=0, metavar="L", help="the layer, from 0 (0)")
    p.add_argument("--head", metavar="H", default="all", help="the head, from 0, or all (all)")
    _add_output(p, "the heatmap (a grid for --head all)")
    p.set_defaults(run=run_attention)


def _register_sampling(views) -> None:
    p = _view(views, "sampling", "the next-token distribution after each of the sampler's filters",
              SAMPLING_EXAMPLES, "the prompt whose next token is sampled")
    add_decoding_flags(p, only=SAMPLING_FIELDS, exclude=("presence_penalty", "frequency_penalty"),
                       title="the sampler's options (as numgpt generate's)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="the N most likely tokens of each stage (10)")
    _add_output(p, "the bars of each stage")
    p.set_defaults(run=run_sampling)


KVCACHE_TOKENS = 16   # explain kvcache's default: enough steps to see the two costs part


def _register_kvcache(views) -> None:
    p = _view(views, "kvcache", "work and time per generated token, with and without the KV cache",
              KVCACHE_EXAMPLES, "the prompt to continue")
    add_decoding_flags(p, only=("max_new_tokens",), shown_defaults={"max_new_tokens": str(KVCACHE_TOKENS)},
                       title="generation (greedy, as the view compares the two forwards on the same tokens)")
    _add_output(p, "the work and time per step")
    p.set_defaults(run=run_kvcache)


def _register_tokens(views) -> None:
    p = _view(views, "tokens", "the BPE steps that turn a text into the model's tokens", TOKENS_EXAMPLES,
              "the text to tokenize")
    p.set_defaults(run=run_tokens)


# ---------------------------------------------------------------------------------------------------


def run_attention(args) -> int:
    from ..teach import attention_view

    head = _head(args.head)
    out = _picture(args)
    lm = _load(args)
    view = attention_view(lm, args.text, layer=args.layer, head=head)
    if out is not None:
        from ..teach.plots import plot_attention
        print(f"wrote {plot_attention(view, out)}")
    elif args.json:
        _print_json(view)
    else:
        for head, weights in zip(view.heads, view.weights):
            print(f"layer {view.layer}, head {head}: row = attending token, column = attended token, % of its attention")
            print(attention_table(view.tokens, weights))
    return 0


def run_sampling(args) -> int:
    from ..teach import sampling_view

    if args.top < 1:
        raise NumgptError(f"--top must be >= 1, got {args.top}")
    options = decoding_options_from_args(args).sampling.as_mapping()   # checked before the model loads
    out = _picture(args)
    lm = _load(args)
    view = sampling_view(lm, args.text, top=args.top, **options)
    if out is not None:
        from ..teach.plots import plot_sampling
        print(f"wrote {plot_sampling(view, out)}")
    elif args.json:
        _print_json(view)
    else:
        print(sampling_table(view))
    return 0


def run_kvcache(args) -> int:
    from ..teach import kvcache_view

    n = KVCACHE_TOKENS if args.max_new_tokens is None else args.max_new_tokens
    if n < 1:
        raise NumgptError(f"max_new_tokens must be >= 1, got {n}")
    out = _picture(args)
    lm = _load(args)
    view = kvcache_view(lm, args.text, max_new_tokens=n)
    if args.json:
        _print_json(view)
    else:
        print(kvcache_table(view))
    if out is not None:
        from ..teach.plots import plot_kvcache
        print(f"wrote {plot_kvcache(view, out)}")
    return 0


def run_tokens(args) -> int:
    from ..teach import tokens_view
    from .tokenizer_commands import format_explanation

    if args.text == "":
        raise NumgptError("the text is empty: give some text to tokenize")
    lm = _load(args)
    if args.json:
        _print_json(tokens_view(lm.tokenizer, args.text))
    else:
        print(format_explanation(lm.tokenizer.explain(args.text, allowed_special="all")))
    return 0


# ---- tables ---------------------------------------------------------------------------------------------

def attention_table(tokens: list[str], weights: list[list[float]]) -> str:
    """A head's [T, T] matrix with token labels, as percentages; '.' above the diagonal (masked)."""
    labels = [_short(t) for t in tokens]
    width = max(6, *map(len, labels))
    lines = [" " * width + "  " + " ".join(f"{s:>6}" for s in labels)]
    for t, (name, row) in enumerate(zip(labels, weights)):
        cells = [f"{100 * w:6.1f}" if s <= t else f"{'.':>6}" for s, w in enumerate(row)]
        lines.append(f"{name:>{width}}  " + " ".join(cells))
    return "\n".join(lines)


def sampling_table(view) -> str:
    """Tokens (rows) by the stages that are on (columns): each stage's probability of the token, '-' where
    removed; the stages that are off are named below, and under greedy decoding the token it takes."""
    from ..sampling import SamplingOptions
    from ..teach.sampling_view import SAMPLING_ONLY

    stages = [s for s in view.stages if s.applied]
    off = [s for s in view.stages if not s.applied]
    heads = [SHORT.get(s.name, s.name.replace("_", " ")) for s in stages]
    widths = [max(9, len(h)) for h in heads]
    tokens = [repr(t.token) for t in stages[0].top]
    tw = max(len("kept mass"), *map(len, tokens))

    def row(first: str, label: str, cells) -> str:
        return f"{first:>6}  {label:<{tw}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths))

    lines = [row("id", "token", heads)]
    for k, token in enumerate(tokens):
        lines.append(row(str(stages[0].top[k].id), token,
                         ["-" if s.top[k].logit is None else f"{s.top[k].probability:.4f}" for s in stages]))
    lines.append(row("", "kept", [str(s.kept) for s in stages]))
    lines.append(row("", "kept mass", [f"{s.kept_mass:.4f}" for s in stages]))
    lines += [f"{s.name}: {s.note}" for s in stages[1:]]
    greedy = [s for s in off if s.name in SAMPLING_ONLY] if SamplingOptions.from_mapping(view.options).greedy else []
    off = [s for s in off if s not in greedy]
    if off:
        lines.append("off: " + ", ".join(s.name.replace("_", " ") for s in off))
    if greedy:                                                   # the last stage on decides: its likeliest token
        last = stages[-1].top
        best = max(range(len(tokens)), key=lambda k: -1.0 if last[k].logit is None else last[k].probability)
        lines.append(f"greedy: the next token is the likeliest, {tokens[best]} (id {last[best].id}); "
                     + ", ".join(s.name.replace("_", " ") for s in greedy) + " do not apply")
    return "\n".join(lines)


SHORT = {"presence_frequency_penalty": "presence/freq", "repetition_penalty": "repetition penalty"}


def kvcache_table(view) -> str:
    """One row per step: positions computed and reused, multiply-adds and milliseconds, both ways."""
    lines = [f"{'step':>4}  {'token':<12} {'computed':>8} {'reused':>6} {'MACs':>12} {'ms':>8}   "
             f"{'computed':>8} {'MACs':>12} {'ms':>8}  {'max |dlogit|':>12}",
             f"{'':>4}  {'':<12} {'--- with the cache ---':>37}   {'--- without the cache ---':>30}"]
    for s in view.steps:
        lines.append(f"{s.step:>4}  {repr(s.token):<12} {s.computed_cached:>8} {s.reused_cached:>6} "
                     f"{s.macs_cached:>12,} {1e3 * s.seconds_cached:>8.2f}   {s.computed_full:>8} "
                     f"{s.macs_full:>12,} {1e3 * s.seconds_full:>8.2f}  {s.max_logit_difference:>12.2e}")
    lines.append(f"{'all':>4}  {'':<12} {sum(s.computed_cached for s in view.steps):>8} "
                 f"{sum(s.reused_cached for s in view.steps):>6} {view.macs_cached:>12,} "
                 f"{1e3 * view.seconds_cached:>8.2f}   {sum(s.computed_full for s in view.steps):>8} "
                 f"{view.macs_full:>12,} {1e3 * view.seconds_full:>8.2f}")
    lines.append(f"without the cache: {view.macs_full / view.macs_cached:.1f}x the multiply-adds, "
                 f"{view.seconds_full / view.seconds_cached:.1f}x the time (measured)")
    return "\n".join(lines)


# ---- helpers --------------------------------------------------------------------------------------------

def _head(given: str) -> int | None:
    """--head: a number from 0, or all (None)."""
    if given == "all":
        return None
    try:
        return int(given)
    except ValueError:
        raise NumgptError(f"--head must be a head number (from 0) or all, got {given!r}") from None


def _picture(args) -> Path | None:
    """The -o PNG, checked (and matplotlib found) before any work; None without -o."""
    if args.output is None:
        return None
    from ..teach.plots import pyplot

    if args.json:
        raise NumgptError("-o draws a picture and --json prints the numbers; give one of them")
    out = png_file(args.output)
    pyplot()
    return out


def _load(args):
    from .inference_commands import load_model
    return load_model(args)


def _print_json(view) -> None:
    print(json.dumps(view.to_json(), ensure_ascii=False, indent=2))


def _short(token: str, width: int = 10) -> str:
    shown = repr(token)
    return shown if len(shown) <= width else shown[:width - 1] + "…"
