"""Preference pairs: the data every preference step reads (the reward model, DPO), in TRL's conversational
form, read and checked line by line, written atomically, made from the synthetic tasks, and rendered to ids.

One pair per line (TRL's `{"prompt", "chosen", "rejected"}` preference format with chat messages):

    {"prompt": [{"role": "user", "content": "What is 478 + 356?"}],
     "chosen": [{"role": "assistant", "content": "478 + 356 = 834"}],
     "rejected": [{"role": "assistant", "content": "478 + 356 = 824"}],
     "family": "add", "answer": "834", "split": "train", "template": "add:q0:a0"}

The prompt is a conversation that the assistant answers (chat_format's rules: an optional system message
first, user and assistant turns alternating, a user turn last); chosen and rejected are one assistant
message each, and must differ. Keys beside these (a synthetic task's ground truth, read by synth.check)
are kept. Each bad record is refused with one NumgptError naming FILE:LINE and the field.

Synthetic pairs (`synthesize_pairs`): synth.py's tasks (same families, same train/held-out split of
templates and operands); chosen is the task's reference reply, rejected a plausible wrong reply in the same
answer template -- a near-miss number (one digit changed, or off by a carry), a near-miss word (a letter
swapped, dropped or doubled; the neighbour in a cycle of weekdays, months or letters), an identity reply
naming another model -- or, at `format_rate`, a reply that gives no answer at all. Every rejected reply
fails synth.check and every chosen one passes it, so a reward model learns correctness, not style.

Pairs from a model's own samples (`sampled_pairs`, `numgpt data pairs --from-model M`): for each task the
model answers `group` times at a temperature; the first answer the checker accepts (and whose working, for
a worked sum, is right step for step: synth.right_working) is chosen and the first it rejects (among those
that ended with <|end|>) is rejected, so the two differ where the model went wrong
(a slipped digit in a worked sum) rather than where a rule put the error. A task whose answers are all
right or all wrong gives no pair. The pairs are "flaw": "sampled".

With rejected="greedy" (`--rejected greedy`) the model's greedy answer, when it is wrong and ended, is the
rejected reply instead ("flaw": "greedy"), and a task whose greedy answer is right falls back to the first
wrong sample ("flaw": "sampled"). A judge of greedy replies (bench_preference's exact checker) sees only the
model's greedy mistakes; a sampled wrong answer at temperature 1 may be a mistake greedy decoding never
makes, so pushing it down need not change a greedy reply.

Step-level pairs (`sampled_pairs(..., step_level="sentence")`, `data pairs --from-model M --step-level`; the
rejected side cut as Step-DPO cuts it, the chosen side the whole reference reply): the chosen reply is the
task's reference reply, and the rejected one is a wrong answer of the model cut after its first sentence
(a worked sum's step) that differs from the reference's. Its sentences before that one are the
reference's own, so the pair differs only from the first slip on, and the steps after the slip, right
given the slip, are not pushed down with it. step_level="token" (`--step-level token`) cuts after the
first token that differs instead (a digit, a word): the rest of the slipped step, right given its wrong
digit, is not pushed down either, so DPO's preference falls on the one token where the answer went
wrong (BENCHMARKS.md: with rejected="greedy", DPO gains 7.9 points of exact match on add and sub; the
sentence cut with sampled mistakes gained 3.4). A cut reply did not end there, so it is rendered without
its '<|end|>' (the pair says "cut": "rejected", a numgpt key TRL ignores), and the reward model refuses
such pairs (`whole_reply_pairs`). Each task with a wrong answer that ended with '<|end|>' gives a pair.
Made for the worked sums (add, sub), whose reference working is the one right wording; in other families
the first differing sentence or token may be a different phrasing of a right answer. chosen="nearest"
(`--chosen nearest`) narrows that: the right reply chosen and cut against is whichever of the reference
and the model's own right samples starts most like the wrong answer (`nearest_right`), so a wrong answer
worded as one of the model's right ones is cut at its wrong number or word. A wrong answer worded as no
right reply still leaves the reference at its first word.

Rendering (`render_pair`): the prompt with the generation prompt, and each reply as the tokens the chat
template puts after it (content and '<|end|>', but no '<|end|>' for a reply the pair's "cut" names), so
prompt + reply is exactly the rendered conversation (chat_format's format guarantees it; render_pair checks
it).

Length (`short_pairs`, the one rule of `numgpt reward train` and `numgpt dpo`, whose --max-tokens sets it): a
pair is as long as its prompt and longer reply (`pair_length`); a pair longer than max_tokens (MAX_TOKENS
unless given) or the model's context is left out and counted, never cut -- a cut reply is not the reply the
pair ranks, and its '<|end|>' would be gone.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from ..errors import NumgptError, real_number
from ..tokenizer import Tokenizer
from .chat_format import chat_template, check_messages, render_chat
from .chatdata import _json_type, jsonl_lines, write_conversations
from .synth import FAMILIES, IDENTITY_ANSWER, LETTERS, MONTHS, NUMBER, UNITS, WEEKDAYS, WORD, Operands, check, \
    numeric, prompt_messages, reference_reply, synthesize

REPLIES = ("chosen", "rejected")
OTHER_NAMES = ("ChatGPT", "nanoGPT", "GPT-2", "Eliza", "an assistant")   # identity replies that miss numgpt
NO_ANSWER = ("I am not sure.", "Let me think about that.", "I cannot answer that.", "Good question!",
             "Sorry, I do not know.")                                    # replies that break the format
CYCLES = (WEEKDAYS, MONTHS, tuple(LETTERS))
SLIP_UNITS = ("sentence", "token")         # where step-level pairs cut a wrong answer (cut_after_slip)
TOKEN_TEXT = re.compile(r"\s*(?:\d|[^\W\d_]+|\S)")  # a token's worth of text: a digit, a word, another character
SENTENCE_END = re.compile(r"(?<=\.) ")     # where a reply's sentences (a worked sum's steps) part
MAX_TRIES = 100                   # redraws of a wrong reply until it differs and fails the checker
FORMAT_RATE = 0.1
REJECTED = ("sampled", "greedy")   # sampled_pairs' choices of the wrong answer that is rejected
CHOSEN = ("reference", "nearest")  # step-level pairs' choices of the right reply the wrong one is cut against
MAX_TOKENS = 256                   # the longest pair (prompt + longer reply) reward train and dpo keep unless told

RenderedPair = tuple[list[int], list[int], list[int]]   # render_pair's (prompt, chosen, rejected) ids
Item = TypeVar("Item")


# ---- reading and writing ------------------------------------------------------------------------------

def read_pairs(path: str | os.PathLike) -> list[dict]:
    """Every preference pair of a JSONL file, checked (see the module docstring for the rules)."""
    return [pair for _, pair in numbered_pairs(path)]


def whole_reply_pairs(path: str | os.PathLike) -> list[dict]:
    """`read_pairs`, refusing a step-level pair ("cut"): a reward model reads a whole reply's <|end|>, and a
    cut reply has none, so it would learn to tell a cut reply from a whole one."""
    found = numbered_pairs(path)
    for number, pair in found:
        if "cut" in pair:
            raise NumgptError(f'{path}:{number}: a step-level pair ("cut"), which is for DPO; a reward model reads '
                              "a whole reply: give it pairs made without --step-level")
    return [pair for _, pair in found]


def numbered_pairs(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, pair) for every non-blank line, checked; blank lines are skipped (their numbers count)."""
    path = Path(path)
    found = []
    for number, raw in enumerate(jsonl_lines(path), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise NumgptError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
        except json.JSONDecodeError as e:
            raise NumgptError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); each line must be one JSON "
                              'object such as {"prompt": [...], "chosen": [...], "rejected": [...]}') from None
        found.append((number, check_pair(record, where)))
    if not found:
        raise NumgptError(f"{path}: no preference pairs (the file is empty); write one JSON object per line, "
                          'such as {"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}], '
                          '"rejected": [{"role": "assistant", ...}]}')
    return found


