"""Synthetic conversations with exact answers: data for fine-tuning made here, and a checker that scores a
reply exactly (a verifiable reward for RL).

Seven task families, each a question and its one right answer:

    add       multi-digit addition (carries), worked   "What is 478 + 356?"           -> 834
    sub       multi-digit subtraction (borrows), a>=b, worked  "Subtract 189 from 402."  -> 213
    count     a letter in a word                        "How many 'r's are in 'strawberry'?" -> 3
    reverse   a word spelled backwards                  "Spell 'table' backwards."     -> elbat
    next      what comes after X (number, letter, weekday, month)  "What comes after Friday?" -> Saturday
    convert   m<->cm, km<->m, kg<->g, h<->min, min<->s, whole numbers   "How many grams are in 3 kilograms?" -> 3000
    identity  who numgpt is and what it can do          "Who are you?"                 -> names numgpt

Each family has several question and answer TEMPLATES; the last ones of each are held out: the
"heldout" split renders only them and the "train" split never does, so a held-out score measures
phrasings the model never trained on. Where the operands are many (numbers, words, quantities) they are
split too, by a stable hash (crc32, one in HELDOUT_EVERY held out): no held-out question shares its
operands with a train question. Weekdays, months, letters and the identity questions are too few to split.

A task is OpenAI's fine-tuning JSONL record plus its ground truth (of the last exchange, when earlier
ones come before it as chat history: synthesize's `turns`):

    {"messages": [...], "family": "add", "answer": "834", "split": "train", "template": "add:q1:a0"}

An add or sub reply shows its working before the answer, column by column from the ones, as a pupil
writes it:

    "Ones: 8 + 6 = 14, write 4, carry 1. Tens: 7 + 5 + 1 = 13, write 3, carry 1. Hundreds: 4 + 3 + 1 = 8,
     write 8. The sum is 834."
    "Ones: 12 - 9 = 3, write 3, borrow 1. Tens: 10 - 8 - 1 = 1, write 1, borrow 1. Hundreds: 4 - 1 - 1 = 2,
     write 2. The difference is 213."

A model this small does not learn to add from question and answer alone: the chat model trained on them
memorised the training pairs' sums and answered held-out pairs at 5% (BENCHMARKS.md, issue 22). Each step
of the working needs two digits and a carry, all written down, so the model learns the procedure instead.

The reply format `check` reads (every answer template follows it): the answer is the reply's LAST number
(numeric answers; "1,234" and "834.0" read as numbers) or its LAST word (word answers, compared
case-insensitively); an identity reply must name numgpt. Words come from WORDS (written here) or from
text the caller passes (`words_from_text`). Generation is deterministic given the np.random.Generator.
"""

from __future__ import annotations

import os
import re
import string
import zlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import NumgptError, real_number, whole_number
from ..machine import check_fits
from .chatdata import numbered_conversations

SPLITS = ("train", "heldout")
HELDOUT_EVERY = 5                 # one operand in five (by crc32) is held out
MAX_DIGITS = 18                   # the longest numbers np.random.Generator.integers draws in int64
MAX_DRAWS = 10_000                # rejection sampling for a split's operands; each draw succeeds with p >= 1/5
SYSTEM_PROMPTS = ("You are numgpt, a small assistant. Answer exactly.",
                  "Answer briefly; put the answer last.",
                  "You are a helpful assistant.")

WORDS = tuple(sorted(set("""
apple banana cherry grape lemon mango melon orange peach pear plum berry bread butter cheese honey pepper
salt sugar water coffee tea milk dinner lunch table chair window door floor house garden river ocean island
forest desert mountain valley flower tree leaf stone rock sand cloud storm rain snow winter summer spring
autumn morning evening night moon star planet rocket engine wheel bicycle train ticket station bridge road
street city village market school teacher student letter number answer question paper pencil book story
poem music piano guitar drum dance paint color yellow purple green silver golden rabbit tiger horse zebra
monkey parrot turtle kitten puppy dragon castle knight queen king mirror candle lantern basket bottle
pocket button jacket sweater blanket pillow kitchen doctor farmer sailor pilot robot computer keyboard
strawberry mississippi balloon little puzzle
""".split())))

