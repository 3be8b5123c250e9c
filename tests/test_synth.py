"""numgpt.posttrain: the synthetic task families (answers recomputed here independently, from the rendered
question text), their exact checker, the train/held-out split, the chat JSONL reader's refusals, and
`numgpt data synth|check` through the real dispatcher."""

import calendar
import json
import re
import string
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from numgpt.cli import main
from numgpt.errors import NumgptError
from numgpt.posttrain import (FAMILIES, Operands, check, check_task, extract_answer, prompt_messages,
                              read_conversations, read_tasks, synthesize, words_from_text, write_conversations)
from numgpt.posttrain.synth import column_addition, is_heldout, right_working

# each unit in its base unit (metre, gram, second), as fractions: the conversions recomputed independently
IN_BASE = {"centimetre": Fraction(1, 100), "metre": Fraction(1), "kilometre": Fraction(1000), "gram": Fraction(1),
           "kilogram": Fraction(1000), "second": Fraction(1), "minute": Fraction(60), "hour": Fraction(3600)}


def template_regex(template: str) -> re.Pattern:
    """A template as a regex whose named groups read its fields back out of a rendered text."""
    parts, seen = [], set()
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(f"(?P={field})" if field in seen else f"(?P<{field}>.+?)")
            seen.add(field)
    return re.compile("".join(parts), re.DOTALL)


def template_of(task: dict) -> tuple[str, str]:
    """The (question, answer) templates a task names in its "template" key (family:qI:aJ)."""
    family, q, a = task["template"].split(":")
    return FAMILIES[family].questions[int(q[1:])], FAMILIES[family].answers[int(a[1:])]


def singular(unit: str) -> str:
    return unit[:-1] if unit.endswith("s") else unit


def expected_answer(family: str, f: dict) -> str:
    """The right answer computed here from the question's fields, without the generator's code."""
    if family == "add":
        return str(int(f["a"]) + int(f["b"]))
    if family == "sub":
        assert int(f["a"]) >= int(f["b"])
        return str(int(f["a"]) - int(f["b"]))
    if family == "count":
        return str(sum(1 for c in f["word"] if c == f["letter"]))
    if family == "reverse":
        return "".join(reversed(f["word"]))
    if family == "convert":
        value = Fraction(int(f["value"])) * IN_BASE[singular(f["unit"])] / IN_BASE[singular(f["units"])]
        assert value.denominator == 1, f
        return str(value.numerator)
    x = f["x"]
    if x.isdigit():
        return str(int(x) + 1)
    if len(x) == 1:
        return chr(ord(x) + 1)
    for names in (list(calendar.day_name), list(calendar.month_name)[1:]):   # the standard library's names
        if x in names:
            return names[(names.index(x) + 1) % len(names)]
    raise AssertionError(f"no next for {x!r}")


WORKED = re.compile(r"(?P<work>.*write \d(?:, (?:carry|borrow) 1)?\.) (?P<said>.*)")   # add's and sub's replies
STEP = re.compile(r"(?P<place>[A-Z][a-z ]+): (?:(?P<x>\d+) (?P<op>[-+]) (?P<y>\d) ?(?:[-+] (?P<owed>1))? = "
                  r"(?P<result>\d+)|carry 1), write (?P<digit>\d)(?:, (?:carry|borrow) (?P<out>1))?\.")


