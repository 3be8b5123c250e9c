"""`numgpt prepare`, `numgpt train` and `numgpt plot`: text -> token files -> a trained GPT-2 -> loss curves.

Only this module reads flags, prints, installs the progress bar, and reads the environment (for the
Hugging Face cache of `--init gpt2`); the work is in numgpt.training (data, loop, state).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

from ..config import PRESETS, GPTConfig
from ..errors import NumgptError

PREPARE_EXAMPLES = """\
examples:
  numgpt prepare input.txt --out data/shakespeare                 GPT-2's tokenizer
  numgpt prepare input.txt --out data/shakespeare_char --vocab-size 256   byte-level (characters of ASCII)
  numgpt prepare a.txt b.txt --out data/mine --tokenizer my_tok    a tokenizer folder (vocab.json + merges.txt)
"""

TRAIN_EXAMPLES = """\
examples:
  numgpt train data/shakespeare_char --out runs/char                     nanoGPT's CPU shakespeare_char run
  numgpt train data/shakespeare_char --out runs/char --max-iters 4000 --resume   continue a run
  numgpt train data/shakespeare --init gpt2 --out runs/ft --lr 3e-5 --max-iters 200   fine-tune GPT-2
  numgpt generate --model runs/char/best "ROMEO:"                       sample from the best checkpoint

