"""`numgpt average`: one model whose weights are the mean of several models fine-tuned from one start (a
model soup). The arithmetic is numgpt.posttrain.average; this module reads the flags, checks, and writes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import NumgptError
from .groups import subcommand
from .paths import check_apart, model_folder

COMMAND, WEIGHTS = "average", "--weights"

EXAMPLES = """\
examples:
  numgpt average runs/dpo_s1/latest runs/dpo_s2/latest runs/dpo_s3/latest --out runs/dpo_soup
  numgpt average runs/a/best runs/b/best --weights 2,1 --out runs/ab       two thirds a, one third b
  numgpt chat --model runs/dpo_soup

Every parameter of --out is the weighted mean of the models' (equal weights unless --weights; the weights
are scaled to sum to 1). The models must share their shape, tokenizer and chat template, and should be
fine-tuned from one start: DPO, SFT or RL runs from the same model that differ in their seed, their data's
order or their settings. There, averaging keeps what the runs agree on and cancels part of what each learned
by chance (BENCHMARKS.md, "Averaging DPO runs": three DPO seeds averaged beat the mean of the three on every
test of the exact checker). Models trained from different random starts average to noise. A LoRA run's
checkpoint is averaged with its adapter merged. A model given twice is refused: raise its share with
--weights. --out is a plain Hugging Face GPT-2 folder with the first model's tokenizer files; the models are
added one at a time, so memory does not grow with their number.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to `numgpt`'s parser."""
    p = subcommand(sub, COMMAND, help="average the weights of models fine-tuned from one start (a model soup)",
                   description="Write one model whose weights are the mean of several models' (a model soup, or "
                   "checkpoint averaging).", epilog=EXAMPLES)
    p.add_argument("models", nargs="+", metavar="MODEL", help="two or more model folders or runs (RUN/latest, "
                   "RUN/best), or 'builtin', 'chat', a cached hub name")
    p.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="DIR", help="the averaged model's folder (new or empty)")
    p.add_argument(WEIGHTS, metavar="W,W,...", help="one weight per model, scaled to sum to 1 (equal)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(run=run_average)


def joined_weights(argv: list[str]) -> list[str]:
    """`numgpt average`'s argv with `--weights -1,2` read as `--weights=-1,2`. argparse takes a word that
    starts with '-' and is not one plain number (-1,2 is not) for an option, and would say --weights has no
    value; joined, the weights reach their own checks, which say what is wrong with them."""
    if argv[:1] != [COMMAND]:
        return list(argv)
    out: list[str] = []
    for word in argv:
        if out and out[-1] == WEIGHTS and _is_weights_value(word):
            out[-1] = f"{WEIGHTS}={word}"
        else:
            out.append(word)
    return out


def _is_weights_value(word: str) -> bool:
    """Whether a word that follows --weights is its value, even if it starts with '-': a list (no option has a
    comma) or a number (-1, -0.5, -inf). An option (--out, -o) is not, so --weights without a value is still
    argparse's error."""
    try:
        float(word)
    except ValueError:
        return "," in word
    return True


def parse_weights(text: str | None) -> list[float] | None:
    """--weights '2,1,1' -> [2.0, 1.0, 1.0] (one line naming the part that is not a number)."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise NumgptError(f"{WEIGHTS}: {part.strip()!r} is not a number; give one number per model, "
                              "separated by commas (2,1,1)") from None
    return out


def run_average(args) -> int:
    """`numgpt average`: every input resolved and checked against --out first, then the models added to a
    running float64 sum one at a time (float32 files memory-mapped), and the mean written whole (or nothing)."""
    from ..atomic import write_folder_atomically
    from ..formats import hf_cache_dir, resolve_model, save_checkpoint
    from ..lm import load
    from ..posttrain.average import add_weighted, as_params, averaging_bytes, check_same_kind, mixing_weights
    from ..training.memory import available_memory, gib

    weights = mixing_weights(parse_weights(args.weights), len(args.models))
    out = model_folder(args.out, flag="--out", force=args.force, what="averaged model")
    cache = hf_cache_dir(os.environ)
    folders = [resolve_model(name, cache_dir=cache, download=False) for name in args.models]
    check_inputs(args.models, folders, out)
    first = load(folders[0], cache_dir=cache, mmap=True)
    need, free = averaging_bytes(first.config), available_memory()
    if free is not None and need > free:
        raise NumgptError(f"averaging models of {first.config.n_layer} layers x {first.config.n_embd} channels "
                          f"needs {gib(need)} GiB of memory and {gib(free)} GiB is free; close other programs "
                          "or use a machine with more memory")
    total = add_weighted(None, first.params, first.config, float(weights[0]))
    for name, folder, w in zip(args.models[1:], folders[1:], weights[1:]):
        model = load(folder, cache_dir=cache, mmap=True)
        check_same_kind(first, model, args.models[0], name)
        total = add_weighted(total, model.params, model.config, float(w))
        del model                                       # its weights and tokenizer, before the next loads
    params = as_params(total)
    write_folder_atomically(out, lambda tmp: save_checkpoint(tmp, first.config, params, tokenizer=first.tokenizer))
    shares = ", ".join(f"{name} {w:.3g}" for name, w in zip(args.models, weights))
    print(f"averaged {len(args.models)} models ({shares}): {out}", file=sys.stderr)
    return 0


def check_inputs(names: list[str], folders: list[Path], out: Path) -> None:
    """No input twice (that is a weight: --weights says it openly), and --out neither an input, inside one,
    nor holding one (--force would delete it)."""
    seen: dict[Path, str] = {}
    for name, folder in zip(names, folders):
        check_apart(out, name, folder)
        key = folder.resolve()
        if key in seen:
            raise NumgptError(f"{name}: the same model as {seen[key]} ({key}); to count a model more than once, "
                              "give it once and raise its share with --weights")
        seen[key] = name
