"""SFT data: conversations rendered to ids and loss masks, packed into rows of block_size + 1 tokens, and
written as a data folder that training/data.load_dataset opens (plus the masks beside the tokens).

Packing, not one conversation per row: the synthetic and chat conversations are short (tens of tokens)
and the context is hundreds, so a row per conversation would spend most of each step on padding. Whole
conversations are packed greedily in order into a row until the next does not fit; the rest of the row
is padding (<|endoftext|>, mask 0) -- a conversation is never split across rows, so none is trained on
without its beginning. Within a row a later conversation attends to the earlier ones (no per-document
attention mask, as in GPT-2's pre-training); each starts with <|endoftext|>, the document separator the
model already learned to read as "a new document begins". Padding sits at a row's end, so causal
attention never lets a real token see it.

A conversation longer than the row is cut to its first block_size + 1 tokens (counted, and reported by
the CLI), or refused with truncate=False.

The folder (a prepared data folder, training/data.py's format, with more):

    train.bin, val.bin              the rows back to back ([rows, block_size + 1] tokens each)
    train_mask.bin, val_mask.bin    uint8, the loss mask of every token (1: the model learns to predict it)
    tokenizer/, meta.json           as `numgpt prepare`'s; meta["sft"] holds the block size, counts, source

meta's per-split "bytes" and "chars" are set so that bytes / tokens is the UTF-8 bytes (and characters) per
TRAINED token (the special tokens count 0): the training loop's val_bpb and val_bpc are then bits per
byte and per character of the text the loss is on ("trained_bytes" and "trained_chars" hold the counts).

Shape legend: R rows, L = block_size + 1 row length, B batch, T block size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..atomic import TMP_SUFFIX, replace_folder_atomically, write_bytes_atomically
from ..errors import NumgptError
from ..tokenizer import Tokenizer
from ..training.data import FORMAT, META_FILE, TOKENIZER_DIR, VERSION, token_dtype, tokenizer_fingerprint
from .chat_format import chat_template

SFT_FORMAT = "numgpt-sft"
TRAIN_ON = ("assistant", "all")        # which tokens the loss is on


@dataclass
class Rendered:
    """Conversations as (ids, mask) lists, with the count cut to fit a row."""

    items: list[tuple[list[int], list[int]]]
    truncated: int = 0


def render_conversations(tokenizer: Tokenizer, conversations: Sequence[tuple[str, Mapping]], *, block_size: int,
                         train_on: str = "assistant", truncate: bool = True, context: int | None = None) -> Rendered:
    """Each (where, conversation) rendered by the chat format: ids and mask (1 on the assistant's replies and
    their <|end|>, or on every token after the first with train_on="all"), cut to block_size + 1 tokens
    (or refused, naming `where`, when truncate is False; context, the model's n_positions if known, says
    whether block_size could be raised)."""
    template = chat_template(tokenizer)
    if template is None:
        raise NumgptError("the tokenizer has no chat template; add the chat tokens first (posttrain.add_chat_tokens)")
    if train_on not in TRAIN_ON:
        raise NumgptError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    L = block_size + 1
    out = Rendered(items=[])
    for where, record in conversations:
        try:
            ids, mask = template.render_for_training(record["messages"])
        except NumgptError as e:
            raise NumgptError(f"{where}: {e}") from None
        if train_on == "all":
            mask = [0] + [1] * (len(ids) - 1)          # every token the model can predict (not the first)
        if len(ids) > L:
            if not truncate:
                raise_it = "" if context is not None and block_size >= context else ", raise block_size"
                raise NumgptError(f"{where}: the conversation is {len(ids)} tokens, longer than the context "
                                  f"(block_size + 1 = {L}); shorten it{raise_it}, or pass truncate=True")
            ids, mask, out.truncated = ids[:L], mask[:L], out.truncated + 1
        out.items.append((ids, mask))
    return out


def pack_rows(items: Sequence[tuple[list[int], list[int]]], *, block_size: int, pad_id: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Whole conversations packed greedily, in order, into rows of block_size + 1 tokens, each row's rest
    padded with pad_id (mask 0): (tokens [R, L] int64, mask [R, L] uint8)."""
    L = block_size + 1
    rows: list[tuple[list[int], list[int]]] = []
    for ids, mask in items:
        if not rows or len(rows[-1][0]) + len(ids) > L:
            rows.append(([], []))
        rows[-1][0].extend(ids)
        rows[-1][1].extend(mask)
    tokens = np.full((len(rows), L), pad_id, np.int64)               # [R, L]
    masks = np.zeros((len(rows), L), np.uint8)                       # [R, L]
    for r, (ids, mask) in enumerate(rows):
        tokens[r, :len(ids)] = ids
        masks[r, :len(mask)] = mask
    return tokens, masks


