"""`numgpt prepare`, `numgpt train` and `numgpt plot`: text -> token files -> a trained GPT-2 -> loss curves.

Only this module reads flags, prints, installs the progress bar, and reads the environment (for the
Hugging Face cache of `--init gpt2`); the work is in numgpt.training (data, loop, state).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..config import PRESETS
from ..errors import NumgptError
from ..posttrain.lora import (add_lora_flags, export_adapter, lora_adapter_size, lora_from_args, lora_summary,
                              with_lora)
from ..threads import THREADS_ENV
from ..training.data import VAL_FRACTION
from ..training.loop import BEST, LATEST, TrainConfig
from ..training.optim import AdamWConfig, ConfigFieldError
from ..training.run import SCRATCH_SHAPE
from ..training.state import checkpoint_step
from .options import command_flag_names, flag_message
from .paths import check_apart, check_writable, input_file, model_folder, output_file, output_folder, png_file, read_text

TC, OPT = TrainConfig(), AdamWConfig()      # the defaults the help strings quote (one place: the dataclasses)
ETA_AFTER_STEPS = 5                         # steps timed before the time estimate is printed
LONG_RUN_SECONDS = 600                      # estimates beyond this suggest --max-iters
# tqdm's bar without its remaining time: from the first, slow step it guessed hours where TimeEstimate,
# which leaves that step out and counts the evaluations, says minutes; one estimate on screen, ours
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"

PREPARE_EXAMPLES = """\
examples:
  numgpt prepare input.txt --out data/shakespeare                 GPT-2's tokenizer
  numgpt prepare input.txt --out data/shakespeare_char --vocab-size 256   byte-level (characters of ASCII)
  numgpt prepare a.txt b.txt --out data/mine --tokenizer my_tok    a tokenizer folder (vocab.json + merges.txt)
  numgpt prepare a.txt --out data/mine --tokenizer builtin          the built-in model's vocabulary (for --init builtin)
  numgpt prepare more.txt --out data/mine --force                  replace an existing data folder

DIR is written whole or not at all (as DIR.tmp, renamed into place when complete).
"""

TRAIN_EXAMPLES = f"""\
examples:
  numgpt train data/shakespeare_char --out runs/char                     nanoGPT's CPU shakespeare_char run
  numgpt train data/shakespeare_char --out runs/char --max-iters 4000 --resume   continue a run
  numgpt train data/shakespeare_char --out runs/char --resume-from best  continue from the best checkpoint
  mpiexec -n 2 numgpt train data/shakespeare_char --out runs/mpi --threads 1   two MPI ranks (pip install 'numgpt[mpi]')
  mpiexec -n 2 numgpt train data/shakespeare_char --out runs/z1 --threads 1 --zero 1   AdamW's state sharded
  numgpt train data/shakespeare --init gpt2 --out runs/ft --lr 3e-5 --max-iters 200   fine-tune GPT-2
  numgpt train data/mine --init builtin --out runs/ft2 --max-iters 200   fine-tune the built-in model (on data
                                                       made by numgpt prepare TEXT --tokenizer builtin --out data/mine)
  numgpt generate --model runs/char/best "ROMEO:"                       sample from the best checkpoint

