"""Atomic writes: a reader (or the next run after a crash) sees the old file or folder, or the new one,
never half of either.

The one rule, used by every writer of training data, checkpoints and safetensors files:

    write_bytes_atomically   bytes -> PATH.tmp, fsync, os.replace onto PATH, fsync the parent folder
    replace_folder_atomically  a finished FOLDER.tmp (every file fsync'ed) -> FOLDER: the old folder is
                             renamed to FOLDER.old, the new one renamed in, the parent fsync'ed, the old
                             one deleted. A crash between the two renames leaves FOLDER.old, which
                             readers may fall back to (training/state.py's checkpoint_folder does).
    fsync_folder             flush every file of a folder, and the folder itself

os.replace is atomic on POSIX file systems; the fsyncs make the new bytes durable before the rename, so a
power cut cannot leave a renamed but empty file.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

TMP_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (PATH.tmp, fsync, rename)."""
    with open_atomically(path) as f:
        f.write(data)


@contextmanager
def open_atomically(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that appears at `path` only when the block ends without an error (written
    to PATH.tmp, fsync'ed, renamed over path). On an error the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_folder_atomically(folder: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """write(tmp) fills FOLDER.tmp (the leftover of an interrupted write removed first), which then replaces
    `folder` (replace_folder_atomically); if write fails, FOLDER.tmp goes and `folder` is as it was."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_folder_atomically(tmp, folder)


def replace_folder_atomically(tmp: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Put the finished folder `tmp` in place of `folder` (which may not exist yet): fsync tmp's files,
    rename folder away to FOLDER.old, rename tmp to folder, fsync the parent, delete FOLDER.old."""
    tmp, folder = Path(tmp), Path(folder)
    fsync_folder(tmp)
    old = folder.with_name(folder.name + OLD_SUFFIX)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush every file of a folder (and of its subfolders), and the folders themselves, to disk."""
    folder = Path(folder)
    for f in folder.iterdir():
        if f.is_dir():
            fsync_folder(f)
            continue
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(folder)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (the names of renamed files) to disk; a no-op where a folder cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
