"""Classification of Debian's fortunes by category: numgpt's fine-tuned GPT-2 against scikit-learn's
TF-IDF + logistic regression, on the same held-out split, in the same run (issue 21's target: numgpt at
least 3 points of accuracy above the baseline).

Data: the fortunes of --categories (Debian's `fortunes` package, /usr/share/games/fortunes; never in the
repository), split once with --seed into train / validation / test (test: --test-fraction, stratified by
category so every category is in it). The baseline trains on train + validation (it has nothing to
select with validation); numgpt trains on train, keeps the checkpoint of lowest validation loss
(RUN/best), and both are scored on test: accuracy and macro-F1.

    apt-get install fortunes; pip install scikit-learn
    python bench/bench_classify.py --model gpt2 --train last-2 --epochs 3                 # 124M (long)
    python bench/bench_classify.py --model builtin --train all --max-iters 20 --out /tmp/b  # a smoke run
    python bench/bench_classify.py --model gpt2 --lora-rank 16 --lr 3e-4 --out runs/bc_lora   # LoRA + head
    python bench/bench_classify.py --baseline-only                                        # TF-IDF + LR alone
    CATEGORIES=all sh dev/make_fortunes_base.sh ../shared/data/tinyshakespeare.txt runs/fb43   # every file's split
    python bench/bench_classify.py --categories all --model runs/fb43/fortunes_base/latest --train all --lr 3e-4

numgpt runs as `numgpt classify train` would (posttrain.classify.train_classifier); pass --json FILE to keep
the numbers. Not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from numgpt.posttrain.classdata import FORTUNES_DIR, fortune_categories, read_fortunes  # noqa: E402
from numgpt.posttrain.classify import classification_metrics  # noqa: E402

CATEGORIES = "computers,food,law,medicine,sports,politics,science"


def chosen_categories(spec: str, folder: str | Path = FORTUNES_DIR) -> list[str]:
    """--categories as a list: comma-separated names, or "all" for every category file of the package."""
    return fortune_categories(folder) if spec == "all" else spec.split(",")


def stratified_split(labels: list[str], fractions: tuple[float, float], rng: np.random.Generator
                     ) -> tuple[list[int], list[int], list[int]]:
    """(train, val, test) indices: per category, a `fractions` = (val, test) share of its items held out."""
    train, val, test = [], [], []
    for name in sorted(set(labels)):
        items = rng.permutation([i for i, x in enumerate(labels) if x == name]).tolist()
        n_test = max(1, round(fractions[1] * len(items)))
        n_val = max(1, round(fractions[0] * len(items)))
        test += items[:n_test]
        val += items[n_test:n_test + n_val]
        train += items[n_test + n_val:]
    return sorted(train), sorted(val), sorted(test)


def baseline(texts_train: list[str], y_train: list[str], texts_test: list[str]) -> tuple[list[str], float]:
    """scikit-learn's TF-IDF (word 1-2 grams, sublinear tf) + logistic regression: predictions and seconds."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    t0 = time.perf_counter()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          LogisticRegression(max_iter=2000, C=10.0))
    model.fit(texts_train, y_train)
    return list(model.predict(texts_test)), time.perf_counter() - t0


