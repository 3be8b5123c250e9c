"""Vocabulary files: Hugging Face (vocab.json + merges.txt, special tokens from tokenizer_config.json,
special_tokens_map.json and added_tokens.json, and the chat template) and OpenAI (encoder.json + vocab.bpe),
read and written.

The files spell tokens in GPT-2's stand-in alphabet (bytes_to_unicode in bpe.py); this module reads and
writes them as they are, and bpe.py turns them into ids and byte strings. Writing is atomic per file
and refuses to replace a vocabulary unless asked (overwrite=True).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import NumgptError
from ..atomic import write_bytes_atomically

ENDOFTEXT = "<|endoftext|>"
MERGES_HEADER = "#version: 0.2"  # first line of vocab.bpe / merges.txt
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where recent transformers save a chat template (read first)


def read_vocabulary(folder: str | os.PathLike, *, sha256: Mapping[str, str] | None = None,
                    check_ids: Callable[[dict, str], object] | None = None
                    ) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, int], tuple[str, str]]:
    """(vocab, merges, special tokens, the two file paths) of a vocabulary folder. `sha256` maps file names
    to expected digests to check first; `check_ids(vocab, path)` validates the ids before the special
    tokens add to them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NumgptError(f"{folder}: no such tokenizer folder")
    if (folder / "vocab.json").exists() or (folder / "merges.txt").exists():
        names = ("vocab.json", "merges.txt")
    elif (folder / "encoder.json").exists() or (folder / "vocab.bpe").exists():
        names = ("encoder.json", "vocab.bpe")
    else:
        raise NumgptError(f"{folder}: not a tokenizer folder: expected vocab.json and merges.txt "
                          "(Hugging Face) or encoder.json and vocab.bpe (OpenAI)")
    for name in names:
        if not (folder / name).is_file():
            raise NumgptError(f"{folder / name}: missing ({names[0]} and {names[1]} go together)")
    for name, digest in (sha256 or {}).items():
        _check_sha256(folder / name, digest)
    vocab = _read_json_object(folder / names[0])
    if check_ids is not None:
        check_ids(vocab, str(folder / names[0]))
    merges = _read_merges(folder / names[1])
    special = _read_special_tokens(folder, vocab)
    return vocab, merges, special, (str(folder / names[0]), str(folder / names[1]))


def write_vocabulary(folder: str | os.PathLike, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]],
                     special: Mapping[str, int], *, overwrite: bool = False, chat_template: str | None = None) -> None:
    """The Hugging Face layout: vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json,
    which transformers' GPT2TokenizerFast.from_pretrained(folder) loads. A folder that already holds a
    vocabulary is refused unless overwrite=True (nothing is lost silently). A `chat_template` goes into
    tokenizer_config.json; a chat_template.jinja left in the folder is removed (transformers would read
    it first, and it belongs to the vocabulary being replaced)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NumgptError(f"{folder}: is a file; pass a folder to save the tokenizer in")
    held = [n for n in ("vocab.json", "merges.txt", "encoder.json", "vocab.bpe") if (folder / n).exists()]
    if held and not overwrite:
        raise NumgptError(f"{folder}: already holds a tokenizer ({held[0]}); pass overwrite=True to replace "
                          "it, or another folder")
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", dict(sorted(vocab.items(), key=lambda kv: kv[1])))
    lines = [MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]
    write_bytes_atomically(folder / "merges.txt", ("\n".join(lines) + "\n").encode("utf-8"))
    _write_json(folder / "special_tokens_map.json", special_tokens_map(special))
    _write_json(folder / "tokenizer_config.json", tokenizer_config(special, chat_template=chat_template))
    (folder / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)


def read_chat_template(folder: str | os.PathLike) -> str | None:
    """The folder's chat template, as transformers finds it: chat_template.jinja first, else
    tokenizer_config.json's "chat_template" (a string, or a list of named templates: the one named
    "default"); None when there is none."""
    folder = Path(folder)
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        try:
            return (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise NumgptError(f"{folder / CHAT_TEMPLATE_FILE}: not UTF-8 text (byte offset {e.start})") from None
    path = folder / "tokenizer_config.json"
    template = _read_json_object(path).get("chat_template") if path.is_file() else None
    if isinstance(template, list):
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    if template is not None and not isinstance(template, str):
        raise NumgptError(f"{path}: chat_template must be a string of Jinja text, found {type(template).__name__}")
    return template


def _check_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise NumgptError(f"{path}: sha256 is {digest}, expected {expected}: the file is corrupt or not the "
                          "published one; reinstall numgpt or restore the file")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise NumgptError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise NumgptError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _write_json(path: Path, obj: object) -> None:
    write_bytes_atomically(path, (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


def _read_json_object(path: Path) -> dict:
    obj = _read_json(path)
    if not isinstance(obj, dict):
        raise NumgptError(f"{path}: expected a JSON object {{...}}, found {type(obj).__name__}")
    return obj


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """vocab.bpe / merges.txt: an optional '#version' line, then one 'first second' pair per line."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise NumgptError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    first = 1 if lines[0].startswith("#version") else 0
    merges = [tuple(line.rstrip("\r").split(" ")) for line in lines[first:] if line.rstrip("\r")]
    for number, merge in enumerate(merges, start=1 + first):
        if len(merge) != 2 or not all(merge):
            raise NumgptError(f"{path}: line {number}: expected two tokens separated by one space, "
                              f"found {' '.join(merge)[:60]!r}")
    return merges


