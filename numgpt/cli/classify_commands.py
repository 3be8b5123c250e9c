"""`numgpt classify train|evaluate|predict` (a GPT-2 sequence classifier) and `numgpt data fortunes`.

Only this module reads flags and prints; the work is in numgpt.posttrain.classify (the model, its
training, the metrics) and numgpt.posttrain.classdata (the files).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from ..errors import NumgptError
from .groups import command_group, subcommand
from .options import name_list
from .paths import input_file, output_file, output_folder, png_file, read_text
from .train_commands import add_training_flags

HEAD_LR, BODY_LR, LORA_LR = 1e-3, 5e-5, 3e-4   # default peak lr: a new head alone, pre-trained weights, LoRA
CLASSIFY_TRAIN = {"batch_size": 16, "grad_accum": 1, "weight_decay": 0.1, "grad_clip": 1.0, "dropout": 0.0,
                  "seed": 1337, "threads": 0}       # classify train's defaults (the others: see _train_config)
EPOCHS = 3.0   # classify train's passes over the training texts unless --epochs or --max-iters says otherwise
TEST_FRACTION, TEST_SEED = 0.2, 0   # data fortunes --test: the share held out, and the draw's seed
CLASSIFY_FLAGS = ("max_iters", "batch_size", "grad_accum", "lr", "warmup_iters", "weight_decay", "grad_clip",
                  "dropout", "eval_interval", "seed", "threads")    # numgpt train's flags that classify train has

CLASSIFY_EXAMPLES = """\
examples:
  numgpt classify train sms.csv --init gpt2 --out runs/spam --train last-1 --class-weights balanced
  numgpt classify evaluate test.csv --model runs/spam -o confusion.png
  numgpt classify predict "WINNER! Claim your prize now" "see you at 6?" --model runs/spam