def numgpt_classifier(args, train, val, test, labels: list[str]) -> tuple[list[str], float]:
    """numgpt fine-tuned as `numgpt classify train` does; predictions on test from RUN/best and seconds."""
    from numgpt.formats import hf_cache_dir, load_checkpoint, load_tokenizer, resolve_model
    from numgpt.posttrain.classify import load_classifier_folder, new_classifier, train_classifier
    from numgpt.training.loop import TrainConfig
    from numgpt.training.optim import AdamWConfig
    import os

    folder = resolve_model(args.model, cache_dir=hf_cache_dir(os.environ))
    config, params = load_checkpoint(folder)
    train_seed = args.seed if args.train_seed is None else args.train_seed
    head_seed = train_seed if args.head_seed is None else args.head_seed
    model = new_classifier(config, params, load_tokenizer(folder, config), labels,
                           rng=np.random.default_rng(head_seed), max_tokens=args.max_tokens)
    steps = args.max_iters or max(1, int(args.epochs * len(train) / args.batch_size))
    tc = TrainConfig(batch_size=args.batch_size, block_size=model.max_tokens, max_iters=steps,
                     eval_interval=max(1, steps // 5), seed=train_seed, threads=args.threads,
                     optim=AdamWConfig(lr=args.lr, min_lr=args.lr / 10, warmup_iters=steps // 10, decay_iters=steps))
    t0 = time.perf_counter()

    def show(event: dict) -> None:
        if event["type"] == "eval":
            print(f"  step {event['step']}: val loss {event['loss']:.4f}, accuracy {event['accuracy']:.4f}",
                  file=sys.stderr, flush=True)
    lora = None
    if args.lora_rank:
        from numgpt.posttrain.lora import lora_from_args
        lora = lora_from_args(args, embedding=True)
    train_classifier(model, train, val, args.out, tc=tc, trainable="head" if lora else args.train,
                     class_weights=args.class_weights, on_event=show, lora=lora)
    seconds = time.perf_counter() - t0
    best = load_classifier_folder(Path(args.out) / "best")
    logits = best.logits([e.text for e in test], batch_size=args.batch_size)
    return [best.labels[i] for i in logits.argmax(axis=1)], seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=str(FORTUNES_DIR))
    p.add_argument("--categories", default=CATEGORIES,
                   help=f"comma-separated category files, or all (every file of the package); default {CATEGORIES}")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="the split's seed (and training's, without --train-seed)")
    p.add_argument("--train-seed", type=int, default=None,
                   help="the head's and adapter's initialisation and the batches' order; the same split")
    p.add_argument("--head-seed", type=int, default=None,
                   help="the head's initialisation alone (default: the training seed)")
    p.add_argument("--model", default="gpt2")
    p.add_argument("--train", default="last-2")
    p.add_argument("--lora-rank", type=int, default=0, help="train a LoRA adapter + head instead of --train")
    p.add_argument("--lora-alpha", type=float, default=None)
    p.add_argument("--lora-targets", default="c_attn,c_proj,c_fc",
                   help="the adapted layers (numgpt classify train --lora-targets; add wte for the embedding)")
    p.add_argument("--class-weights", choices=["balanced"], default=None)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-iters", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="runs/bench_classify")
    p.add_argument("--baseline-only", action="store_true")
    p.add_argument("--no-baseline", action="store_true",
                   help="numgpt alone (the baseline depends only on the split: 4 minutes for all 43 categories)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    if args.baseline_only and args.no_baseline:
        p.error("--baseline-only and --no-baseline leave nothing to run: give one of them")

    records = read_fortunes(args.folder, chosen_categories(args.categories, args.folder))
    labels = sorted({e.label for e in records})
    tr, va, te = stratified_split([e.label for e in records], (args.val_fraction, args.test_fraction),
                                  np.random.default_rng(args.seed))
    train, val, test = ([records[i] for i in idx] for idx in (tr, va, te))
    print(f"{len(records)} fortunes, {len(labels)} categories: train {len(train)}, val {len(val)}, test {len(test)}",
          file=sys.stderr)
    truth = np.array([labels.index(e.label) for e in test])
    results = {}
    if not args.no_baseline:
        pred, seconds = baseline([e.text for e in train + val], [e.label for e in train + val], [e.text for e in test])
        results["tfidf_logreg"] = {"seconds": seconds, **_scores(truth, pred, labels)}
    if not args.baseline_only:
        pred, seconds = numgpt_classifier(args, train, val, test, labels)
        results["numgpt"] = {"seconds": seconds, "model": args.model,
                             "train": f"lora-{args.lora_rank} on {args.lora_targets}" if args.lora_rank else args.train,
                             **_scores(truth, pred, labels)}
    for name, r in results.items():
        print(f"{name:>14}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} ({r['seconds']:.1f} s)")
    if "numgpt" in results and "tfidf_logreg" in results:
        gap = 100 * (results["numgpt"]["accuracy"] - results["tfidf_logreg"]["accuracy"])
        print(f"numgpt - baseline: {gap:+.2f} points of accuracy")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")


def _scores(truth: np.ndarray, pred: list[str], labels: list[str]) -> dict:
    m = classification_metrics(truth, np.array([labels.index(x) for x in pred]), labels)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


if __name__ == "__main__":
    main()
