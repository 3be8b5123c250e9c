"""The training loop: a loss and its hand-written gradients, AdamW; evaluated, logged, resumable.

One step (`train_step`, nanoGPT's loop):
    for each of grad_accum micro-batches: draw random windows (this rank's rows), forward and backward
        over the rows split into threads, sum the gradients over the ranks
    clip the gradients' global norm; one optimizer update at the scheduled learning rate

What is minimised and which parameters move is the Objective (objective.py: next-token cross-entropy of
every parameter by default); the optimizer is any optim.Optimizer (AdamW, or ZeRO-1's ZeroAdamW).

Every eval_interval steps (and at the end) the loss is estimated on eval_iters fixed batches of each
split, with validation bits per byte and per character, and a checkpoint is saved to RUN/latest (and
RUN/best when the validation loss improved). Each step and each evaluation is one JSON line in
RUN/log.jsonl; the training config is RUN/train_config.json.

Reproducibility: the batches and dropout masks of every step come from the state's rng alone, and the
checkpoint stores its bit_generator state, so a resumed run continues bit for bit (given the same
`threads`: each batch's rows are split over that many threads, parallel.py, and the float32 sums of the
gradient depend on the split; `numgpt train` records it in train_config.json). Evaluation draws its
batches from a separate generator seeded from (seed, EVAL_STREAM), the same batches every time.

Data parallelism: `train` takes a communicator (comm.py; a single process by default) and calls only its
interface. Each rank draws the same batches from its own copy of the state, computes its rows' gradients
(parallel.py: rows split over ranks, then over threads), and the all-reduced sum is the same on every
rank, so every rank makes the same update. P ranks of 1 thread give the same bits as 1 rank of P
threads. Only rank 0 writes the run folder.

One run at a time: rank 0 holds RUN/.lock while it trains (lock.py); a second `train` on the same folder
is refused before it writes anything. Weights with NaN or inf are refused before the first step.

Interruption: a KeyboardInterrupt (Ctrl-C), or SIGTERM (what `timeout` and batch schedulers send),
saves RUN/latest at the last completed step and returns with `interrupted` and `signal` set; with several
ranks a signal is a flag they agree on at the next step boundary, so all stop at one step. A signal
during an optimizer update is held until the update is done
(`interrupts_held`), so no step is ever half applied, and the threads of a step are released at once
wherever it lands (parallel.py), so none is left waiting. A non-finite loss or gradient stops the run with a NumgptError before the
update, so the last good checkpoint (if one was saved) stays intact.

Memory: while `train` runs, glibc's malloc keeps freed memory for reuse (memory.keep_freed_memory, a
context manager: glibc's defaults are back when `train` returns); without it, every step's activations
are page-faulted in afresh.

Nothing here prints: progress goes to the `on_event` callback (the CLI draws a tqdm bar from it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..formats.hub import RUN_BEST, RUN_LATEST
from ..atomic import write_bytes_atomically
from ..config import GPTConfig
from ..model import check_context, check_finite_weights
from .data import Dataset
from ..errors import NumgptError
from .memory import keep_freed_memory
from .objective import Objective
from .optim import AdamW, AdamWConfig, Optimizer, check_field, check_number_fields, learning_rate
from .comm import Communicator, SingleProcess
from .parallel import DataParallel
from ..threads import single_threaded_blas, thread_count
from .lock import run_lock
from .state import STATE_FILE, TrainState, save_train_checkpoint, still_holds
from ..params import Params
from .zero import ZeroAdamW

CONFIG_FILE = "train_config.json"
LOG_FILE = "log.jsonl"
LATEST, BEST = RUN_LATEST, RUN_BEST            # RUN/latest, RUN/best (named where --model RUN resolves them)
EVAL_STREAM = 1  # the rng stream of evaluation batches, apart from training's
LN2 = math.log(2)

Event = dict[str, Any]


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the model's shape is its GPTConfig). Saved as RUN/train_config.json.

    The defaults are nanoGPT's documented CPU run on character-level Shakespeare."""

    batch_size: int = 12
    block_size: int = 64
    grad_accum: int = 1
    max_iters: int = 2000
    dropout: float = 0.0
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    optim: AdamWConfig = field(default_factory=AdamWConfig)
    threads: int = 0                 # batch rows split over this many threads (parallel.py); 0: all cores
    zero: int = 0                    # 1: optimizer state sharded over the ranks (zero.py), same results
    overlap: bool = True             # sum each layer's gradients over the ranks during the backward (parallel.py)
    data_dir: str = ""               # recorded for the reader of train_config.json
    init: str = ""                   # the model fine-tuned from, if any
    lora: dict[str, Any] | None = None   # the LoRA adapter trained instead of the weights (posttrain/lora.py's
                                         # LoraConfig.to_dict()); None: the model's own weights

    def __post_init__(self) -> None:
        check_number_fields(self)
        for name in ("batch_size", "block_size", "grad_accum", "eval_iters"):
            check_field(self, name, getattr(self, name) > 0, "must be positive")
        for name in ("max_iters", "eval_interval", "threads"):
            check_field(self, name, getattr(self, name) >= 0, "must be >= 0")
        check_field(self, "dropout", 0 <= self.dropout < 1, "must be in [0, 1)")
        check_field(self, "optim", isinstance(self.optim, AdamWConfig), "must be an AdamWConfig")
        check_field(self, "zero", self.zero in (0, 1), "must be 0 or 1 (ZeRO stage)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The TrainConfig of a train_config dict (trainstate.json); unknown or misshapen fields are a
        NumgptError saying the file is damaged, not a TypeError."""
        d = dict(d)
        optim = d.get("optim", {})
        try:
            d["optim"] = AdamWConfig(**optim) if isinstance(optim, dict) else optim
            return cls(**d)
        except TypeError as e:
            raise NumgptError(f"a damaged training config ({e}); resume from another checkpoint or start again") \
                from None


@dataclass
class TrainResult:
    """How `train` ended: the state it reached, whether a signal stopped it (and which: SIGINT for Ctrl-C,
    SIGTERM; RUN/latest holds the state then), and the last evaluation."""

    state: TrainState
    interrupted: bool = False
    last_eval: Event | None = None
    signal: int = 0


def check_setup(config: GPTConfig, tc: TrainConfig, data: Dataset) -> None:
    """Refuse, before any work, what cannot train: windows longer than the model or than a split,
    ids the model has no embedding for."""
    check_context(config, tc.block_size, fix="pass a smaller block_size")
    if data.vocab_size > config.vocab_size:
        raise NumgptError(f"the data's tokenizer has {data.vocab_size} ids but the model only {config.vocab_size}; "
                          "prepare the data with the model's tokenizer")
    for name in ("train", "val"):
        n = len(data.split(name))
        if n == 0:
            fix = "a val_fraction above 0" if name == "val" else "more text"
            raise NumgptError(f"the {name} split of {data.folder} is empty; prepare the data again with {fix}")
        if n < tc.block_size + 1:
            raise NumgptError(f"the {name} split has {n} tokens, fewer than block_size + 1 = {tc.block_size + 1}; "
                              "use a smaller block_size or more text")


def train(state: TrainState, config: GPTConfig, tc: TrainConfig, data: Dataset, run_dir: str | Path, *,
          on_event: Callable[[Event], None] | None = None, comm: Communicator | None = None,
          objective: Objective | None = None) -> TrainResult:
    """Train from `state` (fresh or resumed) up to tc.max_iters updates, in place; see the module docstring.

    comm: the ranks this process trains with (default: a single process). Every rank calls train with
    the same state, config and data; each computes its share of every batch, the gradients are summed
    over the ranks, and only rank 0 writes the run folder (config, log, checkpoints).
    objective: the loss and the trained parameters (objective.py; default: next-token cross-entropy, all)."""
    comm = SingleProcess() if comm is None else comm
    objective = Objective() if objective is None else objective
    check_setup(config, tc, data)
    check_trainable_weights(state.params)
    run = Path(run_dir)
    for p in state.params.values():
        comm.broadcast(p.reshape(-1))                 # every rank starts from rank 0's weights
    dp = DataParallel(tc.threads or thread_count(), comm)
    opt = make_optimizer(state, config, tc, objective, comm, dp.threads)
    with ExitStack() as stack:
        log = _open_run(run, config, tc, state, stack) if comm.rank == 0 else None
        stack.enter_context(keep_freed_memory())      # steps reuse the last one's memory (memory.py)
        if dp.participants > 1:
            stack.enter_context(single_threaded_blas())
        if comm.size > 1:
            stop = stack.enter_context(InterruptFlag())    # the ranks stop together (loop below)
        else:
            stop = None
            stack.enter_context(sigterm_as_interrupt())    # SIGTERM stops like Ctrl-C
        return _loop(Trainer(state, config, tc, data, run, objective, dp, opt), _emitter(log, on_event), stop)


def make_optimizer(state: TrainState, config: GPTConfig, tc: TrainConfig, objective: Objective, comm: Communicator,
                   threads: int) -> Optimizer:
    """AdamW over the objective's trained parameters: every moment on every rank, or (tc.zero) sharded."""
    trained = objective.trainable_params(state.params)
    keep_trained_moments(state, trained)
    if tc.zero:                                       # ZeRO-1 (zero.py): params into one buffer, own moments
        opt = ZeroAdamW(trained, state.optim, tc.optim, comm=comm, threads=threads)
        state.params.update(trained)                  # its views of that buffer, in the state
        return opt
    return AdamW(trained, state.optim, tc.optim, comm=comm, threads=threads, n_layer=config.n_layer,
                 overlap=tc.overlap)


def keep_trained_moments(state: TrainState, trained: Params) -> None:
    """Drop the optimizer moments of the parameters that are not trained (frozen ones keep none), and
    give a trained parameter without moments zero ones. Nothing changes when every parameter is trained."""
    if set(state.optim.m) == set(trained):
        return
    for table in (state.optim.m, state.optim.v):
        kept = {name: table[name] if name in table else np.zeros_like(p) for name, p in trained.items()}
        table.clear()
        table.update(kept)


@dataclass
class Trainer:
    """Everything a step and an evaluation use, in one place: the state they advance, what they train
    on, the loss, how the rows are split (dp) and the optimizer."""

    state: TrainState
    config: GPTConfig
    tc: TrainConfig
    data: Dataset
    run: Path
    objective: Objective
    dp: DataParallel
    opt: Optimizer


def _open_run(run: Path, config: GPTConfig, tc: TrainConfig, state: TrainState, stack: ExitStack) -> "RunLog":
    """Rank 0's side of the run folder: create it, lock it (lock.py: refused if another training holds
    it, before anything is written), write the training config, open the log; `stack` undoes the lock
    and the log."""
    run.mkdir(parents=True, exist_ok=True)
    stack.enter_context(run_lock(run))
    log = RunLog(run / LOG_FILE, keep_until=state.step if state.step > 0 else -1)   # a fresh run: a fresh log
    stack.callback(log.close)
    write_bytes_atomically(run / CONFIG_FILE,
                           (json.dumps({"model": config.to_hf_dict(), **tc.to_dict()}, indent=2) + "\n").encode())
    return log


def _loop(t: Trainer, emit: Callable[[Event], None], stop: "InterruptFlag | None" = None) -> TrainResult:
    """The steps and evaluations of `train`, and the clean stop on Ctrl-C. With several ranks, `stop`
    turns Ctrl-C into a flag the ranks agree on at each step boundary, so they all stop at the same step
    (a rank leaving alone would leave the others waiting in their next collective)."""
    state, tc = t.state, t.tc
    first_step = state.step
    boundary = (state.step, state.rng.bit_generator.state)     # the rng where the step being made began
    last_eval = None
    try:
        while True:
            signum = stop.agreed(t.dp.comm) if stop is not None else 0
            if signum:
                raise stop_exception(signum)           # every rank here, at the same step
            if _eval_due(tc, state.step, first_step, state.evaluated_step):
                last_eval = evaluate_and_save(t, emit)
            if state.step >= tc.max_iters:
                break
            boundary = (state.step, state.rng.bit_generator.state)
            t0 = time.perf_counter()
            loss, norm, lr = train_step(t)
            dt = time.perf_counter() - t0
            tokens = tc.batch_size * tc.block_size * tc.grad_accum
            emit({"type": "step", "step": state.step, "loss": loss, "lr": lr, "grad_norm": norm,
                  "seconds": dt, "tokens_per_s": tokens / dt, **step_report(t)})
    except KeyboardInterrupt as e:
        signum = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        if state.step == boundary[0]:
            state.rng.bit_generator.state = boundary[1]    # stopped inside a step: its batches not drawn
        whole = _whole_state(t)                        # a collective with ZeRO-1: every rank is here
        if t.dp.comm.rank == 0:                        # only rank 0 writes checkpoints
            try:
                save_train_checkpoint(t.run / LATEST, t.config, whole, train_config=tc.to_dict(),
                                      tokenizer_dir=_tokenizer_dir(t.data), ranks=t.dp.comm.size)
            except KeyboardInterrupt:                  # a second Ctrl-C, during that save
                raise KeyboardInterrupt(f"again while saving {t.run / LATEST}: {still_holds(t.run / LATEST)}") \
                    from None
        emit({"type": "interrupted", "step": state.step, "path": str(t.run / LATEST),
              "signal": signal.Signals(signum).name})
        return TrainResult(state=state, interrupted=True, last_eval=last_eval, signal=int(signum))
    return TrainResult(state=state, last_eval=last_eval)


def train_step(t: Trainer) -> tuple[float, float, float]:
    """One optimizer update, as nanoGPT's train.py writes it; returns (mean loss, gradient norm, lr).
    Batches and dropout masks come from state.rng, micro-batch by micro-batch; a non-finite loss or
    gradient stops the run before the update (the last checkpoint stays good)."""
    state, tc, dp, opt = t.state, t.tc, t.dp, t.opt
    B, T, accum = tc.batch_size, tc.block_size, tc.grad_accum
    lr = learning_rate(tc.optim, state.step)
    opt.zero_grad()
    loss = 0.0
    for _ in range(accum):
        batch = t.objective.batch(t.data, "train", B, T, state.rng, dp.rank_rows(B))   # this rank's rows [b, ...]
        loss += dp.forward_backward(t.objective.loss, state.params, t.config, batch, opt.grads, scale=1.0 / accum,
                                    dropout=tc.dropout, rng=state.rng if tc.dropout > 0 else None, total=B,
                                    block_done=opt.layer_done)     # rows over threads, summed in thread order
        opt.reduce_gradients()                                   # over the ranks (ZeRO-1: reduce-scatter)
    loss /= accum
    norm = opt.clip(tc.optim.grad_clip)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise NumgptError(diverged_message(t.run, state.step, f"loss {loss:.4g}, gradient norm {norm:.4g}"))
    with interrupts_held():            # Ctrl-C waits for the update: the model is never half-updated
        opt.step(state.params, lr)
        state.step += 1
        state.tokens_seen += B * T * accum
    return loss, norm, lr


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)   # Ctrl-C, and what `timeout`, schedulers and kill send


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so it stops training the same clean way."""


def stop_exception(signum: int) -> KeyboardInterrupt:
    """The exception a stop signal raises in the training loop: Terminated for SIGTERM, else KeyboardInterrupt."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread, so a scheduler
    or `timeout` stops training like Ctrl-C: RUN/latest saved. The handler before is put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) or SIGTERM that arrives inside the block and deliver it when the block ends,
    so that the optimizer update and the step count it belongs to are done together or not at all. The
    handlers in force before are put back after (and the first held signal's called then). Only the main
    thread can set signal handlers; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if held:
        handler = previous[held[0]]
        if callable(handler):
            handler(held[0], None)                    # the default SIGINT handler raises KeyboardInterrupt here
        elif handler == signal.SIG_DFL:
            signal.raise_signal(held[0])              # its default action (SIGTERM: the process ends)


class InterruptFlag:
    """Ctrl-C and SIGTERM as a flag, for ranks that must stop together: inside the block such a signal is
    only recorded, and `agreed(comm)` (called at the same point on every rank) returns the signal once any
    rank recorded one (SIGTERM if any rank got it), 0 before. The previous handlers are put back on
    leaving. Main thread only, as signal handlers are."""

    def __init__(self):
        self.seen = {s: False for s in STOP_SIGNALS}
        self._previous: dict = {}

    def __enter__(self) -> "InterruptFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _record(self, signum, frame) -> None:
        self.seen[signum] = True

    def agreed(self, comm: Communicator) -> int:
        """The stop signal any rank has seen (SIGTERM before SIGINT), else 0: one all-reduce of two numbers,
        the same answer everywhere."""
        flags = np.array([1.0 if self.seen[s] else 0.0 for s in STOP_SIGNALS])
        comm.allreduce_sum(flags)
        return next((s for s, f in zip(reversed(STOP_SIGNALS), flags[::-1]) if f), 0)


def _eval_due(tc: TrainConfig, step: int, first_step: int, evaluated_step: int | None) -> bool:
    """Evaluate every eval_interval steps and at the end; at a resumed step only if its evaluation was
    stopped before it finished (a checkpoint saved by Ctrl-C during it: evaluated_step is an earlier step;
    None, a checkpoint from before numgpt recorded it, counts as done)."""
    scheduled = step == tc.max_iters or (tc.eval_interval > 0 and step % tc.eval_interval == 0)
    if step == first_step and step > 0:
        return scheduled and evaluated_step is not None and evaluated_step < step
    return scheduled


def estimate_loss(t: Trainer) -> dict[str, float]:
    """Mean loss (nats per token, no dropout) over eval_iters fixed batches of each split."""
    tc, dp = t.tc, t.dp
    out = {}
    for name in ("train", "val"):
        rng = np.random.default_rng([tc.seed, EVAL_STREAM])
        rows = dp.rank_rows(tc.batch_size)             # each rank reads only its rows
        losses = [dp.evaluate(t.objective.evaluate, t.state.params, t.config,
                              t.objective.batch(t.data, name, tc.batch_size, tc.block_size, rng, rows),
                              total=tc.batch_size) for _ in range(tc.eval_iters)]
        out[name] = float(np.mean(losses))
    return out


def evaluate_and_save(t: Trainer, emit: Callable[[Event], None]) -> Event:
    """Estimate the losses, save RUN/latest, and RUN/best if the validation loss improved, then log them
    (rank 0 writes; with ZeRO-1 every rank still takes part in gathering the moments)."""
    state, data = t.state, t.data
    losses = estimate_loss(t) if t.objective.estimate is None else t.objective.estimate(t)
    val = losses["val"]
    if not (math.isfinite(val) and math.isfinite(losses["train"])):
        raise NumgptError(diverged_message(t.run, state.step, f"evaluated loss {val:.4g}"))   # never save it
    event = {"type": "eval", "step": state.step, "train_loss": losses["train"], "val_loss": val,
             "val_bpb": val / LN2 / data.bytes_per_token("val"), "val_bpc": val / LN2 / data.chars_per_token("val"),
             **{k: v for k, v in losses.items() if k not in ("train", "val")}}   # an objective's own figures
    improved = state.best_val_loss is None or val < state.best_val_loss
    before = state.best_val_loss, state.evaluated_step
    if improved:
        state.best_val_loss = val
    state.evaluated_step = state.step
    event["best"] = improved
    whole = _whole_state(t)
    if t.dp.comm.rank == 0:
        tok, saved = _tokenizer_dir(data), t.tc.to_dict()
        ranks = t.dp.comm.size
        try:
            save_train_checkpoint(t.run / LATEST, t.config, whole, train_config=saved, tokenizer_dir=tok, ranks=ranks)
            if improved:
                save_train_checkpoint(t.run / BEST, t.config, whole, train_config=saved, tokenizer_dir=tok,
                                      ranks=ranks)
        except BaseException:
            # subtle: a stop (or a full disk) inside these saves: the state forgets this evaluation, so the stop's
            # own save of latest/ records no best that best/ does not hold, and a resume evaluates this step again
            # (it recorded the new best while best/ kept the old model, and that model was then never saved)
            state.best_val_loss, state.evaluated_step = before
            raise
    emit(event)                                        # after the saves: "(best, saved)" only once they are
    return event


def step_report(t: Trainer) -> Event:
    """The objective's own figures for a step's event (objective.Objective.report), {} if it has none."""
    return {} if t.objective.report is None else t.objective.report(t.dp.comm)


def _whole_state(t: Trainer) -> TrainState:
    """The state to save, with the optimizer's whole state (with ZeRO-1 gathered from the moments' owners
    on rank 0: every rank must call it, it is a collective)."""
    whole = t.opt.full_state()
    return t.state if whole is t.state.optim else dataclasses.replace(t.state, optim=whole)


def check_trainable_weights(params: dict[str, np.ndarray]) -> None:
    """Refuse weights with NaN or inf (a broken --init model, a damaged checkpoint) before training:
    their first loss would be NaN and the run would look diverged."""
    check_finite_weights(params, fix="training cannot start from them: pass another init= model or checkpoint")


def diverged_message(run: Path, step: int, what: str) -> str:
    """What a non-finite loss means and what to do; it names RUN/latest only if a checkpoint is there."""
    if (run / LATEST / STATE_FILE).is_file():
        return (f"training diverged at step {step} ({what}); the last good checkpoint in {run / LATEST} "
                "is intact: lower lr= or raise warmup_iters, then resume_from='latest'")
    return (f"training diverged at step {step} ({what}) before any checkpoint was saved: lower lr= or "
            "raise warmup_iters and start again")


def _tokenizer_dir(data: Dataset) -> Path | None:
    return data.tokenizer_dir if data.tokenizer_dir.is_dir() else None


def _emitter(log: "RunLog | None", on_event: Callable[[Event], None] | None) -> Callable[[Event], None]:
    """Log steps and evaluations (when there is a log: rank 0), and pass every event to on_event."""
    def emit(event: Event) -> None:
        if log is not None and event["type"] in ("step", "eval"):
            log.write(event)
        if on_event is not None:
            on_event(event)
    return emit


class RunLog:
    """RUN/log.jsonl, one JSON object per line. Opening it for a run that resumes at step N drops the
    lines of steps after N (left by the interrupted run), so the log reads as one continuous run."""

    def __init__(self, path: Path, *, keep_until: int):
        kept = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue                                    # a line cut off by a crash
                if isinstance(event, dict) and event.get("step", 0) <= keep_until:
                    kept.append(line + "\n")
        path.write_text("".join(kept), encoding="utf-8")
        self._file = open(path, "a", encoding="utf-8")

    def write(self, event: Event) -> None:
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_log(run_dir: str | Path) -> list[Event]:
    """The events of RUN/log.jsonl (for plotting)."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise NumgptError(f"{run_dir}: no {LOG_FILE}; pass the --out folder of a `numgpt train` run")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise NumgptError(f"{path}: not UTF-8 text, so not a numgpt training log") from None
    events = []
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if not (isinstance(event, dict) and isinstance(event.get("type"), str)):
            if number == len(lines):     # a last line cut short by a kill mid-write: the run goes on without it
                break
            raise NumgptError(f"{path}:{number}: not an event of a numgpt training log (a JSON object with a "
                              "\"type\")")
        events.append(event)
    return events
