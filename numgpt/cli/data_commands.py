"""`numgpt data synth` (synthetic conversations with exact answers -> chat JSONL) and `numgpt data check`
(a chat or preference pairs JSONL file validated and counted), `numgpt data pairs`; `data fortunes` is in
classify_commands. The work is in numgpt.posttrain; this module reads flags, prints.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from ..errors import NumgptError
from .groups import command_group, subcommand
from .options import name_list
from .paths import input_file, output_file, read_text

SAMPLED_GROUP = 8           # data pairs --from-model: answers sampled per task, unless --group says
SAMPLED_TEMPERATURE = 1.0   # ... at this temperature, unless --temperature says
MOST_BAD_LINES = 50   # `data check` names this many bad lines at most, then stops

DATA_EXAMPLES = """\
examples:
  numgpt data synth --n 1000 -o train.jsonl                        every task family, the train split
  numgpt data synth --n 200 --split heldout --seed 1 -o heldout.jsonl   held-out templates and operands
  numgpt data synth --families add,sub --max-digits 4 --n 500 -o sums.jsonl
  numgpt data pairs --n 1000 -o pairs.jsonl                        preference pairs (right vs near-miss reply)
  numgpt data check train.jsonl                                    validate a chat or pairs JSONL file, count it
  numgpt data fortunes --categories computers,food,law -o f.jsonl  Debian's fortunes by category (for classify)
"""

SYNTH_EXAMPLES = """\
examples:
  numgpt data synth --n 1000 -o train.jsonl
  numgpt data synth --n 200 --split heldout -o heldout.jsonl
  numgpt data synth --families count,reverse --words mytext.txt --n 300 -o words.jsonl
  numgpt data synth --n 1000 --turns 3 -o chat.jsonl              conversations of 1 to 3 exchanges
  numgpt data synth --n 1000 --seed 7 -o train.jsonl --force       replace the file

Families: add, sub (multi-digit, with carries and borrows), count (a letter in a word), reverse (a word
backwards), next (what comes after a number, letter, weekday or month), convert (m/cm, km/m, kg/g, h/min,
min/s), identity (who numgpt is). Each line is OpenAI's fine-tuning format, {"messages": [...]}, with the
ground truth beside it ("family", "answer", "split", "template"). The held-out split uses question and
answer templates, and numbers and words, that the train split never does. The same --seed gives the same
file. The file is written whole or not at all.
"""

CHECK_EXAMPLES = """\
examples:
  numgpt data check train.jsonl

Each line must be {"messages": [...]}: an optional system message first, then user and assistant turns
alternating (user first, assistant last), text contents. Lines that carry a task ("family", "answer")
must also give that answer in their reference reply as the checker reads it (the last number or word).
"""


def register(sub) -> None:
    """Add `data synth` and `data check` to the `numgpt` subcommands."""
    s = command_group(sub, "data", help="fine-tuning data: synthetic conversations and preference pairs, "
                                         "fortunes for classify, a check of JSONL",
                      description="Fine-tuning data: synthetic conversations with exact answers (synth), preference "
                                  "pairs (pairs), Debian's fortunes as a labelled set for classify (fortunes), and a "
                                  "check of chat or pairs JSONL files in OpenAI's fine-tuning format (check).",
                      epilog=DATA_EXAMPLES)
    _register_synth(s)
    _register_pairs(s)
    _register_check(s)
    from .classify_commands import register_fortunes   # data fortunes: labelled text for classify
    register_fortunes(s)


def _add_task_flags(p: argparse.ArgumentParser, *, n_help: str, openers: str) -> None:
    """The synthetic tasks' flags that data synth and data pairs share (posttrain.synth's options);
    n_help: what --n counts; openers: what --system-rate is the fraction of."""
    from ..posttrain.synth import FAMILIES, Operands
    p.add_argument("--families", default=",".join(FAMILIES), metavar="LIST",
                   help=f"comma-separated task families (default: all: {','.join(FAMILIES)})")
    p.add_argument("--n", type=int, required=True, metavar="N", help=n_help)
    p.add_argument("--split", choices=["train", "heldout"], default="train",
                   help="which templates and operands (default train)")
    p.add_argument("--seed", type=int, default=0, help="the random seed (default 0)")
    p.add_argument("--words", metavar="TEXT_FILE", help="take the words of count and reverse from a UTF-8 text "
                   "file (default: a built-in list)")
    p.add_argument("--max-digits", type=int, default=Operands().max_digits, metavar="D",
                   help=f"numbers have 1..D digits (default {Operands().max_digits})")
    p.add_argument("--system-rate", type=float, default=0.2, metavar="P",
                   help=f"the fraction of {openers} that start with a system prompt (default 0.2)")


def _register_synth(sub) -> None:
    p = subcommand(sub, "synth", help="write synthetic conversations with exact answers (chat JSONL)",
                   description="Write synthetic conversations with exact answers as chat JSONL, for "
                               "fine-tuning and for RL with exact rewards.", epilog=SYNTH_EXAMPLES)
    _add_task_flags(p, n_help="how many conversations (an even mix)", openers="conversations")
    p.add_argument("--turns", type=int, default=1, metavar="K",
                   help="each conversation holds 1..K exchanges, the last one the task (default 1)")
    p.add_argument("-o", "--output", "--out", dest="output", required=True, metavar="FILE", help="the JSONL file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(run=run_synth)


PAIRS_EXAMPLES = """\
examples:
  numgpt data pairs --n 1000 -o pairs.jsonl
  numgpt data pairs --n 200 --split heldout --seed 1 -o heldout-pairs.jsonl
  numgpt data pairs --families add,sub --format-rate 0 --n 500 -o sums.jsonl
  numgpt data pairs --from-model chat --families add,sub --n 1000 -o sampled.jsonl

