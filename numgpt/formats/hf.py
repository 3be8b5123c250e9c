"""Hugging Face GPT-2 folders: config.json + model.safetensors (or shards) + tokenizer files, in and out.

Names: Hugging Face keys are 'transformer.h.0.attn.c_attn.weight'; numgpt's are the same without the
'transformer.' prefix (params.py). The output projection is tied to wte, so 'lm_head.weight' is not
saved and, if a file has it, must equal wte. The attention buffers old checkpoints carry
('.attn.bias', '.attn.masked_bias') are ignored. Pickled pytorch_model.bin files are never opened.

Reference: transformers' modeling_gpt2.py (names), configuration_gpt2.py (config.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomically
from ..config import GPTConfig
from ..errors import NumgptError
from ..panels import DecodeParams
from ..params import BLOCK_MATRICES, Params, count_params, param_shapes
from .safetensors import checked_header, read_safetensors, write_safetensors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HF_PREFIX = "transformer."
TIED_HEAD = "lm_head.weight"
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")   # causal-mask buffers, not parameters
LINEAR_WEIGHTS = tuple(f".{name}" for name in BLOCK_MATRICES)   # name suffixes of the blocks' matrices
DECODE_MATRICES = LINEAR_WEIGHTS + ("wte.weight",)   # what a decode step multiplies: the blocks' and the head
CLASSIFIER_ARCH = "GPT2ForSequenceClassification"
CLASSIFIER_HEAD = "score.weight"     # its linear head, [num_labels, C] (torch's nn.Linear [out, in]), no bias
CONVERT_HINT = ('convert it once with transformers: python -c "from transformers import GPT2LMHeadModel as M; '
                "M.from_pretrained('{f}').save_pretrained('{f}', safe_serialization=True)\"")

def load_config(folder: str | os.PathLike) -> GPTConfig:
    """GPTConfig from a Hugging Face config.json."""
    path = Path(folder) / CONFIG_FILE
    if path.is_dir():
        raise NumgptError(f"{path}: is a folder, not a file; a GPT-2 checkpoint folder needs the file config.json")
    from .peft import CONFIG_FILE as ADAPTER_CONFIG            # what marks a LoRA adapter's folder
    if not path.is_file() and (Path(folder) / ADAPTER_CONFIG).is_file():
        raise NumgptError(f"{folder}: a LoRA adapter, not a model; load its base with the adapter "
                          f"(--model BASE --adapter {folder}; numgpt.load(BASE, adapter=...))")
    if not path.is_file():
        raise NumgptError(f"{path}: missing; a GPT-2 checkpoint folder needs config.json and model.safetensors")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict):
            raise ValueError(f"a JSON {type(d).__name__}, not an object")
        return GPTConfig.from_hf_dict(d)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as e:
        raise NumgptError(f"{path}: bad config: {e}") from None


def load_params(folder: str | os.PathLike, config: GPTConfig, *, mmap: bool = True,
                for_inference: bool = False, threads: int | None = None) -> Params:
    """GPT-2 weights of a Hugging Face folder (model.safetensors, or shards listed in
    model.safetensors.index.json), renamed to numgpt's names and checked against `config`.
    mmap: memory-map the files (default) or read them into memory (see read_safetensors).
    for_inference: hold the decode step's matrices in memory in the decode layout (see load_checkpoint)."""
    folder = Path(folder)
    tensors: dict[str, np.ndarray] = {}
    decode_layout = DECODE_MATRICES if for_inference else ()
    for path in weight_files(folder):
        file_tensors, _ = read_safetensors(path, skip=IGNORED_SUFFIXES, mmap=mmap, decode_layout=decode_layout,
                                           threads=threads)
        for name, array in file_tensors.items():
            tensors[name.removeprefix(HF_PREFIX)] = array
    return _check_params(folder, config, tensors)


