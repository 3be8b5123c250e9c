"""`numgpt rl`: RL on verifiable rewards (GRPO) from a chat model, on synthetic tasks with exact answers.

The work is numgpt.posttrain.rl (sampling, rewards, setup_rl) and grpo.py (the loss), trained by
numgpt.training's loop (checkpoints, resume, lock, threads, mpiexec); this module reads the flags and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import NumgptError
from ..posttrain.synth import REPLY_TOKENS
from ..threads import THREADS_ENV
from ..training.loop import BEST, LATEST, TrainConfig
from ..training.optim import AdamWConfig, ConfigFieldError
from .options import add_decoding_flags, decoding_kwargs, flag_vocabulary
from .train_commands import defaults_text

RL_TRAIN = {"max_iters": 100, "eval_interval": 25, "eval_iters": 2}
RL_OPTIM = {"lr": 5e-5, "min_lr": 5e-6, "warmup_iters": 0, "weight_decay": 0.0}
RL_FLAGS = {"group": "group", "clip": "clip", "kl": "kl", "prompts_per_step": "prompts_per_step",
            "updates": "updates", "format_bonus": "format_bonus", "reward_model": "reward_model"}
DECODING = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")
TC, OPT = TrainConfig(), AdamWConfig()

EXAMPLES = f"""\
examples:
  numgpt data synth --n 2000 -o tasks.jsonl
  numgpt rl tasks.jsonl --init runs/sft --out runs/rl                     8 prompts x 8 answers per step
  numgpt rl tasks.jsonl --init runs/sft --out runs/rl --group 16 --kl 0 --max-iters 300
  numgpt rl tasks.jsonl --init runs/sft --out runs/rl --eval-tasks heldout.jsonl --eval-interval 10
  numgpt rl tasks.jsonl --init runs/sft --out runs/rm-rl --reward-model runs/rm     a reward model's score
  numgpt rl tasks.jsonl --out runs/rl --resume --max-iters 200            continue (bit for bit)
  mpiexec -n 2 numgpt rl tasks.jsonl --init runs/sft --out runs/mpi --threads 1   the bits of --threads 2

