"""`numgpt recipe chat --out DIR`: the built-in chat model from nothing (numgpt.posttrain.recipe).

Every field of posttrain.recipe.ChatRecipe is a flag (--sft-iters, --n-layer, ...), generated here from
the dataclass, so the recipe's settings have one definition.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ..errors import NumgptError
from .paths import read_text

EPILOG = """\
examples:
  numgpt recipe chat --out runs/chat --text tinyshakespeare.txt      the shipped model's run (about an hour)
  numgpt recipe chat --out runs/chat --text tinyshakespeare.txt      again after Ctrl-C: continues where it stopped
  numgpt recipe chat --out runs/try --pretrain-iters 50 --sft-iters 20 --rl-iters 2 --n-layer 2 --n-embd 64
                                                                    a quick try of every stage

The stages: data (fortunes, chatterbot-corpus, the synthetic tasks), tokenizer, pretrain, sft, rl, evaluate.
Each writes DIR/<stage>/done.json when complete and is skipped on the next run; the model is DIR/model
(`numgpt chat --model DIR/model`). Needs Debian's fortunes (apt-get install fortunes) and
chatterbot-corpus (pip install chatterbot-corpus)."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add `numgpt recipe chat` to `numgpt`'s parser."""
    from ..posttrain.recipe import STAGES, ChatRecipe

    p = sub.add_parser("recipe", help="train a model by a whole recipe (chat: the built-in chat model)",
                       description="Train a model from nothing by a recipe of stages.")
    recipes = p.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    c = recipes.add_parser("chat", help="tokenizer, pre-training, SFT, RL: a chat model from nothing",
                           description="The built-in chat model from nothing: " + ", ".join(STAGES) + ".",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="DIR", help="the recipe's folder (new, or a run to continue)")
    c.add_argument("--until", choices=STAGES, help="stop after this stage (the next run continues)")
    group = c.add_argument_group("the recipe (posttrain.recipe.ChatRecipe; the defaults made the shipped model)")
    for f in dataclasses.fields(ChatRecipe):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "texts":
            group.add_argument("--text", dest="texts", action="append", default=[], metavar="FILE",
                               help="a UTF-8 text people wrote, added to pre-training (repeatable; "
                                    "e.g. tinyshakespeare.txt)")
        elif f.name == "packaged_texts":
            group.add_argument("--no-packaged-texts", dest="packaged_texts", action="store_false",
                               help="leave out Debian's fortunes and chatterbot-corpus (only --text and the tasks)")
        elif f.name == "rl_families":
            group.add_argument(flag, default=",".join(f.default), metavar="LIST",
                               help=f"{f.metadata['help']}, comma-separated ({','.join(f.default)})")
        else:
            group.add_argument(flag, type=type(f.default), default=f.default, metavar="N" if isinstance(
                f.default, int) else "X", help=f"{f.metadata['help']} ({f.default})")
    c.set_defaults(run=run_recipe)


def run_recipe(args) -> int:
    from ..posttrain.recipe import MODEL, ChatRecipe, run_chat_recipe
    from ..training.loop import Terminated

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ChatRecipe)}
    values["texts"] = tuple(str(Path(t).resolve()) for t in values["texts"])
    values["rl_families"] = tuple(x.strip() for x in values["rl_families"].split(",") if x.strip())
    for t in values["texts"]:
        read_text(t)                                   # a folder, a missing file, not UTF-8: one line, now
    try:
        recipe = ChatRecipe(**values)
    except (TypeError, ValueError) as e:
        raise NumgptError(str(e)) from None
    start = time.perf_counter()
    say = lambda line: print(line, file=sys.stderr, flush=True)   # noqa: E731
    try:
        records = run_chat_recipe(recipe, args.out, say=say, train=_train_with_progress, until=args.until)
    except KeyboardInterrupt as e:
        saved = f" ({e})" if str(e) else ""
        how, code = ("stopped by SIGTERM", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"{how}{saved}; run the same command again to continue from there", file=sys.stderr)
        return code
    print(stage_table(records), flush=True)
    model = Path(args.out) / MODEL
    ended = f"the model is {model}" if model.is_dir() else f"stopped after {args.until}: no model yet"
    print(f"recipe: {time.perf_counter() - start:.0f} s in this run; {ended}", file=sys.stderr)
    return 0


def _train_with_progress(run, label: str):
    """A stage's training with a progress bar (numgpt train's), headed by what it trains."""
    from ..params import count_params
    from ..training.loop import train
    from .train_commands import _train_with_progress as with_bar

    tc = run.tc
    print(f"{label}: {run.description}: {count_params(run.config) / 1e6:.2f}M parameters, {tc.max_iters} steps",
          file=sys.stderr)
    if label == "rl":                                  # its own figures: reward, KL, held-out pass@1
        from ..training.comm import SingleProcess
        from .rl_commands import _train_with_progress as rl_bar
        return rl_bar(run, SingleProcess(), shorter="--rl-iters N")
    return with_bar(run.state, run.config, tc, run.data, run.folder,
                    lambda *a, **kw: train(*a, objective=run.objective, **kw), shorter=f"--{label}-iters N")


def stage_table(records: dict) -> str:
    """Each stage's seconds and its headline figures, then the evaluation per model and family, as Markdown."""
    rows = ["| stage | seconds | figures |", "|---|---:|---|"]
    for name, record in records.items():
        shown = ", ".join(f"{k} {v}" for k, v in record.items()
                          if k not in ("stage", "seconds") and not isinstance(v, dict))
        rows.append(f"| {name} | {record['seconds']:.0f} | {shown} |")
    rows.append(f"| all | {sum(r['seconds'] for r in records.values()):.0f} | |")
    scored = {k: v for k, v in records.get("evaluate", {}).items() if isinstance(v, dict)}
    if scored:
        families = list(next(iter(scored.values()))["exact_match"])
        rows += ["", "| model | " + " | ".join(families) + " | all | format | bits/byte |",
                 "|---|" + "---:|" * (len(families) + 3)]
        for model, s in scored.items():
            rows.append(f"| {model} | " + " | ".join(f"{s['exact_match'][f]:.1%}" for f in families)
                        + f" | {s['exact_match_all']:.1%} | {s['format_compliance']:.1%} | {s['bits_per_byte']:.3f} |")
    return "\n".join(rows)