def load_checkpoint(folder: str | os.PathLike, *, mmap: bool = True, for_inference: bool = False,
                    threads: int | None = None) -> tuple[GPTConfig, Params]:
    """(config, params) of a Hugging Face GPT-2 folder. With mmap (default) float32 params are read-only
    memory maps: milliseconds to load, no copy. mmap=False reads them into writable memory.

    for_inference: the matrices a decode step multiplies (the blocks' linear weights and wte: all but
    1M of the 124M model's parameters) are read into memory in the decode layout, each with its longer
    side contiguous (safetensors.decode_orientation): c_attn and c_fc as stored, [in, out]; the c_proj
    weights [out, in], as torch's nn.Linear keeps them, and wte [C, V], both returned as transposed views
    with the file's shape, so every `x @ w` and `wte[ids]` works unchanged. One-row products then stream
    long rows, which OpenBLAS runs fastest, and the copies sit in anonymous memory that the kernel backs
    with huge pages (~15% faster than the memory map's 4 KB pages). It costs ~0.4 s of load for the
    124M model; wpe stays memory-mapped. The params are then a panels.DecodeParams: those matrices are
    read-only, and a copy of each in column panels is made on the first forward that asks for them
    (panels=True) with 2 .. panels.MAX_ROWS rows (a speculative verification, a small batch, a short
    prompt's prefill). Measured in BENCHMARKS.md. Not for training: the optimizer wants plain C-ordered
    arrays.
    """
    config = load_config(folder)
    params = load_params(folder, config, mmap=mmap, for_inference=for_inference, threads=threads)
    if for_inference:
        params = DecodeParams(params, threads)
    return config, params


def load_tokenizer(folder: str | os.PathLike, config: GPTConfig):
    """The folder's tokenizer (vocab.json + merges.txt, or encoder.json + vocab.bpe); GPT-2's own
    tokenizer if the folder has none and the model has GPT-2's vocabulary size."""
    from ..tokenizer import Tokenizer   # imported here: tokenizer is optional for weight-only uses

    folder = Path(folder)
    if (folder / "vocab.json").is_file() or (folder / "encoder.json").is_file():
        tok = Tokenizer.load(folder)
    elif config.vocab_size == 50257:
        tok = Tokenizer.gpt2()
    else:
        raise NumgptError(f"{folder}: no tokenizer files (vocab.json + merges.txt) and vocab_size "
                          f"{config.vocab_size} is not GPT-2's 50257; add the tokenizer files to the folder")
    if tok.vocab_size != config.vocab_size:
        raise NumgptError(f"{folder}: the tokenizer has {tok.vocab_size} tokens but the model's vocab_size is "
                          f"{config.vocab_size}; the tokenizer files belong to another model (put the model's "
                          "own vocab.json + merges.txt beside it)")
    return tok


def save_checkpoint(folder: str | os.PathLike, config: GPTConfig, params: Params, *, tokenizer=None,
                    dtype: str = "F32") -> Path:
    """Write config.json + model.safetensors (+ the tokenizer's files) in the layout Hugging Face's
    GPT2LMHeadModel.from_pretrained reads. dtype "F16" stores half-precision weights (half the file;
    loading converts them back to float32). Returns the folder."""
    folder = Path(folder)
    _check_params(folder, config, dict(params))
    folder.mkdir(parents=True, exist_ok=True)
    shapes = param_shapes(config)
    write_safetensors(folder / WEIGHTS_FILE, {HF_PREFIX + name: params[name] for name in shapes},
                      metadata={"format": "pt"}, dtype=dtype)
    write_bytes_atomically(folder / CONFIG_FILE, (json.dumps(config.to_hf_dict(), indent=2) + "\n").encode())
    if tokenizer is not None:
        tokenizer.save(folder, overwrite=True)     # a checkpoint save replaces the whole model
    return folder


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: the index's shards, or model.safetensors."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise NumgptError(f"{index}: bad shard index ({type(e).__name__}: {e}); it needs a 'weight_map'") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise NumgptError(f"{index}: lists shard {missing[0]} which is not in the folder; download it too")
        return [folder / n for n in names]
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    for legacy in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"):
        if (folder / legacy).is_file():
            raise NumgptError(f"{folder}: has only {legacy}, which numgpt does not unpickle; "
                              + CONVERT_HINT.format(f=folder))
    raise NumgptError(f"{folder}: no {WEIGHTS_FILE} (or {INDEX_FILE}); pass a Hugging Face GPT-2 folder")