def check_pair(record: object, where: str) -> dict:
    """`record` if it is a preference pair, else a NumgptError starting with `where` (FILE:LINE) and naming
    the field: a prompt the assistant answers, two single assistant replies, the two different, and "cut",
    when present, naming the rejected reply."""
    if not isinstance(record, dict):
        raise NumgptError(f'{where}: expected a JSON object {{"prompt": [...], "chosen": [...], "rejected": [...]}}, '
                          f"got {_json_type(record)}")
    for key in ("prompt", *REPLIES):
        if key not in record:
            raise NumgptError(f'{where}: no "{key}" key; a preference pair has "prompt" (the messages the '
                              'assistant answers), "chosen" and "rejected" (one assistant message each)')
    prompt = record["prompt"]
    if not isinstance(prompt, list):
        raise NumgptError(f'{where}: "prompt" is {_json_type(prompt)}; expected a list of {{"role": ..., '
                          '"content": ...} ending with a user turn')
    try:
        check_messages(prompt, add_generation_prompt=True)
    except NumgptError as e:
        raise NumgptError(f'{where}: "prompt": {e}') from None
    contents = [_reply(record[key], f'{where}: "{key}"') for key in REPLIES]
    if record.get("cut", "rejected") != "rejected":
        raise NumgptError(f'{where}: "cut" must be "rejected" (the rejected reply stops after the sentence or token '
                          f"where it first differs from the chosen one, with no <|end|>), got {json.dumps(record['cut'])}")
    if contents[0] == contents[1]:
        raise NumgptError(f'{where}: "chosen" and "rejected" are the same reply; a preference needs two different ones')
    return record