def check_working(family: str, a: int, b: int, work: str) -> None:
    """Read a worked sum or difference step by step and redo each step here: the column's digits are a's
    and b's at that place, the carry or borrow comes from the step before, the arithmetic is right, and
    the written digits, last column first, are the answer."""
    steps = list(STEP.finditer(work))
    assert " ".join(m[0] for m in steps) == work, work
    places = ["Ones", "Tens", "Hundreds", "Thousands"]
    owed, written = 0, []
    for place, m in enumerate(steps):
        assert m["place"] == places[place], work
        if m["x"] is None:                                  # add's last carry, a column of its own
            assert family == "add" and owed == 1 and place == len(steps) - 1
            written.append(1)
            continue
        da, db = a // 10 ** place % 10, b // 10 ** place % 10
        x, y = int(m["x"]), int(m["y"])
        assert y == db and bool(m["owed"]) == bool(owed), work
        if family == "add":
            assert m["op"] == "+" and x == da and int(m["result"]) == x + y + owed, work
            assert int(m["digit"]) == int(m["result"]) % 10 and bool(m["out"]) == (int(m["result"]) >= 10), work
        else:
            assert m["op"] == "-" and x in (da, da + 10) and int(m["result"]) == x - y - owed >= 0, work
            assert int(m["digit"]) == int(m["result"]) and bool(m["out"]) == (x == da + 10), work
        owed = int(bool(m["out"]))
        written.append(int(m["digit"]))
    assert owed == 0 or family == "add" and steps[-1]["x"] is None, work
    assert int("".join(map(str, reversed(written)))) == (a + b if family == "add" else a - b), work


def template_part(reply: str) -> str:
    """A reply without the working an add or sub reply starts with: what its answer template rendered."""
    worked = WORKED.fullmatch(reply)
    return worked["said"] if worked else reply


def question_fields(task: dict) -> dict:
    question = task["messages"][-2]["content"]                  # the last exchange is the task
    match = template_regex(template_of(task)[0]).fullmatch(question)
    assert match, (question, task["template"])
    return match.groupdict()


@pytest.fixture(scope="module")
def samples():
    return {split: synthesize(1400, rng=np.random.default_rng(11), split=split) for split in ("train", "heldout")}


def test_answers_are_right_by_independent_computation(samples):
    for split, tasks in samples.items():
        for task in tasks:
            assert task["split"] == split
            reply = task["messages"][-1]["content"]
            if task["family"] == "identity":
                assert task["answer"] == "numgpt" and "numgpt" in reply
                continue
            fields = question_fields(task)
            assert task["answer"] == expected_answer(task["family"], fields), (task, fields)
            if task["family"] in ("add", "sub"):                 # the working, then the answer template
                worked = WORKED.fullmatch(reply)
                assert worked, reply
                check_working(task["family"], int(fields["a"]), int(fields["b"]), worked["work"])
                reply = worked["said"]
            said = template_regex(template_of(task)[1]).fullmatch(reply)
            assert said and said["answer"] == task["answer"], (reply, task["template"])


def test_every_template_of_its_split_is_used_and_only_those(samples):
    for split, tasks in samples.items():
        for name, family in FAMILIES.items():
            qs = {int(t["template"].split(":")[1][1:]) for t in tasks if t["family"] == name}
            ans = {int(t["template"].split(":")[2][1:]) for t in tasks if t["family"] == name}
            assert qs == set(family.templates("questions", split)) and ans == set(family.templates("answers", split))
            assert len(family.templates("questions", "heldout")) >= 2 and family.templates("answers", "heldout")
        assert Counter(t["family"] for t in tasks) == {name: 200 for name in FAMILIES}   # 1400 / 7 families


def test_heldout_templates_never_appear_in_train_text(samples):
    """Read from the text itself: no train question or reply fits a held-out template."""
    heldout_q = [template_regex(f.questions[i]) for f in FAMILIES.values() for i in f.templates("questions", "heldout")]
    heldout_a = [template_regex(f.answers[i]) for f in FAMILIES.values() for i in f.templates("answers", "heldout")]
    for task in samples["train"]:
        question, reply = task["messages"][-2]["content"], task["messages"][-1]["content"]
        assert not any(r.fullmatch(question) for r in heldout_q), question
        assert not any(r.fullmatch(template_part(reply)) for r in heldout_a), reply
    for task in samples["heldout"]:                             # and the held-out text does fit them
        assert any(r.fullmatch(task["messages"][-2]["content"]) for r in heldout_q)
        assert any(r.fullmatch(template_part(task["messages"][-1]["content"])) for r in heldout_a)


