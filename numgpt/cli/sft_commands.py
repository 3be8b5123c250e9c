"""`numgpt sft`: supervised fine-tuning on chat JSONL, with the loss on the assistant's replies.

The work is numgpt.posttrain (packing.py prepares, sft.py's Objective) and numgpt.training (setup_run,
train: the loop, checkpoints, resume, lock and threads of `numgpt train`); this module reads the flags,
prints, and removes what it made when a refusal comes before training starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import NumgptError
from ..threads import THREADS_ENV
from ..training.loop import LATEST, BEST, TrainConfig
from ..training.optim import AdamWConfig, ConfigFieldError

from ..posttrain.lora import ADAPTER_DIR, add_lora_flags, export_adapter, lora_from_args, lora_summary
from ..posttrain.sft import DATA_SUBDIR, INIT_SUBDIR, SFT_BLOCK_SIZE
from .train_commands import (TRAIN_DEFAULTS, adapter_line, add_resume_flag, add_training_flags, defaults_text,
                             over_defaults)
SFT_TRAIN = {"batch_size": 8, "max_iters": 200, "dropout": 0.0, "eval_interval": 50, "eval_iters": 20}
SFT_OPTIM = {"lr": 1e-4, "min_lr": 1e-5, "warmup_iters": 10}
TC, OPT = TrainConfig(), AdamWConfig()
SFT_FLAGS = ("block_size", "batch_size", "grad_accum", "max_iters", "lr", "min_lr", "warmup_iters", "lr_decay_iters",
             "weight_decay", "grad_clip", "dropout", "eval_interval", "eval_iters", "seed", "threads")
SFT_DEFAULTS = {**TRAIN_DEFAULTS, **SFT_TRAIN, **SFT_OPTIM,          # the --help texts' (numgpt train's but these)
                "block_size": f"{SFT_BLOCK_SIZE}, or the model's context if smaller", "min_lr": "--lr / 10"}

EXAMPLES = f"""\
examples:
  numgpt data synth --n 2000 -o chats.jsonl
  numgpt sft chats.jsonl --init builtin --out runs/sft              the built-in model (chat tokens added)
  numgpt sft chats.jsonl --init gpt2 --out runs/sft2 --lr 3e-5 --max-iters 500
  numgpt sft chats.jsonl --out runs/sft --resume --max-iters 400    continue (bit for bit)
  numgpt sft chats.jsonl --init builtin --out data/sft --prepare-only   pack once; then: numgpt sft data/sft ...
  numgpt sft chats.jsonl --init builtin --out runs/all --train-on all   the loss on the prompts too
  numgpt sft chats.jsonl --init gpt2 --out runs/lora --lora-rank 8 --lr 1e-3   a LoRA adapter (RUN_DIR/adapter)
  mpiexec -n 2 numgpt sft chats.jsonl --init builtin --out runs/mpi --threads 1   2 ranks: the bits of --threads 2