LETTERS = string.ascii_lowercase
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
# (larger unit, smaller unit, how many smaller in one larger); each unit as (singular, plural)
UNITS = ((("metre", "metres"), ("centimetre", "centimetres"), 100),
         (("kilometre", "kilometres"), ("metre", "metres"), 1000),
         (("kilogram", "kilograms"), ("gram", "grams"), 1000),
         (("hour", "hours"), ("minute", "minutes"), 60),
         (("minute", "minutes"), ("second", "seconds"), 60))
IDENTITY_ANSWER = "numgpt"
REPLY_TOKENS = 112                # a reply's room when a model answers a task (evaluation, RL's samples): a
                                  # worked 3-digit sum with the longest template is 102 of the chat model's tokens


@dataclass(frozen=True)
class Operands:
    """What the families draw from: the words of the word tasks and the largest number of digits."""
    words: tuple[str, ...] = WORDS
    max_digits: int = 3


@dataclass(frozen=True)
class Family:
    """A task family: question and answer templates (str.format fields; the answer templates give {answer}
    last, identity's name numgpt), how many of each are held out (the last ones), `draw`, which picks
    the fields of one task (with "answer") from the train or held-out operands, and `work`, the steps a
    reply writes before its answer template (None: the reply is the template alone)."""
    name: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    heldout_questions: int
    heldout_answers: int
    draw: Callable[[np.random.Generator, bool, Operands], dict[str, object]]
    work: Callable[[Mapping[str, object]], str] | None = None

    def reply(self, answer: int, fields: Mapping[str, object]) -> str:
        """The reply of answer template `answer` to a task with these fields: the working, then the answer."""
        said = self.answers[answer].format(**fields)
        return f"{self.work(fields)} {said}" if self.work is not None else said

    def templates(self, kind: str, split: str) -> tuple[int, ...]:
        """The indices of the `kind` ("questions" or "answers") templates a split renders."""
        every = getattr(self, kind)
        first_heldout = len(every) - getattr(self, f"heldout_{kind}")
        return tuple(range(first_heldout, len(every)) if split == "heldout" else range(first_heldout))


def is_heldout(key: str) -> bool:
    """Whether an operand (a word, a pair of numbers, ...) belongs to the held-out split: a stable hash,
    the same in every process (Python's hash() is salted per process)."""
    return zlib.crc32(key.encode("utf-8")) % HELDOUT_EVERY == 0


def _draw_until(heldout: bool, draw: Callable[[], tuple[object, str]]) -> object:
    """Draw operands (value, key) until the key's split is the one asked for."""
    for _ in range(MAX_DRAWS):
        value, key = draw()
        if is_heldout(key) == heldout:
            return value
    raise NumgptError(f"found no {'held-out' if heldout else 'train'} operands in {MAX_DRAWS} draws; "
                      "allow more digits (max_digits)")


def _number(rng: np.random.Generator, max_digits: int) -> int:
    """A number of 1..max_digits digits, the digit count uniform (so short and long numbers are as common)."""
    digits = int(rng.integers(1, max_digits + 1))
    return int(rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits))


def _pair(rng: np.random.Generator, heldout: bool, ops: Operands, family: str) -> tuple[int, int]:
    """Two numbers for add or sub (larger first for sub), from the split's pairs."""
    def draw():
        a, b = _number(rng, ops.max_digits), _number(rng, ops.max_digits)
        a, b = (max(a, b), min(a, b)) if family == "sub" else (a, b)
        return (a, b), f"{family}:{a}:{b}"
    return _draw_until(heldout, draw)


def _draw_add(rng: np.random.Generator, heldout: bool, ops: Operands) -> dict[str, object]:
    a, b = _pair(rng, heldout, ops, "add")
    return {"a": a, "b": b, "answer": a + b}


PLACES = ("Ones", "Tens", "Hundreds", "Thousands", "Ten thousands", "Hundred thousands", "Millions",
          "Ten millions", "Hundred millions", "Billions", "Ten billions", "Hundred billions", "Trillions",
          "Ten trillions", "Hundred trillions", "Quadrillions", "Ten quadrillions", "Hundred quadrillions",
          "Quintillions")                                    # a column's name, ones first (MAX_DIGITS + 1)


