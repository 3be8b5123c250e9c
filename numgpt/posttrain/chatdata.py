"""Chat data for fine-tuning: OpenAI's fine-tuning JSONL, read and checked, and written atomically.

One conversation per line, the format OpenAI's API, TRL and axolotl take:

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}

Keys beside "messages" (a synthetic task's "family" and "answer", say) are kept as they are. A message may
carry OpenAI's "weight": 0 or 1 on an assistant turn (0: shown to the model, not trained on).

The rules a conversation must follow, each refused with a one-line NumgptError naming the file and line:
chat_format's (an optional system message first and only first; then user and assistant turns
alternating, starting with a user turn; known roles; string contents; weights 0 or 1), and for data to
learn from, an assistant turn last and at least one trained on. Blank lines are skipped (their numbers
still count).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from ..atomic import open_atomically
from ..errors import NumgptError
from .chat_format import check_messages


def read_conversations(path: str | os.PathLike) -> list[dict]:
    """Every conversation of a chat JSONL file, checked (see the module docstring for the rules)."""
    return [record for _, record in numbered_conversations(path)]


def numbered_conversations(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, conversation) for every non-blank line, checked: for readers that must name a line
    in their own errors (a task whose answer does not parse, say). The first bad line is a NumgptError."""
    found, bad = checked_lines(path, most_bad=1)
    if bad:
        raise NumgptError(bad[0])
    return found


def checked_lines(path: str | os.PathLike, *, most_bad: int) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, conversation) of every good non-blank line, and the error of each bad one (the first
    `most_bad`: reading stops there), for `numgpt data check`, which names every bad line at once."""
    path = Path(path)
    if path.is_dir():                          # (it was the OS's words: "adir: Is a directory")
        raise NumgptError(f"{path}: is a folder; pass a JSONL file")
    if not path.exists():
        raise NumgptError(f"{path}: no such file")
    found, bad = [], []
    for number, raw in enumerate(jsonl_lines(path), start=1):
        if not raw.strip():
            continue
        try:
            found.append((number, _checked_line(raw, f"{path}:{number}")))
        except NumgptError as e:
            bad.append(str(e))
            if len(bad) >= most_bad:
                break
    if not found and not bad:
        raise NumgptError(f"{path}: no conversations (the file is empty); write one JSON object per line, "
                          'such as {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}')
    return found, bad


def jsonl_lines(path: Path) -> list[bytes]:
    """A JSONL file's lines as bytes, a UTF-8 byte-order mark at its start dropped (Windows editors write one;
    labelled CSV and JSONL files are read past it too)."""
    return path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")


def _checked_line(raw: bytes, where: str) -> dict:
    """One line of chat JSONL as a checked conversation; NumgptError naming `where` if it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NumgptError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise NumgptError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); each line must be one "
                          'JSON object such as {"messages": [...]}') from None
    return check_conversation(record, where)


def check_conversation(record: object, where: str) -> dict:
    """`record` if it is a conversation to learn from, else a NumgptError starting with `where` (FILE:LINE).
    The messages' rules are chat_format's (the format SFT renders); a data file adds: the conversation
    ends with an assistant turn, and has one to learn from."""
    if not isinstance(record, dict):
        raise NumgptError(f'{where}: expected a JSON object {{"messages": [...]}}, got {_json_type(record)}')
    messages = record.get("messages")
    if not isinstance(messages, list):
        got = "no \"messages\" key" if "messages" not in record else f"\"messages\" is {_json_type(messages)}"
        raise NumgptError(f'{where}: {got}; expected "messages": a list of {{"role": ..., "content": ...}}')
    try:
        checked = check_messages(messages)                      # [(role, content, trained)]
    except NumgptError as e:
        raise NumgptError(f"{where}: {e}") from None
    if not any(trained for _, _, trained in checked):
        why = "every assistant turn has weight 0" if any(r == "assistant" for r, _, _ in checked) else \
            "no assistant turn"
        raise NumgptError(f"{where}: {why}: nothing to learn (fine-tuning trains on the assistant's replies)")
    if checked[-1][0] != "assistant":
        raise NumgptError(f"{where}: the conversation ends with a {checked[-1][0]} turn that nothing answers; "
                          "end it with an assistant turn")
    return record


def _json_type(value: object) -> str:
    """What a JSON value is, as an error message says it: an array, a string, null, ..."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def write_conversations(path: str | os.PathLike, records: Iterable[Mapping]) -> int:
    """Write conversations as JSONL, atomically (the file appears whole or not at all); returns the count."""
    count = 0
    with open_atomically(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
            count += 1
    return count
