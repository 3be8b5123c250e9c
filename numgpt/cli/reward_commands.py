"""`numgpt reward train|score`: a reward model trained on preference pairs (Bradley-Terry), and the rewards
it gives replies. The work is numgpt.posttrain.reward (and pairs.py, training/): this module reads the
flags and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import NumgptError
from ..threads import THREADS_ENV

HEAD_LR, BODY_LR, LORA_LR = 1e-3, 5e-5, 3e-4   # default peak lr: the head alone, pre-trained weights, LoRA
REWARD_TRAIN = {"batch_size": 16, "max_iters": 200, "dropout": 0.0, "eval_interval": 50, "eval_iters": 4}

REWARD_EXAMPLES = """\
examples:
  numgpt data pairs --n 2000 -o pairs.jsonl
  numgpt reward train pairs.jsonl --init runs/sft --out runs/rm                 the head on the SFT model
  numgpt reward train pairs.jsonl --init runs/sft --out runs/rm2 --train last-2 --max-iters 400
  numgpt reward train pairs.jsonl --out runs/rm --resume --max-iters 400          continue (bit for bit)
  numgpt reward score runs/rm --prompt "What is 2 + 2?" --reply 4 --reply 5
  numgpt reward score runs/rm --pairs heldout-pairs.jsonl                      pairwise accuracy

The reward model is the SFT model with a linear head of one output over the last token of the conversation
(transformers' GPT2ForSequenceClassification, num_labels=1), trained on {"prompt", "chosen", "rejected"}
pairs with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected): only the difference of two rewards
is learnt, so a reward means something only beside another reply's to the same prompt.
"""

TRAIN_EXAMPLES = REWARD_EXAMPLES + """
Each evaluation scores every held-out pair (--val FILE, or --val-fraction of PAIRS): the loss, the pairwise
accuracy (reward of chosen > rejected) and the mean margin. RUN/best keeps the lowest held-out loss;
RUN/model, written at the end, is that checkpoint as a folder transformers loads. Ctrl-C or SIGTERM saves
RUN/latest; --resume continues bit for bit (same --threads).
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add `reward train` and `reward score` to `numgpt`'s parser."""
    p = sub.add_parser("reward", help="a reward model on preference pairs: train it, score replies",
                       description="A reward model: the SFT model with a one-output head, trained on preference "
                       "pairs with the Bradley-Terry loss; and the rewards it gives replies.",
                       epilog=REWARD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=lambda args: p.print_help() or 0)
    s = p.add_subparsers(dest="reward_command", metavar="REWARD_COMMAND")
    _register_train(s)
    _register_score(s)