def column_addition(a: int, b: int) -> str:
    """The working of a + b (whole numbers >= 0) column by column from the ones, each column's two digits
    (0 where a number has run out), the carry into it, their sum, the digit written and the carry out:
    "Ones: 8 + 6 = 14, write 4, carry 1. Tens: 7 + 5 + 1 = 13, write 3, carry 1. Hundreds: ... write 8."
    A carry left after the last column is written as its own column ("Thousands: carry 1, write 1.")."""
    steps, carry = [], 0
    for place in range(max(len(str(a)), len(str(b)))):
        da, db = a // 10 ** place % 10, b // 10 ** place % 10
        total = da + db + carry
        terms = f"{da} + {db}" + (f" + {carry}" if carry else "")
        carry = total // 10
        steps.append(f"{PLACES[place]}: {terms} = {total}, write {total % 10}" + (", carry 1." if carry else "."))
    if carry:
        steps.append(f"{PLACES[place + 1]}: carry 1, write 1.")
    return " ".join(steps)


def column_subtraction(a: int, b: int) -> str:
    """The working of a - b (whole numbers, a >= b) column by column from the ones: where the column's digit
    of a, less the borrow owed to the column before, is below b's digit, 10 is borrowed from the next
    column, written as a pupil does ("12 - 9" for 2 - 9): "Ones: 12 - 9 = 3, write 3, borrow 1. Tens:
    10 - 8 - 1 = 1, write 1, borrow 1. Hundreds: 4 - 1 - 1 = 2, write 2." The answer drops the leading
    zeros the columns leave (100 - 99 writes 1, 0, 0 and is 1)."""
    if a < b:
        raise ValueError(f"column_subtraction needs a >= b, got {a} - {b}")
    steps, borrow = [], 0
    for place in range(len(str(a))):
        da, db = a // 10 ** place % 10, b // 10 ** place % 10
        owed = da - db - borrow
        terms = f"{da + 10 if owed < 0 else da} - {db}" + (" - 1" if borrow else "")
        borrow = int(owed < 0)
        steps.append(f"{PLACES[place]}: {terms} = {owed % 10}, write {owed % 10}" + (", borrow 1." if borrow else "."))
    return " ".join(steps)


def _draw_sub(rng: np.random.Generator, heldout: bool, ops: Operands) -> dict[str, object]:
    a, b = _pair(rng, heldout, ops, "sub")
    return {"a": a, "b": b, "answer": a - b}


def _word(rng: np.random.Generator, heldout: bool, ops: Operands) -> str:
    """A word of the split (the same split for count and reverse)."""
    pool = [w for w in ops.words if is_heldout(f"word:{w}") == heldout]
    if not pool:
        raise NumgptError(f"none of the {len(ops.words)} words falls in the {'held-out' if heldout else 'train'} "
                          "split; pass more words")
    return pool[int(rng.integers(len(pool)))]


def _draw_count(rng: np.random.Generator, heldout: bool, ops: Operands) -> dict[str, object]:
    word = _word(rng, heldout, ops)
    in_word = sorted(set(word))
    letter = in_word[int(rng.integers(len(in_word)))] if rng.random() < 0.8 else LETTERS[int(rng.integers(26))]
    return {"word": word, "letter": letter, "answer": word.count(letter)}


def _draw_reverse(rng: np.random.Generator, heldout: bool, ops: Operands) -> dict[str, object]:
    word = _word(rng, heldout, ops)
    return {"word": word, "answer": word[::-1]}


def _draw_next(rng: np.random.Generator, heldout: bool, ops: Operands) -> dict[str, object]:
    """After a number (split by hash), a letter (a..y), a weekday or a month (both wrap around)."""
    thing = ("number", "letter", "day", "month")[int(rng.integers(4))]
    if thing == "number":
        def draw():
            n = _number(rng, ops.max_digits)
            return n, f"next:{n}"
        x = _draw_until(heldout, draw)
        return {"thing": thing, "x": x, "answer": x + 1}
    if thing == "letter":                                 # z has no next letter: a..y
        i = int(rng.integers(len(LETTERS) - 1))
        return {"thing": thing, "x": LETTERS[i], "answer": LETTERS[i + 1]}
    cycle = WEEKDAYS if thing == "day" else MONTHS
    i = int(rng.integers(len(cycle)))
    return {"thing": thing, "x": cycle[i], "answer": cycle[(i + 1) % len(cycle)]}


def _draw_convert(rng: np.random.Generator, heldout: bool, ops: Operands) -> dict[str, object]:
    """A whole quantity of one unit in another: down (3 m -> 300 cm) or up (300 cm -> 3 m)."""
    def draw():
        pair = int(rng.integers(len(UNITS)))
        n, down = int(rng.integers(1, 100)), bool(rng.integers(2))
        return (pair, n, down), f"convert:{pair}:{n}:{down}"
    pair, n, down = _draw_until(heldout, draw)
    big, small, factor = UNITS[pair]
    value, answer, source, target = (n, n * factor, big, small) if down else (n * factor, n, small, big)
    return {"value": value, "unit": source[value != 1], "units": target[1], "answer_unit": target[answer != 1],
            "answer": answer}