The loss: cross-entropy on the assistant's replies and their <|end|> (--train-on all: every token),
divided by the number of such tokens in the batch. Conversations are packed whole into rows of
--block-size + 1 tokens (the rest of a row padded and not trained on); a longer one is cut to fit and
counted (--truncate no refuses it). {DATA_SUBDIR}/ and (for a model without the chat tokens) {INIT_SUBDIR}/
are written inside RUN_DIR. Defaults differ from numgpt train's: {defaults_text(SFT_TRAIN | SFT_OPTIM)}.
Ctrl-C or SIGTERM saves RUN_DIR/latest; --resume continues bit for bit (same --threads).
"""


def register(sub) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning on chat JSONL (loss on the assistant's replies)",
                       description="Fine-tune a GPT-2 on conversations (OpenAI's fine-tuning JSONL: one "
                       '{"messages": [...]} per line) with the loss on the assistant turns only.',
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", help="chat JSONL, or a folder made by --prepare-only")
    p.add_argument("--init", metavar="MODEL", help="the model to fine-tune: a folder, a run, 'builtin', or a cached "
                   "hub name such as gpt2 (chat tokens are added when it has none)")
    p.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="RUN_DIR", help="the run folder (with --prepare-only: "
                   "the data folder)")
    add_resume_flag(p, "RUN_DIR", "DATA")
    p.add_argument("--prepare-only", action="store_true", help="pack DATA into --out and stop")
    p.add_argument("--train-on", choices=("assistant", "all"),
                   help="the tokens the loss is on (assistant, the default: the replies and their <|end|>)")
    p.add_argument("--truncate", choices=("yes", "no"), default="yes",
                   help="a conversation longer than the context: cut it (yes, counted) or refuse the data (no)")
    v = p.add_mutually_exclusive_group()
    v.add_argument("--val", metavar="FILE", help="held-out conversations (chat JSONL) for the validation loss")
    v.add_argument("--val-fraction", type=float, default=0.1, metavar="X",
                   help="share of DATA's conversations held out when no --val is given (0.1)")
    add_training_flags(p.add_argument_group("training (as numgpt train)"), SFT_DEFAULTS, only=SFT_FLAGS, helps={
        "block_size": "row length - 1 ({default})", "batch_size": "rows per micro-batch ({default})",
        "seed": "seed of the split, batches and dropout ({default})"})
    add_lora_flags(p)
    p.set_defaults(run=run_sft, flag_names=sft_flag_names())   # the library's Python names, said as flags (cli.main)


def sft_flag_names() -> dict[str, str]:
    """numgpt train's vocabulary (train_commands.FLAG_NAMES) less the flags sft has not, plus its own
    (setup_sft's parameters: val_file, init=MODEL, resume=True, prepare_only=True, train_on=..., truncate=True)."""
    from .train_commands import FLAG_NAMES
    absent = ("beta1", "beta2", "zero", "n_layer", "n_head", "n_embd", "preset=")
    return {**{k: v for k, v in FLAG_NAMES.items() if k not in absent}, "resume_from='best'": "--resume best",
            "val_file=": "--val FILE", "val_file": "--val",
            "init=MODEL": "--init MODEL", "resume=True": "--resume", "prepare_only=True": "--prepare-only",
            "train_on='assistant'": "--train-on assistant", "train_on='all'": "--train-on all",
            "truncate=True": "--truncate yes"}


def run_sft(args) -> int:
    """`numgpt sft`, as one process or one rank of `mpiexec -n P numgpt sft ...`: as numgpt train, a rank
    that fails prints its error and ends the whole job (rank 0 packs while the others wait for it)."""
    from .train_commands import on_every_rank
    return on_every_rank(_run_sft, args)


def _run_sft(args, comm) -> int:
    from ..formats import hf_cache_dir
    from ..posttrain.sft import setup_sft
    from .train_commands import check_run_folder, default_threads, flag_error, local_ranks, options_from_args

    if args.threads is not None and args.threads < 1:
        raise NumgptError(f"--threads must be >= 1, got {args.threads}")
    if args.resume and (args.prepare_only or args.init):
        raise NumgptError("--resume continues RUN_DIR/latest with its own data and model: drop "
                          + ("--prepare-only" if args.prepare_only else "--init"))
    lora = lora_from_args(args)                        # refused in one line before anything is packed
    run = check_run_folder(Path(args.out))
    options = _options(args, options_from_args, new=not args.resume)
    try:
        setup = setup_sft(args.data, run, init=args.init, resume=args.resume, options=options,
                          block_size=args.block_size, train_on=args.train_on, truncate=args.truncate == "yes",
                          val_fraction=args.val_fraction, val_file=args.val,
                          seed=args.seed if args.seed is not None else TC.seed, cache_dir=hf_cache_dir(os.environ),
                          default_threads=default_threads(comm.size), prepare_only=args.prepare_only, comm=comm,
                          ranks_here=local_ranks(comm.size), lora=lora)   # the adapter trained instead (--lora-rank)
    except ConfigFieldError as e:
        raise flag_error(e, options) from None
    if comm.rank != 0:                                 # rank 0 alone prints
        result = None if args.prepare_only else setup.run.train(comm=comm)
        return 128 + result.signal if result is not None and result.interrupted else 0
    _report_data(args, setup, run)
    return 0 if args.prepare_only else _train(args, setup.run, comm)


def _report_data(args, setup, run: Path) -> None:
    """What packing made, the conversations it cut, and the chat tokens added, on stderr."""
    if setup.meta is not None:
        s, n, L = setup.meta["splits"], setup.meta["sft"]["conversations"], setup.meta["sft"]["block_size"] + 1
        where = run if args.prepare_only else run / DATA_SUBDIR
        print(f"{where}: train {n['train']} conversations in {s['train']['rows']} rows of {L} tokens "
              f"({s['train']['trained_tokens']:,} trained), val {n['val']} in {s['val']['rows']} rows "
              f"({s['val']['trained_tokens']:,} trained); loss on {setup.meta['sft']['train_on']} tokens",
              file=sys.stderr)
        cut = setup.truncated
        if cut.get("train") or cut.get("val"):
            print(f"note: {cut['train']} train and {cut['val']} val conversations were longer than {L} tokens and "
                  "were cut to fit (--truncate no refuses them)", file=sys.stderr)
    if setup.added_chat_tokens:
        print(f"note: {args.init} has no chat tokens; added <|system|>, <|user|>, <|assistant|>, <|end|> (and "
              "<|endoftext|> if missing), their wte rows the mean of its rows"
              + ("" if args.prepare_only else f" (the grown model: {run / INIT_SUBDIR})"), file=sys.stderr)
        if args.lora_rank and not args.prepare_only:
            print("note: with LoRA, wte stays frozen but for the new tokens' rows, which train with the adapter "
                  "(saved in RUN_DIR/adapter as peft's trainable_token_indices)", file=sys.stderr)


def _options(args, options_from_args, *, new: bool) -> dict:
    """The flags given, over SFT's defaults for a new run (a resumed run keeps its saved config)."""
    given = options_from_args(args)
    if not new:
        return given
    return over_defaults(SFT_TRAIN, SFT_OPTIM, given)


def _train(args, setup, comm) -> int:
    from ..params import count_params
    from ..training.loop import train
    from .train_commands import _train_with_progress, report_stop

    objective = setup.objective
    config, tc, state, folder = setup.config, setup.tc, setup.state, setup.folder
    ranks = f" on {comm.size} ranks x {tc.threads} threads" if comm.size > 1 else ""
    print(f"SFT, {setup.description}{ranks}: {count_params(config) / 1e6:.2f}M parameters, vocab {config.vocab_size}; "
          f"{tc.batch_size * tc.grad_accum} rows of {tc.block_size} tokens per step; loss = masked mean over "
          "the trained tokens of each batch", file=sys.stderr)
    if lora_summary(setup):
        print(lora_summary(setup), file=sys.stderr)
    result = _train_with_progress(state, config, tc, setup.data, folder,
                                  lambda *a, **kw: train(*a, comm=comm, objective=objective, **kw))
    if export_adapter(setup):
        # the base as the user named it, where it was not grown into RUN/init (tc.init is where it resolved:
        # the package's own path for `chat`, which a reinstall moves)
        from ..posttrain.sft import INIT_SUBDIR
        base = args.init if args.init and Path(tc.init) != folder / INIT_SUBDIR else tc.init
        print(adapter_line(folder / ADAPTER_DIR, folder, state.step, base), file=sys.stderr)
    if result.interrupted:
        return report_stop(result, f"sft {args.data}", folder, state.step, tc, comm.size)
    ev = result.last_eval
    if ev is not None:
        print(f"done: step {state.step}, masked val loss {ev['val_loss']:.4f} ({ev['val_bpb']:.3f} bits per byte of "
              f"the trained text); best {state.best_val_loss:.4f} in {folder / BEST}, last in {folder / LATEST}")
    return 0