def _reply(reply: object, where: str) -> str:
    """The content of a reply field: a list of exactly one assistant message with a string content."""
    if not isinstance(reply, list) or len(reply) != 1:
        got = _json_type(reply) if not isinstance(reply, list) else f"a list of {len(reply)} messages"
        raise NumgptError(f'{where} is {got}; expected a list of one message [{{"role": "assistant", '
                          '"content": "..."}]')
    message = reply[0]
    if not isinstance(message, dict) or message.get("role") != "assistant":
        role = message.get("role") if isinstance(message, dict) else _json_type(message)
        raise NumgptError(f'{where}: an assistant message (the reply) is needed here, got role {role!r}')
    if not isinstance(message.get("content"), str):
        raise NumgptError(f'{where}: content must be a string, got {_json_type(message.get("content"))}')
    return message["content"]


def write_pairs(path: str | os.PathLike, pairs: Iterable[Mapping]) -> int:
    """Write preference pairs as JSONL, atomically (whole or not at all), after checking every one (so a
    file written here always reads back); returns the count."""
    pairs = list(pairs)
    for i, pair in enumerate(pairs):
        check_pair(pair, f"pairs[{i}]")
    return write_conversations(path, pairs)


def is_pairs_file(path: str | os.PathLike) -> bool:
    """Whether a JSONL file's first record looks like a preference pair (has "chosen"): for readers that take
    either chat conversations or pairs (`numgpt data check`)."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return False
                return isinstance(record, dict) and "chosen" in record
    return False


# ---- rendering ----------------------------------------------------------------------------------------

def render_pair(tokenizer: Tokenizer, pair: Mapping, *, allow_special: bool = False
                ) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids with the generation prompt, chosen reply ids, rejected reply ids): each reply is the tokens
    the chat template puts after the generation prompt for that assistant message, its '<|end|>' included
    (not for the reply a "cut" pair names), so prompt + reply == render_chat(prompt messages + [reply
    message]) (checked)."""
    prompt = render_chat(tokenizer, pair["prompt"], add_generation_prompt=True, allow_special=allow_special)
    template = chat_template(tokenizer)
    replies = []
    for key in REPLIES:
        message = pair[key][0]
        reply = template.render_reply(message["content"], allow_special=allow_special)
        whole = render_chat(tokenizer, [*pair["prompt"], message], allow_special=allow_special)
        if prompt + reply != whole:                 # chat_format guarantees it; a changed format would not
            raise NumgptError(f"{key}: the prompt followed by the reply does not render as the whole conversation; "
                              "the chat template does not end a generation prompt where the reply starts")
        if pair.get("cut") == key:                  # it stops after its slip: it did not end there
            reply = reply[:-1] if reply and reply[-1] == template.end_id else reply
        replies.append(reply)
    return prompt, replies[0], replies[1]


def pair_length(rendered: RenderedPair) -> int:
    """The tokens of a rendered pair's longer conversation: the prompt and the longer reply."""
    prompt, chosen, rejected = rendered
    return len(prompt) + max(len(chosen), len(rejected))