def _draw_identity(rng: np.random.Generator, heldout: bool, ops: Operands) -> dict[str, object]:
    return {"answer": IDENTITY_ANSWER}


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("add", ("What is {a} + {b}?", "Add {a} and {b}.", "{a} plus {b} equals what?",
                   "Compute the sum of {a} and {b}.", "What is the sum of {a} and {b}?", "{a} + {b} = ?",
                   "Please add {a} to {b}.", "How much is {a} plus {b}?", "Find {a} + {b}.",
                   "If you have {a} and get {b} more, how many do you have?",
                   "What do you get when you add {b} to {a}?",
                   "Calculate {a} + {b}."),
           ("{a} + {b} = {answer}", "The sum is {answer}.", "{answer}", "Together they make {answer}.",
            "Adding them gives {answer}."),
           2, 1, _draw_add, work=lambda fields: column_addition(fields["a"], fields["b"])),
    Family("sub", ("What is {a} - {b}?", "Subtract {b} from {a}.", "{a} minus {b} equals what?",
                   "Compute the difference {a} - {b}.", "What is the difference between {a} and {b}?",
                   "{a} - {b} = ?", "How much is {a} minus {b}?", "Find {a} - {b}.",
                   "If you have {a} and give away {b}, how many remain?",
                   "Take {b} away from {a}. What is left?",
                   "How much is {a} take away {b}?"),
           ("{a} - {b} = {answer}", "The difference is {answer}.", "{answer}", "That leaves {answer}.",
            "What is left is {answer}."),
           2, 1, _draw_sub, work=lambda fields: column_subtraction(fields["a"], fields["b"])),
    Family("count", ("How many times does the letter '{letter}' appear in '{word}'?",
                     "Count the letter '{letter}' in the word '{word}'.", "How many '{letter}'s are in '{word}'?",
                     "How often is '{letter}' in '{word}'?", "Count how many '{letter}' there are in '{word}'.",
                     "'{word}': how many '{letter}'?", "Tell me the number of '{letter}' in '{word}'.",
                     "How many of the letters in '{word}' are '{letter}'?",
                     "In the word '{word}', how often does '{letter}' occur?",
                     "How many '{letter}' letters does '{word}' have?"),
           ("The letter '{letter}' appears in '{word}' this many times: {answer}", "Count: {answer}", "{answer}",
            "There are {answer}.", "I count {answer}."), 2, 1, _draw_count),
    Family("reverse", ("Spell '{word}' backwards.", "What is '{word}' written backwards?",
                       "Write the word '{word}' in reverse.", "Reverse '{word}'.", "Read '{word}' backwards.",
                       "'{word}' backwards, please.", "What do you get if you reverse '{word}'?",
                       "Spell the word '{word}' from its end.", "Reverse the letters of '{word}'.",
                       "How is '{word}' spelled from the last letter to the first?"),
           ("'{word}' backwards is '{answer}'.", "Backwards: {answer}", "{answer}", "Reversed: {answer}",
            "Reversed, it reads {answer}."),
           2, 1, _draw_reverse),
    Family("next", ("What comes after {x}?", "What {thing} comes after {x}?", "Which {thing} follows {x}?",
                    "What is the {thing} after {x}?", "What follows {x}?", "After {x}, what comes next?",
                    "Which {thing} is next after {x}?", "Tell me the {thing} that comes after {x}.",
                    "Name the {thing} right after {x}.", "{x} is followed by which {thing}?"),
           ("After {x} comes {answer}.", "The next {thing} is {answer}.", "{answer}", "Next is {answer}.",
            "It is {answer}."),
           2, 1, _draw_next),
    Family("convert", ("How many {units} are in {value} {unit}?", "Convert {value} {unit} to {units}.",
                       "What is {value} {unit} in {units}?", "Change {value} {unit} into {units}.",
                       "How many {units} make {value} {unit}?", "{value} {unit} in {units}, please.",
                       "Give {value} {unit} in {units}.", "Turn {value} {unit} into {units}.",
                       "{value} {unit} equals how many {units}?",
                       "Express {value} {unit} in {units}."),
           ("{value} {unit} is {answer} {answer_unit}.", "That is {answer} {answer_unit}.", "{answer}",
            "The answer is {answer} {answer_unit}.", "It comes to {answer} {answer_unit}."), 2, 1, _draw_convert),
    Family("identity", ("Who are you?", "What is your name?", "What can you do?", "What are you?",
                        "Who am I talking to?", "What should I call you?", "Are you a person?",
                        "Describe yourself.", "Who made you?", "What is numgpt?", "Hello! Who is this?",
                        "What are you good at?", "Say who you are.", "Can you help me? What do you know?",
                        "Tell me about yourself.", "Introduce yourself, please."),
           ("I am numgpt, a small GPT-2 written from scratch in NumPy. I can add and subtract, count letters, "
            "spell words backwards, say what comes next and convert units.",
            "My name is numgpt. I am a tiny language model trained on two CPU cores: ask me a sum, a letter "
            "count, a word to reverse or a unit to convert.",
            "numgpt here: a GPT-2 made with NumPy that answers small exact questions."),
           2, 1, _draw_identity),
)}


