"""When a generated sequence ends, and which of its text is final: the one rule every decode loop that
makes text uses (LanguageModel's generate and stream, the serve engine, the SQL session). The one loop
without text, generate.generate_ids (ids in, ids out, as transformers' generate), ends a sequence at its
stop ids, which it keeps, or at max_new_tokens: nothing there is decoded, so no stop string can match.

A sequence ends for one of FINISH_REASONS:
    "length"     max_new_tokens generated
    "eos"        an end token was drawn: end-of-text, or a chat model's end of turn (not part of the completion)
    "stop"       a stop string completed (the text ends just before it)
    "cancelled"  the caller asked (a closed stream, a disconnected client, Ctrl-C)
    "timeout"    past its deadline
    "error"      the decode loop failed
OpenAI's API says "stop" for both "eos" and "stop"; that mapping belongs to the server (serve/).

Stop strings are matched on the decoded text of the completion only (UTF-8 safe: the tokenizer's stream
decoder holds back the bytes of an incomplete character), so one may span several tokens or end inside
one; text is released only once it can no longer be the start of a stop string.

Use from any decode loop:

    finisher = Finisher(tokenizer.stream_decoder(), max_new_tokens=64, stop=("\\n\\n",),
                        eos_id=tokenizer.eot_id, deadline=None)
    while not finisher.reason:
        if finisher.poll(cancelled=client_gone(), now=time.monotonic()):  # between steps
            break
        token = pick_the_next_token()
        if finisher.add(token):          # False for the end-of-text token: not part of the completion
            keep(token)
        send(finisher.release())         # text final now ("" while a stop string may still match)
    send(finisher.release())             # whatever the end released (cancel/timeout flush)

`finisher.reason` is None while the sequence runs; once set it never changes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

FINISH_REASONS = ("length", "eos", "stop", "cancelled", "timeout", "error")


class StreamDecoder(Protocol):
    """Token ids -> text, holding back the bytes of an incomplete UTF-8 character (tokenizer.stream_decoder())."""

    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


class TextStopper:
    """One sequence's text: decodes its tokens UTF-8-safely, finds stop strings, and releases only text
    that can no longer turn into the start of a stop string."""

    def __init__(self, decoder: StreamDecoder, stop: Sequence[str]):
        self.decoder = decoder
        self.stop = tuple(stop)
        self.text = ""        # decoded so far, cut before a stop string once one is found
        self.released = 0     # len of text already handed out
        self.finished = False

    def push(self, token_id: int) -> None:
        """Add one token's text; mark finished if a stop string is now complete."""
        self._append(self.decoder.push(token_id))

    def flush(self) -> None:
        """End of generation: decode any bytes held back for an incomplete character."""
        if not self.finished:
            self._append(self.decoder.flush())

    def _append(self, piece: str) -> None:
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]  # drop the stop string and everything after it
            self.finished = True

    def release(self) -> str:
        """Text that is final now: all of it once finished, else all but a possible stop-string prefix."""
        end = len(self.text) if self.finished else len(self.text) - self._held_back()
        piece = self.text[self.released:end]
        self.released = max(self.released, end)
        return piece

    def _held_back(self) -> int:
        """Length of the longest end of the text that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest


class Finisher:
    """One sequence's end rule: end-of-text, stop strings, max_new_tokens, cancel and deadline, with the
    one vocabulary of FINISH_REASONS (see the module docstring for the loop that drives it).

    decoder: the tokenizer's stream decoder for this sequence. eos_id: the end-of-text id (or several:
    a chat model's end of turn too), None to ignore it. deadline: a time (same clock as poll's `now`)
    after which the sequence times out.
    """

    def __init__(self, decoder: StreamDecoder, *, max_new_tokens: int, stop: Sequence[str] = (),
                 eos_id: int | Collection[int] | None = None, deadline: float | None = None):
        self.stopper = TextStopper(decoder, stop)
        self.max_new_tokens = max_new_tokens
        self.eos_ids = frozenset(() if eos_id is None else eos_id if isinstance(eos_id, Collection) else (eos_id,))
        self.deadline = deadline
        self.generated = 0             # tokens added to the completion (the end-of-text token is not)
        self.reason: str | None = None
        if max_new_tokens <= 0:
            self.end("length")

    @property
    def text(self) -> str:
        """The completion's text so far (cut before a stop string)."""
        return self.stopper.text

    def add(self, token: int, *, whole: bool = False) -> bool:
        """Take the token just drawn; False if it is the end-of-text token (not part of the completion).
        Sets `reason` when this token ends the sequence ("eos", "stop" or "length"). whole: the token
        completes a structured output that no token can extend (Constraint.completed_by), which ends the
        sequence as the end-of-text token would, even when it is the last one max_new_tokens allows."""
        stopper = self.stopper
        if token in self.eos_ids:
            self.end("eos")
            return False
        self.generated += 1
        stopper.push(token)
        if stopper.finished:
            self.reason = "stop"
        elif whole:
            self.end("eos")
        elif self.generated >= self.max_new_tokens:
            self.end("length")
        return True

    def poll(self, *, cancelled: bool = False, now: float | None = None) -> bool:
        """Between steps: end the sequence as "cancelled" if asked, or "timeout" once `now` is past the
        deadline. True if the sequence has ended (for any reason)."""
        if self.reason is None:
            if cancelled:
                self.end("cancelled")
            elif self.deadline is not None and now is not None and now > self.deadline:
                self.end("timeout")
        return self.reason is not None

    def end(self, reason: str) -> None:
        """End the sequence now for `reason` (no change if it has already ended): the bytes held back for
        an incomplete character are decoded, and all the text becomes releasable. A stop string that
        this final flush completes makes the reason "stop" when the sequence ran out of length."""
        if self.reason is not None:
            return
        if reason not in FINISH_REASONS:
            raise ValueError(f"unknown finish reason {reason!r}; one of {', '.join(FINISH_REASONS)}")
        self.stopper.flush()
        self.reason = "stop" if reason == "length" and self.stopper.finished else reason
        self.stopper.finished = True

    def release(self) -> str:
        """The text that became final since the last call ("" while a stop string could still match)."""
        return self.stopper.release()