def test_operands_are_split_too(samples):
    def operands(tasks):
        seen = set()
        for t in tasks:
            if t["family"] in ("add", "sub", "count", "reverse", "convert"):
                f = question_fields(t)
                seen.add((t["family"] if t["family"] in ("add", "sub", "convert") else "word",
                          f.get("a"), f.get("b"), f.get("word"), f.get("value"), f.get("unit"), f.get("units")))
            elif t["family"] == "next" and question_fields(t)["x"].isdigit():
                seen.add(("next", question_fields(t)["x"]))
        return seen
    train, heldout = operands(samples["train"]), operands(samples["heldout"])
    assert len(train) > 500 and len(heldout) > 300
    assert not train & heldout, sorted(train & heldout)[:5]


def test_checker_accepts_the_reference_and_rejects_perturbed_answers(samples):
    for task in samples["train"][:300] + samples["heldout"][:300]:
        reply, answer = task["messages"][-1]["content"], task["answer"]
        assert check(task, reply)
        if task["family"] == "identity":
            assert not check(task, reply.replace("numgpt", "nanogpt"))
            continue
        i = reply.rindex(answer)
        wrong = str(int(answer) + 1) if answer.isdigit() else answer + "s"
        assert not check(task, reply[:i] + wrong + reply[i + len(answer):]), (reply, wrong)
        assert not check(task, reply[:i] + reply[i + len(answer):] + " " + wrong)   # a wrong last answer wins


def test_checker_reads_free_text():
    add = {"family": "add", "answer": "1234", "messages": []}
    assert check(add, "Let me see: 1000 + 234 gives 1,234.") and check(add, "1234.0") and check(add, "=1234\n")
    assert not check(add, "1234 is close, but I say 1243") and not check(add, "no idea") and not check(add, "")
    assert extract_answer(add, "first 12, then 1,234.") == "1234" and extract_answer(add, "none") is None
    sub = {"family": "sub", "answer": "-5", "messages": []}
    assert check(sub, "3 - 8 = -5") and not check(sub, "3 - 8 = 5")
    half = {"family": "convert", "answer": "2.5", "messages": []}           # a hand-made task: any exact number
    assert check(half, "2.50 kilograms") and not check(half, "2.6") and not check(half, "25")
    rev = {"family": "reverse", "answer": "tac", "messages": []}
    assert check(rev, "'cat' backwards is 'TAC'.") and check(rev, "tac") and not check(rev, "tac is 'cat' reversed")
    day = {"family": "next", "answer": "Saturday", "messages": []}
    assert check(day, "saturday!") and not check(day, "Sunday")
    who = {"family": "identity", "answer": "numgpt", "messages": []}
    assert check(who, "I'm NumGPT.") and not check(who, "I am a numgpteer")


def test_generation_is_deterministic_by_seed():
    one = synthesize(50, rng=np.random.default_rng(5))
    assert one == synthesize(50, rng=np.random.default_rng(5))
    assert one != synthesize(50, rng=np.random.default_rng(6))
    sums = synthesize(20, rng=np.random.default_rng(0), families=["add"], operands=Operands(max_digits=6))
    assert max(len(str(t["answer"])) for t in sums) >= 6 and {t["family"] for t in sums} == {"add"}


def test_multi_turn_conversations_keep_the_last_exchange_as_the_task(tmp_path):
    tasks = synthesize(280, rng=np.random.default_rng(2), turns=3, system_rate=0.5)
    assert Counter(sum(m["role"] == "user" for m in t["messages"]) for t in tasks).keys() == {1, 2, 3}
    assert Counter(t["family"] for t in tasks) == {name: 40 for name in FAMILIES}
    path = tmp_path / "chat.jsonl"
    write_conversations(path, tasks)
    assert read_tasks(path) == tasks                            # valid conversations, answers the checker reads
    for task in tasks:
        assert prompt_messages(task) == task["messages"][:-1] and check(task, task["messages"][-1]["content"])
        if task["family"] != "identity":
            assert task["answer"] == expected_answer(task["family"], question_fields(task))