Each step: --prompts-per-step prompts, --group answers sampled for each (numgpt's KV-cache decoding, until
<|end|> or --max-new-tokens), rewarded 1 when synth's checker finds the right answer (+ --format-bonus when
the answer ends with <|end|>), advantages (r - mean) / (std + 1e-4) within each group, and GRPO's loss:
PPO's clipped ratio (--clip) and the k3 KL penalty to the init model (--kl), normalised per token within
each group. --updates N trains N optimizer steps on each sampled batch. Logged per step: reward, accuracy,
KL, answer length, sampling tokens/s, gradient seconds; per evaluation: pass@1 (greedy) on held-out tasks.
Defaults differ from numgpt train's: {defaults_text(RL_TRAIN | RL_OPTIM)}.
Ctrl-C or SIGTERM saves RUN_DIR/latest; --resume continues bit for bit (same --threads).
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to `numgpt`'s parser."""
    p = sub.add_parser("rl", help="RL on verifiable rewards (GRPO) from a chat model, on synthetic tasks",
                       description="Reinforce a chat model's right answers: sample a group of answers per prompt, "
                       "reward the ones synth's checker finds right, and train with GRPO's clipped, KL-penalised "
                       "policy gradient.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tasks", metavar="TASKS", help="synthetic tasks, JSONL (`numgpt data synth`)")
    p.add_argument("--init", metavar="MODEL", help="the chat model to train (an SFT run or model folder)")
    p.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="RUN_DIR", help="the run folder")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/latest (TASKS must be the same file)")
    held = p.add_mutually_exclusive_group()         # one way to hold tasks out: a file, or a share of TASKS
    held.add_argument("--eval-tasks", metavar="FILE", help="held-out tasks for pass@1 (default: --val-fraction of TASKS)")
    held.add_argument("--val-fraction", type=float, default=0.1, metavar="X",
                   help="share of TASKS held out for pass@1 when no --eval-tasks is given (0.1)")
    r = p.add_argument_group("RL (GRPO)")
    r.add_argument("--group", type=int, metavar="G", help="answers sampled per prompt, >= 2 (8)")
    r.add_argument("--prompts-per-step", type=int, metavar="P", help="prompts per step (8)")
    r.add_argument("--clip", type=float, metavar="EPS", help="PPO's ratio clip, > 0 (0.2)")
    r.add_argument("--kl", type=float, metavar="BETA", help="KL penalty to the init model, >= 0 (0.02)")
    r.add_argument("--updates", type=int, metavar="N", help="optimizer steps per sampled batch (1)")
    r.add_argument("--format-bonus", type=float, metavar="X", help="reward added when an answer ends with <|end|> (0)")
    r.add_argument("--reward-model", metavar="RM", help="reward the answers with this reward model's score (a "
                   "`numgpt reward train` run) instead of the exact checker")
    add_decoding_flags(p, only=DECODING, title="sampling the answers",
                       shown_defaults={"max_new_tokens": str(REPLY_TOKENS), "seed": f"{TC.seed}: seeds the split, prompts, samples"})
    o = p.add_argument_group("training (as numgpt train)")
    o.add_argument("--max-iters", type=int, metavar="N", help=f"optimizer updates ({RL_TRAIN['max_iters']})")
    o.add_argument("--lr", type=float, metavar="X", help=f"peak learning rate ({RL_OPTIM['lr']})")
    o.add_argument("--min-lr", type=float, metavar="X", help="learning-rate floor (--lr / 10)")
    o.add_argument("--warmup-iters", type=int, metavar="N", help=f"linear warmup ({RL_OPTIM['warmup_iters']})")
    o.add_argument("--lr-decay-iters", type=int, metavar="N", help="where the cosine reaches --min-lr (= --max-iters)")
    o.add_argument("--weight-decay", type=float, metavar="X", help=f"AdamW weight decay ({RL_OPTIM['weight_decay']})")
    o.add_argument("--grad-clip", type=float, metavar="X", help=f"gradient norm clip, 0 = off ({OPT.grad_clip})")
    o.add_argument("--eval-interval", type=int, metavar="N", help=f"evaluate and save every N steps "
                   f"({RL_TRAIN['eval_interval']})")
    o.add_argument("--eval-iters", type=int, metavar="N", help=f"batches per reference-answer loss estimate "
                   f"({RL_TRAIN['eval_iters']})")
    o.add_argument("--threads", type=int, metavar="N", help=f"split each batch's rows over N threads (default: "
                   f"{THREADS_ENV} if set, else all cores; recorded in the run)")
    p.set_defaults(run=run_rl, zero=None, no_overlap=False, no_decay_embeddings=False, beta1=None, beta2=None,
                   batch_size=None, block_size=None, grad_accum=None, dropout=None, flag_names=rl_flag_names())


def rl_flag_names() -> dict[str, str]:
    """The Python names setup_rl's messages use, said as this command's flags."""
    from .train_commands import FLAG_NAMES
    kept = ("max_iters", "lr=", "min_lr", "warmup_iters", "weight_decay", "grad_clip", "eval_interval", "eval_iters",
            "threads")
    names = {k: v for k, v in FLAG_NAMES.items() if k in kept}
    return {**names, **flag_vocabulary(DECODING), **{k: "--" + k.replace("_", "-") for k in RL_FLAGS},
            "init=": "--init", "resume=True": "--resume", "eval_tasks=": "--eval-tasks",
            "val_fraction": "--val-fraction", "val_file=": "--eval-tasks FILE"}


def run_rl(args) -> int:
    """`numgpt rl`, as one process or one rank of `mpiexec -n P numgpt rl ...` (a failing rank ends the job)."""
    from .train_commands import on_every_rank
    return on_every_rank(_run_rl, args)


