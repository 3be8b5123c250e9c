#!/bin/sh
# A larger model that quotes its context, for bench/bench_speculative.py's "quote" case where a forward's
# time is its weights' bytes, not its NumPy calls (the regime a draft model pays in: the quote model of
# dev/make_quote_model.sh, 4 layers of 256, takes 0.5 ms a step, its 2-layer draft 0.14 ms). 6 layers of 512
# channels (19.5M parameters, 76 MB of weights), trained from nothing on the quote model's own data
# (QUOTE.data: passages written twice, then rounds only copying predicts). About 35 minutes on the 2-core
# machine; ITERS=20 checks the commands in seconds.
#   sh dev/make_quote_large.sh [QUOTE (default runs/quote)] [OUT (default QUOTE-large)]
set -e
QUOTE=${1:-runs/quote}
OUT=${2:-$QUOTE-large}
ITERS=${ITERS:-1500}
NUMGPT=${NUMGPT:-numgpt}
[ -d "$QUOTE.data" ] || { echo "no $QUOTE.data: make the quote model first (sh dev/make_quote_model.sh TEXT $QUOTE)" >&2; exit 1; }
$NUMGPT train "$QUOTE.data" --out "$OUT" --n-layer "${N_LAYER:-6}" --n-head "${N_HEAD:-8}" --n-embd "${N_EMBD:-512}" \
    --block-size 128 --batch-size 16 --max-iters "$ITERS" --lr 0.0015 --min-lr 0.00015 \
    --warmup-iters $((ITERS / 20 + 1)) --eval-interval 0 --eval-iters 5 --seed 0
echo "large quote model: $OUT/latest (python bench/bench_speculative.py --only quote --quote-model $OUT/latest)"
