#!/bin/sh
# A tiny draft model for speculative decoding with the built-in chat model (`numgpt.load("chat")`): the same
# tokenizer and data as the chat model's recipe run (RECIPE/data, RECIPE/pretrain/data: `numgpt recipe chat`,
# see dev/make_chat_model.sh), 2 layers of 96 channels and the chat model's 256-token context, pre-trained on
# the recipe's pre-training tokens and fine-tuned on its SFT conversations. bench/bench_speculative.py
# --draft OUT/sft uses it. The defaults take a few minutes per stage on the 2-core machine; ITERS=20 checks
# the commands in seconds. N_LAYER, N_HEAD and N_EMBD change the draft's shape (2, 2, 96).
#   sh dev/make_draft_model.sh [RECIPE (default /work/runs/chat2)] [OUT (default runs/draft)]
set -e
RECIPE=${1:-/work/runs/chat2}
OUT=${2:-runs/draft}
ITERS=${ITERS:-1500}
SFT_ITERS=${SFT_ITERS:-$((ITERS / 3))}
NUMGPT=${NUMGPT:-numgpt}
$NUMGPT train "$RECIPE/pretrain/data" --out "$OUT/pretrain" --n-layer "${N_LAYER:-2}" --n-head "${N_HEAD:-2}" \
    --n-embd "${N_EMBD:-96}" --block-size 256 \
    --batch-size 16 --max-iters "$ITERS" --lr 0.003 --min-lr 0.0003 --warmup-iters $((ITERS / 10 + 1)) \
    --eval-interval 0 --eval-iters 5 --seed 0
$NUMGPT sft "$RECIPE/data/sft.jsonl" --init "$OUT/pretrain" --out "$OUT/sft" --block-size 256 --batch-size 16 \
    --max-iters "$SFT_ITERS" --lr 0.001 --min-lr 0.0001 --warmup-iters $((SFT_ITERS / 10 + 1)) --eval-interval 0 \
    --eval-iters 5 --seed 0
echo "draft model: $OUT/sft (numgpt generate --model chat --speculative draft --draft-model $OUT/sft ...)"