DATA is CSV (a header row) or JSON lines with a text and a label per record (--text-field, --label-field;
default 'text' and 'label'). Labels are sorted by name (whole-number labels by value): label i is the
head's output i (id2label). The model is GPT-2 with a linear head over the last real token's final
hidden state, saved as a GPT2ForSequenceClassification folder (RUN/best, RUN/latest) that transformers
loads.
"""


def register(sub) -> None:
    """Add `classify train|evaluate|predict` to the `numgpt` subcommands."""
    s = command_group(sub, "classify", help="fine-tune GPT-2 as a text classifier; evaluate it; predict",
                      description="Text classification with a GPT-2: a linear head over the last token's "
                      "hidden state (transformers' GPT2ForSequenceClassification).", epilog=CLASSIFY_EXAMPLES)
    _register_train(s)
    _register_evaluate(s)
    _register_predict(s)


def _fields(p: argparse.ArgumentParser) -> None:
    from ..posttrain.classdata import LABEL_FIELD, TEXT_FIELD
    p.add_argument("--text-field", default=TEXT_FIELD, metavar="NAME", help=f"the text column/field ({TEXT_FIELD})")
    p.add_argument("--label-field", default=LABEL_FIELD, metavar="NAME",
                   help=f"the label column/field ({LABEL_FIELD})")


def _register_train(sub) -> None:
    from ..posttrain.classify import MAX_TOKENS, TRAIN_CHOICES
    p = subcommand(sub, "train", help="fine-tune a GPT-2 with a classification head on labelled texts",
                   description="Fine-tune a GPT-2 with a new classification head on labelled texts (CSV or "
                   "JSONL); writes RUN/best (lowest validation loss) and RUN/latest.", epilog=CLASSIFY_EXAMPLES)
    p.add_argument("data", metavar="DATA", help="a .csv or .jsonl file of texts and labels")
    p.add_argument("--init", required=True, metavar="MODEL", help="the pre-trained model: a GPT-2 folder, "
                   "a run folder (its best/, else latest/), 'builtin', 'chat', or a cached hub name such as gpt2")
    p.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="RUN", help="the folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="write into RUN even if it holds files")
    _fields(p)
    held = p.add_mutually_exclusive_group()         # one way to hold records out: a file, or a share of DATA
    held.add_argument("--val", metavar="FILE", help="validation records (default: --val-fraction of DATA held out)")
    held.add_argument("--val-fraction", type=float, default=0.1, metavar="X",
                   help="share of DATA held out for validation when no --val is given; 0 = none (0.1)")
    p.add_argument("--train", default="head", metavar="WHAT", help=f"what trains: {TRAIN_CHOICES} (head)")
    p.add_argument("--class-weights", choices=["none", "balanced"], default="none",
                   help="weigh each class's loss by n / (classes x its count), for unbalanced data (none)")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS, metavar="N",
                   help=f"texts are cut to their first N tokens (at most the model's context) ({MAX_TOKENS})")
    o = p.add_argument_group("training")
    o.add_argument("--epochs", type=float, metavar="E", help="passes over the training texts, "
                   f"as steps of random batches ({EPOCHS:g})")
    add_training_flags(o, {**CLASSIFY_TRAIN, "max_iters": "instead of --epochs", "dropout": 0,
                           "lr": f"{HEAD_LR} for --train head, {LORA_LR} with --lora-rank, else {BODY_LR}",
                           "warmup_iters": "a tenth of the steps", "eval_interval": "a fifth of the steps"},
                       only=CLASSIFY_FLAGS, helps={
                           "batch_size": "texts per micro-batch ({default})",
                           "dropout": "GPT-2 dropout in the trained body ({default})",
                           "eval_interval": "evaluate on the validation texts every N steps, and at the end "
                                            "({default})",
                           "seed": "seed of the head, split and batches ({default})",
                           "threads": "split each batch over N threads (0, the default: all cores)"})
    p.set_defaults(**CLASSIFY_TRAIN)                   # the flags' values when not given (run_train reads them)
    from ..posttrain.lora import add_lora_flags
    add_lora_flags(p, saved="merged into the model it saves (RUN/best, RUN/latest)")
    p.set_defaults(run=run_train, flag_names={"lr=": "--lr"})   # training.loop's word, as the flag


def _register_evaluate(sub) -> None:
    p = subcommand(sub, "evaluate", help="accuracy, macro-F1, per-class precision/recall, confusion matrix",
                   description="Evaluate a classifier on labelled texts: accuracy, macro-F1, per-class "
                   "precision, recall and F1, and the confusion matrix.", epilog=CLASSIFY_EXAMPLES)
    p.add_argument("data", metavar="DATA", help="a .csv or .jsonl file of texts and labels")
    p.add_argument("--model", required=True, metavar="RUN", help="a `numgpt classify train` run or classifier folder")
    _fields(p)
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="texts per forward (16)")
    p.add_argument("-o", "--output", "--out", dest="output", metavar="PNG", help="also draw the confusion matrix to this image "
                   "(needs matplotlib: pip install 'numgpt[plot]')")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(run=run_evaluate)


def _register_predict(sub) -> None:
    p = subcommand(sub, "predict", help="the label of each text, with its probability",
                   description="Classify texts: one line per text, tab-separated: the label, its probability, "
                               "the text (a tab, newline or backslash in it written as \\t, \\n, \\\\); --json: "
                               "one JSON object per line instead.",
                   epilog=CLASSIFY_EXAMPLES)
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify; - reads them from stdin, one a line")
    p.add_argument("--model", required=True, metavar="RUN", help="a `numgpt classify train` run or classifier folder")
    p.add_argument("--all", action="store_true", help="print every label's probability")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per text: {"text", "label", "probability", "probabilities": {label: p}}')
    p.set_defaults(run=run_predict)


# ---------------------------------------------------------------- train

def run_train(args) -> int:
    from ..formats import hf_cache_dir, resolve_model
    from ..posttrain.classdata import label_names, read_labelled
    from ..posttrain.classify import split_examples, trainable_names
    import numpy as np

    from ..posttrain.lora import adapter_shapes, lora_from_args

    _check_positive(args, ("batch_size", "grad_accum", "max_tokens"))
    lora = lora_from_args(args, embedding=True)        # a bad --lora-* flag is refused before any work
    if lora is not None and args.train != "head":
        raise NumgptError(f"--lora-rank trains an adapter and the head, the model's weights frozen; --train "
                          f"{args.train} trains the weights themselves: pass one of them")
    if args.epochs is not None and args.max_iters is not None:
        raise NumgptError("give --epochs or --max-iters, not both: --max-iters counts the steps itself")
    args.epochs = EPOCHS if args.epochs is None else args.epochs
    if not 0 < args.epochs < 1e6:                      # NaN and inf fail this too
        raise NumgptError(f"--epochs must be a number > 0 (and below a million), got {args.epochs}")
    out = output_folder(args.out, flag="--out", force=args.force, what="run folder")
    foreign = [n for n in ("data", "init", "train_config.json", "log.jsonl") if (out / n).exists()]
    if foreign:                                         # --force replaces best/ and latest/ only: not a mix of runs
        raise NumgptError(f"--out {out}: holds another command's training run ({', '.join(foreign)}), which --force "
                          "would leave half replaced; pass another --out")
    records = read_labelled(input_file(args.data), text_field=args.text_field, label_field=args.label_field)
    labels = label_names(records, args.data)
    rng = np.random.default_rng(args.seed)
    if args.val:
        train = records
        val = read_labelled(input_file(args.val), text_field=args.text_field, label_field=args.label_field)
    else:
        train, val = split_examples(records, args.val_fraction, rng)
    folder = resolve_model(args.init, cache_dir=hf_cache_dir(os.environ))
    model = _start_from(folder, labels, rng, args.max_tokens)
    trainable_names(model.config, args.train)          # a bad --train is refused before the work
    tc = _train_config(args, len(train))
    trained = sum(int(np.prod(model.params[n].shape)) for n in trainable_names(model.config, args.train))
    if lora is not None:
        trained += sum(int(np.prod(shape)) for shape in adapter_shapes(model.config, lora).values())
    print(f"classifier of {len(labels)} labels ({', '.join(labels)}) on {folder}: {len(train)} train, {len(val)} "
          f"val texts; training {f'a rank-{lora.rank} LoRA adapter and the head' if lora else args.train} "
          f"({trained:,} parameters) for {tc.max_iters} step{'s' * (tc.max_iters != 1)} of "
          f"{tc.batch_size * tc.grad_accum} texts", file=sys.stderr)
    cut = model.encode([e.text for e in train])[1]
    if cut:
        print(f"note: {cut} training texts are longer than {model.max_tokens} tokens and were cut to their "
              "first tokens (--max-tokens)", file=sys.stderr)
    result = _train_with_progress(model, train, val, out, tc, args, lora)
    if result.interrupted:
        print(f"interrupted at step {result.steps}: saved {out / 'latest'} (a classifier that evaluate and predict "
              "load; classify train does not resume: run it again with --force to start over)", file=sys.stderr)
        return 130
    ev = result.last_eval
    if ev is not None:
        print(f"done: step {result.steps}, val loss {ev['loss']:.4f}, val accuracy {ev['accuracy']:.4f}, "
              f"macro-F1 {ev['macro_f1']:.4f}; best in {out / 'best'}, last in {out / 'latest'}")
    else:
        print(f"done: step {result.steps}; saved {out / 'latest'}")
    return 0


def _start_from(folder: Path, labels: list[str], rng, max_tokens: int):
    """The classifier to train: a language model with a new head, or a classifier of the same labels
    trained further (its head kept)."""
    from ..formats import load_checkpoint, load_tokenizer
    from ..formats.hf import CLASSIFIER_HEAD, weight_files
    from ..formats.safetensors import checked_header
    from ..posttrain.classify import load_classifier_folder, new_classifier

    if any(CLASSIFIER_HEAD in checked_header(f) for f in weight_files(folder)):
        model = load_classifier_folder(folder)
        if model.labels != labels:
            raise NumgptError(f"--init {folder} classifies {', '.join(model.labels)} but the data's labels are "
                              f"{', '.join(labels)}; start from its language model, or use data with its labels")
        return model
    config, params = load_checkpoint(folder)
    return new_classifier(config, params, load_tokenizer(folder, config), labels, rng=rng,
                          max_tokens=min(max_tokens, config.n_positions))


def _train_config(args, n_train: int):
    """The training loop's TrainConfig from the flags (block_size = --max-tokens); an option out of range
    is a one-line error naming its flag."""
    from ..training.loop import TrainConfig
    from ..training.optim import AdamWConfig, ConfigFieldError

    if args.max_iters is not None and args.max_iters < 1:     # (warmup and decay derive from it: named first)
        raise NumgptError(f"--max-iters must be >= 1, got {args.max_iters}")
    steps = args.max_iters if args.max_iters is not None else \
        max(1, math.ceil(args.epochs * n_train / (args.batch_size * args.grad_accum)))
    lr = args.lr if args.lr is not None else \
        LORA_LR if args.lora_rank is not None else HEAD_LR if args.train == "head" else BODY_LR
    warmup = args.warmup_iters if args.warmup_iters is not None else steps // 10
    interval = args.eval_interval if args.eval_interval is not None else max(1, steps // 5)
    flags = {"max_iters": "--max-iters", "lr": "--lr", "warmup_iters": "--warmup-iters", "decay_iters": "--max-iters",
             "weight_decay": "--weight-decay", "grad_clip": "--grad-clip", "dropout": "--dropout",
             "eval_interval": "--eval-interval", "threads": "--threads", "min_lr": "--lr"}
    try:
        optim = AdamWConfig(lr=lr, min_lr=lr / 10 if lr > 0 else 0.0, warmup_iters=warmup,
                            decay_iters=max(steps, 0), weight_decay=args.weight_decay, grad_clip=args.grad_clip)
        return TrainConfig(batch_size=args.batch_size, block_size=args.max_tokens, grad_accum=args.grad_accum,
                           max_iters=steps, dropout=args.dropout, eval_interval=interval, seed=args.seed,
                           optim=optim, threads=args.threads, init=str(args.init), data_dir=str(args.data))
    except ConfigFieldError as e:
        raise NumgptError(f"{flags.get(e.field, e.field)} {e.rule}, got {e.value!r}") from None


def _train_with_progress(model, train, val, out: Path, tc, args, lora):
    """train_classifier with a progress bar (steps) and a line per evaluation on stderr."""
    from ..posttrain.classify import train_classifier
    from .progress import progress_reporter

    update, close = progress_reporter(True, "step", "classify train")

    def on_event(event: dict) -> None:
        if event["type"] == "step":
            update(event["step"], tc.max_iters)
        elif event["type"] == "eval":
            print(f"step {event['step']}: val loss {event['loss']:.4f}, accuracy {event['accuracy']:.4f}, "
                  f"macro-F1 {event['macro_f1']:.4f}{' (best)' if event['best'] else ''}", file=sys.stderr)
    try:
        return train_classifier(model, train, val, out, tc=tc, trainable=args.train,
                                class_weights=None if args.class_weights == "none" else args.class_weights,
                                on_event=on_event, settings={"text_field": args.text_field,
                                                             "label_field": args.label_field}, lora=lora)
    finally:
        close()


# ---------------------------------------------------------------- evaluate, predict

def load_model(name: str):
    """The classifier of --model (a run folder means RUN/best, else RUN/latest)."""
    from ..formats import hf_cache_dir, resolve_model
    from ..posttrain.classify import load_classifier_folder

    model = load_classifier_folder(resolve_model(name, cache_dir=hf_cache_dir(os.environ)))
    if len(model.labels) < 2:                          # a reward model: one score, whose softmax is always 1
        raise NumgptError(f"--model {name}: a reward model (one score, no labels to choose between); score replies "
                          f"with `numgpt reward score {name} --prompt TEXT --reply TEXT`")
    return model


def run_evaluate(args) -> int:
    from ..posttrain.classdata import read_labelled
    from ..posttrain.classify import evaluate_tokens, label_ids

    _check_positive(args, ("batch_size",))
    png = png_file(args.output) if args.output else None
    model = load_model(args.model)
    records = read_labelled(input_file(args.data), text_field=args.text_field, label_field=args.label_field)
    truth = label_ids(records, model.labels, args.data)
    seqs, cut = model.encode([e.text for e in records])
    metrics = evaluate_tokens(model, seqs, truth, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({**metrics, "confusion": metrics["confusion"].tolist(), "labels": model.labels,
                          "n": len(records)}))
    else:
        print(format_metrics(metrics, model.labels, len(records), cut))
    if png is not None:
        plot_confusion(metrics["confusion"], model.labels, png)
        print(f"wrote {png}", file=sys.stderr)
    return 0


def format_metrics(m: dict, labels: list[str], n: int, cut: int) -> str:
    """The report evaluate prints: totals, a row per label, the confusion matrix (rows true, columns predicted)."""
    width = max(9, *(len(x) for x in labels))
    lines = [f"{n} texts{f' ({cut} cut to the max tokens)' if cut else ''}: accuracy {m['accuracy']:.4f}, "
             f"macro-F1 {m['macro_f1']:.4f}, loss {m['loss']:.4f}", "",
             f"{'label':<{width}}  precision  recall  f1      support"]
    for row in m["per_label"]:
        lines.append(f"{row['label']:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  "
                     f"{row['support']:7d}")
    col = max(8, *(len(x) for x in labels))            # whole labels over the columns, not cut
    lines += ["", "confusion matrix (rows: true label, columns: predicted)",
              " " * width + "  " + "  ".join(f"{x:>{col}}" for x in labels)]
    for name, row in zip(labels, m["confusion"]):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{int(c):{col}d}" for c in row))
    return "\n".join(lines)


def plot_confusion(confusion, labels: list[str], path: Path) -> None:
    """The confusion matrix as a PNG heatmap with its counts (matplotlib, imported here only)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NumgptError("-o needs matplotlib: pip install 'numgpt[plot]'") from None
    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1.0 + 0.6 * k))
    image = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center",
                    color="white" if confusion[i, j] > confusion.max() / 2 else "black")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def run_predict(args) -> int:
    from ..ops import softmax

    texts = args.texts
    if texts == ["-"]:                          # strict UTF-8, as every command reads stdin (paths.read_text)
        texts = [line for line in read_text("-").splitlines() if line.strip()]
        if not texts:
            raise NumgptError("no texts on stdin (one text a line)")
    model = load_model(args.model)
    seqs, cut = model.encode(texts)
    probs = softmax(model.token_logits(seqs))
    if cut:                             # as train and evaluate say it: the label is of the text's start
        print(f"note: {cut} of the {len(texts)} texts are longer than {model.max_tokens} tokens; each was classified "
              "by its first ones", file=sys.stderr)
    for text, p in zip(texts, probs):
        best = int(p.argmax())
        if args.json:
            print(json.dumps({"text": text, "label": model.labels[best], "probability": round(float(p[best]), 6),
                              "probabilities": {name: round(float(q), 6) for name, q in zip(model.labels, p)}},
                             ensure_ascii=False))
            continue
        shown = "  ".join(f"{name} {q:.4f}" for name, q in zip(model.labels, p)) if args.all else \
            f"{model.labels[best]}\t{p[best]:.4f}"
        print(f"{shown}\t{one_field(text)}")
    return 0


