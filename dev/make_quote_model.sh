#!/bin/sh
# A model that quotes its context, for bench/bench_speculative.py's "quote" case: the built-in Shakespeare
# model fine-tuned on passages of tinyshakespeare written twice (dev/quote_corpus.py), so it repeats a
# passage it has just read -- the text where prompt lookup applies. After the passages as written come
# ROUNDS rounds of them with their words shuffled afresh, which only copying predicts: the model cannot
# learn them by heart instead (2,000 steps on the passages alone copied 81.5% of held-out tokens
# teacher-forced; 5,000 steps with 15 shuffled rounds 92.6%). About 27 minutes on the 2-core machine.
#   sh dev/make_quote_model.sh [TEXT (default ../shared/data/tinyshakespeare.txt)] [OUT (default runs/quote)]
set -e
TEXT=${1:-../shared/data/tinyshakespeare.txt}
OUT=${2:-runs/quote}
ITERS=${ITERS:-5000}
ROUNDS=${ROUNDS:-15}
NUMGPT=${NUMGPT:-numgpt}
python dev/quote_corpus.py "$TEXT" -o "$OUT.txt" --shuffled-rounds "$ROUNDS"
$NUMGPT prepare "$OUT.txt" --tokenizer builtin --out "$OUT.data" --force
$NUMGPT train "$OUT.data" --init builtin --out "$OUT" --block-size 128 --batch-size 16 --max-iters "$ITERS" \
    --lr 1e-3 --min-lr 1e-4 --warmup-iters 20 --eval-interval 0 --eval-iters 5 --seed 0
echo "quote model: $OUT/latest (python bench/bench_speculative.py --quote-model $OUT/latest)"