def _register_train(sub) -> None:
    from ..posttrain.classify import TRAIN_CHOICES
    from ..posttrain.lora import add_lora_flags
    from .train_commands import add_max_tokens_flag, add_resume_flag
    p = sub.add_parser("train", help="train a reward model on preference pairs (Bradley-Terry)",
                       description="Train a reward model on preference pairs (TRL's prompt/chosen/rejected JSONL "
                       "with chat messages): writes RUN/latest, RUN/best and RUN/model.",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", metavar="PAIRS", help="preference pairs JSONL (numgpt data pairs makes some)")
    p.add_argument("--init", metavar="MODEL", help="the chat model to start from: an SFT run or model folder")
    p.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="RUN", help="the run folder")
    add_resume_flag(p, "RUN", "PAIRS")
    p.add_argument("--train", metavar="WHAT", help=f"what trains: {TRAIN_CHOICES} (head)")
    add_max_tokens_flag(p)
    v = p.add_mutually_exclusive_group()
    v.add_argument("--val", metavar="FILE", help="held-out pairs for the evaluations")
    v.add_argument("--val-fraction", type=float, default=0.1, metavar="X",
                   help="share of PAIRS held out when no --val is given (0.1)")
    o = p.add_argument_group("training (as numgpt train)")
    o.add_argument("--batch-size", type=int, metavar="N", help=f"pairs per micro-batch ({REWARD_TRAIN['batch_size']})")
    o.add_argument("--grad-accum", type=int, metavar="N", help="micro-batches per update (1)")
    o.add_argument("--max-iters", type=int, metavar="N", help=f"optimizer updates ({REWARD_TRAIN['max_iters']})")
    o.add_argument("--lr", type=float, metavar="X", help=f"peak learning rate ({HEAD_LR} for --train head, "
                   f"{LORA_LR} with --lora-rank, else {BODY_LR})")
    o.add_argument("--min-lr", type=float, metavar="X", help="learning-rate floor (--lr / 10)")
    o.add_argument("--warmup-iters", type=int, metavar="N", help="linear warmup (a tenth of --max-iters)")
    o.add_argument("--lr-decay-iters", type=int, metavar="N", help="where the cosine reaches --min-lr (= --max-iters)")
    o.add_argument("--weight-decay", type=float, metavar="X", help="AdamW weight decay (0.1)")
    o.add_argument("--grad-clip", type=float, metavar="X", help="gradient norm clip, 0 = off (1.0)")
    o.add_argument("--dropout", type=float, metavar="X", help="dropout in the trained body (0)")
    o.add_argument("--eval-interval", type=int, metavar="N", help="evaluate on every held-out pair and save every "
                   f"N steps ({REWARD_TRAIN['eval_interval']})")
    o.add_argument("--seed", type=int, metavar="N", help="seed of the split, head, batches and dropout (1337)")
    o.add_argument("--threads", type=int, metavar="N", help=f"split each batch's pairs over N threads (default: "
                   f"{THREADS_ENV} if set, else all cores; recorded in the run)")
    add_lora_flags(p, saved="merged into the model it saves (RUN/best, RUN/latest)")
    o.add_argument("--eval-iters", type=int, metavar="N", help="the train loss of an evaluation is over the first N x "
                   f"--batch-size train pairs ({REWARD_TRAIN['eval_iters']})")
    p.set_defaults(run=run_train, block_size=None, zero=None, no_overlap=False,
                   no_decay_embeddings=False, beta1=None, beta2=None, flag_names=_flag_names())


def _flag_names() -> dict[str, str]:
    from .sft_commands import sft_flag_names
    return {**sft_flag_names(), "val_fraction": "--val-fraction", "train=": "--train", "max_tokens": "--max-tokens"}


def _register_score(sub) -> None:
    p = sub.add_parser("score", help="the reward of each reply to a prompt, or the accuracy on a pairs file",
                       description="Score replies with a reward model: one line per reply (its reward, the reply), "
                       "or for a pairs file the pairwise accuracy and mean margin.",
                       epilog=REWARD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="RM", help="a `numgpt reward train` run, or its model folder")
    p.add_argument("--prompt", metavar="TEXT", help="the user's message")
    p.add_argument("--system", metavar="TEXT", help="a system message before the prompt")
    p.add_argument("--reply", action="append", metavar="TEXT", help="an assistant reply to score (repeat it)")
    p.add_argument("--pairs", metavar="FILE", help="score a preference pairs JSONL file instead")
    p.set_defaults(run=run_score)


# ---------------------------------------------------------------- train

def run_train(args) -> int:
    """`numgpt reward train`, as one process or one rank of `mpiexec -n P numgpt reward train ...`."""
    from .train_commands import on_every_rank
    return on_every_rank(_run_train, args)


