"""safetensors read and written with NumPy alone (no torch, no safetensors package).

The file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets},
"__metadata__": {...}}, then the raw little-endian tensor bytes. float32 tensors load as zero-copy views
of a read-only memory map, so loading the 124M model takes milliseconds and pages come in as the forward
touches them; float16/bfloat16 tensors are converted to float32 copies. Every header entry is validated
before a byte is read, so a corrupt or truncated file is a one-line NumgptError.

Reference: https://huggingface.co/docs/safetensors (format).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NumgptError
from ..atomic import open_atomically
from ..threads import run_in_threads, thread_count

# safetensors dtype names -> little-endian NumPy dtypes. BF16 has no NumPy dtype: it is read as uint16.
FLOAT_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2")}
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100_000_000

def read_safetensors(path: str | os.PathLike, *, skip: tuple[str, ...] = (), mmap: bool = True,
                     decode_layout: tuple[str, ...] = (), threads: int | None = None
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Float32 tensors and the metadata of a .safetensors file. Tensors whose name ends with one of
    `skip` are left out unread; any other non-float tensor is an error (numgpt's weights are all float).

    mmap=True: float32 tensors are read-only views of a memory map of the file (instant; pages are read
    as they are first touched, and shared with the page cache). mmap=False: the file is read into one
    writable array in memory (a copy, but in anonymous memory that the kernel can back with huge pages).
    decode_layout: 2-D tensors whose name ends with one of these are read into memory (one arena), whatever
    `mmap` says, each stored with its longer side contiguous (`decode_orientation`); they keep the file's
    shape. With `decode_layout`, 1-D tensors are read into memory too, and the other 2-D ones are mapped
    (copied if not mmap).
    threads: threads that copy the decode_layout tensors (None: every usable core).
    """
    path = Path(path)
    header, data_start = read_header(path)
    metadata = header.pop("__metadata__", None) or {}
    file_size = path.stat().st_size
    raw = _file_bytes(path, file_size, mmap or bool(decode_layout))  # not the whole file into memory twice
    tensors, jobs = {}, []
    for name, entry in header.items():
        if name.endswith(skip):
            continue
        dtype, shape, (start, end) = check_entry(path, name, entry, data_start, file_size)
        if dtype not in FLOAT_DTYPES:
            raise NumgptError(f"{path}: tensor {name!r} has dtype {dtype}; numgpt loads only float weights "
                              "(F32, F16, BF16, F64)")
        if decode_layout and len(shape) == 2 and name.endswith(decode_layout):
            jobs.append((name, data_start + start, end - start, dtype, shape))
        elif decode_layout and len(shape) < 2:  # biases, gains: read, not mapped (see _read_decode_share)
            tensors[name] = _as_float32(_read_bytes(path, data_start + start, end - start), dtype, shape)
        else:
            tensors[name] = _as_float32(raw[data_start + start:data_start + end], dtype, shape)
            if not mmap and decode_layout and tensors[name].base is not None:
                tensors[name] = tensors[name].copy()         # into memory, as mmap=False promises
    if jobs:
        # one arena for all of them: separate arrays would each round up to whole 2 MB huge pages (+50 MB)
        sizes = [int(np.prod(shape)) for *_, shape in jobs]
        arena = np.empty(sum(sizes), np.float32)
        offsets = np.cumsum([0] + sizes)
        jobs = [(*job, arena[offsets[i]:offsets[i + 1]]) for i, job in enumerate(jobs)]
        shares = _balanced_shares(jobs, sizes, thread_count() if threads is None else threads)
        run_in_threads(lambda k: _read_decode_share(path, shares[k], tensors), len(shares))  # ~1.6x on 2 cores
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


def decode_orientation(shape: tuple[int, ...]) -> bool:
    """True when a [rows, cols] matrix of the decode step is best stored transposed ([cols, rows]
    row-major): when rows >= cols, so that its longer side is contiguous.

    A one-row product streams a long-rowed matrix faster: OpenBLAS's matrix-vector kernels ran at 36-49
    GB/s over the rows of c_fc [768, 3072] and of wte stored [768, 50257], against 29-30 GB/s over
    768-float rows (2 threads, measured in BENCHMARKS.md, Decoding beyond the peers). So c_attn and
    c_fc keep the file's [in, out], the c_proj weights and wte are transposed (square: transposed, a
    little faster at 1 and 8 rows)."""
    return len(shape) == 2 and shape[0] >= shape[1]