def check_max_tokens(max_tokens: int | None) -> None:
    """Refuse (one line) a max_tokens below 1; None is MAX_TOKENS."""
    if max_tokens is not None and max_tokens < 1:
        raise NumgptError(f"max_tokens must be >= 1, got {max_tokens}")


def token_limit(max_tokens: int | None, context: int) -> int:
    """The most tokens a kept pair may have: max_tokens (None: MAX_TOKENS), at most the model's context."""
    return min(MAX_TOKENS if max_tokens is None else max_tokens, context)


def short_pairs(splits: Mapping[str, Sequence[Item]], limit: int, context: int,
                ids: Callable[[Item], RenderedPair] = lambda item: item
                ) -> tuple[dict[str, list[Item]], dict[str, int]]:
    """(each split's items whose pair, ids(item), is at most limit tokens long (pair_length), how many each
    split left out). A split left with no pair is refused in one line that says what to change: a larger
    max_tokens, or, when the limit is the model's context, shorter pairs."""
    kept, dropped = {}, {}
    for name, items in splits.items():
        kept[name] = [item for item in items if pair_length(ids(item)) <= limit]
        dropped[name] = len(items) - len(kept[name])
        if not kept[name]:
            fix = (f"pass a larger max_tokens (at most the model's context, {context})" if limit < context else
                   "that is the model's context: shorten the pairs, or start from a model with a longer context")
            raise NumgptError(f"every {name} pair is longer than {limit} tokens; {fix}")
    return kept, dropped


# ---- synthetic pairs ----------------------------------------------------------------------------------

def synthesize_pairs(n: int, *, rng: np.random.Generator, families: Sequence[str] = tuple(FAMILIES),
                     split: str = "train", operands: Operands = Operands(), system_rate: float = 0.2,
                     format_rate: float = FORMAT_RATE) -> list[dict]:
    """`n` preference pairs from synth.py's tasks of one split: chosen the reference reply, rejected a
    near-miss wrong reply in the same template (or, at `format_rate`, one with no answer). Each pair keeps
    the task's "family", "answer", "split" and "template", and says how the rejected reply is wrong
    ("flaw": number, word, name or format). Deterministic given rng."""
    if not 0 <= real_number("format_rate", format_rate, rule=" between 0 and 1") <= 1:
        raise NumgptError(f"format_rate must be between 0 and 1, got {format_rate!r}")
    tasks = synthesize(n, rng=rng, families=families, split=split, operands=operands, system_rate=system_rate)
    pairs = []
    for task in tasks:
        chosen = reference_reply(task)
        flaw, rejected = wrong_reply(task, chosen, rng, format_rate=format_rate)
        pairs.append({"prompt": prompt_messages(task), "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}],
                      **{k: task[k] for k in ("family", "answer", "split", "template")}, "flaw": flaw})
    return pairs


def cut_after_slip(reference: str, reply: str, unit: str = "sentence") -> str:
    """`reply` up to the end of its first unit that differs from the reference at the same place; the whole
    reply when none does, or nothing follows it. unit "sentence": sentences split after ". " (a worked sum's
    steps); "token": a digit (every digit is its own token in the chat models' tokenizers), a word, or
    another character, so the cut reply ends at the first token where it left the reference."""
    if unit == "token":
        i = shared_beginning(reply, reference)
        while 0 < i < len(reply) and reply[i].isalpha() and reply[i - 1].isalpha():
            i -= 1                                                   # back to the start of the word it is in
        unit_at = TOKEN_TEXT.match(reply, i)
        return reply if unit_at is None else reply[:unit_at.end()]
    ours, theirs = SENTENCE_END.split(reply), SENTENCE_END.split(reference)
    for i, sentence in enumerate(ours):
        if i >= len(theirs) or sentence != theirs[i]:
            return " ".join(ours[:i + 1])
    return reply


def shared_beginning(a: str, b: str) -> int:
    """How many characters two replies share from their start."""
    return len(os.path.commonprefix([a, b]))


def nearest_right(wrong: str, rights: Sequence[str]) -> str:
    """The right reply that starts most like `wrong` (the longest common beginning; the first on a tie), so
    that a cut against it lands where the answer went wrong rather than where the wording differs."""
    return max(rights, key=lambda right: shared_beginning(wrong, right))      # max keeps the first of equal keys


