"""Package a `numgpt train` checkpoint as the built-in model (numgpt/assets/model), and measure it.

    python dev/ship_builtin_model.py runs/builtin/best ../shared/data/tinyshakespeare.txt

Writes the weights as float16 safetensors (half the bytes; numgpt loads them as float32), the config and
the tokenizer, then scores the validation split -- the last 10% of the characters, as `numgpt prepare`
and nanoGPT split -- with the shipped (float16-rounded) weights and prints bits per character:

    bits per character = sum over predicted tokens of -log2 p(token | preceding tokens)
                         / number of characters those tokens spell

with Hugging Face's strided window (window n_positions, stride n_positions / 2) and no BOS: the first
token of the split is context only. For ASCII text characters and UTF-8 bytes coincide, so this equals
`numgpt perplexity`'s bits per byte.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numgpt
from numgpt.formats.hf import load_checkpoint, load_tokenizer, save_checkpoint
from numgpt.training.data import split_text

BUILTIN = Path(numgpt.__file__).parent / "assets" / "model"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a numgpt train checkpoint folder (e.g. runs/builtin/best)")
    parser.add_argument("text", help="the training text, to score its validation split")
    parser.add_argument("--out", default=str(BUILTIN), help=f"where to write the model ({BUILTIN})")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args()

    config, params = load_checkpoint(args.checkpoint)
    tokenizer = load_tokenizer(args.checkpoint, config)
    save_checkpoint(args.out, config, params, tokenizer=tokenizer, dtype="F16")
    size = sum(f.stat().st_size for f in Path(args.out).iterdir())
    print(f"wrote {args.out}: {size / 1e6:.2f} MB", file=sys.stderr)

    start = time.perf_counter()
    lm = numgpt.load(args.out)
    print(f"load: {(time.perf_counter() - start) * 1000:.0f} ms", file=sys.stderr)
    _, val = split_text(Path(args.text).read_text(encoding="utf-8"), args.val_fraction)
    score = lm.score(val, bos=False)
    print(f"validation: {score.n_tokens} tokens, {score.n_bytes} characters, "
          f"loss {score.mean_nll:.4f} nats/token, {score.bits_per_byte:.4f} bits/char")
    return 0


if __name__ == "__main__":
    sys.exit(main())