def one_field(text: str) -> str:
    """The text as one tab-separated field on one line: backslash, tab and line breaks escaped."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _check_positive(args, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise NumgptError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


# ---------------------------------------------------------------- data fortunes

def register_fortunes(sub) -> None:
    """`numgpt data fortunes`: added to `numgpt data`'s subcommands by data_commands.register."""
    from ..posttrain.classdata import FORTUNES_DIR
    p = subcommand(sub, "fortunes",
                   help="Debian's fortunes as labelled JSONL (text, and its category as label) for classify",
                   description="Write the fortunes of Debian's `fortunes` package as JSON lines "
                   "{\"text\": FORTUNE, \"label\": CATEGORY}, a real classification set.",
                   epilog="examples:\n  numgpt data fortunes --categories computers,food,law,medicine,sports "
                   "-o fortunes.jsonl\n  numgpt data fortunes --list")
    p.add_argument("--folder", default=str(FORTUNES_DIR), metavar="DIR", help=f"the fortunes folder ({FORTUNES_DIR})")
    p.add_argument("--categories", metavar="LIST", help="comma-separated category files (default: all)")
    p.add_argument("--list", action="store_true", help="list the categories with their counts, write nothing")
    p.add_argument("-o", "--output", "--out", dest="output", metavar="FILE", help="the JSONL file to write")
    p.add_argument("--test", metavar="TEST_FILE", help="also hold out a random --test-fraction of the fortunes "
                   "into TEST_FILE (they are then not in FILE)")
    p.add_argument("--test-fraction", type=float, metavar="X", help=f"share held out for --test ({TEST_FRACTION})")
    p.add_argument("--seed", type=int, metavar="N", help=f"seed of the --test draw ({TEST_SEED})")
    p.add_argument("--force", action="store_true", help="replace FILE (and TEST_FILE) if they exist")
    p.set_defaults(run=run_fortunes)