def not_a_language_model(folder: Path) -> NumgptError:
    """The refusal of a folder whose weights carry a classification head (a classifier's or a reward model's,
    in model.safetensors or a training checkpoint's extra tensors) where a language model is wanted."""
    return NumgptError(f"{folder}: holds a sequence classifier or reward model ({CLASSIFIER_HEAD}, {CLASSIFIER_ARCH}), "
                       "not a language model; use it with `numgpt classify evaluate|predict --model` or "
                       "`numgpt reward score`")


def _check_params(folder: Path, config: GPTConfig, tensors: dict[str, np.ndarray]) -> Params:
    """Exactly the schema's tensors with the schema's shapes, float32; a tied lm_head is dropped."""
    shapes = param_shapes(config)
    head = tensors.pop(TIED_HEAD, None)
    extra = [n for n in tensors if n not in shapes]
    if CLASSIFIER_HEAD in extra:
        raise not_a_language_model(folder)
    problem = _shape_disagreement(config, {name: t.shape for name, t in tensors.items()})
    if problem:
        raise NumgptError(f"{folder}: {problem}; config.json and the weights disagree")
    if extra:
        raise NumgptError(f"{folder}: unexpected tensors {', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''} "
                          f"for a {config.n_layer}-layer GPT-2; config.json and the weights disagree")
    for name in shapes:
        if tensors[name].dtype != np.float32:
            raise NumgptError(f"{folder}: {name} has dtype {tensors[name].dtype}; numgpt runs float32 weights")
    if head is not None and not _equal_in_chunks(head, tensors["wte.weight"]):
        raise NumgptError(f"{folder}: lm_head.weight differs from wte.weight; numgpt runs GPT-2 with the "
                          "output projection tied to the token embedding")
    return {name: tensors[name] for name in shapes}


def _equal_in_chunks(a: np.ndarray, b: np.ndarray, rows: int = 4096) -> bool:
    """array_equal without a full-size temporary (these may be 150 MB memory maps)."""
    return a.shape == b.shape and all(np.array_equal(a[i:i + rows], b[i:i + rows]) for i in range(0, len(a), rows))


def checkpoint_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """What `numgpt info` shows about a folder, read from config.json and the safetensors headers only
    (no weights are loaded): config, parameter count, weight files with sizes and dtypes, tokenizer files."""
    folder = Path(folder)
    config = load_config(folder)
    files, shapes = {}, {}
    for path in weight_files(folder):
        header = checked_header(path)
        header.pop("__metadata__", None)
        dtypes = sorted({e.get("dtype", "?") for e in header.values() if isinstance(e, dict)})
        files[path.name] = {"bytes": path.stat().st_size, "tensors": len(header), "dtypes": dtypes}
        shapes.update({name.removeprefix(HF_PREFIX): tuple(e.get("shape", ())) for name, e in header.items()
                       if isinstance(e, dict)})
    tokenizer_files = [n for n in ("vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.json")
                       if (folder / n).is_file()]
    return {"folder": str(folder), "config": config, "n_params": count_params(config),
            "float32_bytes": 4 * count_params(config), "weight_files": files, "tokenizer_files": tokenizer_files,
            "disagreement": _shape_disagreement(config, shapes)}


def _shape_disagreement(config: GPTConfig, shapes: dict[str, tuple]) -> str | None:
    """Where the weights' shapes (name -> shape: a header's, or loaded arrays') differ from what config.json
    implies, in a line, or None: what loading refuses (_check_params), and what `info` says without loading."""
    want = param_shapes(config)
    missing = [n for n in want if n not in shapes]
    if missing:
        return (f"the weights are missing {len(missing)} tensors of the config ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''})")
    for name, shape in want.items():
        if tuple(shapes[name]) != tuple(shape):
            return f"{name} has shape {list(shapes[name])} where config.json implies {list(shape)}"
    return None


# ---- sequence classifiers: GPT2ForSequenceClassification folders --------------------------------------------