def _run_rl(args, comm) -> int:
    from ..formats import hf_cache_dir
    from ..posttrain.rl import setup_rl
    from .train_commands import check_run_folder, default_threads, flag_error, local_ranks, options_from_args

    if args.threads is not None and args.threads < 1:
        raise NumgptError(f"--threads must be >= 1, got {args.threads}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:     # (generate's rule is >= 0)
        raise NumgptError(f"--max-new-tokens must be a whole number >= 1, got {args.max_new_tokens}")
    run = check_run_folder(Path(args.out))
    decoding = decoding_kwargs(args)
    seed = decoding.pop("seed", None)
    rl = {k: getattr(args, flag) for flag, k in RL_FLAGS.items() if getattr(args, flag) is not None}
    for name in ("max_new_tokens", "temperature"):
        if name in decoding:
            rl[name] = decoding.pop(name)
    options = _options(args, options_from_args, new=not args.resume)
    try:
        setup = setup_rl(args.tasks, run, init=args.init, options=options, resume=args.resume,
                         eval_tasks=args.eval_tasks, val_fraction=args.val_fraction,
                         seed=seed if seed is not None else TC.seed, decoding=decoding or None,
                         cache_dir=hf_cache_dir(os.environ), comm=comm, ranks_here=local_ranks(comm.size),
                         default_threads=default_threads(comm.size), **rl)
    except ConfigFieldError as e:
        raise flag_error(e, options) from None
    if comm.rank != 0:                                 # rank 0 alone prints
        result = setup.run.train(comm=comm)
        return 128 + result.signal if result.interrupted else 0
    return _train(args, setup, comm)


def _options(args, options_from_args, *, new: bool) -> dict:
    """The training flags given, over RL's defaults for a new run (a resumed run keeps its saved config)."""
    from .train_commands import over_defaults
    given = options_from_args(args)                    # --seed: the run's rng (prompts, samples) and the split
    if not new:
        given.pop("seed", None)                        # a resumed run keeps its rng
        return given
    return over_defaults(RL_TRAIN, RL_OPTIM, given)


def _train(args, setup, comm) -> int:
    from ..params import count_params
    from .train_commands import report_stop
    run, s = setup.run, setup.settings
    ranks = f" on {comm.size} ranks x {run.tc.threads} threads" if comm.size > 1 else ""
    print(f"RL (GRPO), {run.description}{ranks}: {count_params(run.config) / 1e6:.2f}M parameters; "
          f"{setup.tasks} training and {setup.eval_tasks} held-out tasks; per step {s['prompts_per_step']} prompts x "
          f"{s['group']} answers of at most {s['max_new_tokens']} tokens (temperature {s['temperature']}), clip "
          f"{s['clip']}, KL {s['kl']}, {s['updates']} update{'s' if s['updates'] > 1 else ''} per batch",
          file=sys.stderr)
    result = _train_with_progress(run, comm)
    folder, state = run.folder, run.state
    if result.interrupted:
        return report_stop(result, f"rl {args.tasks}", folder, state.step, run.tc, comm.size)
    ev = result.last_eval
    if ev is not None:
        print(f"done: step {state.step}, held-out pass@1 {ev['pass@1']:.1%}; best {1 - state.best_val_loss:.1%} in "
              f"{folder / BEST}, last in {folder / LATEST}")
    return 0


def _train_with_progress(run, comm, shorter: str = "--max-iters N"):
    from .progress import step_bar
    from .train_commands import BAR_FORMAT, TimeEstimate

    tc = run.tc
    bar = step_bar(tc.max_iters, run.state.step, BAR_FORMAT)
    eta = TimeEstimate(tc, run.state.step, shorter)

    def on_event(ev):
        if ev["type"] == "step":
            bar.update(1)
            speed = f", sampling {ev['sample_tokens_per_s']:,.0f} tok/s" if "sample_tokens_per_s" in ev else ""
            bar.set_postfix_str(f"reward {ev['reward']:.3f}, KL {ev['kl']:.4f}, {ev['answer_tokens']:.1f} tokens"
                                f"{speed}, grad {ev['grad_seconds']:.2f} s", refresh=False)
            line = eta.step(ev)
            if line:
                bar.write(line, file=sys.stderr)
        elif ev["type"] == "eval":
            eta.evaluated(ev)
            families = ", ".join(f"{k.split('/')[1]} {v:.0%}" for k, v in ev.items() if k.startswith("pass@1/"))
            bar.write(f"step {ev['step']}: held-out pass@1 {ev['pass@1']:.1%} ({families}), train pass@1 "
                      f"{1 - ev['train_loss']:.1%}; reference answers' loss train {ev['ref_train_loss']:.4f}, held-out "
                      f"{ev['ref_val_loss']:.4f}" + (" (best, saved)" if ev["best"] else ""), file=sys.stderr)
    try:
        return run.train(on_event=on_event, comm=comm)
    finally:
        bar.close()
