"""`numgpt chat`: talk to a chat model in the terminal (or through a pipe: one user message per line).

The conversation and its replies are numgpt.posttrain.chat_session's; this module reads the flags and the
lines, prints the replies on stdout as they stream (everything else -- banner, notes, command answers --
on stderr, so a script reading stdout gets the replies alone), and turns Ctrl-C during a reply into a
stop between two decode steps.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable

from ..errors import NumgptError
from ..formats.hub import BUILTIN_MODELS, DEFAULT_MODEL
from .options import add_decoding_flags, decoding_kwargs
from .paths import surrogate_byte

# The model `numgpt chat` talks to without --model: the built-in chat model once formats/hub.py ships it
# (issue 22's recipe adds "chat" to BUILTIN_MODELS), the built-in Shakespeare model until then (a base
# model: chat then says so and offers --transcript). The one place to change the default.
DEFAULT_CHAT_MODEL = "chat" if "chat" in BUILTIN_MODELS else DEFAULT_MODEL
CHAT_MAX_NEW_TOKENS = 256     # a reply's length limit without --max-new-tokens (generate's 64 is short)

DESCRIPTION = f"""\
Chat with a model in the terminal: replies stream as they are generated, and the conversation is kept
(the whole of it is rendered with the model's chat template each turn). The model needs a chat template
(a `numgpt sft` run has one); a base model does not: --transcript talks to it over the plain
"User: ... / Assistant: ..." transcript that `numgpt serve` uses for base models.

Without a terminal, stdin is read line by line (one user message a line; blank lines and /commands are
not messages) and stdout gets the replies alone, one after another, each ending with a newline (an empty
line for a message too long to send): `printf 'hi\\nthanks\\n' | numgpt chat -m runs/sft`.
Default --model: {DEFAULT_CHAT_MODEL} ({'the built-in chat model' if DEFAULT_CHAT_MODEL == 'chat' else
'the built-in Shakespeare model, a base model: add --transcript, or give a chat model'}).
"""

COMMANDS = """\
commands (typed as a message):
  /system TEXT   set or replace the system message (/system alone removes it); the next reply sees it
  /reset         forget the conversation (the system message stays)
  /save FILE     append the conversation to FILE as one OpenAI fine-tuning JSONL record {"messages": [...]},
                 which `numgpt sft FILE` reads (a stopped reply is saved with "weight": 0: not trained on;
                 a conversation with no other reply has nothing to train on, and is not saved)
  /help          this list
  /quit          end the session (so does Ctrl-D, or the end of piped input)
  //TEXT         send "/TEXT" as a message"""

EPILOG = f"""\
{COMMANDS}

examples:
  numgpt chat --model runs/sft                    a model fine-tuned by numgpt sft
  numgpt chat --model runs/sft --system "You are terse." --temperature 0.7 --top-k 40 --seed 1
  numgpt chat --model builtin --transcript        the built-in Shakespeare model (a base model) over the transcript
  printf '2 + 3?\\n/save chats.jsonl\\n' | numgpt chat --model runs/sft --temperature 0

Ctrl-C during a reply stops it: the text printed so far stays in the conversation as the assistant's turn
(the model sees it next turn). Ctrl-C at the prompt, or twice during a reply, ends the session (exit 130).

Context: each reply has room for --max-new-tokens (default {CHAT_MAX_NEW_TOKENS}) or half the model's context,
whichever is less; when the conversation leaves less, its oldest exchanges (a message and its reply) are
dropped from what the model sees, with a note (the system message stays; /save still writes every turn).
A message that cannot fit even alone is refused with a note, and the session goes on. A reply also ends at
the context's end, and always at the model's end of turn (<|end|>, not printed) or <|endoftext|>.
With --temperature 0 (or --greedy) replies are the most likely tokens. --seed S makes sampling reproducible:
the same lines give the same replies, the first one being what `numgpt generate --seed S` draws from the
rendered prompt (the session's one generator then goes on drawing).
"""

# decoding flags that make no sense for one streamed reply in a conversation
EXCLUDED = ("num_return_sequences", "sliding_window", "window_stride", "stop_at_eos")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to `numgpt`'s parser."""
    p = sub.add_parser("chat", help="chat with a model in the terminal (streamed replies, /reset, /system, /save)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", metavar="NAME_OR_FOLDER", default=DEFAULT_CHAT_MODEL,
                   help="a chat model: a `numgpt sft` run or a model folder with numgpt's chat template, or a "
                        f"built-in name ({', '.join(BUILTIN_MODELS)}) (default: {DEFAULT_CHAT_MODEL})")
    p.add_argument("--transcript", action="store_true",
                   help="render the conversation as numgpt serve's plain transcript (\"User: ...\\nAssistant:\", "
                        "the reply ending at the next \"\\nUser:\"): for a base model without a chat template")
    p.add_argument("--system", metavar="TEXT", help="the system message to start with (/system changes it)")
    add_decoding_flags(p, exclude=EXCLUDED, shown_defaults={"max_new_tokens": f"{CHAT_MAX_NEW_TOKENS} per reply"})
    p.set_defaults(run=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    import numpy as np

    from ..generate import GenerationOptions, sample_rng
    from ..posttrain.chat_session import ChatSession
    from .inference_commands import load_model

    # checked before decoding_kwargs, whose rule is generate's (>= 0: 0 scores the prompt only)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise NumgptError(f"--max-new-tokens must be >= 1 in a chat (each reply's most tokens), got "
                          f"{args.max_new_tokens}")
    options = GenerationOptions.from_mapping({"max_new_tokens": CHAT_MAX_NEW_TOKENS, **decoding_kwargs(args)})
    lm = load_model(args)
    chat_format, note = pick_format(lm.tokenizer, args.model, transcript=args.transcript)
    rng = np.random.default_rng() if options.seed is None else sample_rng(options.seed, 0)   # generate's
    session = ChatSession(lm, chat_format, options=options, rng=rng, system=args.system)
    terminal = sys.stdin.isatty()
    if note:
        say(f"note: {note}")
    if terminal:
        line_editing()
        say(f"numgpt chat with {args.model} ({'transcript template' if args.transcript else 'its chat template'}): "
            "/help for commands; Ctrl-C stops a reply, Ctrl-D ends the session")
    while (line := read_line("> " if terminal else "")) is not None:
        if line.startswith("/") and not line.startswith("//"):
            if command(session, line) == "quit":
                return 0
        elif line.strip():
            talk(session, line[1:] if line.startswith("//") else line)
    if terminal:
        say("")               # Ctrl-D: the shell's prompt on a line of its own
    return 0


def pick_format(tokenizer, model: str, *, transcript: bool):
    """(the session's chat format, a note or None): the model's own chat template, or with --transcript
    numgpt serve's transcript (a note when that replaces the model's own). A base model without
    --transcript, or a chat template numgpt cannot render, is a one-line error offering --transcript."""
    from ..posttrain.chat_format import chat_template
    from ..posttrain.chat_session import EndsAtTurn, ModelFormat

    try:
        own = chat_template(tokenizer)
    except NumgptError as e:
        if not transcript:
            why = str(e).split(";")[0]
            raise NumgptError(f"the chat template of {model} cannot be used: {why}; chat over the plain transcript "
                              "with --transcript") from None
        own = None
    if not transcript:
        if own is None:
            raise NumgptError(f"{model} has no chat template (a base model: it continues text, it was not "
                              "fine-tuned to chat); talk to it over the plain transcript with --transcript, or "
                              "give a chat model (a `numgpt sft` run)")
        return ModelFormat(own), None
    try:
        from ..serve.chat import ChatTemplate           # numgpt serve's transcript, the one definition of it
    except ImportError as e:
        raise NumgptError(f"--transcript uses numgpt serve's transcript template, and numgpt.serve needs the serve "
                          f"extra ({e.name} is missing): pip install 'numgpt[serve]'") from None
    if own is None:
        return ChatTemplate(), None
    # a chat model still ends its replies with its own end-of-turn token over the transcript
    return EndsAtTurn(ChatTemplate(), (own.end_id,)), ("the model has its own chat template; --transcript puts the "
                                                       "transcript in its place (a reply still ends at its end of turn)")


def line_editing() -> None:
    """On a terminal: input() with line editing and history (readline, where the platform has it)."""
    try:
        import readline  # noqa: F401 -- importing it is what switches it on
    except ImportError:
        pass


def read_line(prompt: str) -> str | None:
    """The next line typed or piped (without its newline, CRLF's \\r too), None at the end of input."""
    try:
        line = input(prompt).removesuffix("\r")
        line.encode("utf-8")    # a stdin decoded with surrogateescape (the C locale) keeps a bad byte as a surrogate
        return line
    except EOFError:
        return None
    except UnicodeDecodeError as e:
        raise NumgptError(f"stdin is not UTF-8 text (byte 0x{e.object[e.start]:02x}); numgpt chat reads UTF-8") from None
    except UnicodeEncodeError as e:
        raise NumgptError(f"stdin is not UTF-8 text (byte 0x{surrogate_byte(e):02x}); numgpt chat reads UTF-8") from None


def say(text: str) -> None:
    """A line that is not a reply (notes, command answers): stderr, so stdout carries the replies alone."""
    print(text, file=sys.stderr, flush=True)


def command(session, line: str) -> str | None:
    """Run one /command; "quit" to end the session. A mistake is one line and the session goes on."""
    name, _, rest = line[1:].partition(" ")
    rest = rest.strip()
    if rest and name in ("quit", "exit", "reset", "help"):
        say(f"/{name} takes nothing after it: nothing done (// sends a message that starts with /)")
        return None
    if name in ("quit", "exit"):
        return "quit"
    if name == "help":
        say(COMMANDS)
    elif name == "reset":
        session.reset()
        say("(conversation forgotten" + ("; the system message stays)" if session.system else ")"))
    elif name == "system":
        had = session.system
        try:
            session.set_system(rest)
        except NumgptError as e:
            say(f"not set: {e}")
        else:
            say("(no system message to remove)" if not rest and not had else
                f"(system message {'set' if rest else 'removed'}; the next reply sees it)")
    elif name == "save":
        save(session, rest)
    else:
        say(f"unknown command /{name}: the commands are /system, /reset, /save, /help, /quit (//TEXT sends /TEXT)")
    return None


def save(session, path: str) -> None:
    if not path:
        say("usage: /save FILE (appends the conversation to FILE as one JSONL record)")
        return
    try:
        record = session.save(os.path.expanduser(path))
    except NumgptError as e:
        say(f"not saved: {e}")
    except OSError as e:
        say(f"not saved: {e.filename or path}: {e.strerror or e}")
    else:
        say(f"(saved {len(record['messages'])} messages to {path})")


def talk(session, text: str) -> None:
    """One user message and the streamed reply; Ctrl-C stops the reply (a second one ends the session)."""
    try:
        reply = session.ask(text)
    except NumgptError as e:
        say(f"not sent: {e}")
        if not sys.stdin.isatty():      # piped: an empty reply line keeps replies in step with the messages
            print(flush=True)
        return
    if reply.dropped:
        oldest = "the oldest exchange" if reply.dropped == 1 else f"the oldest {reply.dropped} exchanges"
        say(f"(the conversation outgrew the model's context of {session.lm.config.n_positions} tokens: {oldest} "
            "dropped from what it sees)")
    with stop_on_interrupt() as stop_requested:
        for piece in reply.stream(cancel=stop_requested):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if reply.finish_reason == "cancelled":
        say("(reply stopped; what was printed stays in the conversation)")
    elif reply.finish_reason == "length":
        say(f"(reply cut at {reply.max_new_tokens} tokens: --max-new-tokens or the model's context)")


class stop_on_interrupt:  # noqa: N801 -- used as a function: with stop_on_interrupt() as stop_requested
    """While a reply streams: the first SIGINT asks the reply to stop (stop_requested() turns true), a
    second one raises KeyboardInterrupt as usual (the session ends, exit 130). The handler before is put
    back after the reply. Off the main thread (where Python takes no signal handler) nothing changes."""

    def __enter__(self) -> Callable[[], bool]:
        self.requested = False
        self.before = None
        if threading.current_thread() is threading.main_thread():
            self.before = signal.signal(signal.SIGINT, self._handle)
        return lambda: self.requested

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.before is not None:
            signal.signal(signal.SIGINT, self.before)