Ctrl-C saves RUN/latest and exits; --resume continues bit for bit where it stopped (with the run's
recorded --threads). Each batch's rows are split over --threads threads (default: all cores), each with
single-threaded BLAS: see BENCHMARKS.md, Training.
"""


def register(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize text files into train/val token files for training",
                       description="Tokenize text files into DIR/train.bin and DIR/val.bin (first 90% of the "
                       "characters train, last 10% validate), with the tokenizer and a meta.json beside them.",
                       epilog=PREPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="TEXT_FILE", help="UTF-8 text files, joined in order")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="the data folder to write")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", metavar="DIR", help="a tokenizer or model folder (default: GPT-2's)")
    tok.add_argument("--vocab-size", type=int, metavar="N",
                     help="train a new byte-level BPE of N tokens on the text (256 = bytes only)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of characters for validation (0.1)")
    p.set_defaults(run=run_prepare)

    t = sub.add_parser("train", help="train (or fine-tune) a GPT-2 on prepared data",
                       description="Train a GPT-2 with hand-written backpropagation and AdamW on a folder made "
                       "by `numgpt prepare`. Defaults are nanoGPT's CPU shakespeare_char run.",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("data", metavar="DATA_DIR", help="a folder made by `numgpt prepare`")
    t.add_argument("--out", "-o", default="out", metavar="RUN_DIR", help="where checkpoints and the log go (out)")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/latest")
    t.add_argument("--init", metavar="MODEL", help="fine-tune from a GPT-2 folder or a cached model name")
    m = t.add_argument_group("model (from scratch)")
    m.add_argument("--preset", choices=sorted(PRESETS), help="a model shape from numgpt's presets")
    m.add_argument("--n-layer", type=int, help="transformer blocks (4)")
    m.add_argument("--n-head", type=int, help="attention heads (4)")
    m.add_argument("--n-embd", type=int, help="channels (128)")
    o = t.add_argument_group("training")
    o.add_argument("--block-size", type=int, help="context length of the training windows (64)")
    o.add_argument("--batch-size", type=int, help="windows per micro-batch (12)")
    o.add_argument("--grad-accum", type=int, help="micro-batches per update (1)")
    o.add_argument("--max-iters", type=int, help="optimizer updates in all (2000)")
    o.add_argument("--lr", type=float, help="peak learning rate (1e-3)")
    o.add_argument("--min-lr", type=float, help="learning-rate floor of the cosine (1e-4)")
    o.add_argument("--warmup-iters", type=int, help="linear warmup steps (100)")
    o.add_argument("--lr-decay-iters", type=int, help="step where the cosine reaches --min-lr (= --max-iters)")
    o.add_argument("--weight-decay", type=float, help="AdamW decoupled weight decay on matrices (0.1)")
    o.add_argument("--no-decay-embeddings", action="store_true", help="no weight decay on wte/wpe")
    o.add_argument("--beta1", type=float, help="Adam beta1 (0.9)")
    o.add_argument("--beta2", type=float, help="Adam beta2 (0.99)")
    o.add_argument("--grad-clip", type=float, help="clip the gradients' global norm to this, 0 = off (1.0)")
    o.add_argument("--dropout", type=float, help="GPT-2 dropout probability (0)")
    o.add_argument("--eval-interval", type=int, help="evaluate and save every N steps (250)")
    o.add_argument("--eval-iters", type=int, help="batches per loss estimate (20)")
    o.add_argument("--seed", type=int, help="seed of initialisation, batches and dropout (1337)")
    o.add_argument("--threads", type=int, help="split each batch's rows over N threads (all cores; "
                   "recorded in the run: float32 sums, hence losses, depend on it; each thread past the "
                   "first keeps its own gradient copy, 4 bytes per parameter)")
    t.set_defaults(run=run_train)

    q = sub.add_parser("plot", help="draw a training run's loss curves to a PNG",
                       description="Plot train and validation loss of RUN_DIR/log.jsonl (needs matplotlib: "
                       "pip install 'numgpt[plot]').")
    q.add_argument("run_dir", metavar="RUN_DIR")
    q.add_argument("--out", "-o", metavar="PNG", help="image file (RUN_DIR/loss.png)")
    q.set_defaults(run=run_plot)


# ---------------------------------------------------------------- prepare

def run_prepare(args) -> int:
    from ..training.data import prepare
    from ..tokenizer import Tokenizer

    texts = [read_text(f) for f in args.files]
    if args.vocab_size is not None:
        tokenizer, source = train_tokenizer("".join(texts), args.vocab_size), f"trained:{args.vocab_size}"
    elif args.tokenizer:
        tokenizer, source = Tokenizer.load(args.tokenizer), str(args.tokenizer)
    else:
        tokenizer, source = Tokenizer.gpt2(), "gpt2"
    meta = prepare(texts, args.out, tokenizer, val_fraction=args.val_fraction, tokenizer_source=source,
                   sources=[str(f) for f in args.files])
    s = meta["splits"]
    print(f"{args.out}: vocabulary {meta['vocab_size']} ({source}), {meta['dtype'][1:]} tokens; "
          f"train {s['train']['tokens']:,} tokens ({s['train']['chars']:,} chars), "
          f"val {s['val']['tokens']:,} tokens ({s['val']['chars']:,} chars)")
    return 0


def read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise NumgptError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None
    except IsADirectoryError:
        raise NumgptError(f"{path}: is a folder; pass text files") from None


def train_tokenizer(text: str, vocab_size: int):
    """A new byte-level BPE vocabulary trained on the text (tokenizer/train.py)."""
    try:
        from .. import train_bpe
    except ImportError:
        raise NumgptError("this numgpt has no BPE trainer yet; use GPT-2's tokenizer or --tokenizer DIR") from None
    return train_bpe(text, vocab_size=vocab_size, progress=True)


# ---------------------------------------------------------------- train

def run_train(args) -> int:
    from ..formats import hf_cache_dir, load_checkpoint, load_tokenizer, resolve_model
    from ..training.data import load_dataset, tokenizer_fingerprint
    from ..params import count_params, init_params
    from ..training.loop import BEST, LATEST, TrainConfig, train
    from ..training.state import load_train_checkpoint, new_state
    import numpy as np

    data = load_dataset(args.data)
    run = Path(args.out)
    if args.resume and args.init:
        raise NumgptError("--resume continues RUN_DIR/latest; --init starts a new run: pass only one")
    if args.resume:
        config, state, saved = load_train_checkpoint(run / LATEST)
        _refuse_shape_flags(args, config, "(on --resume the shape comes from the checkpoint)")
        tc = train_config_from_args(args, TrainConfig.from_dict(saved), data_dir=args.data)
        what = f"resuming {run / LATEST} at step {state.step}"
    else:
        if (run / LATEST).exists():
            raise NumgptError(f"{run} already holds a training run; continue it with --resume, or pass "
                              "another --out (or delete that folder) to start again")
        tc = train_config_from_args(args, TrainConfig(threads=default_threads()), data_dir=args.data)
        if args.init:
            folder = resolve_model(args.init, cache_dir=hf_cache_dir(os.environ))
            config, params = load_checkpoint(folder)
            _refuse_shape_flags(args, config, "(with --init the shape comes from MODEL)")
            if tokenizer_fingerprint(load_tokenizer(folder, config)) != data.meta.get("tokenizer_sha256"):
                raise NumgptError(f"{args.data} was prepared with another tokenizer than {args.init}'s; run "
                                  f"`numgpt prepare TEXT_FILE --tokenizer {folder} --out DIR` and train on DIR")
            tc = dataclasses.replace(tc, init=str(args.init))
            what = f"fine-tuning {folder}"
        else:
            config = model_config_from_args(args, data, tc.block_size)
            params = init_params(config, np.random.default_rng(tc.seed))
            what = "training from scratch"
        state = new_state(params, seed=tc.seed)
    print(f"{what}: {count_params(config) / 1e6:.2f}M parameters (n_layer {config.n_layer}, n_head "
          f"{config.n_head}, n_embd {config.n_embd}, vocab {config.vocab_size}); "
          f"{tc.batch_size * tc.block_size * tc.grad_accum:,} tokens per step", file=sys.stderr)
    result = _train_with_progress(state, config, tc, data, run, train)
    if result.interrupted:
        print(f"interrupted at step {state.step}: saved {run / LATEST}; continue with "
              f"`numgpt train {args.data} --out {run} --resume`", file=sys.stderr)
        return 130
    ev = result.last_eval
    if ev is not None:
        print(f"done: step {state.step}, val loss {ev['val_loss']:.4f} ({ev['val_bpb']:.3f} bits/byte); "
              f"best val loss {state.best_val_loss:.4f} in {run / BEST}, last in {run / LATEST}")
    return 0


def _train_with_progress(state, config, tc, data, run, train):
    from tqdm import tqdm

    bar = tqdm(total=tc.max_iters, initial=state.step, unit="step", dynamic_ncols=True, file=sys.stderr,
               mininterval=0.2 if sys.stderr.isatty() else 30)   # a log file gets a line every 30 s

    def on_event(ev):
        if ev["type"] == "step":
            bar.update(1)
            bar.set_postfix_str(f"loss {ev['loss']:.4f}, lr {ev['lr']:.2e}, {ev['tokens_per_s']:,.0f} tok/s",
                                refresh=False)
        elif ev["type"] == "eval":
            bar.write(f"step {ev['step']}: train loss {ev['train_loss']:.4f}, val loss {ev['val_loss']:.4f}, "
                      f"{ev['val_bpb']:.3f} bits/byte, {ev['val_bpc']:.3f} bits/char"
                      + (" (best, saved)" if ev["best"] else ""), file=sys.stderr)
    try:
        return train(state, config, tc, data, run, on_event=on_event)
    finally:
        bar.close()


def default_threads() -> int:
    """--threads when not given: NUMGPT_NUM_THREADS if set to a whole number >= 1, else all usable cores."""
    from ..threads import thread_count, threads_from_env
    return threads_from_env(os.environ) or thread_count()


SHAPE_FLAGS = ("preset", "n_layer", "n_head", "n_embd")


def _refuse_shape_flags(args, config: GPTConfig, why: str) -> None:
    """Size flags that contradict the model being continued are an error (the same values are fine)."""
    shape = lambda c: (c.n_layer, c.n_head, c.n_embd)  # noqa: E731
    for flag in SHAPE_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        same = shape(PRESETS[value]) == shape(config) if flag == "preset" else value == getattr(config, flag)
        if not same:
            raise NumgptError(f"--{flag.replace('_', '-')} {value} differs from the model's shape {why}; "
                              "leave the size flags out")


def model_config_from_args(args, data, block_size: int) -> GPTConfig:
    """The model to train from scratch: a preset or the size flags (default 4 layers, 4 heads, 128 channels),
    the data's vocabulary, and n_positions = the block size unless the preset has more."""
    base = PRESETS[args.preset] if args.preset else GPTConfig(n_layer=4, n_head=4, n_embd=128, n_positions=block_size)
    eos = data.meta.get("eot_id")   # None for a vocabulary without <|endoftext|>
    try:
        return dataclasses.replace(
            base, vocab_size=data.vocab_size, n_positions=max(base.n_positions, block_size) if not args.preset
            else base.n_positions,
            n_layer=args.n_layer or base.n_layer, n_head=args.n_head or base.n_head,
            n_embd=args.n_embd or base.n_embd, bos_token_id=eos, eos_token_id=eos)
    except ValueError as e:
        raise NumgptError(f"bad model shape: {e}") from None