def trained_text(tokenizer: Tokenizer, tokens: np.ndarray, masks: np.ndarray) -> tuple[int, int]:
    """(UTF-8 bytes, characters) of the trained tokens' text (special tokens count 0: they are no text).
    Characters are the bytes that start one (not 0b10xxxxxx), so a character split across tokens counts once."""
    special = set(tokenizer.special_tokens.values())
    pieces = [b"" if i in special else tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    sizes = np.array([len(b) for b in pieces])                                   # [V]
    starts = np.array([sum(1 for c in b if c & 0xC0 != 0x80) for b in pieces])  # [V]
    trained = tokens[masks.astype(bool)]
    return int(sizes[trained].sum()), int(starts[trained].sum())


def write_token_folder(out: str | os.PathLike, tokenizer: Tokenizer, splits: Mapping[str, np.ndarray],
                       side_files: Mapping[str, Mapping[str, bytes]], split_meta: Mapping[str, Mapping],
                       part: tuple[str, Mapping], finish: Callable[[Path, dict], None] | None = None) -> dict:
    """A data folder training/data.load_dataset opens, written as OUT.tmp and renamed into place (nothing
    half-written): the tokenizer, each split's tokens as NAME.bin, its side files (name -> bytes: masks,
    last positions), meta.json with each split's split_meta and the task's part (key, dict); finish(tmp,
    meta) writes what needs the folder first (DPO's hashed reference cache). Returns the meta. The one
    writer of sft's, dpo's and reward's folders."""
    out = Path(out)
    tmp = out.with_name(out.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tokenizer.save(tmp / TOKENIZER_DIR)
        dtype = token_dtype(tokenizer.vocab_size)
        meta_splits = {}
        for name, tokens in splits.items():
            write_bytes_atomically(tmp / f"{name}.bin", tokens.astype(dtype).tobytes())
            for file, data in side_files[name].items():
                write_bytes_atomically(tmp / file, data)
            meta_splits[name] = {"file": f"{name}.bin", **split_meta[name]}
        meta = {"format": FORMAT, "version": VERSION, "dtype": dtype.str, "vocab_size": tokenizer.vocab_size,
                "eot_id": tokenizer.eot_id, "tokenizer": "chat", "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
                "splits": meta_splits, part[0]: dict(part[1])}
        write_bytes_atomically(tmp / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
        if finish is not None:
            finish(tmp, meta)
        replace_folder_atomically(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def write_sft_folder(out: str | os.PathLike, tokenizer: Tokenizer, splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     *, block_size: int, info: Mapping) -> dict:
    """The packed rows of each split ("train", "val": (tokens, masks)) as a data folder at out
    (write_token_folder); returns the meta."""
    meta_splits = {}
    for name, (tokens, masks) in splits.items():
        trained = int(masks.sum())
        n_bytes, n_chars = trained_text(tokenizer, tokens, masks)
        scale = tokens.size / max(trained, 1)     # bytes / tokens = bytes per trained token (module docstring)
        meta_splits[name] = {"mask_file": f"{name}_mask.bin", "tokens": int(tokens.size),
                             "rows": int(tokens.shape[0]), "trained_tokens": trained, "trained_bytes": n_bytes,
                             "trained_chars": n_chars, "bytes": n_bytes * scale, "chars": n_chars * scale}
    return write_token_folder(out, tokenizer, {name: t for name, (t, _) in splits.items()},
                              {name: {f"{name}_mask.bin": m.astype(np.uint8).tobytes()} for name, (_, m) in splits.items()},
                              meta_splits, ("sft", {"format": SFT_FORMAT, "block_size": block_size, **info}))


def is_sft_folder(path: str | os.PathLike) -> bool:
    """A folder this module wrote (meta.json with an "sft" part)."""
    meta = Path(path) / META_FILE
    try:
        sft = json.loads(meta.read_text(encoding="utf-8")).get("sft", {}) if meta.is_file() else {}
        return sft.get("format") == SFT_FORMAT
    except (ValueError, AttributeError):
        return False


def load_masks(folder: str | os.PathLike, meta: Mapping) -> dict[str, np.ndarray]:
    """The loss masks of both splits, [R, L] uint8 each, checked against the meta's sizes."""
    folder, L = Path(folder), meta["sft"]["block_size"] + 1
    masks = {}
    for name, split in meta["splits"].items():
        path = folder / split["mask_file"]
        if not path.is_file() or path.stat().st_size != split["tokens"]:
            raise NumgptError(f"{path}: missing or not {split['tokens']} bytes as {META_FILE} says; prepare again")
        masks[name] = np.fromfile(path, np.uint8).reshape(-1, L)
    return masks


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_same_source(given: Path, run: Path, source: str | None, sha256: str | None) -> None:
    """A resumed run's data file must be the one its RUN/data was packed from (by content): refused in one
    line that says whether it is another file or the same path since changed."""
    if file_sha256(given) == sha256:
        return
    if source is not None and Path(source).resolve() == given.resolve():
        raise NumgptError(f"{given} has changed since {run} was prepared from it; resume with the file as it was, "
                          "or start a new run")
    raise NumgptError(f"{given} is not the file {run} was prepared from ({source}); resume with that file, or "
                      "start a new run")


def existing_run_error(run: Path, ours: bool) -> NumgptError:
    """The refusal to start a run where one is: continue it with --resume when it may be this command's (ours:
    its data folder is this command's kind, or absent), else it is another command's, which --resume cannot
    continue."""
    if ours:
        return NumgptError(f"{run} already holds a training run; continue it with resume=True, or pass another "
                           "run_dir")
    return NumgptError(f"{run} already holds another command's training run; pass another run_dir")


def check_prepare_only(given: Path, run: Path) -> None:
    """prepare_only writes run_dir itself: refused when the data is a folder prepared already (nothing to do:
    it printed nothing and made nothing) or when run_dir holds anything (it replaced a prepared folder)."""
    if given.is_dir():
        raise NumgptError(f"{given} is prepared already, so prepare_only=True has nothing to do; train on it "
                          "(without prepare_only=True)")
    if run.is_dir() and any(run.iterdir()):
        raise NumgptError(f"{run} is not empty, and prepare_only=True writes a new folder there: pass a new or "
                          "empty run_dir")


def resume_checkpoint(resume: bool | str) -> str:
    """The checkpoint a fine-tuning command's resume= continues: True is RUN/latest; "latest" or "best"."""
    from ..training.loop import BEST, LATEST
    if resume is True:
        return LATEST
    if resume not in (LATEST, BEST):
        raise NumgptError(f"resume must be True, {LATEST!r} or {BEST!r}, got {resume!r}")
    return resume
