"""Checkpoints in the Hugging Face GPT-2 folder layout: config.json + model.safetensors (+ tokenizer files).

safetensors is read and written here with NumPy alone (no torch, no safetensors package): the file is
an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
{...}}, then the raw little-endian tensor bytes. float32 tensors load as zero-copy views of a read-only
memory map, so loading the 124M model takes milliseconds and pages come in as the forward touches them;
float16/bfloat16 tensors are converted to float32 copies.

Names: Hugging Face keys are 'transformer.h.0.attn.c_attn.weight'; numgpt's are the same without the
'transformer.' prefix (params.py). The output projection is tied to wte, so 'lm_head.weight' is not
saved and, if a file has it, must equal wte. The attention buffers old checkpoints carry
('.attn.bias', '.attn.masked_bias') are ignored. Pickled pytorch_model.bin files are never opened.

Model names resolve through the local Hugging Face hub cache (models--{org}--{name}/snapshots/{commit}),
and are downloaded with huggingface_hub only when it is installed and the caller allows it.

Reference: https://huggingface.co/docs/safetensors (format), transformers' modeling_gpt2.py (names).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .config import GPTConfig
from .errors import NumgptError
from .params import Params, count_params, param_shapes
from .threads import run_in_threads, thread_count

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
RUN_LATEST, RUN_BEST = "latest", "best"     # the checkpoints of a `numgpt train` run folder (train.py)
HF_PREFIX = "transformer."
TIED_HEAD = "lm_head.weight"
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")   # causal-mask buffers, not parameters
LINEAR_WEIGHTS = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
DOWNLOAD_PATTERNS = ["config.json", "*.safetensors", "*.json", "merges.txt", "vocab.json"]
CONVERT_HINT = ('convert it once with transformers: python -c "from transformers import GPT2LMHeadModel as M; '
                "M.from_pretrained('{f}').save_pretrained('{f}', safe_serialization=True)\"")

# safetensors dtype names -> little-endian NumPy dtypes. BF16 has no NumPy dtype: it is read as uint16.
FLOAT_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2")}
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100_000_000


# ---------------------------------------------------------------- safetensors, read and write

def read_safetensors(path: str | os.PathLike, *, skip: tuple[str, ...] = (), mmap: bool = True,
                     transposed: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Float32 tensors and the metadata of a .safetensors file. Tensors whose name ends with one of
    `skip` are left out unread; any other non-float tensor is an error (numgpt's weights are all float).

    mmap=True: float32 tensors are read-only views of a memory map of the file (instant; pages are read
    as they are first touched, and shared with the page cache). mmap=False: the file is read into one
    writable array in memory (a copy, but in anonymous memory that the kernel can back with huge pages).
    transposed: 2-D tensors whose name ends with one of these are read into memory stored transposed
    (see `read_transposed`), whatever `mmap` says; they keep the file's shape. With `transposed`, 1-D
    tensors are read into memory too, and the other 2-D ones (the embeddings) are mapped (copied if not mmap).
    """
    path = Path(path)
    header, data_start = _read_header(path)
    metadata = header.pop("__metadata__", None) or {}
    file_size = path.stat().st_size
    raw = _file_bytes(path, file_size, mmap or bool(transposed))  # not the whole file into memory twice
    tensors, jobs = {}, []
    for name, entry in header.items():
        if name.endswith(skip):
            continue
        dtype, shape, (start, end) = _check_entry(path, name, entry)
        if dtype not in FLOAT_DTYPES:
            raise NumgptError(f"{path}: tensor {name!r} has dtype {dtype}; numgpt loads only float weights "
                              "(F32, F16, BF16, F64)")
        if data_start + end > file_size:
            raise NumgptError(f"{path}: truncated file: tensor {name!r} ends at byte {data_start + end} "
                              f"but the file has {file_size} bytes; download or save it again")
        if transposed and len(shape) == 2 and name.endswith(transposed):
            jobs.append((name, data_start + start, end - start, dtype, shape))
        elif transposed and len(shape) < 2:  # biases, gains: read, not mapped (see _read_transposed_share)
            tensors[name] = _as_float32(_read_bytes(path, data_start + start, end - start), dtype, shape)
        else:
            tensors[name] = _as_float32(raw[data_start + start:data_start + end], dtype, shape)
            if not mmap and transposed and tensors[name].base is not None:
                tensors[name] = tensors[name].copy()         # into memory, as mmap=False promises
    if jobs:
        # one arena for all of them: separate arrays would each round up to whole 2 MB huge pages (+50 MB)
        sizes = [int(np.prod(shape)) for *_, shape in jobs]
        arena = np.empty(sum(sizes), np.float32)
        offsets = np.cumsum([0] + sizes)
        jobs = [(*job, arena[offsets[i]:offsets[i + 1]]) for i, job in enumerate(jobs)]
        shares = _balanced_shares(jobs, sizes, thread_count())
        run_in_threads(lambda k: _read_transposed_share(path, shares[k], tensors), len(shares))  # ~1.6x on 2 cores
    return {name: tensors[name] for name in header if name in tensors}, dict(metadata)


