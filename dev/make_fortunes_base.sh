#!/bin/sh
# The fortunes-aware base model bench/bench_classify.py fine-tunes (issue 21's classification figure):
# pre-trained from nothing on text that holds none of the benchmark's validation or test fortunes
# (dev/fortunes_base_corpus.py). Then: python bench/bench_classify.py --model runs/fortunes_base/latest ...
# CATEGORIES=all (or a comma-separated list) holds out the split of those categories instead of
# bench_classify.py's default ones.
set -eu
SHAKESPEARE=${1:-../shared/data/tinyshakespeare.txt}
OUT=${2:-runs}
python dev/fortunes_base_corpus.py "$SHAKESPEARE" -o "$OUT/fortunes_base.txt" ${CATEGORIES:+--categories "$CATEGORIES"}
numgpt prepare "$OUT/fortunes_base.txt" --out "$OUT/fortunes_base_data" --vocab-size 4096 --force
numgpt train "$OUT/fortunes_base_data" --out "$OUT/fortunes_base" --n-layer 6 --n-head 6 --n-embd 192 \
    --block-size 128 --batch-size 32 --max-iters 1200 --lr 2e-3 --min-lr 2e-4 --warmup-iters 100 \
    --dropout 0.1 --eval-interval 300 --eval-iters 10