def save_classifier(folder: str | os.PathLike, config: GPTConfig, params: Params, *, labels: list[str],
                    pad_token_id: int, tokenizer=None, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a GPT-2 with a classification head (params holds CLASSIFIER_HEAD [len(labels), C] beside the
    GPT-2 tensors) as transformers' GPT2ForSequenceClassification.from_pretrained reads it: the body under
    'transformer.', 'score.weight', and config.json's architectures, id2label, label2id, pad_token_id
    and problem_type. extra_files: name -> bytes written beside them. Returns the folder."""
    folder = Path(folder)
    body = {k: v for k, v in params.items() if k != CLASSIFIER_HEAD}
    _check_params(folder, config, dict(body))
    head = _check_head(folder, params.get(CLASSIFIER_HEAD), config, len(labels))
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {HF_PREFIX + name: body[name] for name in param_shapes(config)} | {CLASSIFIER_HEAD: head}
    write_safetensors(folder / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    hf = config.to_hf_dict() | {
        "architectures": [CLASSIFIER_ARCH], "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)}, "pad_token_id": int(pad_token_id),
        "problem_type": "single_label_classification"}
    write_bytes_atomically(folder / CONFIG_FILE, (json.dumps(hf, indent=2) + "\n").encode())
    if tokenizer is not None:
        tokenizer.save(folder, overwrite=True)
    for name, data in (extra_files or {}).items():
        write_bytes_atomically(folder / name, data)
    return folder


def load_classifier(folder: str | os.PathLike, *, mmap: bool = True
                    ) -> tuple[GPTConfig, Params, list[str], int | None]:
    """(config, params with CLASSIFIER_HEAD, label names by id, pad_token_id) of a GPT2ForSequenceClassification
    folder. A folder without a head is a one-line error; id2label missing means transformers' LABEL_i names."""
    folder = Path(folder)
    config = load_config(folder)
    tensors: dict[str, np.ndarray] = {}
    for path in weight_files(folder):
        file_tensors, _ = read_safetensors(path, skip=IGNORED_SUFFIXES, mmap=mmap)
        tensors.update({name.removeprefix(HF_PREFIX): array for name, array in file_tensors.items()})
    head = tensors.pop(CLASSIFIER_HEAD, None)
    if head is None:
        raise NumgptError(f"{folder}: no classification head ({CLASSIFIER_HEAD}): a language model, not a "
                          "classifier; train one with `numgpt classify train DATA --init MODEL --out RUN`")
    d = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    labels = _id2label(folder, d.get("id2label"), head.shape[0])
    params = _check_params(folder, config, tensors)
    params[CLASSIFIER_HEAD] = _check_head(folder, head, config, len(labels))
    pad = d.get("pad_token_id")
    if pad is not None and not (isinstance(pad, int) and 0 <= pad < config.vocab_size):
        raise NumgptError(f"{folder / CONFIG_FILE}: pad_token_id {pad!r} is no id of the {config.vocab_size}-token "
                          "vocabulary")
    return config, params, labels, pad


def classifier_labels(folder: str | os.PathLike) -> list[str] | None:
    """The label names of a GPT2ForSequenceClassification folder, by id, from its config.json (its
    architectures and id2label; LABEL_i by num_labels without one); None for any other model."""
    folder = Path(folder)
    d = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if CLASSIFIER_ARCH not in (d.get("architectures") or []):
        return None
    n = d.get("num_labels")
    return _id2label(folder, d.get("id2label"), n if isinstance(n, int) and n > 0 else 2)   # transformers' 2


def _id2label(folder: Path, id2label: Any, n: int) -> list[str]:
    """Label names by id from config.json's id2label ({"0": "neg", ...}); LABEL_i when absent."""
    if id2label is None:
        return [f"LABEL_{i}" for i in range(n)]
    ok = isinstance(id2label, dict) and sorted(id2label, key=str) == sorted(str(i) for i in range(len(id2label)))
    if not ok or not all(isinstance(v, str) for v in id2label.values()):
        raise NumgptError(f"{folder / CONFIG_FILE}: id2label must map '0'..'K-1' to label names, got {id2label!r}")
    return [id2label[str(i)] for i in range(len(id2label))]


def _check_head(folder: Path, head: np.ndarray | None, config: GPTConfig, num_labels: int) -> np.ndarray:
    """The head [num_labels, C] in float32, or a one-line error."""
    if head is None or head.shape != (num_labels, config.n_embd) or head.dtype != np.float32:
        shape = None if head is None else list(head.shape)
        raise NumgptError(f"{folder}: {CLASSIFIER_HEAD} is {shape}, expected float32 [{num_labels}, {config.n_embd}] "
                          "(one row per label); the head and the labels disagree")
    return head
