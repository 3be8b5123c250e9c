"""`numgpt dpo`: direct preference optimisation on preference pairs, from an SFT model that stays the reference.

The work is numgpt.posttrain.dpo (the pairs prepared with the reference's log-probabilities, DPO's
Objective) and numgpt.training (setup_run, train: the loop, checkpoints, resume, lock and threads of
`numgpt train`); this module reads the flags and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import NumgptError
from ..threads import THREADS_ENV
from ..training.loop import BEST, LATEST, TrainConfig
from ..training.optim import ConfigFieldError
from .train_commands import (TRAIN_DEFAULTS, add_max_tokens_flag, add_resume_flag, add_training_flags, defaults_text,
                             left_out_note, over_defaults)

DPO_TRAIN = {"batch_size": 8, "max_iters": 200, "dropout": 0.0, "eval_interval": 50, "eval_iters": 8}
DPO_OPTIM = {"lr": 1e-5, "min_lr": 1e-6, "warmup_iters": 10}   # a tenth of SFT's (TRL: 1e-6 for big models)
TC = TrainConfig()
DPO_FLAGS = ("block_size", "batch_size", "grad_accum", "max_iters", "lr", "min_lr", "warmup_iters", "lr_decay_iters",
             "weight_decay", "grad_clip", "dropout", "eval_interval", "eval_iters", "seed", "threads")
DPO_DEFAULTS = {**TRAIN_DEFAULTS, **DPO_TRAIN, **DPO_OPTIM, "block_size": "the longest pair's length - 1",
                "min_lr": "--lr / 10"}

EXAMPLES = f"""\
examples:
  numgpt data pairs --n 2000 --out pairs.jsonl
  numgpt dpo pairs.jsonl --init runs/sft --out runs/dpo                   beta 0.1, the SFT run as reference
  numgpt dpo pairs.jsonl --init runs/sft --out runs/dpo2 --beta 0.3 --lr 1e-5 --max-iters 400
  numgpt dpo pairs.jsonl --init chat --out runs/rpo --sft-weight 1 --lr 1e-4 --max-iters 600   DPO + SFT term
  numgpt dpo pairs.jsonl --out runs/dpo --resume --max-iters 400          continue (bit for bit)
  numgpt dpo pairs.jsonl --init runs/sft --out data/dpo --prepare-only    score once; then: numgpt dpo data/dpo ...
  mpiexec -n 2 numgpt dpo pairs.jsonl --init runs/sft --out runs/mpi --threads 1   the bits of --threads 2