def _run_train(args, comm) -> int:
    from ..formats import hf_cache_dir
    from ..posttrain.lora import lora_from_args
    from ..posttrain.reward import setup_reward
    from ..training.optim import ConfigFieldError
    from .paths import input_file
    from .train_commands import check_run_folder, default_threads, flag_error, local_ranks, options_from_args

    if args.threads is not None and args.threads < 1:
        raise NumgptError(f"--threads must be >= 1, got {args.threads}")
    for flag, given in (("--init", args.init), ("--train", args.train), ("--lora-rank", args.lora_rank),
                        ("--max-tokens", args.max_tokens)):
        if args.resume and given is not None:
            raise NumgptError(f"--resume continues RUN/latest with its own data, model and trained set: drop {flag}")
    args.train = "head" if args.train is None else args.train
    lora = lora_from_args(args, embedding=True)
    if lora is not None and args.train != "head":
        raise NumgptError(f"--lora-rank trains an adapter and the head, the model's weights frozen; --train "
                          f"{args.train} trains the weights themselves: pass one of them")
    if not args.resume:
        input_file(args.pairs)
    run = check_run_folder(Path(args.out))
    options = options_from_args(args) if args.resume else _new_options(args, options_from_args(args), lora)
    try:
        setup = setup_reward(args.pairs, run, init=args.init, resume=args.resume, options=options, train=args.train,
                             lora=lora, max_tokens=args.max_tokens, val_fraction=args.val_fraction, val_file=args.val,
                             seed=args.seed if args.seed is not None else 1337, cache_dir=hf_cache_dir(os.environ),
                             default_threads=default_threads(comm.size), comm=comm, ranks_here=local_ranks(comm.size))
    except ConfigFieldError as e:
        raise flag_error(e, options) from None
    if comm.rank != 0:                                 # rank 0 alone prints and exports
        result = setup.run.train(comm=comm)
        return 128 + result.signal if result.interrupted else 0
    _report_data(setup, run)
    return _train(args, setup.run, comm)