def _balanced_shares(items: list, sizes: list[int], parts: int) -> list[list]:
    """Split items into at most `parts` lists of about equal total size (largest first, each to the
    lightest list so far)."""
    shares: list[list] = [[] for _ in range(max(1, min(parts, len(items))))]
    loads = [0] * len(shares)
    for i in sorted(range(len(items)), key=lambda i: -sizes[i]):
        k = loads.index(min(loads))
        shares[k].append(items[i])
        loads[k] += sizes[i]
    return shares


def _read_transposed_share(path: Path, jobs: list, tensors: dict[str, np.ndarray]) -> None:
    """One thread's share of the 2-D tensors (name, offset, size, dtype, shape, out) of a file, read into
    memory stored transposed through one scratch buffer. Read, not memory-mapped: every page of a map
    that is touched stays in this process's memory, and the kernel maps whole runs of pages (up to 2 MB)
    around each touched one -- the 124M model's scattered biases alone pulled ~70 MB of unused
    neighbours into its peak RSS (measured). The copies release the GIL, so shares run in parallel."""
    scratch = np.empty(max((size for _, _, size, *_ in jobs), default=0), np.uint8)
    for name, offset, size, dtype, shape, out in jobs:
        raw = _read_bytes(path, offset, size, scratch[:size])
        tensors[name] = read_transposed(raw.view(FLOAT_DTYPES[dtype]).reshape(shape), dtype, out=out)


