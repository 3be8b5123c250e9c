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

Chat on a chat model: a model fine-tuned on a chat format (numgpt sft) carries its own template in its
tokenizer files, and `numgpt serve` uses it unless --chat-template is given (ModelChatTemplate): the
conversation is rendered straight to token ids by the model's format (special tokens as tokens, message
text as plain text), and generation ends at the model's end-of-turn token, which is not part of the reply.
The format's renderer comes from numgpt.posttrain, handed in by the CLI (serve does not import posttrain).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping, Protocol, Sequence

from ..errors import NumgptError
from ..generate import encode_prompt


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

    def jinja(self) -> str:
        """The same template as a Jinja string over `messages` and `add_generation_prompt` (the form
        transformers and vLLM's /tokenizer_info give clients that render chats themselves)."""
        def turn(fmt: str) -> str:        # the format string's text as Jinja literals around {{ m.content }}
            parts = fmt.format(content="\0").split("\0")
            return "{{ m.content }}".join("{{ " + json.dumps(p) + " }}" if p else "" for p in parts)
        default = self.system_turn.format(content=self.default_system) if self.default_system else ""
        return ("{%- if not messages or messages[0].role not in ['system', 'developer'] %}"
                + ("{{ " + json.dumps(default) + " }}" if default else "") + "{% endif %}"
                "{%- for m in messages %}"
                "{%- if m.role in ['system', 'developer'] %}" + turn(self.system_turn)
                + "{%- elif m.role == 'user' %}" + turn(self.user_turn)
                + "{%- else %}" + turn(self.assistant_turn) + "{%- endif %}{%- endfor %}"
                "{%- if add_generation_prompt %}{{ " + json.dumps(self.generation_prompt) + " }}{% endif %}")

    end_ids = ()                 # no end-of-turn token: the transcript ends at its stop strings

    def prompt_ids(self, tokenizer, messages: list[tuple[str, str]]) -> list[int]:
        """(role, text) pairs -> the prompt's token ids (the rendered transcript, encoded)."""
        return encode_prompt(tokenizer, self.render(messages))

    def describe(self) -> dict:
        """The template as JSON for /v1/models."""
        d = {"source": "transcript", **asdict(self)}
        d["stop"] = list(self.stop)
        return d


class ChatRenderer(Protocol):
    """A chat model's format (numgpt.posttrain.ChatTemplate): messages -> ids, and its end-of-turn id."""

    end_id: int

    def render(self, messages: Sequence[Mapping], *, add_generation_prompt: bool = False) -> list[int]: ...

    def render_for_training(self, messages: Sequence[Mapping]) -> tuple[list[int], list[int]]: ...