def test_words_from_text_and_system_prompts():
    assert words_from_text("Hello, hello WORLD! a bc x2y supercalifragilistic") == ("hello", "world")
    words = tuple(f"{a}{b}{c}" for a in "bcdf" for b in "aeiou" for c in "lmnrst")     # 120 made-up words
    tasks = synthesize(100, rng=np.random.default_rng(1), families=["reverse"], operands=Operands(words=words),
                       system_rate=0.0)
    assert {t["answer"][::-1] for t in tasks} <= set(words) and all(len(t["messages"]) == 2 for t in tasks)
    all_system = synthesize(10, rng=np.random.default_rng(1), system_rate=1.0)
    assert all(t["messages"][0]["role"] == "system" for t in all_system)
    assert [m["role"] for m in prompt_messages(all_system[0])] == ["system", "user"]
    assert len(all_system[0]["messages"]) == 3                  # prompt_messages left the task whole


def test_synthesize_refuses_bad_arguments():
    rng = np.random.default_rng(0)
    for kwargs, words in [({"families": ["add", "mul"]}, "unknown task family 'mul'"),
                          ({"split": "test"}, "split must be one of train, heldout"),
                          ({"operands": Operands(max_digits=0)}, "max_digits must be >= 1"),
                          ({"system_rate": float("nan")}, "system_rate must be a finite number between 0 and 1"),
                          ({"system_rate": 1.5}, "system_rate must be between 0 and 1, got 1.5")]:
        with pytest.raises(NumgptError, match=words):
            synthesize(5, rng=rng, **kwargs)
    for n, words in [(0, "n must be >= 1, got 0"), (2.0, r"n must be a whole number \(an int\), got 2.0")]:
        with pytest.raises(NumgptError, match=words):
            synthesize(n, rng=rng)
    with pytest.raises(NumgptError, match="unknown task family 'add'; families is a list of add, sub"):
        synthesize(5, rng=rng, families="add")
    with pytest.raises(NumgptError, match="turns must be >= 1"):
        synthesize(5, rng=rng, turns=0)
    with pytest.raises(NumgptError, match=r"10,000,000,000 tasks need \d+\.\d GiB, more than the .* lower n"):
        synthesize(10**10, rng=rng)               # before allocating: it died in NumPy's 74.5 GiB MemoryError
    only_train = tuple(w for w in WORDS_SAMPLE if not is_heldout(f"word:{w}"))
    with pytest.raises(NumgptError, match="held-out split; pass more words"):
        synthesize(5, rng=rng, families=["count"], split="heldout", operands=Operands(words=only_train))


WORDS_SAMPLE = ("apple", "table", "river", "stone", "cloud", "green", "horse", "music")

GOOD = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4", "weight": 1}], "source": "kept"}


def conversation(*turns, **extra) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns], **extra})


BAD_LINES = [        # the file's own rules, then chat_format's message rules with the line in front
    ('{"messages": [', "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"msgs": []}', 'no "messages" key'),
    ('{"messages": "hi"}', '"messages" is a string'),
    ('{"messages": []}', "a conversation is a non-empty list of messages"),
    ('{"messages": ["hi"]}', "messages[0]: a message is an object with role and content"),
    (conversation(("bot", "x"), ("assistant", "y")), "messages[0]: unknown role 'bot'"),
    ('{"messages": [{"content": "x"}]}', "messages[0]: unknown role None"),
    (conversation(("user", "a"), ("system", "b"), ("assistant", "c")),
     "messages[1]: role 'system' where 'assistant' belongs (roles out of order"),
    (conversation(("assistant", "a"), ("user", "b")), "messages[0]: role 'assistant' where 'user' belongs"),
    (conversation(("user", "a"), ("user", "b"), ("assistant", "c")), "messages[1]: role 'user' where 'assistant'"),
    (conversation(("user", "a"), ("assistant", "b"), ("user", "c")), "ends with a user turn that nothing answers"),
    (conversation(("system", "s"), ("user", "a")), "no assistant turn: nothing to learn"),
    ('{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "b"}]}',
     "messages[0]: content must be a string"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text"}]}]}',
     "messages[1]: content must be a string"),
    ('{"messages": [{"role": "user", "content": "a", "weight": 0}, {"role": "assistant", "content": "b"}]}',
     "messages[0]: only assistant messages have a weight"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 2}]}',
     "messages[1]: weight must be 0 or 1"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]}',
     "every assistant turn has weight 0: nothing to learn"),
]


