"""Chat on a base model: GPT-2 was never trained on a chat format, so chat means conditioning on a
transcript. One explicit template, shown by GET /v1/models and never applied behind the user's back:

    {system message}              (if any; a default one otherwise)

    User: {user message}
    Assistant: {assistant message}
    User: {user message}
    Assistant:

generation stops at the next turn marker ("\\nUser:"), and the one space the model writes after
"Assistant:" is not part of the reply. `--chat-template FILE` replaces it: a JSON object with any of the
keys below, each a format string with {content} (see ChatTemplate).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import NumgptError


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation becomes a prompt. Each *_turn is a format string with {content}."""

    system_turn: str = "{content}\n\n"
    user_turn: str = "User: {content}\n"
    assistant_turn: str = "Assistant: {content}\n"
    generation_prompt: str = "Assistant:"
    default_system: str = "A conversation between a user and an assistant."
    stop: tuple[str, ...] = ("\nUser:",)
    strip_leading_space: bool = True

    def render(self, messages: list[tuple[str, str]]) -> str:
        """(role, text) pairs -> the prompt. A system message may come first (developer = system)."""
        out = []
        if not messages or messages[0][0] not in ("system", "developer"):
            if self.default_system:
                out.append(self.system_turn.format(content=self.default_system))
        for role, text in messages:
            turn = {"system": self.system_turn, "developer": self.system_turn, "user": self.user_turn,
                    "assistant": self.assistant_turn}[role]
            out.append(turn.format(content=text))
        out.append(self.generation_prompt)
        return "".join(out)

    def describe(self) -> dict:
        """The template as JSON for /v1/models."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        d["strip_leading_space"] = str(self.strip_leading_space).lower()
        return d


def load_chat_template(source: str | None) -> ChatTemplate | None:
    """The template from --chat-template: None/"default" -> the default; "none" -> chat disabled;
    otherwise a JSON file (or inline JSON object) with some of ChatTemplate's keys."""
    if source is None or source == "default":
        return ChatTemplate()
    if source == "none":
        return None
    text = source if source.lstrip().startswith("{") else _read(source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise NumgptError(f"--chat-template: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise NumgptError("--chat-template: expected a JSON object with keys such as user_turn")
    known = {f.name for f in fields(ChatTemplate)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NumgptError(f"--chat-template: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(known))}")
    if "stop" in data:
        data["stop"] = (data["stop"],) if isinstance(data["stop"], str) else tuple(data["stop"])
    template = ChatTemplate(**data)
    for name in ("system_turn", "user_turn", "assistant_turn"):
        try:
            getattr(template, name).format(content="x")
        except (KeyError, IndexError, ValueError) as e:
            raise NumgptError(f"--chat-template: {name} must be a format string with {{content}} only ({e})") from None
    return template


def _read(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise NumgptError(f"--chat-template: no such file: {path} (give a JSON file, inline JSON, 'default' or 'none')")
    return p.read_text(encoding="utf-8")