def _read_bytes(path: Path, offset: int, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """size bytes of the file from offset, into `out` (uint8) or a new array."""
    out = np.empty(size, np.uint8) if out is None else out
    with open(path, "rb") as f:
        f.seek(offset)
        if f.readinto(memoryview(out)) != size:
            raise NumgptError(f"{path}: truncated file: could not read {size} bytes at {offset}")
    return out


def read_transposed(values: np.ndarray, dtype: str = "F32", tile: int = 128, *, out: np.ndarray | None = None
                    ) -> np.ndarray:
    """A float32 copy of a 2-D array [R, C] stored transposed: the [R, C] view (.T) of a C-ordered
    [C, R] array, so `x @ w` still reads [in, out] while `w.T` is a plain row-major [out, in] matrix.
    out: R * C float32s to hold it (default: a new array).

    Copied in tile x tile squares so that reads and writes both stay in cache: 0.22-0.34 s for the 124M
    model's 340 MB of block weights on one core, against 0.7-0.86 s for np.ascontiguousarray(values.T).
    """
    rows, cols = values.shape
    if dtype == "BF16":
        values = _as_float32(values.view(np.uint8), dtype, values.shape)
    out = np.empty((cols, rows), np.float32) if out is None else out.reshape(cols, rows)  # [C, R]
    for i in range(0, rows, tile):
        for j in range(0, cols, tile):
            out[j:j + tile, i:i + tile] = values[i:i + tile, j:j + tile].T  # casts F16/F64 on the way
    return out.T                                               # [C, R] -> view [R, C]


def _file_bytes(path: Path, size: int, mmap: bool) -> np.ndarray:
    """The whole file as a uint8 array: a read-only memory map, or a copy read into memory."""
    if size == 0:
        return np.zeros(0, np.uint8)
    if mmap:
        return np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)  # plain ndarray: no subclass overhead
    raw = np.empty(size, np.uint8)
    with open(path, "rb") as f:
        f.readinto(memoryview(raw))
    return raw


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *,
                      metadata: Mapping[str, str] | None = None, dtype: str = "F32") -> None:
    """Write tensors as .safetensors in `dtype` ("F32", or "F16" for half the bytes), atomically (a
    temporary file renamed into place, so a file that is memory-mapped by the caller's loaded params can
    be overwritten safely)."""
    if dtype not in ("F32", "F16"):
        raise ValueError(f"write_safetensors writes F32 or F16, not {dtype!r}")
    np_dtype = "<f4" if dtype == "F32" else "<f2"
    path = Path(path)
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    arrays = []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array, dtype=np_dtype)
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)          # pad so tensor data is 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for array in arrays:
            f.write(array.reshape(-1).view(np.uint8))     # the raw bytes, without a copy
    os.replace(tmp, path)


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte where its data starts."""
    try:
        with open(path, "rb") as f:
            size_bytes = f.read(8)
            if len(size_bytes) < 8:
                raise NumgptError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            n = int.from_bytes(size_bytes, "little")
            if n > MAX_HEADER_BYTES or n > path.stat().st_size - 8:
                raise NumgptError(f"{path}: bad safetensors header length {n} for a file of "
                                  f"{path.stat().st_size} bytes; the file is corrupt or truncated")
            text = f.read(n)
    except OSError as e:
        raise NumgptError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NumgptError(f"{path}: corrupt safetensors header (not JSON: {e}); download or save it again") from None
    if not isinstance(header, dict):
        raise NumgptError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    return header, 8 + n


def _check_entry(path: Path, name: str, entry: Any) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """Validate one header entry: known dtype, integer shape, offsets that match the shape."""
    try:
        dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        ok = (dtype in ITEMSIZE and all(isinstance(s, int) and s >= 0 for s in shape)
              and isinstance(start, int) and isinstance(end, int) and 0 <= start <= end)
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise NumgptError(f"{path}: corrupt safetensors header entry for {name!r}: {entry!r}")
    if end - start != int(np.prod(shape)) * ITEMSIZE[dtype]:
        raise NumgptError(f"{path}: tensor {name!r} has {end - start} bytes but its shape {list(shape)} "
                          f"and dtype {dtype} need {int(np.prod(shape)) * ITEMSIZE[dtype]}; the file is corrupt")
    return dtype, shape, (start, end)


def _as_float32(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Bytes -> float32 array of `shape`: a view for F32, a converted copy for F16/BF16/F64."""
    values = raw.view(FLOAT_DTYPES[dtype]).reshape(shape)
    if dtype == "F32":
        return values
    if dtype == "BF16":                                       # bfloat16 is the top half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


# ---------------------------------------------------------------- GPT-2 folders

def load_config(folder: str | os.PathLike) -> GPTConfig:
    """GPTConfig from a Hugging Face config.json."""
    path = Path(folder) / CONFIG_FILE
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
                for_inference: bool = False) -> Params:
    """GPT-2 weights of a Hugging Face folder (model.safetensors, or shards listed in
    model.safetensors.index.json), renamed to numgpt's names and checked against `config`.
    mmap: memory-map the files (default) or read them into memory (see read_safetensors).
    for_inference: hold the blocks' linear weights stored [out, in] (see load_checkpoint)."""
    folder = Path(folder)
    tensors: dict[str, np.ndarray] = {}
    transposed = LINEAR_WEIGHTS if for_inference else ()
    for path in weight_files(folder):
        file_tensors, _ = read_safetensors(path, skip=IGNORED_SUFFIXES, mmap=mmap, transposed=transposed)
        for name, array in file_tensors.items():
            tensors[name.removeprefix(HF_PREFIX)] = array
    return _check_params(folder, config, tensors)