TRAIN_FLAGS = {  # flag attribute -> TrainConfig field
    "batch_size": "batch_size", "block_size": "block_size", "grad_accum": "grad_accum", "max_iters": "max_iters",
    "dropout": "dropout", "eval_interval": "eval_interval", "eval_iters": "eval_iters", "seed": "seed",
    "threads": "threads"}
OPTIM_FLAGS = {  # flag attribute -> AdamWConfig field
    "lr": "lr", "min_lr": "min_lr", "warmup_iters": "warmup_iters", "lr_decay_iters": "decay_iters",
    "weight_decay": "weight_decay", "beta1": "beta1", "beta2": "beta2", "grad_clip": "grad_clip"}


def train_config_from_args(args, base, *, data_dir: str):
    """`base` with every flag the user gave; the cosine ends at --max-iters unless --lr-decay-iters says."""
    from ..training.loop import TrainConfig  # noqa: F401 -- base is a TrainConfig

    changes = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    optim = {field: getattr(args, flag) for flag, field in OPTIM_FLAGS.items() if getattr(args, flag) is not None}
    if args.no_decay_embeddings:
        optim["decay_embeddings"] = False
    if "decay_iters" not in optim and "max_iters" in changes and base.optim.decay_iters == base.max_iters:
        optim["decay_iters"] = changes["max_iters"]
    if args.lr is not None and args.lr <= 0:
        raise NumgptError(f"--lr must be positive, got {args.lr}")
    if args.lr is not None and args.min_lr is None and base.optim.min_lr > args.lr:
        optim["min_lr"] = args.lr / 10
    try:
        return dataclasses.replace(base, **changes, data_dir=str(data_dir),
                                   optim=dataclasses.replace(base.optim, **optim))
    except ValueError as e:
        raise NumgptError(f"bad training option: {e}") from None