PAIRS: TRL's preference JSONL, one {{"prompt": [messages], "chosen": [assistant message], "rejected": [...]}}
per line. The loss is TRL's sigmoid DPO loss, -log sigmoid(beta * ((log pi - log pi_ref)(chosen) -
(log pi - log pi_ref)(rejected))), the log-probabilities summed over each reply's tokens. The reference
(--init) scores every pair once before training; its sums are cached in RUN_DIR/data (reference.json holds
the hashes of the model and the pairs: a prepared folder used with another --init is refused). Logged at
each evaluation, on training pairs and held-out ones: loss, reward margin, preference accuracy, chosen and
rejected rewards, KL to the reference (per chosen-reply token). Defaults differ from numgpt train's:
{defaults_text(DPO_TRAIN | DPO_OPTIM)}. Ctrl-C or SIGTERM saves RUN_DIR/latest; --resume continues bit for bit.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to `numgpt`'s parser."""
    p = sub.add_parser("dpo", help="direct preference optimisation on preference pairs (no reward model)",
                       description="Align a chat model on preference pairs with DPO: raise the probability of the "
                       "chosen reply over the rejected one, relative to the starting model (the reference).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", metavar="PAIRS", help="preference pairs JSONL, or a folder made by --prepare-only")
    p.add_argument("--init", metavar="MODEL", help="the model to align and keep as the reference: an SFT run, a "
                   "folder, 'builtin' (chat tokens are added when it has none)")
    p.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="RUN_DIR", help="the run folder (with --prepare-only: "
                   "the data folder)")
    p.add_argument("--beta", type=float, metavar="B", help="how far from the reference the policy may move: "
                   "larger keeps it closer (0.1, TRL's default; a resumed run keeps its own)")
    p.add_argument("--sft-weight", type=float, metavar="W", help="add W times the chosen replies' mean negative "
                   "log-likelihood per token (TRL's loss_type=['sigmoid', 'sft'], loss_weights=[1, W]; RPO): keeps "
                   "the chosen reply likely when pairs differ by a digit (0: plain DPO, the default)")
    add_resume_flag(p, "RUN_DIR", "PAIRS")
    add_max_tokens_flag(p)
    p.add_argument("--prepare-only", action="store_true", help="render PAIRS and the reference's log-probabilities "
                   "into --out and stop")
    v = p.add_mutually_exclusive_group()
    v.add_argument("--val", metavar="FILE", help="held-out pairs (JSONL) for the validation figures")
    v.add_argument("--val-fraction", type=float, default=0.1, metavar="X",
                   help="share of PAIRS held out when no --val is given (0.1)")
    add_training_flags(p.add_argument_group("training (as numgpt train)"), DPO_DEFAULTS, only=DPO_FLAGS, helps={
        "block_size": "row length - 1 ({default})", "batch_size": "pairs per micro-batch ({default})",
        "eval_iters": "evaluate on N x --batch-size pairs of each split, all the held-out ones if fewer ({default})",
        "seed": "seed of the split, batches and dropout ({default})",
        "threads": f"split each batch's pairs over N threads (default: {THREADS_ENV} if set, else all cores; "
                   "recorded in the run)"})
    p.set_defaults(run=run_dpo, flag_names=dpo_flag_names())   # the library's Python names, said as flags (cli.main)


def dpo_flag_names() -> dict[str, str]:
    """sft's vocabulary of flag names (the training flags and --val), plus --beta, --sft-weight and --max-tokens."""
    from .sft_commands import sft_flag_names
    return {**sft_flag_names(), "beta": "--beta", "beta=": "--beta", "sft_weight": "--sft-weight",
            "sft_weight=": "--sft-weight", "max_tokens": "--max-tokens"}


def run_dpo(args) -> int:
    """`numgpt dpo`, as one process or one rank of `mpiexec -n P numgpt dpo ...` (as numgpt sft)."""
    from .train_commands import on_every_rank
    return on_every_rank(_run_dpo, args)


def _run_dpo(args, comm) -> int:
    from ..formats import hf_cache_dir
    from ..posttrain.dpo import setup_dpo
    from .train_commands import check_run_folder, default_threads, flag_error, local_ranks, options_from_args
    from .progress import progress_reporter

    if args.threads is not None and args.threads < 1:
        raise NumgptError(f"--threads must be >= 1, got {args.threads}")
    if args.resume and (args.prepare_only or args.init):
        raise NumgptError("--resume continues RUN_DIR/latest with its own data and reference: drop "
                          + ("--prepare-only" if args.prepare_only else "--init"))
    run = check_run_folder(Path(args.out))
    options = _options(args, options_from_args, new=not args.resume)
    update, close = progress_reporter(comm.rank == 0, "pair", "dpo: the reference scoring the pairs")
    try:
        setup = setup_dpo(args.pairs, run, init=args.init, beta=args.beta, sft_weight=args.sft_weight,
                          resume=args.resume, options=options, block_size=args.block_size, max_tokens=args.max_tokens,
                          val_fraction=args.val_fraction, val_file=args.val,
                          seed=args.seed if args.seed is not None else TC.seed, cache_dir=hf_cache_dir(os.environ),
                          default_threads=default_threads(comm.size), prepare_only=args.prepare_only, comm=comm,
                          ranks_here=local_ranks(comm.size), progress=update)
    except ConfigFieldError as e:
        raise flag_error(e, options) from None
    finally:
        close()
    if comm.rank != 0:                                 # rank 0 alone prints
        result = None if args.prepare_only else setup.run.train(comm=comm)
        return 128 + result.signal if result is not None and result.interrupted else 0
    _report_data(args, setup, run)
    return 0 if args.prepare_only else _train(args, setup, comm)