@dataclass(frozen=True)
class ModelChatTemplate:
    """A chat model's own template (see the module docstring): `renderer` turns messages into ids and
    raises NumgptError for a conversation its format refuses; `jinja` is the same format as the model's
    tokenizer_config.json gives it (for /tokenizer_info); `end_token` is its end-of-turn token's text."""

    renderer: ChatRenderer
    jinja_text: str
    end_token: str
    stop: tuple[str, ...] = ()           # no stop strings of its own: the end-of-turn token ends a reply
    strip_leading_space: bool = False    # the reply is exactly what the model wrote

    @classmethod
    def of(cls, renderer: ChatRenderer, tokenizer) -> "ModelChatTemplate":
        """The template of a model whose tokenizer has a chat format (`renderer`, over that tokenizer)."""
        return cls(renderer, tokenizer.chat_template, tokenizer.decode([renderer.end_id]))

    @property
    def end_ids(self) -> tuple[int, ...]:
        """The ids that end a reply (not part of it): the end of the turn."""
        return (self.renderer.end_id,)

    def prompt_ids(self, tokenizer, messages: list[tuple[str, str]]) -> list[int]:
        """(role, text) pairs -> the model's prompt ids with the generation prompt (OpenAI's "developer"
        role is the system's). NumgptError for a conversation the format refuses (order, last role)."""
        del tokenizer                    # the renderer holds the model's own
        return self.renderer.render([{"role": "system" if role == "developer" else role, "content": text}
                                     for role, text in messages], add_generation_prompt=True)

    def training_ids(self, messages: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """(ids, SFT's loss mask) of a whole conversation, as the format renders it for training (1 on the
        assistants' content tokens and their end-of-turn token): the playground's Chat tab shows the mask."""
        return self.renderer.render_for_training([{"role": "system" if role == "developer" else role,
                                                   "content": text} for role, text in messages])

    def jinja(self) -> str:
        return self.jinja_text

    def describe(self) -> dict:
        """What /v1/models shows: whose template it is and where a reply ends."""
        return {"source": "model's own", "end_of_turn": self.end_token,
                "note": "messages rendered to token ids by the model's chat format (tokenizer_config.json's "
                        "chat_template, as Jinja at /tokenizer_info); the reply ends at " + self.end_token}


def load_chat_template(source: str | None) -> ChatTemplate | None:
    """The template from --chat-template: None/"default" -> the default; "none" -> chat disabled;
    otherwise a JSON file (or inline JSON object) with some of ChatTemplate's keys, each of its type."""
    if source is None or source == "default":
        return ChatTemplate()
    if source == "none":
        return None
    data = _parse(source)
    known = {f.name for f in fields(ChatTemplate)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NumgptError(f"--chat-template: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(known))}")
    for name, value in data.items():
        _check_value(name, value)
    if "stop" in data:
        data["stop"] = (data["stop"],) if isinstance(data["stop"], str) else tuple(data["stop"])
    template = ChatTemplate(**data)
    for name in ("system_turn", "user_turn", "assistant_turn"):
        try:
            kept = getattr(template, name).format(content="\0") != getattr(template, name).format(content="")
        except (KeyError, IndexError, ValueError) as e:
            raise NumgptError(f"--chat-template: {name} must be a format string with {{content}} only ({e})") from None
        if not kept:       # every such message would be dropped from the prompt without a word
            raise NumgptError(f"--chat-template: {name} has no {{content}}: it must say where the message goes, "
                              f"as in {json.dumps(getattr(ChatTemplate(), name))}")
    return template


def _parse(source: str) -> dict:
    """The JSON object of --chat-template: a file's, or the argument's own (inline JSON)."""
    inline = not Path(source).is_file()
    try:
        data = json.loads(source if inline else _read(source))
    except json.JSONDecodeError as e:
        if inline and not source.lstrip().startswith(("{", "[")):
            _read(source)               # neither JSON nor a file: "no such file"
        raise NumgptError(f"--chat-template: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise NumgptError(f"--chat-template: not a JSON object (got {_json_type(data)}): give an object "
                          "with keys such as user_turn, or 'default' or 'none'")
    return data


def _check_value(name: str, value: object) -> None:
    """One key's value has ChatTemplate's type: strings, a bool, and stop strings that are not empty."""
    if name == "strip_leading_space":
        if not isinstance(value, bool):
            raise NumgptError(f"--chat-template: strip_leading_space must be true or false, got {_json_type(value)}")
    elif name == "stop":
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise NumgptError(f"--chat-template: stop must be a string or a list of strings, got {json.dumps(value)}")
        if not all(stops):
            raise NumgptError("--chat-template: a stop string is empty (it would end every reply at once)")
    elif not isinstance(value, str):
        raise NumgptError(f"--chat-template: {name} must be a string, got {_json_type(value)}")


def _json_type(value: object) -> str:
    """How JSON calls a value's type, with the value when it is short."""
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}[type(value)]
    shown = json.dumps(value)
    return kind if value is None or len(shown) > 40 else f"{kind}, {shown}"


def _read(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        raise NumgptError(f"--chat-template: {path} is a folder; give a JSON file, inline JSON, 'default' or 'none'")
    if not p.is_file():
        raise NumgptError(f"--chat-template: no such file: {path} (give a JSON file, inline JSON, 'default' or 'none')")
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NumgptError(f"--chat-template: {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                          f"{e.start})") from None
