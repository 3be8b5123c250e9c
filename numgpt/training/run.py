"""Run setup: everything between "train on DATA into RUN" and the first step, for the CLI and for Python.

    run = setup_run("data/shakespeare_char", "runs/char", options={"max_iters": 500})
    result = run.train()

`setup_run` opens the data, checks the run folder (not a file, writable, not held by another training, no
earlier run in it unless resuming), then makes the state to train from one of three sources: RUN/latest
or RUN/best (resume), a model folder or name (fine-tune, `init`), or a new model of the given shape
(scratch). Options are TrainConfig field names (and AdamWConfig's under "optim"), applied over the
defaults, or over the run's saved config on resume; the cosine follows max_iters unless decay_iters is
given. Under MPI every rank calls it, and the ranks must agree on the options, model and data.

Nothing here prints or reads the environment: the CLI (cli/train_commands.py) turns flags into these
arguments and draws the progress.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import PRESETS, GPTConfig
from ..errors import NumgptError
from .comm import Communicator, SingleProcess
from .data import Dataset, load_dataset
from .loop import BEST, LATEST, LOG_FILE, Event, TrainConfig, TrainResult, check_setup, check_trainable_weights, train
from .objective import Objective
from .state import TrainState, checkpoint_step

SCRATCH_SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128}   # a model from scratch without a preset
SHAPE_FIELDS = ("preset", "n_layer", "n_head", "n_embd")


@dataclass
class Run:
    """A training run ready for its first step: where it writes, its data, model, options and state."""

    folder: Path
    data: Dataset
    config: GPTConfig
    tc: TrainConfig
    state: TrainState
    description: str            # "training from scratch", "fine-tuning FOLDER", "resuming RUN/latest at step N"
    objective: Objective | None = None   # what the run minimises and trains (None: next-token loss, every weight)

    def train(self, *, on_event: Callable[[Event], None] | None = None,
              comm: Communicator | None = None) -> TrainResult:
        """loop.train on this run (in place: self.state advances)."""
        return train(self.state, self.config, self.tc, self.data, self.folder, on_event=on_event, comm=comm,
                     objective=self.objective)


def repack_advice(meta: Mapping[str, Any], init: str | Path, folder: Path) -> str:
    """How to pack a data folder again for the model `init` (resolved to `folder`): with the command that
    made that kind of folder (its meta.json says: SFT chats, DPO pairs, or plain text)."""
    for kind, source in (("sft", "CHATS"), ("dpo", "PAIRS")):
        if kind in meta:
            return f"pack it again for that model: `numgpt {kind} {source} --init {init} --out DIR --prepare-only`"
    return f"run `numgpt prepare TEXT_FILE --tokenizer {folder} --out DIR` and train on DIR"


def setup_run(data_dir: str | Path, run_dir: str | Path, *, options: Mapping[str, Any] | None = None,
              shape: Mapping[str, Any] | None = None, init: str | Path | None = None,
              resume_from: str | None = None, cache_dir: str | Path | None = None,
              default_threads: int = 0, comm: Communicator | None = None, ranks_here: int = 1,
              adapter_size: Callable[[GPTConfig, TrainConfig], int] | None = None,
              sequences_per_row: int = 1) -> Run:
    """The run of `train` on data_dir into run_dir, checked and loaded (see the module docstring).

    options: TrainConfig fields to change ({"max_iters": 500, "optim": {"lr": 3e-4}}); shape: "preset"
    and/or n_layer, n_head, n_embd of a model from scratch (given with init or resume_from, they must
    match the model's); init: a model folder or name to fine-tune; resume_from: "latest" or "best";
    cache_dir: the Hugging Face cache that names in `init` are looked up in; default_threads: threads of a
    new run when options has none (0: all cores); comm: the ranks (every rank calls setup_run);
    ranks_here: how many of them share this machine's memory; adapter_size(config, tc): the parameters of
    an adapter the run will train in place of the model's weights (posttrain.lora.lora_adapter_size for
    a LoRA run; tc is the saved config on resume), which the memory check then counts gradients and
    moments for instead of the weights'; sequences_per_row: the sequences a batch row runs (2 for the
    preference pairs of DPO and the reward model), for the activations' count. A shape that cannot fit in the memory the machine has available
    is refused before its weights, gradients or activations are allocated."""
    from .lock import check_not_locked

    comm = SingleProcess() if comm is None else comm
    options, shape = dict(options or {}), dict(shape or {})
    data = load_dataset(data_dir)
    run = Path(run_dir)
    if resume_from and init:
        raise NumgptError("resume_from= continues the run in run_dir; init= starts a new run: pass only one")
    if comm.size > 1:                                  # rank 0 alone writes: every rank must mean its folder
        from .mpi import check_same_everywhere
        check_same_everywhere(comm, "run folder (run_dir)", str(run))
    if comm.rank == 0:                                 # rank 0 alone locks and writes the run folder
        check_not_locked(run)
    refuse_run_inside_data(run, Path(data_dir))
    if resume_from:
        config, state, saved = load_resume_checkpoint(run, resume_from)
        refuse_shape_change(shape, config, "(with resume_from= the shape comes from the checkpoint)")
        refuse_other_tokenizer(run / resume_from, config, data, data_dir)
        tc = apply_options(TrainConfig.from_dict(saved), options, data_dir=data_dir)
        final_eval_missing = state.step == tc.max_iters and state.evaluated_step is not None and \
            state.evaluated_step < state.step                # stopped during the last evaluation: run it now
        if state.step >= tc.max_iters and not final_eval_missing:
            raise NumgptError(f"{run / resume_from} is already at step {state.step} >= max_iters {tc.max_iters}; "
                              "raise max_iters to continue")
        check_fits(config, tc, data, comm, ranks_here, adapter_size, sequences_per_row)   # the weights are in
        ranks = (checkpoint_step(run / resume_from, "ranks") or 1, comm.size)   # (before the ranks were saved: 1)
        what = f"resuming {run / resume_from} at step {state.step}" + changed_note(saved, options, ranks)
    else:
        if (run / LATEST).exists():
            raise NumgptError(f"{run} already holds a training run; continue it with resume_from='latest', or "
                              "pass another run_dir (or delete that folder) to start again")
        if (run / BEST).exists() or (run / LOG_FILE).exists():     # latest/ deleted (or never saved)
            best = checkpoint_step(run / BEST)
            resume = "" if best is None else f"continue it from {run / BEST} (step {best}) with resume_from='best', or "
            raise NumgptError(f"{run} already holds a training run ({BEST if (run / BEST).exists() else LOG_FILE}); "
                              f"{resume}pass another run_dir (or delete that folder) to start again")
        tc = apply_options(TrainConfig(threads=default_threads), options, data_dir=data_dir)
        config, state, what = new_run_state(data, data_dir, tc, shape, init, cache_dir,
                                            fits=lambda c: check_fits(c, tc, data, comm, ranks_here, adapter_size,
                                                                      sequences_per_row))
        if init:
            tc = dataclasses.replace(tc, init=str(init))
    if tc.batch_size < comm.size:                      # each rank computes a share of every batch's rows
        raise NumgptError(f"batch_size {tc.batch_size} leaves some of the {comm.size} ranks without a row; raise "
                          f"batch_size to at least {comm.size}, or run fewer ranks")
    check_trainable_weights(state.params)              # before a word of progress (train() checks too)
    if comm.size > 1:
        from .mpi import check_same_everywhere
        check_same_everywhere(comm, "training options, model and data",
                              {"train": {k: v for k, v in tc.to_dict().items() if k != "data_dir"},
                               "model": config.to_hf_dict(), "data": data.meta, "step": state.step})
    return Run(folder=run, data=data, config=config, tc=tc, state=state, description=what)


# what a resumed run may change and still continue bit for bit: how long it runs, what it evaluates, how the
# ranks exchange gradients; every other option changes the numbers from the step it resumes at
SAME_BITS = {"max_iters", "eval_interval", "eval_iters", "zero", "overlap", "data_dir"}


def changed_note(saved: Mapping[str, Any], options: Mapping[str, Any], ranks: tuple[int, int] = (1, 1)) -> str:
    """"; changed from the run's: lr 0.001 -> 0.01, ... (...)" for the options given to a resume that differ
    from the run's saved ones and make it no longer the one run it continues (nothing if none). ranks: the
    run's MPI ranks then and now; threads count as changed only when ranks x threads does (parallel.py: the
    rows split over ranks, then threads, sum the same either way)."""
    def flat(d: Mapping[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in d.items() if k != "optim"}, **(d.get("optim") or {})}
    old, new = flat(saved), flat(options)
    changed = [f"{k} {old[k]} -> {new[k]}" for k in new
               if k not in SAME_BITS | {"threads"} and k in old and old[k] != new[k]]
    threads = (old.get("threads"), new.get("threads", old.get("threads")))
    if None not in threads and ranks[0] * threads[0] != ranks[1] * threads[1]:
        changed.append(f"ranks x threads {ranks[0]} x {threads[0]} -> {ranks[1]} x {threads[1]}" if ranks != (1, 1)
                       else f"threads {threads[0]} -> {threads[1]}")
    return (f"; changed from the run's: {', '.join(changed)} (it continues, but not bit for bit as one run)"
            if changed else "")


def refuse_run_inside_data(run: Path, data_dir: Path) -> None:
    """A run folder is not the data folder or inside it: `prepare --force` on the data would delete it."""
    run_abs, data_abs = run.resolve(), data_dir.resolve()
    if run_abs == data_abs or data_abs in run_abs.parents:
        raise NumgptError(f"run_dir {run} is inside the data folder {data_dir}, which `numgpt prepare --force` "
                          "replaces whole; pass a run_dir outside it")


def refuse_other_tokenizer(checkpoint: Path, config: GPTConfig, data: Dataset, data_dir: str | Path) -> None:
    """Resuming on data prepared with another tokenizer than the run's is refused: its ids would mean other
    text, and its tokenizer files would replace the run's in every checkpoint saved after."""
    from ..formats import load_tokenizer
    from .data import tokenizer_fingerprint
    from .state import checkpoint_folder

    if tokenizer_fingerprint(load_tokenizer(checkpoint_folder(checkpoint), config)) != \
            data.meta.get("tokenizer_sha256"):
        raise NumgptError(f"{data_dir} was prepared with another tokenizer than the run's ({checkpoint}); resume "
                          "on data prepared with the run's tokenizer (numgpt prepare --tokenizer "
                          f"{checkpoint}), or start a new run_dir")


