"""Labelled text for classification: CSV or JSONL files of (text, label) records, and Debian's fortunes.

    read_labelled("sms.csv", text_field="text", label_field="label")   -> [Example(text, label, where), ...]
    read_fortunes("/usr/share/games/fortunes", ["computers", "food"])  -> [Example(fortune, category), ...]

A CSV file has a header row naming its columns (read with Python's csv module: quoted fields may hold
commas and newlines); a JSONL file holds one JSON object per line. A label may be a string or a number
(kept as its text: 1 and "1" are the same label). Every record must have a non-empty text and a label:
a bad record is a one-line error naming FILE:LINE and the field.

The fortunes files (`dpkg -L fortunes`) are plain text, one fortune after another separated by lines
holding only '%'; the file's name is its category. They are real English that numgpt's built-in model
never saw, labelled by people: a classification set made on the machine, never committed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import NumgptError
from .chatdata import _json_type

TEXT_FIELD, LABEL_FIELD = "text", "label"           # the names Hugging Face datasets use
CSV_SUFFIXES, JSONL_SUFFIXES = (".csv",), (".jsonl", ".ndjson")
FORTUNES_DIR = Path("/usr/share/games/fortunes")    # where Debian's `fortunes` package puts them


@dataclass(frozen=True)
class Example:
    """One labelled text and where it came from ('FILE:LINE', for messages)."""

    text: str
    label: str
    where: str = ""


def read_labelled(path: str | os.PathLike, *, text_field: str = TEXT_FIELD,
                  label_field: str = LABEL_FIELD) -> list[Example]:
    """The (text, label) records of a .csv or .jsonl file, checked (see the module docstring)."""
    if text_field == label_field:        # the model would read its answer: accuracy 1.0 and nothing learnt
        raise NumgptError(f"the text field and the label field are both {text_field!r}; give two fields")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        raise NumgptError(f"{path}: not a .csv or .jsonl file; labelled data is CSV with a header row, or JSON "
                          f"lines with '{text_field}' and '{label_field}' fields")
    try:
        content = path.read_text(encoding="utf-8-sig")            # Excel's CSV starts with a BOM
    except UnicodeDecodeError as e:
        raise NumgptError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    rows = _csv_rows(path, content) if suffix in CSV_SUFFIXES else _jsonl_rows(path, content)
    examples = [_example(row, where, text_field, label_field, path) for where, row in rows]
    if not examples:
        raise NumgptError(f"{path}: no records; a classifier needs labelled texts")
    return examples


def _csv_rows(path: Path, content: str) -> list[tuple[str, dict]]:
    """(FILE:LINE, {column: value}) of each CSV record after the header."""
    reader = csv.DictReader(io.StringIO(content, newline=""))     # newline="": quoted newlines stay in a field
    try:
        rows = [(f"{path}:{reader.line_num}", row) for row in reader]
    except csv.Error as e:
        raise NumgptError(f"{path}:{reader.line_num}: not CSV ({e})") from None
    if not reader.fieldnames:
        raise NumgptError(f"{path}: empty; a CSV file needs a header row naming its columns")
    for where, row in rows:
        if None in row:                                           # more values than the header has columns
            raise NumgptError(f"{where}: {len(reader.fieldnames) + len(row[None])} values but the header names "
                              f"{len(reader.fieldnames)} columns")
    return rows


def _jsonl_rows(path: Path, content: str) -> list[tuple[str, dict]]:
    """(FILE:LINE, object) of each non-blank line."""
    rows = []
    for number, line in enumerate(content.split("\n"), 1):       # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise NumgptError(f"{path}:{number}: not JSON ({e.msg}); a .jsonl file holds one JSON object a line") \
                from None
        if not isinstance(row, dict):
            raise NumgptError(f"{path}:{number}: a JSON {type(row).__name__}, not an object with fields")
        rows.append((f"{path}:{number}", row))
    return rows


def _example(row: dict, where: str, text_field: str, label_field: str, path: Path) -> Example:
    """The record's Example, or a one-line error naming the field that is missing or wrong."""
    for field, flag in ((text_field, "--text-field"), (label_field, "--label-field")):
        if field in row and row[field] is None:         # a CSV row cut short, or JSON null
            raise NumgptError(f"{where}: the '{field}' field is empty (a CSV row with too few values, or null)")
        if field not in row:
            fields = ", ".join(str(k) for k in row if k is not None)
            raise NumgptError(f"{where}: no '{field}' field (it has: {fields}); name the column with {flag}")
    text, label = row[text_field], row[label_field]
    if not isinstance(text, str):
        raise NumgptError(f"{where}: '{text_field}' is {_json_type(text)}, not text (a JSON string)")
    if not text.strip():
        raise NumgptError(f"{where}: '{text_field}' is empty; every record needs a text to classify")
    if isinstance(label, bool) or not isinstance(label, (str, int, float)) or not str(label).strip():
        raise NumgptError(f"{where}: '{label_field}' is {label!r}; a label is a non-empty string or a number")
    return Example(text, str(label).strip(), where)


