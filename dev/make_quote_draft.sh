#!/bin/sh
# A draft model for the quote model (dev/make_quote_model.sh), for bench/bench_speculative.py's "quote" case
# with --speculative draft: 2 layers of 128 channels trained from nothing on the quote model's own data
# (QUOTE.data: the passages written twice, then shuffled rounds only copying predicts), so it learns to copy
# too -- two layers are what an induction head needs. N_LAYER, N_HEAD, N_EMBD, LR, MIN_LR and ITERS set
# another shape (dev/make_quote_large.sh). The built-in model's tokenizer and 128 positions, as
# the quote model. A few minutes on the 2-core machine; ITERS=20 checks the commands in seconds.
#   sh dev/make_quote_draft.sh [QUOTE (default runs/quote)] [OUT (default QUOTE-draft)]
set -e
QUOTE=${1:-runs/quote}
OUT=${2:-$QUOTE-draft}
ITERS=${ITERS:-4000}
NUMGPT=${NUMGPT:-numgpt}
[ -d "$QUOTE.data" ] || { echo "no $QUOTE.data: make the quote model first (sh dev/make_quote_model.sh TEXT $QUOTE)" >&2; exit 1; }
$NUMGPT train "$QUOTE.data" --out "$OUT" --n-layer "${N_LAYER:-2}" --n-head "${N_HEAD:-4}" --n-embd "${N_EMBD:-128}" \
    --block-size 128 --batch-size 16 --max-iters "$ITERS" --lr "${LR:-0.003}" --min-lr "${MIN_LR:-0.0003}" \
    --warmup-iters $((ITERS / 20 + 1)) --eval-interval 0 --eval-iters 5 --seed 0
echo "${WHAT:-quote draft model}: $OUT/latest (python bench/bench_speculative.py --only quote ${FLAG:---quote-draft} $OUT/latest)"