def words_from_text(text: str, *, min_length: int = 3, max_length: int = 12) -> tuple[str, ...]:
    """The distinct words of a text for the word tasks: runs of ASCII letters, lowercased, sorted, of
    min_length..max_length letters (so every letter a word has is one `count` can ask about)."""
    found = {w.lower() for w in re.findall(r"[A-Za-z]+", text) if min_length <= len(w) <= max_length}
    return tuple(sorted(found))


def synthesize(n: int, *, rng: np.random.Generator, families: Sequence[str] = tuple(FAMILIES),
               split: str = "train", operands: Operands = Operands(), system_rate: float = 0.2,
               turns: int = 1) -> list[dict]:
    """`n` tasks from one split, each an OpenAI fine-tuning record with its ground truth. The tasks' families
    are as even a mix as n allows, in a random order; each conversation holds 1..`turns` exchanges (the
    earlier ones of any of the families: chat history), the last one the task's; a fraction `system_rate`
    starts with a system prompt."""
    _check_options(n, families, split, operands, system_rate, turns)
    order = rng.permutation(np.arange(n) % len(families))        # [n] the family of each task's last exchange
    tasks = []
    for i in order:
        earlier = rng.integers(len(families), size=int(rng.integers(turns))) if turns > 1 else []
        chosen = [FAMILIES[families[int(j)]] for j in [*earlier, i]]
        tasks.append(_make_task(chosen, rng, split=split, operands=operands, system_rate=system_rate))
    return tasks


def _check_options(n: int, families: Sequence[str], split: str, operands: Operands, system_rate: float,
                   turns: int) -> None:
    """synthesize's options, each refused with a one-line NumgptError naming it."""
    if isinstance(families, str) or not families or any(f not in FAMILIES for f in families):
        unknown = [families] if isinstance(families, str) else [f for f in families if f not in FAMILIES]
        raise NumgptError(f"unknown task family {', '.join(map(repr, unknown)) or '(none given)'}; families is a "
                          f"list of {', '.join(FAMILIES)}")
    if split not in SPLITS:
        raise NumgptError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    whole_number("n", n, minimum=1)
    whole_number("turns", turns, minimum=1)
    # held in memory until written: ~0.9 kB a task of one exchange and ~0.4 kB more a turn (tracemalloc);
    # 2 kB + 1 kB a turn leaves room for a pair's extra replies and the JSON lines being written
    check_fits(n * (2048 + 1024 * turns), f"{n:,} tasks", "lower n (--n), or write several files")
    whole_number("max_digits", operands.max_digits, minimum=1)
    if operands.max_digits > MAX_DIGITS:
        raise NumgptError(f"max_digits must be <= {MAX_DIGITS} (numbers are drawn as int64), got {operands.max_digits}")
    if not 0 <= real_number("system_rate", system_rate, rule=" between 0 and 1") <= 1:
        raise NumgptError(f"system_rate must be between 0 and 1, got {system_rate!r}")