READ_RUN_BYTES = 1 << 24   # a tensor is read in runs of whole rows of at most this many bytes, through one
                           # scratch buffer a thread: a scratch as large as 124M's wte (154 MB) had put its
                           # peak memory at 1.38x the weights, 1.11x with runs (BENCHMARKS.md)


def _rows_a_run(row_bytes: int) -> int:
    """How many rows of row_bytes each one read takes: READ_RUN_BYTES' worth, at least one."""
    return max(1, READ_RUN_BYTES // row_bytes)


def _read_decode_share(path: Path, jobs: list, tensors: dict[str, np.ndarray]) -> None:
    """One thread's share of the 2-D tensors (name, offset, size, dtype, shape, out) of a file, read into
    memory in the decode layout (`decode_orientation`), a run of rows at a time through one scratch
    buffer. Read, not memory-mapped: every page of a map that is touched stays in this process's memory,
    and the kernel maps whole runs of pages (up to 2 MB) around each touched one -- the 124M model's
    scattered biases alone pulled ~70 MB of unused neighbours into its peak RSS (measured). The copies
    release the GIL, so shares run in parallel."""
    longest = [min(R, _rows_a_run(size // R)) * (size // R) for _, _, size, _, (R, _), _ in jobs]   # bytes
    scratch = np.empty(max(longest, default=0), np.uint8)
    for name, offset, size, dtype, (R, C), out in jobs:
        row_bytes = size // R
        step = _rows_a_run(row_bytes)
        transposed = decode_orientation((R, C))
        dest = out.reshape(C, R) if transposed else out.reshape(R, C)
        for r0 in range(0, R, step):
            n = min(step, R - r0)
            raw = _read_bytes(path, offset + r0 * row_bytes, n * row_bytes, scratch[:n * row_bytes])
            if transposed:
                read_transposed(raw.view(FLOAT_DTYPES[dtype]).reshape(n, C), dtype, out=dest[:, r0:r0 + n])
            else:
                dest[r0:r0 + n] = _as_float32(raw, dtype, (n, C))           # casts F16/F64 on the way
        tensors[name] = dest.T if transposed else dest


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
    out: R * C float32s to hold it, or a [C, R] view to write it into (default: a new array).

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
        raise NumgptError(f"write_safetensors writes F32 or F16, not {dtype!r}")
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
    with open_atomically(path) as f:                        # PATH.tmp, fsync, rename (atomic.py)
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for array in arrays:
            f.write(array.reshape(-1).view(np.uint8))     # the raw bytes, without a copy


def read_header(path: Path) -> tuple[dict[str, Any], int]:
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


def checked_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a safetensors file with every entry validated against the file (dtype, shape,
    offsets, the file long enough for them), without reading a tensor: what `numgpt info` trusts."""
    path = Path(path)
    header, data_start = read_header(path)
    size = path.stat().st_size
    for name, entry in header.items():
        if name != "__metadata__":
            check_entry(path, name, entry, data_start, size)
    return header


def check_entry(path: Path, name: str, entry: Any, data_start: int, file_size: int
                ) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """Validate one header entry: known dtype, integer shape, offsets that match the shape and lie
    inside the file."""
    if isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and entry["dtype"] not in ITEMSIZE:
        raise NumgptError(f"{path}: tensor {name!r} has dtype {entry['dtype']!r}, which safetensors does not "
                          f"define ({', '.join(ITEMSIZE)}); the file is corrupt or not safetensors")
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
    if data_start + end > file_size:
        raise NumgptError(f"{path}: truncated file: tensor {name!r} ends at byte {data_start + end} "
                          f"but the file has {file_size} bytes; download or save it again")
    return dtype, shape, (start, end)


def _as_float32(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Bytes -> float32 array of `shape`: a view for F32, a converted copy for F16/BF16/F64."""
    values = raw.view(FLOAT_DTYPES[dtype]).reshape(shape)
    if dtype == "F32":
        return values
    if dtype == "BF16":                                       # bfloat16 is the top half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)