@pytest.mark.parametrize("line,words", BAD_LINES)
def test_reader_refuses_bad_lines_naming_the_line(tmp_path, line, words):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n", encoding="utf-8")   # line 3, after a blank line
    with pytest.raises(NumgptError) as e:
        read_conversations(path)
    assert str(e.value).startswith(f"{path}:3: ") and words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_reader_refuses_bytes_and_empty_files_and_keeps_good_lines(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"messages": "\xff"}\n')
    with pytest.raises(NumgptError, match=r"chat.jsonl:2: not UTF-8 text \(byte 0xff at column 15\)"):
        read_conversations(path)
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(NumgptError, match="no conversations"):
        read_conversations(path)
    for where, said in ((tmp_path, "is a folder; pass a JSONL file"), (tmp_path / "nope.jsonl", "no such file")):
        with pytest.raises(NumgptError, match=f"{where}: {said}"):          # the OS's "Is a directory" before
            read_conversations(where)
    path.write_text(json.dumps(GOOD) + "\n" + conversation(("user", "é"), ("assistant", "ok")), encoding="utf-8")
    assert read_conversations(path) == [GOOD, json.loads(conversation(("user", "é"), ("assistant", "ok")))]


def test_read_tasks_refuses_answers_the_checker_cannot_read(tmp_path):
    path = tmp_path / "tasks.jsonl"
    good = synthesize(3, rng=np.random.default_rng(0), families=["add"])
    cases = [({}, 'not a task (no "family" and "answer"): this needs tasks'),     # a plain conversation
             ({"family": "mul", "answer": "4"}, "unknown task family 'mul'"),
             ({"family": "add"}, 'a task needs "answer"'),
             ({"family": "add", "answer": "5"}, "the reference reply does not give the answer '5'"),
             ({"family": "reverse", "answer": "tac"}, "its last word")]
    for extra, words in cases:
        line = conversation(("user", "2+2? or reverse cat"), ("assistant", "4"), **extra)
        path.write_text("\n".join([json.dumps(good[0]), line]) + "\n", encoding="utf-8")
        with pytest.raises(NumgptError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(words)):
            read_tasks(path)
    check_task(good[1], "here")                                 # the generator's own tasks pass


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_synth_then_check_round_trip(capsys, tmp_path, monkeypatch):
    out = tmp_path / "train.jsonl"
    code, printed, err = run(capsys, "data", "synth", "--n", "70", "--seed", "3", "-o", str(out))
    assert code == 0 and err == "" and printed.startswith(f"wrote 70 train conversations to {out}")
    tasks = read_tasks(out)
    assert tasks == synthesize(70, rng=np.random.default_rng(3))            # the library's records, as written
    assert Counter(t["family"] for t in tasks) == {name: 10 for name in FAMILIES}
    code, printed, _ = run(capsys, "data", "check", str(out))
    roles = Counter(m["role"] for t in tasks for m in t["messages"])
    assert code == 0 and printed.splitlines()[0] == (
        f"{out}: 70 conversations, {sum(roles.values())} messages (system {roles['system']}, user 70, assistant 70)")
    assert printed.splitlines()[1].startswith(
        "tasks: 70 (add 10, convert 10, count 10, identity 10, next 10, reverse 10, sub 10; split train 70)")

    before = out.read_bytes()
    code, _, err = run(capsys, "data", "synth", "--n", "5", "-o", str(out))
    assert code == 2 and "already exists; pass --force" in err and err.count("\n") == 1
    assert out.read_bytes() == before
    code, _, _ = run(capsys, "data", "synth", "--n", "5", "--split", "heldout", "--families", "next,convert",
                     "-o", str(out), "--force")
    assert code == 0 and {t["split"] for t in read_tasks(out)} == {"heldout"}
    assert {t["family"] for t in read_tasks(out)} == {"next", "convert"}
    monkeypatch.chdir(tmp_path)                         # -o -: refused, not a file named '-'
    code, printed, err = run(capsys, "data", "synth", "--n", "5", "-o", "-")
    assert (code, printed, err) == (2, "", "numgpt: error: -o -: this command writes a file, not stdout; pass a "
                                           "file path\n") and not (tmp_path / "-").exists()


