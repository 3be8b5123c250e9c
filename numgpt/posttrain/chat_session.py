"""A chat session with a model (`numgpt chat`): the conversation so far, re-rendered with the model's chat
format every turn, and each reply decoded with the KV cache, streamed, and ended at the format's end token.

    session = ChatSession(lm, ModelFormat(chat_template(lm.tokenizer)), options=GenerationOptions(...),
                          rng=generate.sample_rng(seed, 0))      # the generator `numgpt generate --seed` uses
    reply = session.ask("What is 2 + 3?")      # the user's turn, the conversation fitted to the context
    for piece in reply.stream(cancel=stop_requested):
        print(piece, end="", flush=True)
    reply.finish_reason                          # "eos" (the end of turn), "length", "stop" or "cancelled"
    session.record()                             # {"messages": [...]}: OpenAI's fine-tuning JSONL record

The format is anything with `prompt_ids(tokenizer, [(role, text), ...])` (the conversation with the
generation prompt, as ids), `end_ids` (tokens that end a reply, not part of it), `stop` (strings that end
it) and `strip_leading_space`: a chat model's own format here (ModelFormat, over chat_format.ChatTemplate),
or the plain "User: ... / Assistant:" transcript of numgpt serve for a base model (serve/chat.py's
ChatTemplate, which the CLI hands in: this module imports nothing optional). '<|endoftext|>' ends a reply
too (a model that ends the document ends its turn).

Context: every turn renders the whole conversation. When it leaves less room than a reply may need
(min(max_new_tokens, half the context)), the oldest exchanges (a user message and its reply) are dropped
from what the model sees, one at a time (`Reply.dropped` counts them; the system message stays, and
`record()` still has every turn). A message that cannot fit even alone is refused (NumgptError) and not
added. A reply is cut at max_new_tokens or at the end of the context, whichever comes first.

A stopped reply (`cancel()` true between two decode steps: Ctrl-C in the CLI) keeps the text handed out
so far as the assistant's turn, so what the user saw is what the model sees next; `record()` marks it
"weight": 0 (shown, not trained on: a cut reply is no answer to learn). Sampling draws from the one
`rng` of the session, so the same lines and seed give the same replies (greedy draws nothing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import NumgptError
from ..finish import Finisher
from ..generate import GenerationOptions, decode_steps, sample_rng
from .chat_format import ChatTemplate, chat_template
from .chatdata import check_conversation


class ChatFormat(Protocol):
    """How a conversation becomes a prompt and where a reply ends (see the module docstring)."""

    end_ids: tuple[int, ...]
    stop: tuple[str, ...]
    strip_leading_space: bool

    def prompt_ids(self, tokenizer: Any, messages: list[tuple[str, str]]) -> list[int]: ...


@dataclass(frozen=True)
class ModelFormat:
    """A chat model's own format (numgpt's chat tokens and template) as a ChatFormat: messages rendered to
    ids with the generation prompt ('<|assistant|>'), the reply ending at '<|end|>', exactly as written."""

    template: ChatTemplate
    stop: tuple[str, ...] = ()
    strip_leading_space: bool = False

    @property
    def end_ids(self) -> tuple[int, ...]:
        return (self.template.end_id,)

    def prompt_ids(self, tokenizer: Any, messages: list[tuple[str, str]]) -> list[int]:
        del tokenizer                              # the template holds the model's own
        return self.template.render([{"role": role, "content": text} for role, text in messages],
                                    add_generation_prompt=True)


@dataclass(frozen=True)
class EndsAtTurn:
    """Another chat format whose replies also end at a model's own end-of-turn tokens: numgpt serve's
    transcript for a chat model (`numgpt chat --transcript`), which ends its replies with <|end|> whatever
    the prompt looks like."""

    format: ChatFormat
    model_end_ids: tuple[int, ...]

    @property
    def end_ids(self) -> tuple[int, ...]:
        return tuple(self.format.end_ids) + self.model_end_ids

    @property
    def stop(self) -> tuple[str, ...]:
        return self.format.stop

    @property
    def strip_leading_space(self) -> bool:
        return self.format.strip_leading_space

    def prompt_ids(self, tokenizer: Any, messages: list[tuple[str, str]]) -> list[int]:
        return self.format.prompt_ids(tokenizer, messages)


@dataclass
class ChatSession:
    """One conversation with a model: the system message, the turns, and what the model still sees.

    lm: a LanguageModel (numgpt.load). options: the decoding options of every reply (num_return_sequences
    1, no sliding window; options.stop is added to the format's). rng: where sampling draws from (None:
    fresh entropy; unused when greedy)."""

    lm: Any
    format: ChatFormat
    options: GenerationOptions = field(default_factory=GenerationOptions)
    rng: np.random.Generator | None = None
    system: str | None = None
    turns: list[dict] = field(default_factory=list)   # user and assistant messages, alternating
    first_seen: int = 0                                 # index in turns of the oldest message the model sees

    def __post_init__(self) -> None:
        if self.options.num_return_sequences != 1 or self.options.sliding_window:
            raise NumgptError("a chat reply is one sample without a sliding window (the session drops old turns "
                              "instead); leave num_return_sequences and sliding_window at their defaults")
        self.set_system(self.system)

    def reset(self) -> None:
        """Forget every turn (the system message stays: set_system(None) removes it)."""
        self.turns, self.first_seen = [], 0

    def set_system(self, text: str | None) -> None:
        """Set or replace the system message (None or "": none); the next reply sees it. NumgptError, and
        the old one kept, if it leaves no room in the context for a message and a reply."""
        if text:
            n_positions = self.lm.config.n_positions
            alone = len(self.format.prompt_ids(self.lm.tokenizer, [("system", text), ("user", "")]))
            if alone >= n_positions:
                raise NumgptError(f"the system message does not fit the model's context: with the template it is "
                                  f"{alone} tokens of {n_positions}, which leaves no room for a message and a reply; "
                                  "give a shorter one")
        self.system = text or None

    def messages(self) -> list[dict]:
        """The whole conversation as OpenAI messages (copies), dropped turns included."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.turns]

    def ask(self, text: str) -> "Reply":
        """The user's turn: the conversation fitted to the context (oldest exchanges dropped if needed),
        then the reply to stream. NumgptError, and nothing added, if the message cannot fit at all."""
        if not isinstance(text, str):
            raise NumgptError(f"a message is text, got {type(text).__name__}")
        n_positions = self.lm.config.n_positions
        wanted = min(self.options.max_new_tokens, n_positions // 2)
        first_seen, dropped = self.first_seen, 0
        while True:
            ids = self._prompt(self.turns[first_seen:] + [{"role": "user", "content": text}])
            room = n_positions - len(ids)
            if room >= wanted or first_seen == len(self.turns):
                break
            first_seen, dropped = first_seen + 2, dropped + 1         # one exchange: a message and its reply
        if room < 1:
            raise NumgptError(f"that message does not fit the model's context: the prompt would be {len(ids)} "
                              f"tokens of {n_positions}{' with the system message' if self.system else ''}; "
                              "send a shorter one")
        self.first_seen = first_seen
        self.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        return Reply(self, ids, min(self.options.max_new_tokens, room), dropped)

    def record(self) -> dict:
        """The whole conversation as one record of OpenAI's fine-tuning JSONL ({"messages": [...]}), checked
        as numgpt sft reads it; a stopped reply has "weight": 0."""
        if not any(m["role"] == "assistant" for m in self.turns):
            raise NumgptError("nothing to save yet: the conversation has no reply")
        return check_conversation({"messages": self.messages()}, "the conversation")

    def save(self, path: str | os.PathLike) -> dict:
        """Append `record()` to a JSONL file as one line (a newline first if the file's last line lacks one);
        returns the record. A failed write (a full disk) is cut off again: no half line is left."""
        record = self.record()
        try:
            line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")   # before the file is touched
        except UnicodeEncodeError:
            raise NumgptError("the conversation holds text that is not UTF-8 (a lone surrogate); it cannot be "
                              "saved as JSONL") from None
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and _last_byte(path) != b"\n":
                line = b"\n" + line
            try:
                _write_all(fd, line)
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        return record

    def _prompt(self, turns: list[dict]) -> list[int]:
        pairs = ([("system", self.system)] if self.system else []) + [(m["role"], m["content"]) for m in turns]
        return self.format.prompt_ids(self.lm.tokenizer, pairs)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


@dataclass
class Reply:
    """One assistant turn being generated (ChatSession.ask). `stream` yields its text; the session's last
    message is kept equal to what was yielded, whatever stops the stream."""

    session: ChatSession
    prompt_ids: list[int]
    max_new_tokens: int          # the options' max_new_tokens, or the room left in the context if less
    dropped: int                 # exchanges dropped from what the model sees to make room for this reply
    text: str = ""
    finish_reason: str | None = None
    streamed: bool = False

    def stream(self, *, cancel: Callable[[], bool] | None = None) -> Iterator[str]:
        """The reply's text, piece by piece as it becomes final; `cancel()` is asked between decode steps.
        A reply streams once."""
        if self.streamed:
            raise NumgptError("this reply has been streamed already; ask() again for another")
        self.streamed = True
        message = self.session.turns[-1]
        strip = self.session.format.strip_leading_space    # the one space after "Assistant:"
        try:
            for piece in self._pieces(cancel):
                if strip and piece:
                    piece, strip = piece[1:] if piece.startswith(" ") else piece, False
                if piece:
                    self.text += piece
                    message["content"] = self.text
                    yield piece
        finally:
            if self.finish_reason in (None, "cancelled"):
                message["weight"] = 0                 # stopped: shown to the model, not trained on by SFT

    def _pieces(self, cancel: Callable[[], bool] | None) -> Iterator[str]:
        """Decode with the KV cache (generate.decode_steps) under the one end rule (finish.Finisher)."""
        lm, fmt, options = self.session.lm, self.session.format, self.session.options
        ends = set(fmt.end_ids) | ({lm.tokenizer.eot_id} if lm.tokenizer.eot_id is not None else set())
        finisher = Finisher(lm.tokenizer.stream_decoder(), max_new_tokens=self.max_new_tokens,
                            stop=tuple(fmt.stop) + tuple(options.stop), eos_id=ends)
        greedy = options.sampling.greedy
        rng = self.session.rng if self.session.rng is not None else np.random.default_rng()
        steps = decode_steps(lm.params, lm.config, [self.prompt_ids], max_new_tokens=self.max_new_tokens,
                             sampling=options.sampling, rngs=None if greedy else [rng])
        try:
            while finisher.reason is None:
                if cancel is not None and cancel():
                    finisher.poll(cancelled=True)
                    break
                step = next(steps, None)
                if step is None:
                    break
                finisher.add(int(step.tokens[0]))          # [1]: the one sequence's token
                yield finisher.release()
        finally:
            steps.close()
        finisher.end("length")                        # no-op unless the steps ran out first
        self.finish_reason = finisher.reason
        yield finisher.release()


def chat(lm: Any, messages: Any, **options: Any) -> str:
    """A chat model's reply (numgpt.load("chat"), a numgpt sft run) to `messages`: one user message as a str,
    or OpenAI messages (an optional system message, then user and assistant turns ending with the user's),
    rendered with the model's own template; the reply ends at its end of turn (not included), as `numgpt
    chat`'s first reply with the same options and seed. Options: LanguageModel.generate's; max_new_tokens
    is cut to the room left in the context."""
    options = GenerationOptions.from_mapping(options)
    template = chat_template(lm.tokenizer)
    if template is None:
        raise NumgptError("this model has no chat template (a base model: it continues text, it was not fine-tuned "
                          "to chat); use generate(), or a chat model such as numgpt.load('chat') or a numgpt sft run")
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise NumgptError(f"messages must be a str or a non-empty list of {{'role': ..., 'content': ...}} dicts, "
                          f"got {type(messages).__name__}")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or \
                m.get("role") not in ("system", "user", "assistant") or (m["role"] == "system" and k):
            raise NumgptError(f"messages[{k}] must be {{'role': 'system' (first only) | 'user' | 'assistant', "
                              f"'content': str}}, got {m!r:.80}")
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = [dict(role=m["role"], content=m["content"]) for m in messages[1 if system is not None else 0:]]
    if not turns or turns[-1]["role"] != "user":
        raise NumgptError("the last message must be the user's: the reply is the assistant's next turn")
    rng = None if options.sampling.greedy else (np.random.default_rng() if options.seed is None
                                                else sample_rng(options.seed, 0))
    session = ChatSession(lm, ModelFormat(template), options=options, rng=rng, system=system, turns=turns[:-1])
    return "".join(session.ask(turns[-1]["content"]).stream())