def run_fortunes(args) -> int:
    from collections import Counter

    from ..atomic import write_bytes_atomically
    from ..posttrain.classdata import read_fortunes

    categories = name_list(args.categories, "--categories") if args.categories else None
    if not args.list and not args.output:
        raise NumgptError("pass -o FILE to write the fortunes (or --list to see the categories)")
    if not args.test and (args.test_fraction is not None or args.seed is not None):
        raise NumgptError(f"{'--test-fraction' if args.test_fraction is not None else '--seed'} is for the --test "
                          "draw; pass --test TEST_FILE too")
    args.test_fraction = TEST_FRACTION if args.test_fraction is None else args.test_fraction
    args.seed = TEST_SEED if args.seed is None else args.seed
    if args.test and not 0 < args.test_fraction < 1:
        raise NumgptError(f"--test-fraction must be > 0 and < 1, got {args.test_fraction}")
    outputs = [] if args.list else [(Path(f), flag) for f, flag in ((args.output, "-o"), (args.test, "--test")) if f]
    if len(outputs) == 2 and outputs[0][0].resolve() == outputs[1][0].resolve():
        raise NumgptError(f"--test {args.test} is -o {args.output}: the held-out fortunes would replace the training "
                          "ones; give two files")
    for out, flag in outputs:
        if out.exists() and not out.is_dir() and not args.force:
            raise NumgptError(f"{flag} {out}: the file already exists; pass --force to replace it, or another path")
        output_file(out, flag=flag)
    records = read_fortunes(args.folder, categories)
    if not args.list and len({e.label for e in records}) < 2:
        print(f"note: one category ({records[0].label if records else 'none'}): `numgpt classify train` needs at "
              "least two labels", file=sys.stderr)
    if args.list:
        for name, n in sorted(Counter(e.label for e in records).items()):
            print(f"{name}\t{n}")
        return 0
    parts = [records]
    if args.test:
        import numpy as np
        order = np.random.default_rng(args.seed).permutation(len(records))
        held = set(order[:round(args.test_fraction * len(records))].tolist())
        parts = [[e for i, e in enumerate(records) if i not in held], [e for i, e in enumerate(records) if i in held]]
    for (out, _), part in zip(outputs, parts):
        lines = "".join(json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) + "\n" for e in part)
        write_bytes_atomically(out, lines.encode("utf-8"))
        counts = Counter(e.label for e in part)
        print(f"wrote {len(part)} fortunes to {out} ({', '.join(f'{c} {n}' for c, n in sorted(counts.items()))})")
    return 0
