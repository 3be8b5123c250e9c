"""Training data: text -> token files on disk (memory-mapped), and random batches from them.

A prepared data folder (what `numgpt prepare` writes, nanoGPT's prepare.py layout):

    train.bin, val.bin   the token ids, little-endian uint16 when the vocabulary fits, else uint32
    tokenizer/           the tokenizer that made them (Hugging Face vocab.json + merges.txt), so that the
                         trained model carries the exact vocabulary its ids mean
    meta.json            format and version, dtype, vocabulary size and fingerprint, and per split the
                         counts of tokens, UTF-8 bytes and characters (for bits per byte / character)

The split is by characters, like nanoGPT's shakespeare_char: the first 90% of the text trains, the last
10% validates. Several input files are joined in order, with '<|endoftext|>' between them when the
vocabulary has it. '<|endoftext|>' written in the text itself becomes the special id (the convention of
GPT-2-style corpora, which separate documents with it).

A batch is `batch_size` windows of block_size + 1 consecutive tokens at random offsets drawn from the
rng passed in: x is a window's first block_size tokens, y the same shifted by one (the next tokens).

Shape legend: B batch, T block size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import NumgptError
from ..atomic import TMP_SUFFIX, replace_folder_atomically, write_bytes_atomically

FORMAT = "numgpt-tokens"
VERSION = 1
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val")
UINT16_LIMIT = 1 << 16
VAL_FRACTION = 0.1                 # the share of characters that validates (nanoGPT's 90/10 split)


@dataclass(frozen=True)
class Dataset:
    """A prepared data folder opened for training: read-only memory maps of both splits and the meta."""

    folder: Path
    meta: dict[str, Any]
    train: np.ndarray
    val: np.ndarray

    @property
    def tokenizer_dir(self) -> Path:
        return self.folder / TOKENIZER_DIR

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def split(self, name: str) -> np.ndarray:
        return {"train": self.train, "val": self.val}[name]

    def bytes_per_token(self, name: str) -> float:
        """UTF-8 bytes of text per token in a split: the factor from nats/token to bits/byte (with ln 2)."""
        counts = self.meta["splits"][name]
        return counts["bytes"] / max(counts["tokens"], 1)

    def chars_per_token(self, name: str) -> float:
        counts = self.meta["splits"][name]
        return counts["chars"] / max(counts["tokens"], 1)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50257 does), else uint32; little-endian on disk."""
    return np.dtype("<u2") if vocab_size <= UINT16_LIMIT else np.dtype("<u4")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over every id's bytes and the special tokens: two tokenizers with the same fingerprint map
    ids to the same text, whichever file layout they were loaded from."""
    h = hashlib.sha256()
    for i in range(tokenizer.vocab_size):
        b = tokenizer.token_bytes(i)
        h.update(len(b).to_bytes(4, "little") + b)
    h.update(json.dumps(sorted(tokenizer.special_tokens.items())).encode())
    return h.hexdigest()


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """(train, val): the first 1 - val_fraction of the characters, and the rest."""
    if not 0 <= val_fraction < 1:
        raise NumgptError(f"validation fraction must be in [0, 1), got {val_fraction}")
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def join_documents(texts: Sequence[str], tokenizer) -> str:
    """Several files as one text, separated by '<|endoftext|>' when the vocabulary has it."""
    from ..tokenizer import ENDOFTEXT
    return (ENDOFTEXT if tokenizer.eot_id is not None else "").join(texts)


def prepare(texts: Sequence[str], out_dir: str | os.PathLike, tokenizer, *, val_fraction: float = VAL_FRACTION,
            tokenizer_source: str = "gpt2", sources: Sequence[str] = ()) -> dict[str, Any]:
    """Tokenize the texts into out_dir (train.bin, val.bin, tokenizer/, meta.json); returns the meta.

    tokenizer_source: how the tokenizer was chosen ('gpt2', a folder path, or 'trained:N'), recorded in
    the meta; sources: the input file names, recorded too.

    Everything is checked before anything is written, and the folder is written as OUT.tmp and renamed
    into place (atomic.py): a failure or Ctrl-C leaves no partial folder, and an earlier data
    folder at out_dir is replaced whole. A folder that holds other files is refused, never emptied.
    """
    out = Path(out_dir)
    text = join_documents(texts, tokenizer)
    if not text:
        raise NumgptError("the input text is empty; pass a file with some text in it")
    parts = split_text(text, val_fraction)
    check_replaceable(out)
    dtype = token_dtype(tokenizer.vocab_size)
    tmp = out.with_name(out.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)             # the leftover of an interrupted prepare
    tmp.mkdir(parents=True)
    try:
        meta = _write_data_folder(tmp, parts, tokenizer, dtype, val_fraction, tokenizer_source, sources)
        n = meta["splits"]["train"]["tokens"]     # refused before it replaces anything: nothing could train on it
        if n < 2:                                 # (a val split that short: training says what to do about it)
            raise NumgptError(f"the train split would hold {n} token{'' if n == 1 else 's'}, and training needs a "
                              "window of 2 at least: add text, or lower val_fraction")
        replace_folder_atomically(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def check_replaceable(out: Path) -> None:
    """out_dir may be absent, an empty folder or an earlier data folder; not a file, nor a folder of
    something else (which replacing it would delete)."""
    if out.exists() and not out.is_dir():
        raise NumgptError(f"{out}: is an existing file, not a folder; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise NumgptError(f"{out}: holds files but is not a numgpt data folder (no {META_FILE}); "
                          "pass an empty or new folder")


def _write_data_folder(folder: Path, parts: tuple[str, str], tokenizer, dtype: np.dtype, val_fraction: float,
                       tokenizer_source: str, sources: Sequence[str]) -> dict[str, Any]:
    """The files of a data folder, into `folder` (a fresh temporary one); returns the meta."""
    tokenizer.save(folder / TOKENIZER_DIR)
    splits = {}
    for name, part in zip(SPLITS, parts):
        ids = np.array(tokenizer.encode(part, allowed_special="all"), dtype=dtype)
        write_bytes_atomically(folder / f"{name}.bin", ids.tobytes())
        splits[name] = {"file": f"{name}.bin", "tokens": int(ids.size), "bytes": len(part.encode("utf-8")),
                        "chars": len(part)}
    meta = {"format": FORMAT, "version": VERSION, "dtype": dtype.str, "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id, "tokenizer": tokenizer_source,
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer), "val_fraction": val_fraction,
            "sources": list(sources), "splits": splits}
    write_bytes_atomically(folder / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Open a prepared data folder; NumgptError saying what to do if it is missing or damaged."""
    folder = Path(folder)
    if folder.is_file():                                # the text itself, given where its data goes
        data = folder.with_suffix("") if folder.suffix else folder.with_name(folder.name + ".data")
        raise NumgptError(f"{folder} is a file; training reads a prepared data folder: `numgpt prepare {folder} "
                          f"--out {data}`, then train on {data}")
    if not folder.is_dir():
        raise NumgptError(f"{folder}: no such data folder; make one with `numgpt prepare TEXT_FILE --out {folder}`")
    meta = read_meta(folder)
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    for name in SPLITS:
        path = folder / meta["splits"][name]["file"]
        expected = meta["splits"][name]["tokens"] * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise NumgptError(f"{path}: missing or not {expected} bytes as {META_FILE} says; "
                              "run `numgpt prepare` again")
        arrays[name] = (np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype))
    return Dataset(folder=folder, meta=meta, train=arrays["train"], val=arrays["val"])


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not path.is_file() and (folder / "train_config.json").is_file():     # a run folder (loop.CONFIG_FILE)
        raise NumgptError(f"{folder} is a training run's folder, not data; pass the data folder it was trained on "
                          f"(data_dir in {folder / 'train_config.json'})")
    if not path.is_file():
        raise NumgptError(f"{folder}: not a prepared data folder (no {META_FILE}); "
                          f"run `numgpt prepare TEXT_FILE --out {folder}`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        ok = meta.get("format") == FORMAT and all(
            k in meta["splits"][s] for s in SPLITS for k in ("file", "tokens", "bytes", "chars"))
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise NumgptError(f"{path}: not a valid numgpt data description; run `numgpt prepare` again")
    if meta.get("version", 0) > VERSION:
        raise NumgptError(f"{path}: format version {meta['version']} is newer than this numgpt reads "
                          f"({VERSION}); upgrade numgpt")
    return meta


def get_batch(tokens: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator,
              rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """batch_size random windows of tokens: inputs x [B, T] and next-token targets y [B, T] (int64).
    rows: read only these rows of the batch (a rank's share: no rank reads windows it does not use); the
    offsets of all batch_size windows are still drawn, so rng moves on alike on every rank."""
    n = len(tokens)
    if n < block_size + 1:
        raise NumgptError(f"a split has only {n} tokens but one training window needs block_size + 1 = "
                          f"{block_size + 1}; use a smaller block_size or more text")
    starts = rng.integers(0, n - block_size, size=batch_size)            # [B]
    if rows is not None:
        starts = starts[rows]                                            # [B] -> [this rank's rows]
    windows = tokens[starts[:, None] + np.arange(block_size + 1)]        # [B, T + 1]
    windows = windows.astype(np.int64)
    return windows[:, :-1], windows[:, 1:]