def new_run_state(data: Dataset, data_dir: str | Path, tc: TrainConfig, shape: dict[str, Any],
                  init: str | Path | None, cache_dir: str | Path | None,
                  fits: Callable[[GPTConfig], None]) -> tuple[GPTConfig, TrainState, str]:
    """(config, fresh state, description) of a new run: the weights of `init`, or a new model of `shape`;
    fits(config) is asked before the weights are loaded or made."""
    from ..formats import hf_cache_dir, load_checkpoint, load_tokenizer, resolve_model
    from ..formats.hf import load_config
    from ..formats.peft import refuse_classifier_checkpoint
    from ..params import init_params
    from .data import tokenizer_fingerprint
    from .state import new_state

    if init:
        folder = resolve_model(init, cache_dir=cache_dir if cache_dir is not None else hf_cache_dir({}))
        refuse_classifier_checkpoint(folder)
        refuse_shape_change(shape, load_config(folder), "(with init= the shape comes from the model)")
        fits(load_config(folder))
        config, params = load_checkpoint(folder)
        if tokenizer_fingerprint(load_tokenizer(folder, config)) != data.meta.get("tokenizer_sha256"):
            raise NumgptError(f"{data_dir} was prepared with another tokenizer than {init}'s; "
                              f"{repack_advice(data.meta, init, folder)}")
        what = f"fine-tuning {folder}"
    else:
        config = scratch_config(shape, data, tc.block_size)
        fits(config)
        params = init_params(config, np.random.default_rng(tc.seed))
        what = "training from scratch"
    return config, new_state(params, seed=tc.seed), what


