"""One training at a time per run folder: RUN/.lock, held with an exclusive flock for as long as `train` runs.

Two trainings writing one folder would interleave their logs and race on the checkpoint swap (one died
with "no such file: RUN/latest.tmp/..." while its step-0 evaluation stayed in the other's log). The
second is refused at its start, with the holder's pid, before it writes anything.

Why flock: the kernel releases it when the holder's file is closed, which includes every way a process
ends (an error, Ctrl-C, kill -9), so a lock left by a dead process never blocks the next run and there is
no stale-pid guessing. The pid written into the file is only for the message. The file itself stays
(emptied) after release: deleting it would let a process that opened the old file and one that creates a
new one both think they hold the lock.

Where there is no fcntl (Windows) the lock is not taken.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import NumgptError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:                                   # not POSIX
    fcntl = None


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold RUN/.lock for the block (the folder must exist); NumgptError naming the folder and the
    holder's pid if another process (or another open in this one) holds it."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None:
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NumgptError(f"{run_dir} is in use by another training ({_holder(fd)}); wait for it to "
                              "finish or stop it, or pass another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)                       # released: no pid left to mislead a reader
    finally:
        os.close(fd)                                  # closing releases the flock


def _holder(fd: int) -> str:
    """'pid N' as the holder wrote it, or a vaguer phrase while it has not written it yet."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"


def check_not_locked(run_dir: str | os.PathLike) -> None:
    """The refusal `run_lock` would give, checked early (the CLI asks before loading anything); holds
    nothing afterwards, so `train` still takes the lock itself."""
    if (Path(run_dir) / LOCK_FILE).is_file():
        with run_lock(run_dir):
            pass
