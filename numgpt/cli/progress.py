"""Progress for long commands: a tqdm bar on a terminal, and a plain line every few seconds otherwise.

A log file or a pipe gets no bar (its carriage returns make one endless line) but still hears from a
long job, as pip and git do: `numgpt perplexity: 12/50 windows (24%), 30 s, about 95 s left`.
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