def _new_options(args, given: dict, lora) -> dict:
    """The flags given, over the reward model's defaults (lr by what trains, warmup a tenth of the steps)."""
    options = {**REWARD_TRAIN, **{k: v for k, v in given.items() if k != "optim"}}
    lr = LORA_LR if lora is not None else HEAD_LR if args.train == "head" else BODY_LR
    # (a negative max_iters gets no warmup of its own, so that its own check names it, not --warmup-iters)
    optim = {"lr": lr, "min_lr": given["optim"].get("lr", lr) / 10,
             "warmup_iters": max(0, options["max_iters"] // 10), **given["optim"]}
    return {**options, "optim": optim}


def _report_data(setup, run: Path) -> None:
    from .train_commands import left_out_note

    if setup.meta is None:
        return
    s, info = setup.meta["splits"], setup.meta["reward"]
    print(f"{run / 'data'}: {s['train']['pairs']} train and {s['val']['pairs']} held-out pairs, rows of at most "
          f"{info['row_length']} tokens", file=sys.stderr)
    note = left_out_note(info)
    if note:
        print(note, file=sys.stderr)


def trained_set(trainable, params) -> str:
    """What a run trains, in --train's words, from the run itself (a resumed run keeps the set it started
    with, whatever --train says now): head, all, or the head and the last N blocks."""
    from ..posttrain.classify import SCORE
    if trainable is None or set(params) <= set(trainable):
        return "all"
    blocks = {name.split(".")[1] for name in trainable if name.startswith("h.")}
    return "head" if set(trainable) == {SCORE} else f"last-{len(blocks)}" if blocks else "head"


def _train(args, run, comm) -> int:
    from ..posttrain.lora import lora_summary
    from ..posttrain.reward import MODEL_SUBDIR, export_reward_model
    from ..training.loop import BEST, LATEST

    tc = run.tc
    trained = sum(p.size for p in run.objective.trainable_params(run.state.params).values())
    ranks = f" on {comm.size} ranks x {tc.threads} threads" if comm.size > 1 else ""
    print(f"reward model, {run.description}{ranks}: training {trained:,} parameters "
          f"({lora_summary(run) or trained_set(run.objective.trainable, run.state.params)}); "
          f"{tc.batch_size * tc.grad_accum} pairs per step; "
          "loss = mean of -log sigmoid(r_chosen - r_rejected)", file=sys.stderr)
    result = _train_with_progress(run, comm)
    model = export_reward_model(run)
    if result.interrupted:
        print(f"interrupted at step {run.state.step}: saved {run.folder / LATEST}, and {model} (the best so far, "
              f"what `numgpt reward score {run.folder}` uses); continue with "
              f"`numgpt reward train {args.pairs} --out {run.folder} --resume`", file=sys.stderr)
        return 128 + result.signal
    ev = result.last_eval
    if ev is not None:
        print(f"done: step {run.state.step}, held-out pairwise accuracy {ev['val_accuracy']:.4f}, mean margin "
              f"{ev['val_margin']:.4f}, loss {ev['val_loss']:.4f}; best {run.state.best_val_loss:.4f} in "
              f"{run.folder / BEST}; the reward model: {run.folder / MODEL_SUBDIR}")
    return 0


def _train_with_progress(run, comm):
    """run.train with a progress bar and a line per evaluation (loss, accuracy, margin) on stderr."""
    from .progress import progress_reporter

    update, close = progress_reporter(True, "step", "reward train")

    def on_event(ev: dict) -> None:
        if ev["type"] == "step":
            update(ev["step"], run.tc.max_iters)
        elif ev["type"] == "eval":
            print(f"step {ev['step']}: train loss {ev['train_loss']:.4f}, held-out loss {ev['val_loss']:.4f}, "
                  f"accuracy {ev['val_accuracy']:.4f}, margin {ev['val_margin']:.4f}"
                  + (" (best, saved)" if ev["best"] else ""), file=sys.stderr)
    try:
        return run.train(on_event=on_event, comm=comm)
    finally:
        close()


# ---------------------------------------------------------------- score

def run_score(args) -> int:
    import numpy as np

    from ..posttrain.reward import load_reward_model, pair_metrics
    from .paths import input_file

    if (args.pairs is None) == (args.reply is None):
        both = args.pairs is not None
        raise NumgptError(("--pairs FILE scores a file, --prompt/--reply one prompt's replies: give one of them, not "
                           "both") if both else "pass --prompt TEXT with one or more --reply TEXT, or --pairs FILE")
    if args.pairs is None and args.prompt is None:
        raise NumgptError("--reply needs --prompt TEXT (the user's message it answers)")
    if args.pairs is not None and (args.prompt is not None or args.system is not None):
        raise NumgptError("--pairs FILE carries its own prompts: drop --prompt and --system")
    model = load_reward_model(args.model)
    if args.pairs is not None:
        from collections import defaultdict

        from ..posttrain.pairs import whole_reply_pairs
        every = whole_reply_pairs(input_file(args.pairs))
        pairs = [p for p in every if model.pair_fits(p)]
        if not pairs:
            raise NumgptError(f"--pairs {args.pairs}: every pair is longer than the model's context "
                              f"({model.classifier.config.n_positions} tokens)")
        rewards = model.score_pairs(pairs)
        m = pair_metrics(rewards)
        left_out = f" ({len(every) - len(pairs)} longer than the model's context left out)" if len(pairs) < len(every) \
            else ""
        print(f"{len(pairs)} pair{'' if len(pairs) == 1 else 's'}{left_out}: pairwise accuracy {m['accuracy']:.4f}, mean margin {m['margin']:.4f}, "
              f"loss {m['loss']:.4f}")
        by_family = defaultdict(list)
        for pair, r in zip(pairs, rewards):
            if "family" in pair:
                by_family[str(pair["family"])].append(r)
        for family, rs in sorted(by_family.items()):
            print(f"  {family}: accuracy {pair_metrics(np.asarray(rs))['accuracy']:.4f} ({len(rs)} pair{'' if len(rs) == 1 else 's'})")
        return 0
    prompt = ([{"role": "system", "content": args.system}] if args.system is not None else []) + \
        [{"role": "user", "content": args.prompt}]
    rewards = model.score([[*prompt, {"role": "assistant", "content": reply}] for reply in args.reply])
    for reward, reply in zip(rewards, args.reply):
        print(f"{reward:.4f}\t{reply}")
    return 0

