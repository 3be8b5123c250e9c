#!/bin/sh
# The built-in chat model (numgpt/assets/chat, `numgpt.load("chat")`, `--model chat`): the exact commands that made it.
# The recipe's settings are posttrain.recipe.ChatRecipe's defaults (written to runs/chat/recipe.json); it needs
# Debian's fortunes (apt-get install fortunes) and chatterbot-corpus (pip install chatterbot-corpus).
# Made on 2026-12-06 on the 2-core machine, alone on it: 2,424 s in all (BENCHMARKS.md, "The built-in chat model").
set -e
numgpt recipe chat --out runs/chat --text ../shared/data/tinyshakespeare.txt     # rerun the same line to continue
python dev/ship_builtin_model.py runs/chat/model ../shared/data/tinyshakespeare.txt --out numgpt/assets/chat