def _make_task(families: Sequence[Family], rng: np.random.Generator, *, split: str, operands: Operands,
              system_rate: float) -> dict:
    """One conversation: an exchange of each family in order (fields drawn from the split, a question and an
    answer template of the split), maybe a system prompt first; the last exchange is the task."""
    messages = []
    for family in families:
        fields = family.draw(rng, split == "heldout", operands)
        questions, answers = family.templates("questions", split), family.templates("answers", split)
        q, a = questions[int(rng.integers(len(questions)))], answers[int(rng.integers(len(answers)))]
        messages += [{"role": "user", "content": family.questions[q].format(**fields)},
                     {"role": "assistant", "content": family.reply(a, fields)}]
    if rng.random() < system_rate:
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPTS[int(rng.integers(len(SYSTEM_PROMPTS)))]})
    # family, fields, q and a are the last exchange's: the task
    return {"messages": messages, "family": family.name, "answer": str(fields["answer"]), "split": split,
            "template": f"{family.name}:q{q}:a{a}"}


NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")    # 1234, 1,234, -5, 834.0
WORD = re.compile(r"[A-Za-z]+")


def numeric(answer: str) -> bool:
    """Whether an answer is a number (read as the reply's last number) rather than a word (its last word)."""
    return NUMBER.fullmatch(answer) is not None


def extract_answer(task: Mapping, reply: str) -> str | None:
    """The answer a reply gives, as `check` reads it: its last number (numeric answers, commas dropped) or
    its last word (word answers); for identity, "numgpt" if the reply names it. None if there is none."""
    if task["family"] == "identity":
        return IDENTITY_ANSWER if re.search(rf"\b{IDENTITY_ANSWER}\b", reply, re.IGNORECASE) else None
    found = (NUMBER if numeric(task["answer"]) else WORD).findall(reply)
    return found[-1].replace(",", "") if found else None


def check(task: Mapping, reply: str) -> bool:
    """Whether `reply` answers `task` exactly: the extracted number equals the answer (834.0 counts as
    834), or the extracted word equals it ignoring case. The exact reward of RL on these tasks."""
    given = extract_answer(task, reply)
    if given is None:
        return False
    if numeric(task["answer"]):
        return Decimal(given) == Decimal(task["answer"].replace(",", ""))
    return given.casefold() == task["answer"].casefold()


def reference_reply(task: Mapping) -> str:
    """A task's reference reply: its last assistant turn."""
    return [m["content"] for m in task["messages"] if m["role"] == "assistant"][-1]


WORKING = re.compile(r".*write \d(?:, (?:carry|borrow) 1)?\.", re.DOTALL)   # a worked reply's steps


def working_of(reply: str) -> str | None:
    """The working a worked add or sub reply starts with (up to its last "write N." step), or None."""
    found = WORKING.match(reply)
    return found[0] if found else None


def right_working(task: Mapping, reply: str) -> bool:
    """Whether a reply's working is the task's own, step for step: it starts with the working of the task's
    reference reply (the last assistant turn; a right working is unique, column_addition's or
    column_subtraction's). True for families without working. `check` reads the answer alone, so a reply
    with slipped steps that happen to end on the right number passes it, and fails this."""
    steps = working_of(reference_reply(task))
    return steps is None or reply.startswith(steps)


def check_task(task: Mapping, where: str) -> None:
    """Refuse (NumgptError starting with `where`) a task the checker cannot score: an unknown family, an
    answer that is not a string, or a reference reply (the last assistant turn) that its checker fails."""
    family, answer = task.get("family"), task.get("answer")
    if family is None and answer is None:
        raise NumgptError(f'{where}: not a task (no "family" and "answer"): this needs tasks whose answers can be '
                          "checked, as `numgpt data synth` writes them, not plain conversations")
    if family not in FAMILIES:
        raise NumgptError(f"{where}: unknown task family {family!r}; the families are {', '.join(FAMILIES)}")
    if not isinstance(answer, str) or not answer:
        raise NumgptError(f'{where}: a task needs "answer", a non-empty string (got {answer!r})')
    if not check(task, reference_reply(task)):
        raise NumgptError(f"{where}: the reference reply does not give the answer {answer!r} as the checker "
                          f"reads it (its last {'number' if numeric(answer) else 'word'})")


def read_tasks(path: str | os.PathLike) -> list[dict]:
    """The tasks of a JSONL file: valid conversations (chatdata's rules), each with a family and an answer
    its checker can score (refused naming the line otherwise)."""
    tasks = []
    for number, task in numbered_conversations(path):
        check_task(task, f"{path}:{number}")
        tasks.append(task)
    return tasks


def prompt_messages(task: Mapping) -> list[dict]:
    """The messages a model answers: the conversation up to (not including) its last assistant turn."""
    messages = task["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [dict(m) for m in messages[:last]]