def load_checkpoint(folder: str | os.PathLike, *, mmap: bool = True, for_inference: bool = False
                    ) -> tuple[GPTConfig, Params]:
    """(config, params) of a Hugging Face GPT-2 folder. With mmap (default) float32 params are read-only
    memory maps: milliseconds to load, no copy. mmap=False reads them into writable memory.

    for_inference: the blocks' linear weights (85M of the 124M model's parameters) are read into memory
    stored [out, in], as torch's nn.Linear keeps them, and returned as transposed views with the usual
    [in, out] shape, so every `x @ w` works unchanged. Small-batch decoding then multiplies `w.T @ x.T`,
    which OpenBLAS runs ~1.5x faster than `x @ w` at 2-8 rows, and the copies sit in anonymous memory
    that the kernel backs with huge pages (batch-1 decode ~15% faster than from the memory map). It
    costs ~0.3 s of load for the 124M model; the embeddings stay memory-mapped. Measured in
    BENCHMARKS.md. Not for training: the optimizer wants plain C-ordered arrays.
    """
    config = load_config(folder)
    return config, load_params(folder, config, mmap=mmap, for_inference=for_inference)


def load_tokenizer(folder: str | os.PathLike, config: GPTConfig):
    """The folder's tokenizer (vocab.json + merges.txt, or encoder.json + vocab.bpe); GPT-2's own
    tokenizer if the folder has none and the model has GPT-2's vocabulary size."""
    from .tokenizer import Tokenizer   # imported here: tokenizer is optional for weight-only uses

    folder = Path(folder)
    if (folder / "vocab.json").is_file() or (folder / "encoder.json").is_file():
        tok = Tokenizer.load(folder)
    elif config.vocab_size == 50257:
        tok = Tokenizer.gpt2()
    else:
        raise NumgptError(f"{folder}: no tokenizer files (vocab.json + merges.txt) and vocab_size "
                          f"{config.vocab_size} is not GPT-2's 50257; add the tokenizer files to the folder")
    if tok.vocab_size > config.vocab_size:
        raise NumgptError(f"{folder}: the tokenizer has {tok.vocab_size} tokens but the model only "
                          f"{config.vocab_size}; the tokenizer files belong to another model")
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
    (folder / CONFIG_FILE).write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(folder)
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


def _check_params(folder: Path, config: GPTConfig, tensors: dict[str, np.ndarray]) -> Params:
    """Exactly the schema's tensors with the schema's shapes, float32; a tied lm_head is dropped."""
    shapes = param_shapes(config)
    head = tensors.pop(TIED_HEAD, None)
    missing = [n for n in shapes if n not in tensors]
    if missing:
        raise NumgptError(f"{folder}: weights are missing {len(missing)} tensors of the config "
                          f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                          "config.json and the weights belong to different models")
    extra = [n for n in tensors if n not in shapes]
    if extra:
        raise NumgptError(f"{folder}: unexpected tensors {', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''} "
                          f"for a {config.n_layer}-layer GPT-2; config.json and the weights disagree")
    for name, shape in shapes.items():
        if tensors[name].shape != shape:
            raise NumgptError(f"{folder}: {name} has shape {list(tensors[name].shape)} but config.json implies "
                              f"{list(shape)}; config.json and the weights disagree")
        if tensors[name].dtype != np.float32:
            raise NumgptError(f"{folder}: {name} has dtype {tensors[name].dtype}; numgpt runs float32 weights")
    if head is not None and not _equal_in_chunks(head, tensors["wte.weight"]):
        raise NumgptError(f"{folder}: lm_head.weight differs from wte.weight; numgpt runs GPT-2 with the "
                          "output projection tied to the token embedding")
    return {name: tensors[name] for name in shapes}


