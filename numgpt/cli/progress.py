"""Progress for long commands: a tqdm bar on a terminal, and a plain line every few seconds otherwise.

A log file or a pipe gets no bar (its carriage returns make one endless line) but still hears from a
long job, as pip and git do: `numgpt perplexity: 12/50 windows (24%), 30 s, about 95 s left`. The
training commands' step bar (step_bar) writes its redraws there as lines of their own (LineStream).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

LINE_EVERY_S = 10.0   # seconds between progress lines when stderr is not a terminal


def progress_reporter(enabled: bool, unit: str, what: str, *, stream: TextIO | None = None,
                      every: float = LINE_EVERY_S) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(update(done, total), close()): a tqdm bar when `stream` (stderr) is a terminal, else a line per
    `every` seconds; nothing at all when not enabled (--quiet)."""
    stream = sys.stderr if stream is None else stream
    terminal = stream.isatty()                         # asked once: update runs once per token or window
    state: dict = {"start": time.monotonic(), "last": time.monotonic()}

    def update(done: int, total: int) -> None:
        if not enabled:
            return
        if terminal:
            if "bar" not in state:
                from tqdm import tqdm
                state["bar"] = tqdm(total=total, unit=unit, file=stream, dynamic_ncols=True, leave=False)
            state["bar"].update(done - state["bar"].n)
            return
        now = time.monotonic()
        if now - state["last"] >= every and done < total:
            state["last"] = now
            elapsed = now - state["start"]
            left = elapsed / done * (total - done) if done else float("nan")
            print(f"numgpt {what}: {done}/{total} {unit}s ({100 * done / total:.0f}%), {elapsed:.0f} s, "
                  f"about {left:.0f} s left", file=stream, flush=True)

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    return update, close


class LineStream:
    """A text stream that turns a tqdm bar's carriage-return redraws into lines of their own, for a log file
    or a pipe: each redraw (one every `mininterval`) is one line, the erasures between them none."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for piece in text.replace("\n", "\r").split("\r"):
            if piece.strip():
                self.stream.write(piece.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def step_bar(total: int, initial: int, bar_format: str):
    """The progress bar of a training command: redrawn 5 times a second on a terminal; in a log file or a
    pipe, a line of its own every 30 s (tqdm's carriage returns made one endless line of fragments)."""
    from tqdm import tqdm

    terminal = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=terminal, ncols=None if terminal else 100,
                file=sys.stderr if terminal else LineStream(sys.stderr), mininterval=0.2 if terminal else 30,
                bar_format=bar_format)