def test_cli_words_file_and_one_line_errors(capsys, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog near seven silver rivers and twelve towers",
                    encoding="utf-8")
    out = tmp_path / "words.jsonl"
    argv = ["data", "synth", "--families", "reverse", "--n", "30", "--words", str(text), "-o", str(out)]
    assert run(capsys, *argv)[0] == 0
    assert {t["answer"][::-1] for t in read_tasks(out)} <= set(words_from_text(text.read_text()))
    plain = tmp_path / "plain.jsonl"                            # conversations without tasks: counted, not scored
    plain.write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    assert run(capsys, "data", "check", str(plain))[1] == \
        f"{plain}: 1 conversations, 5 messages (system 1, user 2, assistant 2)\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n" + conversation(("user", "a"), ("user", "b")) + "\n", encoding="utf-8")
    for argv, words in [(["data", "check", str(bad)], f"{bad}:2: messages[1]: role 'user' where 'assistant'"),
                        (["data", "check", str(tmp_path / "absent.jsonl")], "no such file"),
                        (["data", "synth", "--n", "0", "-o", str(tmp_path / "x.jsonl")],
                         "--n must be >= 1, got 0"),
                        (["data", "synth", "--n", "5", "--max-digits", "0", "-o", str(tmp_path / "x.jsonl")],
                         "--max-digits must be >= 1"),
                        (["data", "synth", "--n", "5", "--families", "add,mul", "-o", str(tmp_path / "x.jsonl")],
                         "unknown task family 'mul'"),
                        (["data", "synth", "--n", "5", "--seed", "-1", "-o", str(tmp_path / "x.jsonl")],
                         "--seed must be a whole number >= 0, got -1"),
                        (["data", "synth", "--n", "5", "-o", str(tmp_path)], "is a folder")]:
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.startswith("numgpt: error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.jsonl").exists()


def test_right_working_needs_every_step_not_only_the_answer():
    task = synthesize(1, rng=np.random.default_rng(4), families=["add"])[0]
    a, b = (int(n) for n in re.findall(r"\d+", task["messages"][-2]["content"]))
    total = a + b
    slipped = column_addition(a, b).replace(" = ", " = 1", 1) + f" The sum is {total}."   # a wrong first sum
    assert check(task, slipped) and not right_working(task, slipped)
    assert right_working(task, column_addition(a, b) + f" {a} + {b} = {total}")
    count = synthesize(1, rng=np.random.default_rng(4), families=["count"])[0]
    assert right_working(count, "anything")                       # no working to check


def test_cli_check_names_every_bad_line(capsys, tmp_path):
    """`data check` on a file with several bad lines names each (it stopped at the first, one rerun per line),
    then one summary line, exit 2; a single bad line stays the one-line error."""
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    lines = [json.dumps({"messages": [{"role": "human", "content": "hi"}]}), good,
             json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "{broken", good]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, printed, err = run(capsys, "data", "check", str(path))
    assert code == 2 and printed == ""
    assert [line.split(":")[1] for line in err.splitlines()[:3]] == ["1", "3", "4"]
    assert err.splitlines()[-1] == f"numgpt: error: {path}: 3 bad lines, above; fix them and check again"
    path.write_text("\n".join([lines[1], lines[2]]) + "\n", encoding="utf-8")
    code, _, err = run(capsys, "data", "check", str(path))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"numgpt: error: {path}:2: no assistant turn")


def test_a_byte_order_mark_at_the_start_of_a_jsonl_file_is_read_past(tmp_path, capsys):
    """Windows editors save UTF-8 with a BOM; `data check` said "Unexpected UTF-8 BOM (decode using utf-8-sig)"."""
    from numgpt.posttrain.chatdata import read_conversations
    from numgpt.posttrain.pairs import read_pairs
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    pair = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "assistant", "content": "go away"}]}
    for name, record, read in (("c.jsonl", chat, read_conversations), ("p.jsonl", pair, read_pairs)):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + json.dumps(record).encode() + b"\n")
        assert len(read(path)) == 1
        assert main(["data", "check", str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()