def _options(args, options_from_args, *, new: bool) -> dict:
    """The flags given, over DPO's defaults for a new run (a resumed run keeps its saved config)."""
    given = options_from_args(args)
    if not new:
        return given
    return over_defaults(DPO_TRAIN, DPO_OPTIM, given)


def _report_data(args, setup, run: Path) -> None:
    """What preparing made, and the chat tokens added, on stderr."""
    if setup.meta is not None:
        s, L = setup.meta["splits"], setup.meta["dpo"]["block_size"] + 1
        where = run if args.prepare_only else run / "data"
        print(f"{where}: {s['train']['pairs']} training and {s['val']['pairs']} held-out pairs in rows of {L} tokens "
              f"({s['train']['reply_tokens']:,} + {s['val']['reply_tokens']:,} reply tokens), scored once by the "
              "reference model", file=sys.stderr)
        note = left_out_note(setup.meta["dpo"])
        if note:
            print(note, file=sys.stderr)
    if setup.added_chat_tokens:
        print(f"note: {args.init} has no chat tokens; added <|system|>, <|user|>, <|assistant|>, <|end|> (and "
              "<|endoftext|> if missing), their wte rows the mean of its rows; DPO wants a model fine-tuned on "
              "chats first (numgpt sft)", file=sys.stderr)


def eval_line(ev: dict) -> str:
    """One evaluation's figures, train and held-out."""
    return (f"step {ev['step']}: loss {ev['train_loss']:.4f} / {ev['val_loss']:.4f} (train / held-out), margin "
            f"{ev['train_margin']:.3f} / {ev['val_margin']:.3f}, accuracy {ev['train_accuracy']:.1%} / "
            f"{ev['val_accuracy']:.1%}, rewards chosen {ev['val_chosen_reward']:.3f} rejected "
            f"{ev['val_rejected_reward']:.3f}, KL {ev['val_kl']:.4f}/token, chosen NLL {ev['val_chosen_nll']:.3f}/token"
            + (" (best, saved)" if ev["best"] else ""))


def _train(args, setup, comm) -> int:
    from ..params import count_params
    from .progress import step_bar
    from .train_commands import BAR_FORMAT, TimeEstimate, report_stop

    run = setup.run
    config, tc, state, folder = run.config, run.tc, run.state, run.folder
    ranks = f" on {comm.size} ranks x {tc.threads} threads" if comm.size > 1 else ""
    print(f"DPO, {run.description}{ranks}: {count_params(config) / 1e6:.2f}M parameters, beta {setup.beta}"
          f"{f', SFT term x {setup.sft_weight}' if setup.sft_weight else ''}; "
          f"{tc.batch_size * tc.grad_accum} pairs of rows of {tc.block_size + 1} tokens per step", file=sys.stderr)
    bar = step_bar(tc.max_iters, state.step, BAR_FORMAT)
    eta = TimeEstimate(tc, state.step)

    def on_event(ev):
        if ev["type"] == "step":
            bar.update(1)
            bar.set_postfix_str(f"loss {ev['loss']:.4f}, lr {ev['lr']:.2e}", refresh=False)
            line = eta.step(ev)
            if line:
                bar.write(line, file=sys.stderr)
        elif ev["type"] == "eval":
            eta.evaluated(ev)
            bar.write(eval_line(ev), file=sys.stderr)
    try:
        result = run.train(on_event=on_event, comm=comm)
    finally:
        bar.close()
    if result.interrupted:
        return report_stop(result, f"dpo {args.pairs}", folder, state.step, tc, comm.size)
    ev = result.last_eval
    if ev is not None:
        print(f"done: step {state.step}, held-out preference accuracy {ev['val_accuracy']:.1%}, margin "
              f"{ev['val_margin']:.3f}, loss {ev['val_loss']:.4f}; best in {folder / BEST}, last in {folder / LATEST}")
    return 0
