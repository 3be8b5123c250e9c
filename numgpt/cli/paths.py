"""Where the CLI writes: output paths checked before any work, so a mistake costs nothing and loses nothing.

Every command that writes a folder or a file asks `output_folder` / `output_file` first: an existing file
where a folder should go, a folder that already holds something (unless --force), a file's folder that does
not exist, a parent that is not writable -- each is a one-line NumgptError naming the path and the fix. (A
run folder's missing parents are made: `--out runs/new/x`.)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ..errors import NumgptError


def output_folder(path: str | os.PathLike, *, flag: str, force: bool = False, what: str = "folder") -> Path:
    """The folder a command will write, checked: not a file, empty or absent (or --force), writable parent."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NumgptError(f"{flag} {folder}: is an existing file, not a folder; pass a folder path")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise NumgptError(f"{flag} {folder}: the {what} already exists and is not empty; pass --force to "
                          "replace it, or another path")
    check_writable(folder, flag)
    return folder


RUN_PARTS = ("latest", "best", "data", "log.jsonl", "train_config.json")   # what marks a training run's folder


def model_folder(path: str | os.PathLike, *, flag: str, force: bool, what: str) -> Path:
    """`output_folder` for a command that writes one model (merge-lora, average): --force replaces a model
    folder, never a training run's (its checkpoints, data and log would all go)."""
    out = output_folder(path, flag=flag, force=force, what=what)
    run = [n for n in RUN_PARTS if (out / n).exists()]
    if run:
        raise NumgptError(f"{flag} {out}: holds a training run ({', '.join(run)}), which --force would delete; "
                          "pass another path")
    return out


def output_file(path: str | os.PathLike, *, flag: str) -> Path:
    """A file a command will write (replaced if it exists), checked: not a folder, an existing writable
    parent folder (a typo in a folder name is refused, not made into a stray folder tree)."""
    file = Path(path)
    if str(path) == "-":
        raise NumgptError(f"{flag} -: this command writes a file, not stdout; pass a file path")
    if file.is_dir():
        raise NumgptError(f"{flag} {file}: is a folder; pass a file path")
    if not file.parent.exists():
        raise NumgptError(f"{flag} {file}: no such folder {file.parent}; create it first, or pass another path")
    check_writable(file.parent if file.is_file() else file, flag)   # an existing file is replaced
    return file


def png_file(path: str | os.PathLike, *, flag: str = "-o") -> Path:
    """The PNG image a command draws: `path` with .png added when it has no suffix (so the name printed is
    the file written), checked as output_file checks it; another suffix is refused."""
    if str(path) == "" or Path(path).name.lower() == ".png":       # ('' was named '.', '.png' became .png.png)
        raise NumgptError(f"{flag} {str(path)!r}: give the image a name, such as attention.png")
    out = output_file(path, flag=flag)
    if out.suffix == "":
        out = output_file(out.with_name(out.name + ".png"), flag=flag)
    elif out.suffix.lower() != ".png":
        raise NumgptError(f"{flag} {path}: the pictures are PNG images; pass a name ending in .png")
    if out.is_file() and out.stat().st_size:            # a picture is redrawn in place; anything else is kept
        with open(out, "rb") as f:
            if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise NumgptError(f"{flag} {out}: the file exists and is not a PNG image; numgpt replaces only "
                                  "pictures, so pass another path")
    return out


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"   # the first bytes of every PNG file


def check_writable(path: Path, flag: str) -> None:
    """The nearest existing ancestor of `path` (itself if it exists) must be a writable folder."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise NumgptError(f"{flag} {path}: {probe} is a file, so nothing can be created under it")
    try:                        # os.access says yes to root on read-only mounts and /proc: really try
        tempfile.TemporaryDirectory(dir=probe, prefix=".numgpt-probe-").cleanup()
    except OSError as e:
        raise NumgptError(f"{flag} {path}: not writable ({probe}: {e.strerror or e}); pass another path") from None


def input_file(path: str | os.PathLike) -> Path:
    """A file a command reads: it must exist and not be a folder (a pipe such as <(...) is a file here)."""
    file = Path(path)
    if file.is_dir():
        raise NumgptError(f"{file}: is a folder; pass a text file")
    if not file.exists():
        raise NumgptError(f"{file}: no such file")
    return file


def surrogate_byte(e: UnicodeEncodeError) -> int:
    """The byte a text decoded with surrogateescape (argv, a stdin in the C locale) kept as a lone surrogate,
    where encoding it as UTF-8 failed."""
    return ord(e.object[e.start]) - 0xDC00


def read_text(path: str | os.PathLike, *, keep_newlines: bool = False) -> str:
    """The text of a UTF-8 file, or of stdin for '-', checked as strictly either way (sys.stdin would let
    bad bytes in as surrogates): another encoding is a one-line error naming the byte. Line ends become
    "\n" as Python's text files make them, unless keep_newlines (the tokenizer's exact bytes)."""
    what = "stdin" if str(path) == "-" else str(path)
    stdin = getattr(sys.stdin, "buffer", None)     # (a stdin replaced by a text stream has no bytes)
    if what == "stdin" and stdin is None:
        return sys.stdin.read()
    data = stdin.read() if what == "stdin" else input_file(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NumgptError(f"{what}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); convert it "
                          "to UTF-8") from None
    return text if keep_newlines else text.replace("\r\n", "\n").replace("\r", "\n")


def check_apart(out: Path, name: str, folder: str | os.PathLike, *, what: str = "the model") -> None:
    """--out must be neither an input folder, inside one, nor holding one: --force would delete it, or the
    write would replace it. `name` is the input as the user gave it, `folder` where it resolved to."""
    o = out.resolve()
    given = Path(name).expanduser()
    for p in {Path(folder).resolve(), *([given.resolve()] if given.is_dir() else [])}:
        if p == o or p.is_relative_to(o) or o.is_relative_to(p):
            raise NumgptError(f"--out {out}: overlaps {what} {name} ({p}); write to a folder outside it")
