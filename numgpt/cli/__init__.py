"""The `numgpt` command: one argparse parser, one subcommand per job.

Each area registers its subcommands from its own module (tokenizer, inference, training). Only this
package reads argv or prints; user mistakes (NumgptError, missing files) become one line on stderr and
exit status 2, never a traceback, with the library's Python option names said as the command's flags
(options.flag_message).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import NumgptError
from .paths import surrogate_byte

DESCRIPTION = """\
numgpt: GPT-2 from scratch in NumPy -- tokenizer, inference, generation, training and fine-tuning.

examples:
  numgpt generate "ROMEO:"                   continue a prompt with the built-in Shakespeare model
  numgpt generate --model gpt2 --temperature 0.8 --top-k 40 "Once upon a time"
  numgpt next "ROMEO: I"                     the next-token distribution
  numgpt perplexity text.txt                 perplexity and bits per byte of a text
  numgpt embed "ROMEO: I" "JULIET: O"        embedding vectors (pooled final hidden states) as JSON lines
  numgpt tokenize --explain "Mississippilessly"
  numgpt prepare input.txt --out data/mine --vocab-size 1024
  numgpt train data/mine --out runs/mine     train a GPT-2 on it (--init gpt2 to fine-tune)
  numgpt data synth --n 2000 -o chat.jsonl   conversations with exact answers, OpenAI's fine-tuning format
  numgpt sft chat.jsonl --init builtin --out runs/sft   teach a model to chat (loss on its replies only)
  numgpt classify train data.csv --init builtin --out runs/clf   a classification head (--lora-rank R: LoRA)
  numgpt sql export --db m.duckdb            GPT-2 in SQL: then numgpt sql generate --db m.duckdb "ROMEO:"
  numgpt serve                               an OpenAI-compatible server on http://127.0.0.1:8000
  numgpt explain attention "ROMEO: I will" --layer 1 -o attn.png   see GPT-2 at work (attention, sampling, kvcache, tokens)