def _equal_in_chunks(a: np.ndarray, b: np.ndarray, rows: int = 4096) -> bool:
    """array_equal without a full-size temporary (these may be 150 MB memory maps)."""
    return a.shape == b.shape and all(np.array_equal(a[i:i + rows], b[i:i + rows]) for i in range(0, len(a), rows))


# ---------------------------------------------------------------- names -> folders

def hf_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub.
    The caller passes the environment in (the CLI passes os.environ)."""
    if environ.get("HF_HUB_CACHE"):
        return Path(environ["HF_HUB_CACHE"]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def resolve_model(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike,
                  download: bool = True) -> Path:
    """The folder of a model: an existing folder as is; else a hub name ('gpt2', 'openai-community/gpt2')
    looked up in the hub cache `cache_dir` without network; else downloaded with huggingface_hub when
    `download` is true and it is installed. A run folder of `numgpt train` (no config.json of its own)
    means its best checkpoint, else its latest."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            for sub in (RUN_BEST, RUN_LATEST):
                if (path / sub / CONFIG_FILE).is_file():
                    return path / sub
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise NumgptError(f"{name}: not a model folder; pass a folder with config.json and model.safetensors "
                          "or a Hugging Face model name such as gpt2")
    repo_ids = [name] if "/" in name else [f"openai-community/{name}", name]
    for repo_id in repo_ids:
        found = _cached_snapshot(Path(cache_dir), repo_id)
        if found is not None:
            return found
    how = (f"download it elsewhere with `huggingface-cli download {repo_ids[0]}` and copy the folder "
           "(or its hub cache), or pass a local folder")
    if not download:
        raise NumgptError(f"model {name!r} is not in the Hugging Face cache {cache_dir}; {how}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise NumgptError(f"model {name!r} is not in the Hugging Face cache {cache_dir} and huggingface_hub "
                          f"is not installed to fetch it; {how}") from None
    try:
        return Path(snapshot_download(repo_ids[0], cache_dir=cache_dir, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as e:  # noqa: BLE001 -- network, auth and missing-repo errors all mean "not available"
        raise NumgptError(f"model {name!r} is not cached and downloading it failed "
                          f"({type(e).__name__}); {how}") from None


def _cached_snapshot(cache_dir: Path, repo_id: str) -> Path | None:
    """The snapshot folder of repo_id in a hub cache: the one refs/main names, else the newest one."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if (snapshot / CONFIG_FILE).is_file():
            return snapshot
    snapshots = [s for s in (repo / "snapshots").glob("*") if (s / CONFIG_FILE).is_file()]
    return max(snapshots, key=lambda s: s.stat().st_mtime) if snapshots else None


# ---------------------------------------------------------------- summary

def checkpoint_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """What `numgpt info` shows about a folder, read from config.json and the safetensors headers only
    (no weights are loaded): config, parameter count, weight files with sizes and dtypes, tokenizer files."""
    folder = Path(folder)
    config = load_config(folder)
    files = {}
    for path in weight_files(folder):
        header, _ = _read_header(path)
        header.pop("__metadata__", None)
        dtypes = sorted({e.get("dtype", "?") for e in header.values() if isinstance(e, dict)})
        files[path.name] = {"bytes": path.stat().st_size, "tensors": len(header), "dtypes": dtypes}
    tokenizer_files = [n for n in ("vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.json")
                       if (folder / n).is_file()]
    return {"folder": str(folder), "config": config, "n_params": count_params(config),
            "float32_bytes": 4 * count_params(config), "weight_files": files, "tokenizer_files": tokenizer_files}