# ---------------------------------------------------------------- plot

def run_plot(args) -> int:
    from ..training.loop import read_log

    events = read_log(args.run_dir)
    out = Path(args.out) if args.out else Path(args.run_dir) / "loss.png"
    plot_losses(events, out, title=str(args.run_dir))
    print(out)
    return 0


def plot_losses(events, out: Path, *, title: str) -> None:
    """Train loss per step (light), its running mean, and the evaluated train/val losses, to a PNG."""
    import numpy as np

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NumgptError("numgpt plot needs matplotlib: pip install 'numgpt[plot]'") from None
    steps = [(e["step"], e["loss"]) for e in events if e.get("type") == "step" and math.isfinite(e["loss"])]
    evals = [e for e in events if e.get("type") == "eval"]
    if not steps and not evals:
        raise NumgptError(f"{title}: the log has no steps yet; train first")
    fig, ax = plt.subplots(figsize=(8, 5))
    if steps:
        xs, ys = zip(*steps)
        ax.plot(xs, ys, color="tab:blue", alpha=0.25, linewidth=0.8, label="train loss (per step)")
        k = max(1, len(ys) // 50)
        c = np.concatenate([[0.0], np.cumsum(ys)])
        n = np.minimum(np.arange(1, len(ys) + 1), k)                    # trailing window, shorter at the start
        smooth = (c[1:] - c[np.arange(1, len(ys) + 1) - n]) / n
        ax.plot(xs, smooth, color="tab:blue", linewidth=1.2, label=f"train loss (mean of {k})")
    if evals:
        ax.plot([e["step"] for e in evals], [e["train_loss"] for e in evals], "o-", color="tab:green",
                label="train loss (eval)")
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", color="tab:red",
                label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