A shape that cannot fit in the memory this machine has available is refused before anything is allocated.
After {ETA_AFTER_STEPS} steps an estimate of the remaining time is printed. Ctrl-C, or SIGTERM (as `timeout` and
batch schedulers send), saves RUN/latest and exits; --resume continues bit for bit where it stopped (with
the run's recorded --threads). One training at a time per RUN_DIR (RUN_DIR/.lock). Each batch's rows
are split over --threads threads (default: NUMGPT_NUM_THREADS from the environment if set, else all
cores), each with single-threaded BLAS: see BENCHMARKS.md, Training.
"""

PLOT_EXAMPLES = """\
examples:
  numgpt plot runs/char                      writes runs/char/loss.png
  numgpt plot runs/char -o char_loss.png     another file (a name without a suffix gets .png)
"""


def register(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize text files into train/val token files for training",
                       description="Tokenize text files into DIR/train.bin and DIR/val.bin (the first "
                       f"{1 - VAL_FRACTION:.0%} of the characters train, the last {VAL_FRACTION:.0%} "
                       "validate), with the tokenizer and a meta.json beside them.",
                       epilog=PREPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="TEXT_FILE",
                   help="UTF-8 text files (- reads stdin), joined in order, with <|endoftext|> between them when "
                        "the vocabulary has it")
    p.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="DIR", help="the data folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="replace DIR if it is an existing data folder")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", metavar="DIR", help="a tokenizer or model folder, or a model name such as "
                     "builtin (the built-in model's vocabulary; default: GPT-2's)")
    tok.add_argument("--vocab-size", type=int, metavar="N",
                     help="train a new byte-level BPE of N tokens on all of the text, the validation split "
                          "too (256 = bytes only)")
    p.add_argument("--val-fraction", type=float, metavar="X", default=VAL_FRACTION,
                   help=f"share of characters for validation, > 0 and < 1 ({VAL_FRACTION})")
    p.set_defaults(run=run_prepare)

    t = sub.add_parser("train", help="train (or fine-tune) a GPT-2 on prepared data",
                       description="Train a GPT-2 with hand-written backpropagation and AdamW on a folder made "
                       "by `numgpt prepare`. Defaults are nanoGPT's CPU shakespeare_char run.",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("data", metavar="DATA_DIR", help="a folder made by `numgpt prepare`")
    t.add_argument("--out", "-o", "--output", dest="out", default="out", metavar="RUN_DIR", help="where checkpoints and the log go (out)")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/latest")
    t.add_argument("--resume-from", choices=[LATEST, BEST], metavar="{latest,best}",
                   help="continue from RUN_DIR/latest or RUN_DIR/best (implies --resume; best rewinds the run "
                   "to its step)")
    t.add_argument("--init", metavar="MODEL", help="fine-tune from a GPT-2 folder, 'builtin' (the model built into "
                   "numgpt), or a cached hub name such as gpt2")
    m = t.add_argument_group("model (from scratch)")
    m.add_argument("--preset", choices=sorted(PRESETS), help="a model shape from numgpt's presets: gpt2 (124M) ... gpt2-xl (1558M) as published, or tiny "
                   "(2 layers, 32 channels, 64 positions, for a quick try)")
    m.add_argument("--n-layer", type=int, metavar="N", help=f"transformer blocks ({SCRATCH_SHAPE['n_layer']})")
    m.add_argument("--n-head", type=int, metavar="N", help=f"attention heads ({SCRATCH_SHAPE['n_head']})")
    m.add_argument("--n-embd", type=int, metavar="N", help=f"channels ({SCRATCH_SHAPE['n_embd']})")
    add_training_flags(t.add_argument_group("training"), TRAIN_DEFAULTS)
    add_lora_flags(t)
    t.set_defaults(run=run_train, flag_names=FLAG_NAMES)   # the library's Python names, said as flags

    q = sub.add_parser("plot", help="draw a training run's loss curves to a PNG",
                       description="Plot train and validation loss of RUN_DIR/log.jsonl (needs matplotlib: "
                       "pip install 'numgpt[plot]').", epilog=PLOT_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a `numgpt train` run")
    q.add_argument("--out", "-o", "--output", dest="out", metavar="PNG", help="image file (RUN_DIR/loss.png); .png is added if it "
                   "has no suffix")
    q.set_defaults(run=run_plot)

    g = sub.add_parser("merge-lora", help="merge a LoRA adapter into its base: a plain GPT-2 folder",
                       description="Write BASE with the adapter merged in (W + alpha/r A B in every adapted "
                       "layer): a Hugging Face GPT-2 folder that numgpt and transformers load with no adapter.",
                       epilog="example:\n  numgpt merge-lora --model gpt2 --adapter runs/lora/adapter --out merged",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--model", "-m", metavar="BASE", help="the base the adapter was trained on (a folder, a run, "
                   "a cached hub name; default: the built-in model)")
    g.add_argument("--adapter", required=True, metavar="DIR", help="a PEFT LoRA adapter folder (RUN/adapter)")
    g.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="DIR", help="the merged model's folder (new or empty)")
    g.add_argument("--force", action="store_true", help="replace a non-empty --out")
    g.set_defaults(run=run_merge_lora)


def run_merge_lora(args) -> int:
    """`numgpt merge-lora`: the base loaded with its adapter merged, saved whole (or nothing written)."""
    from ..atomic import write_folder_atomically
    from ..formats import hf_cache_dir, save_checkpoint
    from ..lm import load

    out = model_folder(args.out, flag="--out", force=args.force, what="merged model")
    lm = load(args.model, cache_dir=hf_cache_dir(os.environ), mmap=True, adapter=args.adapter)
    check_apart(out, args.adapter, args.adapter, what="the adapter")   # --force would have replaced them
    check_apart(out, args.model or "builtin", lm.folder, what="the base")
    write_folder_atomically(out, lambda tmp: save_checkpoint(tmp, lm.config, lm.params, tokenizer=lm.tokenizer))
    print(f"merged {args.adapter} into {args.model or 'builtin'}: {out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- prepare

def run_prepare(args) -> int:
    from ..training.data import check_replaceable, prepare
    from ..tokenizer import Tokenizer

    if not 0 < args.val_fraction < 1:                 # NaN fails this too
        raise NumgptError(f"--val-fraction must be > 0 so training can evaluate, and < 1 so some text "
                          f"trains; got {args.val_fraction} (the default {VAL_FRACTION} keeps the last "
                          f"{VAL_FRACTION:.0%} of the characters for validation)")
    out = output_folder(args.out, flag="--out", force=args.force, what="data folder")
    check_replaceable(out)
    texts = [read_text(f) for f in args.files]
    if args.vocab_size is not None:
        tokenizer, source = train_tokenizer("".join(texts), args.vocab_size), f"trained:{args.vocab_size}"
    elif args.tokenizer and not is_gpt2_name(args.tokenizer):
        tokenizer, source = Tokenizer.load(tokenizer_folder(args.tokenizer)), str(args.tokenizer)
    else:
        tokenizer, source = Tokenizer.gpt2(), "gpt2"
    meta = prepare(texts, out, tokenizer, val_fraction=args.val_fraction, tokenizer_source=source,
                   sources=[str(f) for f in args.files])
    s = meta["splits"]
    print(f"{args.out}: vocabulary {meta['vocab_size']} ({source}), {meta['dtype'][1:]} tokens; "
          f"train {s['train']['tokens']:,} tokens ({s['train']['chars']:,} chars), "
          f"val {s['val']['tokens']:,} tokens ({s['val']['chars']:,} chars)")
    for note in prepare_notes(meta, args.vocab_size):
        print(note, file=sys.stderr)
    return 0


def tokenizer_folder(name: str) -> Path:
    """prepare's --tokenizer: a tokenizer folder as given, else a model resolved as --model resolves it (a
    run folder's checkpoint, 'builtin', a hub name in the cache; never downloaded here)."""
    from ..formats import hf_cache_dir, resolve_model

    folder = Path(name)
    if any((folder / f).exists() for f in ("vocab.json", "merges.txt", "encoder.json", "vocab.bpe")):
        return folder                    # (tokenizer.files' two layouts; a missing half is its error to say)
    return resolve_model(name, cache_dir=hf_cache_dir(os.environ), download=False)


def is_gpt2_name(name: str) -> bool:
    """GPT-2's hub names (gpt2 .. gpt2-xl, openai-community/...) share one vocabulary, which numgpt ships:
    no download for its tokenizer."""
    from ..formats.hub import GPT2_HUB_NAMES

    return not Path(name).exists() and name.removeprefix("openai-community/") in GPT2_HUB_NAMES


def prepare_notes(meta: dict, vocab_size: int | None) -> list[str]:
    """What a newcomer should know about a prepared folder: a trained vocabulary smaller than asked
    (as train-tokenizer says), a split too short for `numgpt train`'s default windows."""
    notes = []
    if vocab_size is not None and meta["vocab_size"] < vocab_size:
        notes.append(f"note: {meta['vocab_size']} tokens, fewer than --vocab-size {vocab_size}: no pair of "
                     "tokens occurs twice in the text any more (more text gives more merges)")
    need = TC.block_size + 1
    for name in ("train", "val"):
        n = meta["splits"][name]["tokens"]
        if n < 2:                                     # (only val: prepare refuses such a train split)
            notes.append(f"warning: the {name} split has {n} token{'' if n == 1 else 's'}, too few for "
                         "`numgpt train` at any --block-size (a window needs 2); add text")
        elif n < need:
            notes.append(f"warning: the {name} split has {n} tokens, fewer than the {need} that `numgpt train`'s "
                         f"default --block-size {TC.block_size} needs; add text, or train with a smaller "
                         "--block-size")
    return notes


def train_tokenizer(text: str, vocab_size: int):
    """A new byte-level BPE vocabulary trained on the text (tokenizer/train.py), with progress on stderr."""
    from ..tokenizer import train_bpe
    from .progress import progress_reporter

    update, close = progress_reporter(True, "merge", "prepare")
    try:
        return train_bpe(text, vocab_size=vocab_size, progress=update)
    finally:
        close()


# ---------------------------------------------------------------- train

def run_train(args) -> int:
    """`numgpt train`, as one process or as one rank of an MPI job (mpiexec -n P numgpt train ...)."""
    return on_every_rank(_run_train, args)


def on_every_rank(body, args) -> int:
    """Run `body(args, comm)` on this process's rank of the job (one process: a job of one). A rank that
    fails prints its error and ends the whole job, so no rank waits forever for it; an error every rank
    agreed on (AgreedError) is a plain exit of each. The commands that train (train, sft) run through it."""
    from ..training.loop import Terminated
    from ..training.mpi import AgreedError, world

    comm = world(os.environ)
    try:
        return body(args, comm)
    except AgreedError as e:                           # every rank stops here together: a plain exit
        if comm.size > 1:
            raise NumgptError(f"rank {comm.rank} of {comm.size}: {e}") from None
        raise
    except BaseException as e:
        if comm.size == 1:
            raise
        if not isinstance(e, SystemExit):
            said = flag_message(str(e), command_flag_names(args)) if isinstance(e, NumgptError) else e
            print(f"numgpt: error: rank {comm.rank} of {comm.size}: {said or type(e).__name__}", file=sys.stderr,
                  flush=True)
        code = (143 if isinstance(e, Terminated) else 130) if isinstance(e, KeyboardInterrupt) else 2
        time.sleep(0.2)                                # let the launcher forward the message first
        comm.abort(code)
        os._exit(code)                                 # MPI_Abort may return before the launcher kills us


def _run_train(args, comm) -> int:
    from ..formats import hf_cache_dir
    from ..params import count_params
    from ..threads import thread_count
    from ..training.loop import train
    from ..training.run import setup_run

    check_run_folder(Path(args.out))
    if args.threads is not None and args.threads < 1:
        raise NumgptError(f"--threads must be >= 1 (the threads each batch's rows are split over), got {args.threads}")
    options = options_from_args(args)
    lora = lora_from_args(args)                        # a bad --lora-* flag is refused before any loading
    try:
        run = setup_run(args.data, args.out, options=options, shape={k: getattr(args, k) for k in SHAPE_FLAGS},
                        init=args.init, resume_from=args.resume_from or (LATEST if args.resume else None),
                        cache_dir=hf_cache_dir(os.environ), default_threads=default_threads(comm.size), comm=comm,
                        ranks_here=local_ranks(comm.size), adapter_size=lora_adapter_size(lora))
    except ConfigFieldError as e:
        raise flag_error(e, options) from None
    run = with_lora(run, lora, resumed=bool(args.resume or args.resume_from))
    config, tc, state, folder = run.config, run.tc, run.state, run.folder
    if comm.rank != 0:                                 # rank 0 alone prints
        result = run.train(comm=comm)
        return 128 + result.signal if result.interrupted else 0
    if comm.size == 1 and options.get("zero"):
        print("note: --zero 1 shards AdamW's moments over the MPI ranks of `mpiexec -n P numgpt train ...`; "
              "with one process it changes nothing", file=sys.stderr)
    if note := schedule_note(tc):
        print(note, file=sys.stderr)
    if tc.threads > thread_count():
        print(f"note: --threads {tc.threads} is more than the {thread_count()} cores this process may use: the extra "
              "threads take turns (the run keeps the number, so that a resume gives the same bits)", file=sys.stderr)
    ranks = f" on {comm.size} ranks x {tc.threads} threads" if comm.size > 1 else ""
    print(f"{run.description}{ranks}: {count_params(config) / 1e6:.2f}M parameters (n_layer {config.n_layer}, "
          f"n_head {config.n_head}, n_embd {config.n_embd}, vocab {config.vocab_size}); "
          f"{tc.batch_size * tc.block_size * tc.grad_accum:,} tokens per step", file=sys.stderr)
    if lora_summary(run):
        print(lora_summary(run), file=sys.stderr)
    result = _train_with_progress(state, config, tc, run.data, folder,
                                  lambda *a, **kw: train(*a, comm=comm, objective=run.objective, **kw))
    adapter = export_adapter(run)                      # RUN/adapter: the last state's adapter (None without LoRA)
    if adapter is not None:
        print(adapter_line(adapter, folder, state.step, tc.init), file=sys.stderr)
    if result.interrupted:
        return report_stop(result, f"train {args.data}", folder, state.step, tc, comm.size)
    ev = result.last_eval
    if ev is not None:
        print(f"done: step {state.step}, val loss {ev['val_loss']:.4f} ({ev['val_bpb']:.3f} bits/byte); "
              f"best val loss {state.best_val_loss:.4f} in {folder / BEST}, last in {folder / LATEST}")
    return 0


def check_run_folder(run: Path) -> Path:
    """--out of train: a folder (new, or an earlier run's) that can be written; checked before loading."""
    if run.exists() and not run.is_dir():
        raise NumgptError(f"--out {run}: is an existing file, not a folder; pass a folder path")
    check_writable(run, "--out")
    return run


def schedule_note(tc: TrainConfig) -> str | None:
    """A note when the learning-rate schedule never does what its flags say (accepted, since it is a choice,
    but rarely the intended one): a warmup as long as the run, or a decay that ends inside the warmup."""
    from ..training.optim import learning_rate
    o = tc.optim
    if o.warmup_iters >= tc.max_iters > 0:
        return (f"note: --warmup-iters {o.warmup_iters} is not below --max-iters {tc.max_iters}: the learning rate "
                f"never reaches --lr {o.lr:g} (its last step's is {learning_rate(o, tc.max_iters - 1):.3g})")
    if o.decay_iters < o.warmup_iters:
        return (f"note: --lr-decay-iters {o.decay_iters} ends inside the warmup ({o.warmup_iters} steps): after it the "
                f"learning rate drops from {learning_rate(o, o.warmup_iters - 1):.3g} to --min-lr {o.min_lr:g}")
    return None


def report_stop(result, command: str, run: Path, step: int, tc: TrainConfig, ranks: int) -> int:
    """After Ctrl-C or SIGTERM: what was saved and the command that resumes bit for bit (on several MPI
    ranks, the same mpiexec, or in one process their threads: ranks x threads share a batch's rows the
    same way), the note on RUN/best; the exit status, 128 + the signal (130 Ctrl-C, 143 SIGTERM)."""
    how = "stopped by SIGTERM" if result.signal == signal.SIGTERM else "interrupted"
    resume = f"numgpt {command} --out {run} --resume"
    said = (f"`mpiexec -n {ranks} {resume}` (or in one process `{resume} --threads {ranks * (tc.threads or 1)}`, "
            "the same rows per thread)" if ranks > 1 else f"`{resume}`")
    print(f"{how} at step {step}: saved {run / LATEST}; continue with {said}", file=sys.stderr)
    if note := best_checkpoint_note(run, step, tc):
        print(note, file=sys.stderr)
    return 128 + result.signal


def adapter_line(adapter: Path, run: Path, step: int, base: str | None) -> str:
    """What RUN/adapter holds (the last step's adapter, as RUN/latest), and what loads it; RUN/best named
    only when there is one (a run stopped before its first evaluation has none)."""
    best = f"; --model {run} loads {run / BEST}" if checkpoint_step(run / BEST) is not None else ""
    return (f"adapter: {adapter} (PEFT LoRA for {base or 'BASE'} of the last step, {step}, as {run / LATEST}{best}; "
            f"numgpt generate --model {base or 'BASE'} --adapter {adapter})")


def best_checkpoint_note(run: Path, step: int, tc: TrainConfig) -> str | None:
    """After Ctrl-C: warn when RUN/best (where --model RUN points) is the untrained step-0 model, or absent."""
    best_step = checkpoint_step(run / BEST)
    if best_step is None:
        return (f"note: there is no {run / BEST} yet (no evaluation ran); sample from {run / LATEST} "
                f"(step {step}), or train longer with --resume")
    if best_step == 0 and step > 0:
        evaluated = checkpoint_step(run / LATEST, "evaluated_step") or 0
        when = (f" (the evaluation at step {evaluated} did not improve on it)" if evaluated > 0 else
                f" (the first evaluation after step 0 comes at step {tc.eval_interval})" if tc.eval_interval else "")
        if tc.init:                                   # a fine-tune's step 0 is the model it started from
            return (f"note: {run / BEST} is still the step-0 model, {tc.init} as it started{when}; its training "
                    f"is in {run / LATEST} (step {step}): use --model {run / LATEST}, or train longer with --resume")
        return (f"note: {run / BEST} is the untrained step-0 model{when}, so `numgpt generate --model "
                f"{run / BEST}` (or --model {run}) would print noise; use --model {run / LATEST} (step {step}), "
                "or train longer with --resume")
    return None


def default_threads(ranks: int = 1) -> int:
    """--threads when not given: NUMGPT_NUM_THREADS if set to a whole number >= 1, else the usable cores
    shared among the ranks of this machine (all of them for a single process)."""
    from ..threads import thread_count, threads_from_env
    return threads_from_env(os.environ) or max(1, thread_count() // local_ranks(ranks))


def local_ranks(ranks: int) -> int:
    """The ranks of the job on this machine: hydra's MPI_LOCALNRANKS, else all of them (1 alone)."""
    per_host = os.environ.get("MPI_LOCALNRANKS", "")                  # hydra's ranks on this host
    return max(1, int(per_host) if per_host.isdigit() else ranks) if ranks > 1 else 1


def _train_with_progress(state, config, tc, data, run, train, shorter: str = "--max-iters N"):
    from .progress import step_bar

    bar = step_bar(tc.max_iters, state.step, BAR_FORMAT)
    eta = TimeEstimate(tc, state.step, shorter)

    def on_event(ev):
        if ev["type"] == "step":
            bar.update(1)
            bar.set_postfix_str(f"loss {ev['loss']:.4f}, lr {ev['lr']:.2e}, {ev['tokens_per_s']:,.0f} tok/s",
                                refresh=False)
            line = eta.step(ev)
            if line:
                bar.write(line, file=sys.stderr)
        elif ev["type"] == "eval":
            eta.evaluated(ev)
            bar.write(f"step {ev['step']}: train loss {ev['train_loss']:.4f}, val loss {ev['val_loss']:.4f}, "
                      f"{ev['val_bpb']:.3f} bits/byte, {ev['val_bpc']:.3f} bits/char"
                      + (" (best, saved)" if ev["best"] else ""), file=sys.stderr)
    try:
        return train(state, config, tc, data, run, on_event=on_event)
    finally:
        bar.close()


class TimeEstimate:
    """The remaining time of a run, said once after ETA_AFTER_STEPS steps: the mean step time (the first
    step, which warms up, left out) times the steps left, plus the evaluations left at the time the
    first one took (or, before any, 2 x eval_iters forward passes at a third of a step each)."""

    def __init__(self, tc: TrainConfig, first_step: int, shorter: str = "--max-iters N"):
        self.tc, self.first_step, self.shorter = tc, first_step, shorter    # shorter: the flag of fewer steps
        self.started = time.perf_counter()
        self.seconds: list[float] = []
        self.eval_seconds: float | None = None
        self.said = False

    def evaluated(self, ev: dict) -> None:
        if self.eval_seconds is None and ev["step"] == self.first_step:
            self.eval_seconds = time.perf_counter() - self.started      # the run's setup included

    def step(self, ev: dict) -> str | None:
        self.seconds.append(ev["seconds"])
        left = self.tc.max_iters - ev["step"]
        if self.said or len(self.seconds) < ETA_AFTER_STEPS or left <= 0:
            return None
        self.said = True
        per_step = sum(self.seconds[1:]) / (len(self.seconds) - 1)
        evals = self.evals_after(ev["step"])
        per_eval = self.eval_seconds if self.eval_seconds is not None else \
            per_step * 2 * self.tc.eval_iters / (3 * self.tc.grad_accum)
        total = left * per_step + evals * per_eval
        line = (f"about {format_duration(total)} for the {left:,} steps left at {per_step:.2f} s/step"
                + (f" and {evals} evaluation{'s' if evals > 1 else ''}" if evals else ""))
        if total > LONG_RUN_SECONDS:
            line += f"; pass {self.shorter} for a shorter run (Ctrl-C saves and stops)"
        return line

    def evals_after(self, step: int) -> int:
        """Evaluations at steps step+1 .. max_iters: every eval_interval, and at the end."""
        k, end = self.tc.eval_interval, self.tc.max_iters
        every = (end // k - step // k) if k > 0 else 0
        return every + (0 if k > 0 and end % k == 0 else 1)


def format_duration(seconds: float) -> str:
    """3 s, 4 min 10 s, 2 h 10 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s" if minutes < 10 else f"{minutes} min"
    h, minutes = divmod(minutes, 60)
    return f"{h} h {minutes} min"


def defaults_text(defaults: dict) -> str:
    """A command's own defaults as its flags say them, for --help: {"batch_size": 8} -> "--batch-size 8"."""
    return ", ".join(f"--{name.replace('_', '-')} {f'{value:g}' if isinstance(value, float) else value}"
                     for name, value in defaults.items())


def over_defaults(train: dict, optim: dict, given: dict) -> dict:
    """The flags given (`options_from_args`' dict) over a fine-tuning command's own defaults for a new run:
    TrainConfig fields `train`, AdamW fields `optim`. A --lr given without --min-lr takes the floor along,
    a tenth of it (the defaults' own ratio): a floor left above a lower peak was refused."""
    opt = {**optim, **given["optim"]}
    if "lr" in given["optim"] and "min_lr" not in given["optim"]:
        opt["min_lr"] = given["optim"]["lr"] / 10
    return {**train, **{k: v for k, v in given.items() if k != "optim"}, "optim": opt}


# The training flags, defined once for every training command (train, sft, ...): flag attribute -> argparse's
# keywords, in --help order; "{default}" in a help is what the command uses when the flag is not given.
TRAINING_FLAGS: dict[str, dict] = {
    "block_size": dict(type=int, metavar="N", help="context length of the training windows ({default})"),
    "batch_size": dict(type=int, metavar="N", help="windows per micro-batch ({default})"),
    "grad_accum": dict(type=int, metavar="N", help="micro-batches per update ({default})"),
    "max_iters": dict(type=int, metavar="N", help="optimizer updates in all ({default})"),
    "lr": dict(type=float, metavar="X", help="peak learning rate ({default})"),
    "min_lr": dict(type=float, metavar="X", help="learning-rate floor of the cosine ({default})"),
    "warmup_iters": dict(type=int, metavar="N", help="linear warmup steps ({default})"),
    "lr_decay_iters": dict(type=int, metavar="N", help="step where the cosine reaches --min-lr ({default})"),
    "weight_decay": dict(type=float, metavar="X", help="AdamW decoupled weight decay on matrices ({default})"),
    "no_decay_embeddings": dict(action="store_true", help="no weight decay on wte/wpe"),
    "beta1": dict(type=float, metavar="X", help="Adam beta1 ({default})"),
    "beta2": dict(type=float, metavar="X", help="Adam beta2 ({default})"),
    "grad_clip": dict(type=float, metavar="X", help="clip the gradients' global norm to this, 0 = off ({default})"),
    "dropout": dict(type=float, metavar="X", help="GPT-2 dropout probability ({default})"),
    "eval_interval": dict(type=int, metavar="N", help="evaluate and save every N steps; 0 = only at the end "
                          "({default})"),
    "eval_iters": dict(type=int, metavar="N", help="batches per loss estimate ({default})"),
    "seed": dict(type=int, metavar="N", help="seed of initialisation, batches and dropout ({default})"),
    "threads": dict(type=int, metavar="N", help="split each batch's rows over N >= 1 threads (default: the "
                    f"environment's {THREADS_ENV} if set, else all cores; recorded in the run: float32 sums, "
                    "hence losses, depend on it; each thread past the first keeps its own gradient copy, "
                    "4 bytes per parameter)"),
    "zero": dict(type=int, choices=(0, 1), metavar="{0,1}", help="ZeRO stage under mpiexec: 1 shards AdamW's "
                 "moments over the ranks (about 1/P of them each, the same results); 0 = every rank keeps all "
                 "({default})"),
    "no_overlap": dict(action="store_true", help="under mpiexec with 2 ranks, sum the gradients after the "
                       "backward instead of layer by layer during it (the same results; for measuring what the "
                       "overlap saves)"),
}
TRAIN_DEFAULTS = {  # numgpt train's: the dataclasses' defaults (one place)
    **{flag: getattr(TC, flag) for flag in ("block_size", "batch_size", "grad_accum", "max_iters", "dropout",
                                            "eval_interval", "eval_iters", "seed", "zero")},
    **{flag: getattr(OPT, flag) for flag in ("lr", "min_lr", "warmup_iters", "weight_decay", "beta1", "beta2",
                                             "grad_clip")},
    "lr_decay_iters": "= --max-iters"}


def add_training_flags(group: argparse._ArgumentGroup, defaults: dict, *, only: tuple[str, ...] | None = None,
                       helps: dict[str, str] | None = None) -> None:
    """Add the training flags (TRAINING_FLAGS; `only` these attributes) to an argument group, each defaulting
    to "not given" (options_from_args then leaves the library's or the command's own default), --help saying
    defaults[attribute]. helps: a command's own wording of a flag where train's would be wrong for it (sft's
    rows are not windows). A flag left out is not offered (argparse refuses it), and reads as not given."""
    names = list(TRAINING_FLAGS) if only is None else list(only)
    unknown = sorted(set(names) - set(TRAINING_FLAGS))
    if unknown:
        raise ValueError(f"not a training flag: {', '.join(unknown)}")
    for name in names:
        keywords = dict(TRAINING_FLAGS[name])
        text = (helps or {}).get(name, keywords["help"])
        keywords["help"] = text.replace("{default}", str(defaults.get(name, "")))
        group.add_argument("--" + name.replace("_", "-"), **keywords)
    group.set_defaults(**{name: False if TRAINING_FLAGS[name].get("action") == "store_true" else None
                          for name in TRAINING_FLAGS if name not in names})


SHAPE_FLAGS = ("preset", "n_layer", "n_head", "n_embd")   # flag attributes = run.setup_run's shape keys

TRAIN_FLAGS = {  # flag attribute -> TrainConfig field
    "batch_size": "batch_size", "block_size": "block_size", "grad_accum": "grad_accum", "max_iters": "max_iters",
    "dropout": "dropout", "eval_interval": "eval_interval", "eval_iters": "eval_iters", "seed": "seed",
    "threads": "threads", "zero": "zero"}
OPTIM_FLAGS = {  # flag attribute -> AdamWConfig field
    "lr": "lr", "min_lr": "min_lr", "warmup_iters": "warmup_iters", "lr_decay_iters": "decay_iters",
    "weight_decay": "weight_decay", "beta1": "beta1", "beta2": "beta2", "grad_clip": "grad_clip"}


FLAG_OF_FIELD = {field: flag for flag, field in {**TRAIN_FLAGS, **OPTIM_FLAGS}.items()}

# The Python names the training library's messages use (setup_run's parameters, TrainConfig and AdamWConfig
# fields), said as this command's flags by cli.main (options.flag_message).
FLAG_NAMES = {
    **{field: f"--{flag.replace('_', '-')}" for field, flag in FLAG_OF_FIELD.items()},
    **{name: f"--{name.replace('_', '-')}" for name in SHAPE_FLAGS if name != "preset"},
    "preset=": "--preset", "threads=": "--threads", "lr=": "--lr", "init=": "--init", "run_dir": "--out",
    "resume_from=": "--resume", "resume_from='latest'": "--resume", "resume_from='best'": "--resume-from best",
    "val_fraction": "--val-fraction"}


def add_resume_flag(p: argparse.ArgumentParser, folder: str, data: str) -> None:
    """--resume [best] of the fine-tuning commands (sft, dpo, reward train): RUN/latest, or RUN/best."""
    p.add_argument("--resume", nargs="?", const=LATEST, choices=(LATEST, BEST), metavar="best",
                   help=f"continue {folder}/latest, or {folder}/best with `--resume best` (when latest is damaged); "
                        f"{data} must be the same file")


def add_max_tokens_flag(p: argparse.ArgumentParser) -> None:
    """--max-tokens of the commands that read preference pairs (reward train, dpo): pairs.short_pairs's limit."""
    from ..posttrain.pairs import MAX_TOKENS
    p.add_argument("--max-tokens", type=int, metavar="N", help="leave out each pair whose prompt and longer reply "
                   "come to more than N tokens (or more than the model's context), and say how many: a long pair is "
                   "left out, never cut, as a cut reply is not the reply ranked; a resumed run keeps its pairs "
                   f"({MAX_TOKENS})")


def left_out_note(meta: dict) -> str | None:
    """The note on the pairs a run's data left out as too long (its meta's "dropped" and "max_tokens", as
    reward's and dpo's prepared data record them), or None when none was."""
    dropped = meta.get("dropped") or {}
    if not any(dropped.values()):
        return None
    return (f"note: {dropped['train']} train and {dropped['val']} held-out pairs were longer than "
            f"{meta['max_tokens']} tokens and were left out (--max-tokens)")


def options_from_args(args) -> dict:
    """The flags the user gave, as run.setup_run's options (TrainConfig fields, AdamWConfig's under "optim")."""
    options = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    optim = {field: getattr(args, flag) for flag, field in OPTIM_FLAGS.items() if getattr(args, flag) is not None}
    if args.no_decay_embeddings:
        optim["decay_embeddings"] = False
    if args.no_overlap:
        options["overlap"] = False
    return {**options, "optim": optim}


def flag_error(e: ConfigFieldError, options: dict) -> NumgptError:
    """An option out of range, said with the name of the flag that gave it (the rule is the dataclass's)."""
    flag = FLAG_OF_FIELD.get(e.field)
    if flag is None or not (e.field in options or e.field in options["optim"]):
        return NumgptError(f"bad training option: {e}")
    return NumgptError(f"--{flag.replace('_', '-')} {e.rule}, got {e.value!r}")


# ---------------------------------------------------------------- plot

def run_plot(args) -> int:
    from ..training.loop import read_log

    events = read_log(args.run_dir)
    out = plot_path(args.out, Path(args.run_dir))
    plot_losses(events, out, title=str(args.run_dir))
    print(out)
    return 0


def plot_path(given: str | None, run_dir: Path) -> Path:
    """The PNG that plot writes: -o as given, with .png added when it has no suffix (the name printed is
    the file written); RUN_DIR/loss.png without -o. A folder, or another suffix, is refused."""
    out = run_dir / "loss.png" if given is None else png_file(given)
    if out.is_file():                               # an earlier plot, replaced: its folder must be writable
        check_writable(out.parent, "-o")
        return out
    return output_file(out, flag="-o")


@dataclasses.dataclass(frozen=True)
class PlotQuantities:
    """What a run's log plots: the per-step value (`step_key` of its step events) and what its evals'
    train_loss / val_loss mean, mapped through `of_eval` (RL's are 1 - pass@1: plotted as pass@1)."""

    step_key: str
    step_name: str
    eval_name: str
    axis: str
    of_eval: Callable[[float], float] = lambda v: v


def plotted_quantities(events) -> PlotQuantities:
    """By the run's kind, seen in its evals: RL (pass@1), a pairwise loss (DPO, reward model: an accuracy
    over pairs), else a language model's cross-entropy (train, SFT)."""
    evals = [e for e in events if e.get("type") == "eval"]
    if any("pass@1" in e for e in evals):
        return PlotQuantities("reward", "mean reward", "pass@1", "pass@1 (evals); mean reward of the samples (steps)",
                              lambda v: 1.0 - v)
    if any("val_accuracy" in e for e in evals):
        return PlotQuantities("loss", "train loss", "loss", "loss per preference pair (-log sigmoid of the margin)")
    return PlotQuantities("loss", "train loss", "loss", "cross-entropy (nats per token)")


def plot_losses(events, out: Path, *, title: str) -> None:
    """Train loss per step (light), its running mean, and the evaluated train/val losses, to a PNG."""
    import numpy as np

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NumgptError("numgpt plot needs matplotlib: pip install 'numgpt[plot]'") from None
    evals = [e for e in events if e.get("type") == "eval"]
    kind = plotted_quantities(events)
    steps = [(e["step"], e[kind.step_key]) for e in events
             if e.get("type") == "step" and kind.step_key in e and math.isfinite(e[kind.step_key])]
    if not steps and not evals:
        raise NumgptError(f"{title}: the log has no steps yet; train first")
    fig, ax = plt.subplots(figsize=(8, 5))
    if steps:
        xs, ys = zip(*steps)
        ax.plot(xs, ys, color="tab:blue", alpha=0.25, linewidth=0.8, label=f"{kind.step_name} (per step)")
        k = max(1, len(ys) // 50)
        c = np.concatenate([[0.0], np.cumsum(ys)])
        n = np.minimum(np.arange(1, len(ys) + 1), k)                    # trailing window, shorter at the start
        smooth = (c[1:] - c[np.arange(1, len(ys) + 1) - n]) / n
        ax.plot(xs, smooth, color="tab:blue", linewidth=1.2, label=f"{kind.step_name} (mean of {k})")
    if evals:
        ax.plot([e["step"] for e in evals], [kind.of_eval(e["train_loss"]) for e in evals], "o-", color="tab:green",
                label=f"train {kind.eval_name} (eval)")
        ax.plot([e["step"] for e in evals], [kind.of_eval(e["val_loss"]) for e in evals], "o-", color="tab:red",
                label=f"validation {kind.eval_name}")
    ax.set_xlabel("step")
    ax.set_ylabel(kind.axis)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, format="png")
    plt.close(fig)