--model takes a Hugging Face GPT-2 folder, a run of `numgpt train`, builtin (the built-in model), or a
name in the Hugging Face cache (gpt2, openai-community/gpt2-medium). Run `numgpt COMMAND --help` for each command's options.
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes (a bad value, a missing argument, an unknown option) are one line
    on stderr, as every other error of numgpt's, with where to look: argparse printed its usage first."""

    def error(self, message: str):
        self.exit(2, f"numgpt: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineParser(
        prog="numgpt", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"numgpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(sub)
    parser.set_defaults(commands=sub.choices)      # name -> subcommand parser, for `parse`'s errors
    for command in sub.choices.values():
        name_flags(command)
    return parser


def name_flags(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command the vocabulary that says the library's parameter names as its own flags
    (`own_flag_names`: dest -> its long option; layer -> --layer), for the error messages
    (options.command_flag_names)."""
    own = {a.dest: max(a.option_strings, key=len) for a in parser._actions
           if any(o.startswith("--") for o in a.option_strings) and a.dest not in ("help", argparse.SUPPRESS)}
    positional = {a.dest: a.metavar or a.dest.upper() for a in parser._actions
                  if not a.option_strings and isinstance(a.metavar or a.dest, str) and a.dest != argparse.SUPPRESS}
    parser.set_defaults(own_flag_names=own, own_positional_names=positional)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                name_flags(child)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that an unknown option is reported by its subcommand's parser (its usage, not
    the top-level one) with the dashed spelling suggested: --top_k -> did you mean --top-k?"""
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    owner = args.commands.get(getattr(args, "command", None) or "", parser)
    known = set(owner.format_help().replace(",", " ").split())   # every option string the command has
    hints = []
    for word in extra:
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag.replace("_", "-") in known:
            hints.append(f"{flag} -> {flag.replace('_', '-')}")
    owner.error(f"unrecognized arguments: {' '.join(extra)}"
                + (f" (numgpt's flags use dashes: {', '.join(hints)})" if hints else ""))


def check_utf8_arguments(args: argparse.Namespace) -> None:
    """Refuse a command-line argument that is not UTF-8 (Python keeps its bad bytes as lone surrogates),
    naming it, instead of silently reading the bytes as U+FFFD: --file refuses such a file the same way."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")                     # a lone surrogate (a bad byte kept) cannot be
            except UnicodeEncodeError as e:
                shown = (getattr(args, "own_flag_names", {}).get(name)
                         or getattr(args, "own_positional_names", {}).get(name) or "--" + name.replace("_", "-"))
                raise NumgptError(f"{shown} is not UTF-8 text (byte 0x{surrogate_byte(e):02x} at "
                                  f"character {e.start}); numgpt reads command-line text as UTF-8") from None


def check_seed(args: argparse.Namespace) -> None:
    """Every command's --seed is a NumPy seed, which cannot be negative: refused here, once for all of them,
    before any command draws from it."""
    seed = getattr(args, "seed", None)
    if isinstance(seed, int) and seed < 0:
        raise NumgptError(f"--seed must be a whole number >= 0, got {seed}")


def _registrars():
    """The modules that add subcommands; each has `register(subparsers)`."""
    from . import tokenizer_commands
    registrars = [tokenizer_commands.register]
    from . import train_commands  # training: prepare, train, plot
    registrars.append(train_commands.register)
    from . import inference_commands  # generate, next, perplexity, info
    registrars.append(inference_commands.register)
    from . import embed_commands  # embed: embedding vectors as JSON lines
    registrars.append(embed_commands.register)
    from . import sql_commands  # sql export, generate, next, tokenize, show (GPT-2 in SQL)
    registrars.append(sql_commands.register)
    from . import explain_commands  # explain attention, sampling, kvcache, tokens
    registrars.append(explain_commands.register)
    from . import serve_commands  # serve: the OpenAI-compatible server
    registrars.append(serve_commands.register)
    from . import data_commands  # data synth, check: fine-tuning data (numgpt.posttrain)
    registrars.append(data_commands.register)
    from . import classify_commands  # classify train, evaluate, predict (numgpt.posttrain.classify)
    registrars.append(classify_commands.register)
    from . import sft_commands  # sft: supervised fine-tuning on chat JSONL (numgpt.posttrain)
    registrars.append(sft_commands.register)
    from . import reward_commands  # reward train, score: a Bradley-Terry reward model (numgpt.posttrain.reward)
    registrars.append(reward_commands.register)
    from . import dpo_commands  # dpo: direct preference optimisation (numgpt.posttrain.dpo)
    registrars.append(dpo_commands.register)
    from . import rl_commands  # rl: GRPO on verifiable rewards (numgpt.posttrain.rl)
    registrars.append(rl_commands.register)
    from . import average_commands  # average: a model soup of runs fine-tuned from one start
    registrars.append(average_commands.register)
    from . import chat_commands  # chat: talk to a chat model in the terminal
    registrars.append(chat_commands.register)
    from . import recipe_commands  # recipe chat: the built-in chat model, from nothing
    registrars.append(recipe_commands.register)
    return registrars


def main(argv: list[str] | None = None) -> int:
    try:                              # (`import numgpt` loads nothing heavy: NumPy and the rest load here)
        from ..training.loop import Terminated, sigterm_as_interrupt
        from .average_commands import joined_weights     # `--weights -1,2`, which argparse takes for an option
        parser = build_parser()                      # imports every command's module: ~0.2 s
    except KeyboardInterrupt:
        print("numgpt: interrupted", file=sys.stderr)
        return 130
    args = parse(parser, joined_weights(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        check_utf8_arguments(args)
        check_seed(args)
        with warnings.catch_warnings(), sigterm_as_interrupt():
            # subtle: NumPy's "invalid value encountered" warnings from numgpt's own arithmetic would come
            # before the one-line error that names the cause (non-finite weights are checked after the forward)
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"numgpt(\.|$)")
            # SIGTERM (kill, timeout, a scheduler) stops every command as Ctrl-C does: its .tmp cleaned up and one
            # line said (the default action killed all but the trainers silently, leaving prepare's OUT.tmp)
            return int(args.run(args) or 0)
    except NumgptError as e:
        from .options import command_flag_names, flag_message   # the library names Python parameters
        print(f"numgpt: error: {flag_message(str(e), command_flag_names(args))}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"numgpt: error: no such file: {e.filename or e}", file=sys.stderr)
        return 2
    except OSError as e:  # permission, a folder where a file should be, a full disk: say which path and why
        if isinstance(e, BrokenPipeError):             # `numgpt generate ... | head`
            return 0
        where = f"{e.filename}: " if e.filename else ""
        print(f"numgpt: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if sys.stdout.isatty():       # a streamed text cut mid-line: the message on a line of its own
            print(flush=True)
        how, code = ("stopped by SIGTERM", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"numgpt: {how} {e}" if str(e) else f"numgpt: {how}", file=sys.stderr)   # what was kept
        return code