def check_fits(config: GPTConfig, tc: TrainConfig, data: Dataset, comm: Communicator, ranks_here: int,
               adapter_size: Callable[[GPTConfig, TrainConfig], int] | None = None,
               sequences_per_row: int = 1) -> None:
    """Refuse, before allocating, what cannot train (loop.check_setup: windows longer than the model or
    a split), then a training that cannot fit in the machine's available memory (memory.py; an adapter's
    run, adapter_size, holds gradients and moments for the adapter only)."""
    from ..threads import thread_count
    from .memory import available_memory, memory_shortfall, training_memory

    check_setup(config, tc, data)

    adapter = 0 if adapter_size is None else adapter_size(config, tc)
    need = training_memory(config, tc, ranks=comm.size, threads=tc.threads or thread_count(), adapter=adapter,
                           sequences_per_row=sequences_per_row)
    message = memory_shortfall(need, available_memory(), ranks_here=ranks_here, adapter=adapter)
    if message is not None:
        raise NumgptError(message)


def scratch_config(shape: Mapping[str, Any], data: Dataset, block_size: int) -> GPTConfig:
    """The model to train from scratch: a preset or the sizes given (default SCRATCH_SHAPE), the data's
    vocabulary, and n_positions = the block size unless the preset has more."""
    preset = shape.get("preset")
    base = PRESETS[preset] if preset else GPTConfig(**SCRATCH_SHAPE, n_positions=block_size)
    eos = data.meta.get("eot_id")   # None for a vocabulary without <|endoftext|>
    sizes = {name: shape[name] for name in SCRATCH_SHAPE if shape.get(name) is not None}
    try:
        return dataclasses.replace(
            base, vocab_size=data.vocab_size, n_positions=max(base.n_positions, block_size) if not preset
            else base.n_positions, **sizes, bos_token_id=eos, eos_token_id=eos)
    except ValueError as e:
        raise NumgptError(f"bad model shape: {e}") from None