_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_SPECIAL_LIST_KEYS = ("additional_special_tokens", "extra_special_tokens")


def _read_special_tokens(folder: Path, vocab: dict[str, int]) -> dict[str, int]:
    """Special tokens of a vocabulary folder, str -> id.

    They are: the added tokens of tokenizer_config.json ("added_tokens_decoder") and added_tokens.json;
    the tokens that tokenizer_config.json and special_tokens_map.json name (bos_token, eos_token, ...);
    and '<|endoftext|>' when the vocabulary has it (GPT-2's vocab.json/encoder.json list it with no file
    saying it is special). A named special with no id anywhere gets the next free id, as transformers does.
    """
    found: dict[str, int | None] = {}
    if ENDOFTEXT in vocab:
        found[ENDOFTEXT] = vocab[ENDOFTEXT]
    config_path = folder / "tokenizer_config.json"
    config = _read_json_object(config_path) if config_path.is_file() else {}
    for token_id, entry in (config.get("added_tokens_decoder") or {}).items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(content, str) or not str(token_id).isdigit():
            raise NumgptError(f"{config_path}: added_tokens_decoder entry {token_id!r} needs a numeric id "
                              "and a 'content' string")
        found[content] = int(token_id)
    added_path = folder / "added_tokens.json"
    for content, token_id in (_read_json_object(added_path) if added_path.is_file() else {}).items():
        found[content] = token_id
    map_path = folder / "special_tokens_map.json"
    for source in (config, _read_json_object(map_path) if map_path.is_file() else {}):
        for content in _named_specials(source):
            found.setdefault(content, vocab.get(content))
    return _assign_missing_ids(found, vocab)


def _named_specials(config: Mapping) -> list[str]:
    """The special token strings a transformers config names (a value is a str or {"content": str})."""
    values = [config.get(key) for key in _SPECIAL_KEYS]
    for key in _SPECIAL_LIST_KEYS:
        listed = config.get(key) or []
        values.extend(listed.values() if isinstance(listed, dict) else listed)
    contents = [v.get("content") if isinstance(v, dict) else v for v in values]
    return [c for c in contents if isinstance(c, str) and c]


def _assign_missing_ids(found: dict[str, int | None], vocab: Mapping[str, int]) -> dict[str, int]:
    next_id = 1 + max([*vocab.values(), *(i for i in found.values() if isinstance(i, int))], default=-1)
    special = {}
    for content, token_id in found.items():
        if token_id is None:
            token_id, next_id = next_id, next_id + 1
        special[content] = token_id
    return special


def special_tokens_map(special: Mapping[str, int]) -> dict[str, object]:
    """transformers' special_tokens_map.json: '<|endoftext|>' is GPT-2's bos, eos and unk; the rest are
    additional special tokens."""
    out: dict[str, object] = {}
    if ENDOFTEXT in special:
        out.update(bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=ENDOFTEXT)
    others = [s for s in sorted(special, key=special.get) if s != ENDOFTEXT]
    if others:
        out["additional_special_tokens"] = others
    return out


def tokenizer_config(special: Mapping[str, int], *, chat_template: str | None = None) -> dict[str, object]:
    """transformers' tokenizer_config.json for a GPT-2 style tokenizer with these special tokens (and a Jinja
    chat template, if given): what `save` writes and what the server's /tokenizer_info says."""
    added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True}
             for s, i in sorted(special.items(), key=lambda kv: kv[1])}
    config: dict[str, object] = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                                 "added_tokens_decoder": added}
    config.update({"bos_token": None, "eos_token": None, "unk_token": None, "pad_token": None})
    config.update(special_tokens_map(special))
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config