def sampled_pairs(params, config, tokenizer: Tokenizer, tasks: Sequence[Mapping], *, group: int = 8,
                  temperature: float = 1.0, seed: int = 0, max_new_tokens: int | None = None,
                  step_level: str | None = None, rejected: str = "sampled", chosen: str = "reference",
                  progress=None) -> list[dict]:
    """Preference pairs from a chat model's own answers (module docstring): per task, `group` answers
    sampled at `temperature` (answer i of task k seeded by (seed, k, i), so the file is the same on every
    run), judged by synth.check; a right and a wrong answer make a pair (step_level "sentence" or "token":
    the reference reply and the first wrong answer cut after the unit where it slipped). rejected="greedy":
    the greedy answer is the wrong one when it is wrong (module docstring). chosen="nearest" (step-level
    only): the right reply cut against and chosen is the reference or a right sample, whichever starts most
    like the wrong answer (`nearest_right`). `progress(done, total)` is called after each task."""
    from ..sampling import SamplingOptions
    from .chat_format import chat_template
    from .rl import render_tasks, sample_group
    from .synth import REPLY_TOKENS, right_working

    if group < 2:
        raise NumgptError(f"group must be >= 2 (a right and a wrong answer are needed), got {group}")
    if step_level is not None and step_level not in SLIP_UNITS:
        raise NumgptError(f"step_level must be None or one of {', '.join(SLIP_UNITS)}, got {step_level!r}")
    if rejected not in REJECTED:
        raise NumgptError(f"rejected must be one of {', '.join(REJECTED)}, got {rejected!r}")
    if chosen not in CHOSEN:
        raise NumgptError(f"chosen must be one of {', '.join(CHOSEN)}, got {chosen!r}")
    if chosen != "reference" and step_level is None:
        raise NumgptError(f"chosen={chosen!r} picks the right reply step-level pairs cut against; it needs step_level")
    if not temperature > 0:
        raise NumgptError(f"temperature must be > 0 to sample different answers, got {temperature}")
    template = chat_template(tokenizer)
    if template is None:
        raise NumgptError("the model has no chat template, so it cannot answer the tasks as a chat model; pairs "
                          "from a model need one that `numgpt sft` made (or 'chat')")
    end_id = template.end_id
    sampling = SamplingOptions(temperature=temperature)
    greedy = None
    if rejected == "greedy":                                 # every task's greedy answer, decoded in batches
        from .evaluate import chat_replies
        greedy = list(zip(*chat_replies(params, config, tokenizer, tasks, max_new_tokens=max_new_tokens or REPLY_TOKENS)))
    pairs = []
    for k, task in enumerate(render_tasks(tokenizer, tasks)):
        room = min(max_new_tokens or REPLY_TOKENS, config.n_positions - len(task.prompt))
        if room <= 0:
            raise NumgptError(f"task {k}: its prompt of {len(task.prompt)} tokens fills the model's context")
        rngs = [np.random.default_rng([seed, k, i]) for i in range(group)]
        answers, _ = sample_group(params, config, task.prompt, rngs, sampling=sampling, max_new_tokens=room,
                                  end_id=end_id)
        record, cut = task.record, {}
        texts = [(tokenizer.decode([t for t in ids if t != end_id]), bool(ids) and ids[-1] == end_id)
                 for ids in answers]
        flaw, wrong = "sampled", next((t for t, ended in texts if ended and t.strip() and not check(record, t)), None)
        if greedy is not None:
            text, ended = greedy[k]
            if ended and text.strip() and not check(record, text):
                flaw, wrong = "greedy", text
        # the right samples: a right number by luck (slipped working) is not a right answer
        rights = [t for t, _ in texts if check(record, t) and right_working(record, t)]
        if step_level:
            right = reference_reply(record)
            if wrong is not None:
                if chosen == "nearest":
                    right = nearest_right(wrong, [right] + rights)
                shorter = cut_after_slip(right, wrong, step_level)
                wrong, cut = shorter, ({"cut": "rejected"} if shorter != wrong else {})
        else:
            right = rights[0] if rights else None
        if right is not None and wrong is not None:          # they differ (cut_after_slip keeps the differing unit)
            pairs.append({"prompt": prompt_messages(record),
                          "chosen": [{"role": "assistant", "content": right}],
                          "rejected": [{"role": "assistant", "content": wrong}],
                          **{key: record[key] for key in ("family", "answer", "split", "template") if key in record},
                          "flaw": flaw, **cut})
        if progress is not None:
            progress(k + 1, len(tasks))
    return pairs