def refuse_shape_change(shape: Mapping[str, Any], config: GPTConfig, why: str) -> None:
    """Sizes that contradict the model being continued are an error (the same values are fine)."""
    dims = lambda c: (c.n_layer, c.n_head, c.n_embd)  # noqa: E731
    for name in SHAPE_FIELDS:
        value = shape.get(name)
        if value is None:
            continue
        same = dims(PRESETS[value]) == dims(config) if name == "preset" else value == getattr(config, name)
        if not same:
            raise NumgptError(f"{name} {value} differs from the model's shape {why}; leave the shape's sizes out")


def apply_options(base: TrainConfig, options: Mapping[str, Any], *, data_dir: str | Path) -> TrainConfig:
    """`base` with the options given (TrainConfig fields; AdamWConfig's under "optim"). The cosine ends at
    max_iters unless decay_iters is given, and a peak lr below the floor lowers the floor to lr / 10. An
    option out of range is a ConfigFieldError naming its field (the CLI names its flag)."""
    changes = {k: v for k, v in options.items() if k != "optim"}
    optim = dict(options.get("optim", {}))
    if ("decay_iters" not in optim and "max_iters" in changes and base.optim.decay_iters == base.max_iters
            and changes["max_iters"] >= 0):            # a bad max_iters is refused as itself below
        optim["decay_iters"] = changes["max_iters"]
    if "lr" in optim and "min_lr" not in optim and base.optim.min_lr > optim["lr"]:
        optim["min_lr"] = optim["lr"] / 10
    return dataclasses.replace(base, **changes, data_dir=str(data_dir), optim=dataclasses.replace(base.optim, **optim))


def load_resume_checkpoint(run: Path, name: str):
    """load_train_checkpoint(RUN/name); a damaged one is refused with the way out that exists: the
    other checkpoint of the run (resume_from=), or a fresh start."""
    from ..atomic import OLD_SUFFIX
    from .state import load_train_checkpoint

    folder = run / name
    try:
        return load_train_checkpoint(folder)
    except NumgptError as e:
        if not any(f.exists() for f in (folder, folder.with_name(folder.name + OLD_SUFFIX))):
            raise                                   # no checkpoint at all: the message says what to do
        other = BEST if name == LATEST else LATEST
        step = checkpoint_step(run / other)
        advice = (f"resume from {run / other} (step {step}) with resume_from={other!r}, or start again without "
                  "resume_from= (another run_dir)" if step is not None else
                  f"start again without resume_from= (another run_dir, or delete {run})")
        raise NumgptError(f"{e}; {advice}") from None
