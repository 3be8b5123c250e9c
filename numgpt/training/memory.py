"""Training's memory: an estimate made before anything is allocated, and freed memory kept for reuse.

`training_memory(config, tc)` adds up what a rank of `train` will hold: parameters, gradients (one flat
copy per thread), AdamW's two moments, and the activations of its rows of a batch, from per-token counts
of backprop.py's tape (checked against tracemalloc's peak of a real step, tests/test_memory.py).
`available_memory()` is what the machine can still give (/proc/meminfo's MemAvailable). run.setup_run
refuses a shape that cannot fit before it allocates anything: a clear message instead of the kernel's
OOM killer or a NumPy allocation traceback.

Keeping freed memory: instead of handing it back to the kernel after every step.

A training step allocates and frees the same few hundred activation arrays every time (kilobytes to
megabytes each). glibc's malloc serves blocks above its mmap threshold (128 KB at first, raised as blocks
are freed) with fresh memory maps, and gives the top of its heaps back to the kernel once more than its
trim threshold is free. Either way the next step's arrays land on pages the kernel must map and zero
again, one page fault per 4 KB: measured on the nanoGPT character model (bench/bench_train.py's
workload, 6 rows per thread), 6,700 page faults and 26 ms of kernel time per 74 ms step.

`keep_freed_memory()` is a context manager: inside it the two thresholds are set high (mallopt), so freed
blocks stay in the heap and the next step reuses them: no page faults after the first step, and the step
took 53-57 ms. The cost is that the process keeps its peak memory while the block runs, which a training
run reaches on every step anyway. `train` holds it for its duration; on leaving, the thresholds go back to
glibc's documented defaults (see `restore_malloc_defaults`), so a program that trains and then does
something else gets its memory back as usual.
"""

from __future__ import annotations

import ctypes
import platform
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from ..config import GPTConfig
from ..machine import available_memory  # noqa: F401 -- the one reading of /proc/meminfo, used here
from ..params import count_params

if TYPE_CHECKING:
    from .loop import TrainConfig

GIB = 1 << 30
FLOAT = 4                                    # bytes of a float32: parameters, gradients, moments, activations


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank of `train` holds at its peak, by kind."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations


def training_memory(config: GPTConfig, tc: "TrainConfig", *, ranks: int = 1, threads: int = 1,
                    adapter: int = 0, sequences_per_row: int = 1) -> MemoryEstimate:
    """What a rank of `train` will hold (no allocation): the parameters once, a gradient buffer per
    thread that has rows, AdamW's m and v (1/ranks of them with ZeRO-1), and the activations of the
    rank's rows. Activations per token, in floats, from backprop.py's tape: per layer about 24 C (the
    LayerNorm outputs, q k v, the MLP's 4C hidden layer before and after GELU, the residuals) and 4 H T
    (attention scores and probabilities, forward and backward), 3 C + H T more for dropout's masks; then
    V for the logits (softmax and its gradient in place) and 4 C; plus a [V, C] buffer per thread for wte's
    gradient.

    adapter: the parameters of an adapter trained in place of the model's weights (a LoRA run,
    posttrain/lora.py), 0 when the weights train. The frozen weights are then held once with no gradient
    buffers, no moments and no [V, C] wte gradient; gradients and moments are the adapter's alone. Its
    activations are the same tape (the adapters' x A, r floats per adapted layer and token, are left out:
    under 1% of it at any rank a LoRA run uses). sequences_per_row: the sequences of block_size tokens one
    batch row runs through the model (2 for a preference pair: chosen and rejected, as DPO and the reward
    model batch them)."""
    n = count_params(config)
    C, H, L, V, T = config.n_embd, config.n_head, config.n_layer, config.vocab_size, tc.block_size
    rows = -(-tc.batch_size // ranks)                        # this rank's rows, rounded up
    used = max(1, min(threads, rows))                        # threads that get rows
    per_layer = 24 * C + 4 * H * T + ((3 * C + H * T) if tc.dropout > 0 else 0)
    per_token = L * per_layer + V + 4 * C
    trained = adapter if adapter else n                      # the parameters with gradients and moments
    wte_grad = 0 if adapter else used * V * C
    return MemoryEstimate(parameters=FLOAT * (n + adapter), gradients=FLOAT * trained * used,
                          optimizer=2 * FLOAT * trained // (ranks if tc.zero else 1),
                          activations=FLOAT * (rows * sequences_per_row * T * per_token + wte_grad))


def memory_shortfall(need: MemoryEstimate, available: int | None, *, ranks_here: int = 1,
                     adapter: int = 0) -> str | None:
    """The one-line refusal when `ranks_here` ranks of this estimate do not fit in `available` bytes, naming
    the biggest part and what lowers it; None when they fit (or nothing is known about the machine).
    adapter: the trained adapter's parameters (a LoRA run), whose rank is then what to lower if they,
    their gradients and moments are most of it."""
    if available is None or need.total * ranks_here <= available:
        return None
    parts = {"activations": need.activations, "parameters": need.parameters, "gradients": need.gradients,
             "AdamW moments": need.optimizer}
    detail = ", ".join(f"{name} {gib(b)}" for name, b in parts.items())
    who = f"{ranks_here} ranks of " if ranks_here > 1 else ""
    if need.activations >= need.total / 2:
        fix = "lower batch_size (grad_accum keeps the tokens per step) or block_size, or train a smaller model"
    elif adapter and FLOAT * adapter + need.gradients + need.optimizer >= need.total / 2:   # the adapter's own
        fix = "lower lora_rank, the adapter's rank"
    else:
        fix = "train a smaller model (n_layer, n_embd, or another preset=), or use fewer threads (threads=)"
    return (f"this shape needs ~{gib(need.total * ranks_here)} GiB for {who}training ({detail} GiB"
            f"{' each' if ranks_here > 1 else ''}) but this machine has {gib(available)} GiB available; {fix}")


def gib(n: int) -> str:
    """Bytes as GiB for a message: 0.37, 12.5, 9347."""
    x = n / GIB
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 << 20  # blocks below 32 MiB come from the heap (glibc's cap for this setting)
TRIM_THRESHOLD_BYTES = 2**31 - 1  # give the heap's free top back only beyond 2 GiB (mallopt takes an int)
DEFAULT_MMAP_THRESHOLD = 128 * 1024   # glibc's documented defaults (mallopt(3))
DEFAULT_TRIM_THRESHOLD = 128 * 1024


@contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Inside the block, glibc's malloc reuses freed memory rather than unmapping it (process-wide: every
    thread's allocations). Yields whether the setting took (False, changing nothing, where the C library
    is not glibc). Leaving the block restores glibc's defaults, also on an error.

    subtle: mallopt has no getter, so "restored" means glibc's documented defaults (both thresholds
    128 KiB), not whatever was set before the block; and setting M_MMAP_THRESHOLD at all switches off
    glibc's dynamic mmap threshold, which is not re-enabled. Not reentrant: nested or concurrent blocks
    restore the defaults when the first of them ends (memory is then handed back again: slower, not wrong).
    """
    kept = set_malloc_thresholds(MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES)
    try:
        yield kept
    finally:
        if kept:
            restore_malloc_defaults()


def restore_malloc_defaults() -> bool:
    """Set glibc's mmap and trim thresholds back to their documented defaults (128 KiB each)."""
    return set_malloc_thresholds(DEFAULT_MMAP_THRESHOLD, DEFAULT_TRIM_THRESHOLD)


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """mallopt(M_MMAP_THRESHOLD, ...) and mallopt(M_TRIM_THRESHOLD, ...), process-wide, until set again.
    Returns False, changing nothing, where the C library is not glibc."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1   # mallopt returns 1 on success
    return mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok


def _mallopt():
    """glibc's mallopt(int, int) -> int through ctypes, or None where there is no glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