def label_names(examples: Sequence[Example], source: str = "the data") -> list[str]:
    """The labels present, sorted (by value when all are whole numbers, as class ids 0 .. n-1 usually are,
    else by name): label i is the head's output i (id2label). Needs two or more."""
    names = sorted({e.label for e in examples})
    if all(re.fullmatch(r"-?[0-9]+", n) for n in names):
        names.sort(key=int)
    if len(names) < 2:
        raise NumgptError(f"{source}: every record has the label {names[0]!r}; a classifier needs at least two labels")
    return names


# ---- Debian's fortunes ------------------------------------------------------------------------------------

def fortune_categories(folder: str | os.PathLike = FORTUNES_DIR) -> list[str]:
    """The category files of a fortunes folder, sorted: the files strfile indexed (NAME beside NAME.dat, as
    Debian's package ships them) and the files whose fortunes are separated by '%' lines; not the indexes,
    the .u8 links, or anything else in the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NumgptError(f"{folder}: no fortunes folder; install Debian's package (apt-get install fortunes) "
                          "or pass the folder that holds its files")
    files = [f for f in folder.iterdir() if f.is_file() and not f.is_symlink() and "." not in f.name]
    names = [f.name for f in files if (folder / (f.name + ".dat")).is_file() or _has_separator_line(f)]
    if not names:
        raise NumgptError(f"{folder}: no fortune files (text files of fortunes separated by lines holding only "
                          "'%', as Debian's fortunes package ships them with their .dat indexes)")
    return sorted(names)


def _has_separator_line(path: Path) -> bool:
    """Whether the file's first 64 kB hold a line that is only '%' (how fortune files separate fortunes)."""
    with open(path, "rb") as f:
        head = f.read(65536)
    return any(line.strip() == b"%" for line in head.splitlines())


def read_fortunes(folder: str | os.PathLike = FORTUNES_DIR, categories: Sequence[str] | None = None
                  ) -> list[Example]:
    """Every fortune of the chosen category files (default: all) as Example(text, category), in file order.
    Fortunes are split on lines holding only '%', with surrounding blank lines stripped."""
    folder = Path(folder)
    known = fortune_categories(folder)
    chosen = list(known if categories is None else categories)
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise NumgptError(f"{folder}: no category {unknown[0]!r}; it has {', '.join(known)}")
    examples = []
    for category in chosen:
        text = (folder / category).read_bytes().decode("utf-8", errors="replace")
        for number, fortune in enumerate(split_fortunes(text), 1):
            examples.append(Example(fortune, category, f"{folder / category}#{number}"))
    return examples


def split_fortunes(text: str) -> list[str]:
    """The fortunes of one %-separated file, each stripped of blank lines around it; empty ones dropped."""
    fortunes, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            fortunes.append("\n".join(current).strip("\n"))
            current = []
        else:
            current.append(line.rstrip())
    fortunes.append("\n".join(current).strip("\n"))
    return [f for f in fortunes if f.strip()]