def wrong_reply(task: Mapping, reply: str, rng: np.random.Generator, *, format_rate: float = FORMAT_RATE
                ) -> tuple[str, str]:
    """(flaw, a wrong version of the right `reply`): redrawn until it differs from `reply` and fails synth.check."""
    for _ in range(MAX_TRIES):
        if rng.random() < format_rate:
            flaw, wrong = "format", NO_ANSWER[int(rng.integers(len(NO_ANSWER)))]
        elif task["family"] == "identity":
            flaw, wrong = "name", _other_name(reply, rng)
        else:
            flaw, wrong = _near_miss(task, reply, rng)
        if wrong != reply and not check(task, wrong):
            return flaw, wrong
    raise NumgptError(f"found no wrong reply to {reply!r} in {MAX_TRIES} draws")


def _other_name(reply: str, rng: np.random.Generator) -> str:
    """An identity reply with numgpt's name replaced by another model's (the checker wants numgpt)."""
    name = OTHER_NAMES[int(rng.integers(len(OTHER_NAMES)))]
    wrong = re.sub(rf"\b{IDENTITY_ANSWER}\b", name, reply, flags=re.IGNORECASE)
    return "An" + wrong[2:] if wrong.startswith("an ") else wrong          # "an assistant here: ..."


def _near_miss(task: Mapping, reply: str, rng: np.random.Generator) -> tuple[str, str]:
    """The reply with its answer (the last number or word, where the checker reads it) replaced by a near miss."""
    is_number = numeric(task["answer"])
    last = list((NUMBER if is_number else WORD).finditer(reply))[-1]
    given = last.group().replace(",", "")
    if is_number:
        wrong = str(near_number(int(given), rng))
        return "number", _with_unit(reply[:last.start()] + wrong + reply[last.end():], last.start() + len(wrong),
                                    int(wrong))
    return "word", reply[:last.start()] + near_word(given, rng) + reply[last.end():]


def near_number(x: int, rng: np.random.Generator) -> int:
    """A near miss of a whole number >= 0: one digit changed, or off by a carry (plus or minus a power of ten
    no larger than the number's top digit's); never x itself, never negative."""
    digits = str(x)
    while True:
        if rng.random() < 0.5:                                  # one digit changed (no leading zero)
            i = int(rng.integers(len(digits)))
            choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0" and len(digits) > 1)]
            wrong = int(digits[:i] + choices[int(rng.integers(len(choices)))] + digits[i + 1:])
        else:                                                   # a carry dropped or added
            wrong = x + int(rng.choice((-1, 1))) * 10 ** int(rng.integers(len(digits)))
        if wrong >= 0 and wrong != x:
            return wrong


def near_word(word: str, rng: np.random.Generator) -> str:
    """A near miss of a word: a neighbour in a cycle (weekdays, months, letters: the one after it, the one
    before it -- for `next`, the question's own -- or the one before that), else the word with two adjacent letters swapped, one dropped or one doubled."""
    for cycle in CYCLES:
        lower = [c.lower() for c in cycle]
        if word.lower() in lower:
            i = lower.index(word.lower())
            return cycle[(i + int(rng.choice((-2, -1, 1)))) % len(cycle)]
    i = int(rng.integers(len(word)))
    edit = int(rng.integers(3)) if len(word) > 1 else 2
    if edit == 0:                                               # swap letters i and i+1 (wrapping to the start)
        j = (i + 1) % len(word)
        chars = list(word)
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)
    if edit == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _with_unit(reply: str, end: int, count: int) -> str:
    """The reply with the unit that follows the number ending at `end` made to agree with it (1 metre,
    2 metres), so a wrong count is not given away by its grammar."""
    forms = {name: pair for big, small, _ in UNITS for pair in (big, small) for name in pair}
    found = re.match(r" ([a-z]+)", reply[end:])
    if not found or found.group(1) not in forms:
        return reply
    unit = forms[found.group(1)][count != 1]
    return reply[:end + 1] + unit + reply[end + 1 + len(found.group(1)):]
