#!/bin/sh
# A larger model that quotes its context, for bench/bench_speculative.py's "quote" case where a forward's
# time is its weights' bytes, not its NumPy calls (the regime a draft model pays in: the quote model of
# dev/make_quote_model.sh, 4 layers of 256, takes 0.5 ms a step, its 2-layer draft 0.14 ms). 6 layers of 512
# channels (19.5M parameters, 76 MB of weights), trained from nothing on the quote model's own data, as
# dev/make_quote_draft.sh trains the draft. About 35 minutes on the 2-core machine.
#   sh dev/make_quote_large.sh [QUOTE (default runs/quote)] [OUT (default QUOTE-large)]
QUOTE=${1:-runs/quote}
N_LAYER=${N_LAYER:-6} N_HEAD=${N_HEAD:-8} N_EMBD=${N_EMBD:-512} ITERS=${ITERS:-1500} LR=${LR:-0.0015} \
    MIN_LR=${MIN_LR:-0.00015} WHAT="large quote model" FLAG=--quote-model exec sh "$(dirname "$0")/make_quote_draft.sh" "$QUOTE" "${2:-$QUOTE-large}"
