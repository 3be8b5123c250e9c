"""Chat data for fine-tuning: OpenAI's fine-tuning JSONL, read and checked, and written atomically.

One conversation per line, the format OpenAI's API, TRL and axolotl take:

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}

Keys beside "messages" (a synthetic task's "family" and "answer", say) are kept as they are. A message may
carry OpenAI's "weight": 0 or 1 on an assistant turn (0: shown to the model, not trained on).

The rules a conversation must follow, each refused with a one-line NumgptError naming the file and line:
an optional system message first and only first; then user and assistant turns alternating, starting
with a user turn and ending with an assistant turn; at least one assistant turn to learn from; every
content a string. Blank lines are skipped (their numbers still count).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from ..atomic import open_atomically
from ..errors import NumgptError

ROLES = ("system", "user", "assistant")


def read_conversations(path: str | os.PathLike) -> list[dict]:
    """Every conversation of a chat JSONL file, checked (see the module docstring for the rules)."""
    return [record for _, record in numbered_conversations(path)]


def numbered_conversations(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, conversation) for every non-blank line, checked: for readers that must name a line
    in their own errors (a task whose answer does not parse, say)."""
    path = Path(path)
    found = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NumgptError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise NumgptError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); each line must be one "
                              'JSON object such as {"messages": [...]}') from None
        found.append((number, check_conversation(record, where)))
    if not found:
        raise NumgptError(f"{path}: no conversations (the file is empty); write one JSON object per line, "
                          'such as {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}')
    return found


def check_conversation(record: object, where: str) -> dict:
    """`record` if it is a valid conversation, else a NumgptError starting with `where` (FILE:LINE)."""
    if not isinstance(record, dict):
        raise NumgptError(f'{where}: expected a JSON object {{"messages": [...]}}, got {_json_type(record)}')
    messages = record.get("messages")
    if not isinstance(messages, list):
        got = "no \"messages\" key" if "messages" not in record else f"\"messages\" is {_json_type(messages)}"
        raise NumgptError(f'{where}: {got}; expected "messages": a list of {{"role": ..., "content": ...}}')
    for k, message in enumerate(messages, start=1):
        _check_message(message, k, f"{where}: message {k}")
    _check_order([m["role"] for m in messages], where)
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages):
        why = "every assistant turn has weight 0" if "assistant" in (m["role"] for m in messages) else \
            "no assistant turn"
        raise NumgptError(f"{where}: {why}: nothing to learn (fine-tuning trains on the assistant's replies)")
    return record


def _check_message(message: object, k: int, where: str) -> None:
    """One message: an object with a known role, a string content, and a weight of 0 or 1 if any."""
    if not isinstance(message, dict):
        raise NumgptError(f'{where}: expected an object {{"role": ..., "content": ...}}, got {_json_type(message)}')
    role = message.get("role")
    if role not in ROLES:
        shown = "no \"role\"" if "role" not in message else f"unknown role {json.dumps(role)[:40]}"
        raise NumgptError(f"{where}: {shown}; a role is one of {', '.join(ROLES)}")
    if not isinstance(message.get("content"), str):
        shown = "no \"content\"" if "content" not in message else f"content is {_json_type(message['content'])}"
        raise NumgptError(f"{where}: {shown}; the content must be a string (text only)")
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant" or isinstance(weight, bool) or weight not in (0, 1):
            raise NumgptError(f"{where}: weight {json.dumps(weight)[:20]} on {_a(role)} turn; a weight is 0 or 1, "
                              "on assistant turns only")


def _check_order(roles: list[str], where: str) -> None:
    """System first if at all; then user, assistant, user, ... ending with an assistant turn."""
    turns = roles[1:] if roles[:1] == ["system"] else roles
    first = 2 if turns is not roles else 1               # the message number of turns[0]
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role == "system":
            raise NumgptError(f"{where}: message {first + i} is a system message; it may only come first")
        if role != expected:
            raise NumgptError(f"{where}: message {first + i} is {_a(role)} turn where {_a(expected)} turn "
                              "should be (user and assistant turns alternate, starting with user)")
    if turns and turns[-1] == "user" and "assistant" in turns:
        raise NumgptError(f"{where}: the conversation ends with a user turn that nothing answers; end it with "
                          "an assistant turn")


def _a(role: str) -> str:
    """A role with its article: "a user", "an assistant"."""
    return f"an {role}" if role == "assistant" else f"a {role}"


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