Each line is TRL's preference format with chat messages: {"prompt": [...], "chosen": [{"role": "assistant",
...}], "rejected": [...]}, the task's ground truth beside it ("family", "answer", "split", "template") and
"flaw", how the rejected reply is wrong: number (one digit changed or off by a carry), word (a near-miss
spelling, a neighbouring weekday, month or letter), name (an identity reply naming another model) or format
(no answer at all, at --format-rate). The chosen reply is the task's reference reply. For the reward model
(`numgpt reward train`) and DPO (`numgpt dpo`). The same --seed gives the same file.

--from-model M: the pairs come from the model's own answers instead. For each of the --n tasks it answers
--group times at --temperature; a right answer (by the exact checker; for a worked sum, every step
right) is chosen, a wrong one that ended with <|end|> is rejected ("flaw": "sampled"), and a task whose
answers are all right or all wrong gives no pair, so the file holds at most --n pairs (the count is
printed). The same --seed gives the same file.

--step-level (with --from-model): step-level pairs for DPO, the rejected side cut as Step-DPO cuts it.
The chosen reply is the task's whole reference reply; the rejected one is the model's first wrong answer
cut after its first sentence (a worked sum's step) that differs from the reference's, with no <|end|>
("cut": "rejected"). So the pair differs only from the slip on, and the steps after a slip (right given
the slip) are not pushed down with it. Each task with a wrong answer that ended with <|end|> gives a
pair. Meant for --families add,sub, whose working has one right wording; the reward model refuses these
pairs (it reads a whole reply). --step-level token cuts after the first differing token instead (a digit,
a word), so the pair differs only in the token where the answer went wrong and what the reference says
from there.

--chosen nearest (with --step-level): the right reply chosen and cut against is whichever of the task's
reference and the model's right samples starts most like the wrong answer, not always the reference. In
the families whose replies have several wordings (count, convert, next, reverse), a wrong answer worded
like a right one is then cut at its wrong number or word rather than at the first differing word.

--rejected greedy (with --from-model): the model's greedy answer is the rejected one when it is wrong
("flaw": "greedy"); a task it answers right greedily falls back to its first wrong sample ("flaw":
"sampled"). DPO then pushes down the mistakes greedy decoding makes, which are the ones a greedy reply
is judged by; a sampled mistake at --temperature 1 may be one greedy decoding never makes.
"""


def _register_pairs(sub) -> None:
    from ..posttrain.pairs import CHOSEN, FORMAT_RATE, REJECTED, SLIP_UNITS
    p = subcommand(sub, "pairs", help="write synthetic preference pairs: a right and a near-miss reply (JSONL)",
                   description="Write preference pairs made from the synthetic tasks: the reference reply "
                               "chosen, a plausible wrong one rejected.", epilog=PAIRS_EXAMPLES)
    _add_task_flags(p, n_help="how many pairs (an even mix of families)", openers="prompts")
    p.add_argument("--format-rate", type=float, metavar="P",
                   help=f"the fraction of synthetic rejected replies that give no answer at all (default {FORMAT_RATE})")
    m = p.add_argument_group("pairs from a model's own answers")
    m.add_argument("--from-model", metavar="MODEL", help="a chat model (a model folder, or 'chat') whose sampled "
                   "answers make the pairs: a right one chosen, a wrong one rejected")
    m.add_argument("--group", type=int, metavar="G", help=f"answers sampled per task (default {SAMPLED_GROUP})")
    m.add_argument("--temperature", type=float, metavar="T",
                   help=f"their temperature (default {SAMPLED_TEMPERATURE})")
    m.add_argument("--rejected", choices=REJECTED, default="sampled", help="which wrong answer is rejected: the "
                   "first wrong sample, or the greedy answer when it is wrong (below; default sampled)")
    m.add_argument("--step-level", nargs="?", const="sentence", choices=SLIP_UNITS, metavar="UNIT",
                   help="the reference reply chosen, the wrong answer cut after its first sentence (or with "
                   "'token', its first token) that differs from the reference's rejected (below)")
    m.add_argument("--chosen", choices=CHOSEN, default="reference", help="with --step-level: the right reply "
                   "chosen and cut against: the task's reference, or whichever of it and the right samples "
                   "starts most like the wrong answer (below; default reference)")
    p.add_argument("-o", "--out", "--output", dest="output", required=True, metavar="FILE",
                   help="the JSONL file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(run=run_pairs)


def _register_check(sub) -> None:
    p = subcommand(sub, "check", help="validate a chat or preference-pairs JSONL file and count it",
                   description="Validate a chat JSONL file (OpenAI's fine-tuning format) or a preference "
                               "pairs file (TRL's prompt/chosen/rejected) and print its counts per role "
                               "and per task family.", epilog=CHECK_EXAMPLES)
    p.add_argument("file", metavar="FILE", help="a chat JSONL file, or a preference pairs file")
    p.set_defaults(run=run_check)


def run_synth(args) -> int:
    import numpy as np

    from ..posttrain.chatdata import write_conversations
    from ..posttrain.synth import synthesize

    out, operands, families = _synth_options(args)
    tasks = synthesize(args.n, rng=np.random.default_rng(args.seed), families=families, split=args.split,
                       operands=operands, system_rate=args.system_rate, turns=args.turns)
    write_conversations(out, tasks)
    counts = Counter(t["family"] for t in tasks)
    print(f"wrote {len(tasks)} {args.split} conversation{'s' * (len(tasks) != 1)} to {out} "
          f"({', '.join(f'{f} {counts[f]}' for f in families if counts[f])})")
    return 0


def _synth_options(args) -> tuple[Path, object, list[str]]:
    """(output path, Operands, families) of `data synth` and `data pairs`, each flag checked."""
    from ..posttrain.synth import Operands, words_from_text

    out = Path(args.output)                            # (--seed below 0: cli.check_seed, for every command)
    if out.exists() and not out.is_dir() and not args.force:
        raise NumgptError(f"-o {out}: the file already exists; pass --force to replace it, or another path")
    output_file(out, flag="-o")
    operands = Operands(max_digits=args.max_digits)
    if args.words:
        words = words_from_text(read_text(args.words))
        if not words:
            raise NumgptError(f"--words {args.words}: no words of 3 to 12 ASCII letters in the file")
        operands = Operands(words=words, max_digits=args.max_digits)
    return out, operands, name_list(args.families, "--families")


def run_pairs(args) -> int:
    import numpy as np

    from ..posttrain.pairs import FORMAT_RATE, synthesize_pairs, write_pairs

    out, operands, families = _synth_options(args)
    if args.step_level and args.from_model is None:
        raise NumgptError("--step-level cuts a model's wrong answers, so it needs --from-model MODEL")
    if args.rejected != "sampled" and args.from_model is None:
        raise NumgptError(f"--rejected {args.rejected} picks among a model's answers, so it needs --from-model MODEL")
    if args.chosen != "reference" and not args.step_level:
        raise NumgptError(f"--chosen {args.chosen} picks the right reply step-level pairs cut against, so it needs "
                          "--step-level (and --from-model)")
    if args.from_model is not None:
        if args.format_rate is not None:
            raise NumgptError("--format-rate shapes synthetic rejected replies; with --from-model the model's own "
                              "wrong answers are rejected: leave it out")
        args.group = SAMPLED_GROUP if args.group is None else args.group
        args.temperature = SAMPLED_TEMPERATURE if args.temperature is None else args.temperature
        return _run_sampled_pairs(args, out, operands, families)
    for flag, value in (("--group", args.group), ("--temperature", args.temperature)):
        if value is not None:
            raise NumgptError(f"{flag} is for the answers --from-model MODEL samples; synthetic pairs sample none")
    pairs = synthesize_pairs(args.n, rng=np.random.default_rng(args.seed), families=families, split=args.split,
                             operands=operands, system_rate=args.system_rate,
                             format_rate=FORMAT_RATE if args.format_rate is None else args.format_rate)
    write_pairs(out, pairs)
    flaws = Counter(p["flaw"] for p in pairs)
    print(f"wrote {len(pairs)} {args.split} preference pair{'s' * (len(pairs) != 1)} to {out} "
          f"(rejected replies wrong by: {', '.join(f'{f} {c}' for f, c in sorted(flaws.items()))})")
    return 0


def _run_sampled_pairs(args, out: Path, operands, families: list[str]) -> int:
    """`data pairs --from-model`: the tasks synthesized as for synthetic pairs, answered by the model."""
    import numpy as np

    from ..posttrain.pairs import sampled_pairs, write_pairs
    from ..posttrain.synth import synthesize
    from .inference_commands import load_model
    from .progress import progress_reporter

    lm = load_model(argparse.Namespace(model=args.from_model))
    tasks = synthesize(args.n, rng=np.random.default_rng(args.seed), families=families, split=args.split,
                       operands=operands, system_rate=args.system_rate)
    update, close = progress_reporter(True, "task", "data pairs")
    try:
        pairs = sampled_pairs(lm.params, lm.config, lm.tokenizer, tasks, group=args.group,
                              temperature=args.temperature, seed=args.seed, step_level=args.step_level,
                              rejected=args.rejected, chosen=args.chosen, progress=update)
    finally:
        close()
    if not pairs:        # an empty file that `data check` and `dpo` then refuse
        raise NumgptError(f"none of the {len(tasks)} tasks gave a pair ({'no wrong answer that ended' if args.step_level else 'the answers were all right or all wrong'}); "
                          f"nothing written: ask for more tasks (--n), a larger --group or a higher --temperature")
    write_pairs(out, pairs)
    per = Counter(p["family"] for p in pairs)
    unpaired = "no wrong answer that ended" if args.step_level else "answers all right or all wrong"
    print(f"wrote {len(pairs)} {args.split} preference pair{'s' * (len(pairs) != 1)} from {args.from_model}'s "
          f"answers to {out} ({len(tasks) - len(pairs)} of {len(tasks)} tasks had {unpaired}; pairs per family: "
          f"{', '.join(f'{f} {c}' for f, c in sorted(per.items()))})")
    return 0


def run_check(args) -> int:
    from ..posttrain.chatdata import checked_lines
    from ..posttrain.pairs import is_pairs_file
    from ..posttrain.synth import check_task

    path = input_file(args.file)
    if is_pairs_file(path):
        return _check_pairs(path)
    records, bad = checked_lines(path, most_bad=MOST_BAD_LINES)
    if len(bad) == 1:
        raise NumgptError(bad[0])
    if bad:                                             # every bad line named (up to MOST_BAD_LINES), not the first
        for message in bad:
            print(message, file=sys.stderr)
        more = f" (the first {MOST_BAD_LINES}: the check stops there)" if len(bad) == MOST_BAD_LINES else ""
        raise NumgptError(f"{path}: {len(bad)} bad lines, above{more}; fix them and check again")
    roles = Counter(m["role"] for _, r in records for m in r["messages"])
    tasks = [(n, r) for n, r in records if "family" in r or "answer" in r]
    for number, task in tasks:
        check_task(task, f"{path}:{number}")
    print(f"{path}: {len(records)} conversations, {sum(roles.values())} messages "
          f"(system {roles['system']}, user {roles['user']}, assistant {roles['assistant']})")
    if tasks:
        families = Counter(r["family"] for _, r in tasks)
        splits = Counter(str(r.get("split", "-")) for _, r in tasks)
        print(f"tasks: {len(tasks)} ({', '.join(f'{f} {c}' for f, c in sorted(families.items()))}; "
              f"split {', '.join(f'{s} {c}' for s, c in sorted(splits.items()))}); every reference reply "
              "gives its answer as the checker reads it")
    return 0


def _check_pairs(path: Path) -> int:
    """`data check` on a preference-pairs file: every pair valid; those that carry a task have a chosen reply
    the checker accepts, and the count of whole rejected replies it accepts too (0 for numgpt's pairs) is
    printed (a cut one stops before its answer)."""
    from ..posttrain.pairs import numbered_pairs
    from ..posttrain.synth import check, check_task

    pairs = numbered_pairs(path)
    tasks = [(n, p) for n, p in pairs if "family" in p or "answer" in p]
    for number, pair in tasks:
        check_task({**pair, "messages": pair["prompt"] + pair["chosen"]}, f"{path}:{number} (chosen)")
    print(f"{path}: {len(pairs)} preference pairs, prompts of {sum(len(p['prompt']) for _, p in pairs)} messages")
    if tasks:
        families = Counter(p["family"] for _, p in tasks)
        whole = [p for _, p in tasks if "cut" not in p]
        right = sum(check(p, p["rejected"][0]["content"]) for p in whole)
        cut = f" ({len(tasks) - len(whole)} cut after their slip)" if len(whole) < len(tasks) else ""
        print(f"tasks: {len(tasks)} ({', '.join(f'{f} {c}' for f, c in sorted(families.items()))}); every chosen "
              f"reply gives the answer; {right} rejected replies do too{cut}")
    return 0
