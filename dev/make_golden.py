"""Make the golden files the model tests use where transformers is not installed.

Writes tests/data/golden_tiny/ (config.json + model.safetensors of a tiny random GPT-2, saved by
transformers) and tests/data/golden_tiny_expected.npz (inputs and transformers' outputs for them):
    single_ids [1, T], single_logits [1, T, V]          one prompt, logits at every position
    batch_ids [B, T], batch_mask [B, T], batch_logits [B, V]
                                                        a left-padded batch, last-position logits, run by
                                                        transformers with attention_mask + position_ids
    greedy_prompt [1, P], greedy_ids [1, P + N]         generate(do_sample=False) continuation

Run from the repository root:  python dev/make_golden.py   (needs torch and transformers)
"""

from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

OUT = Path(__file__).resolve().parent.parent / "tests" / "data"
SEED = 1234


def main() -> None:
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=64, n_positions=24, n_embd=8, n_layer=2, n_head=2, initializer_range=0.3,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    folder = OUT / "golden_tiny"
    model.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)

    rng = np.random.default_rng(SEED)
    single = rng.integers(0, 64, (1, 12))
    lengths = [9, 5, 7]
    batch = np.zeros((3, 9), np.int64)
    mask = np.zeros((3, 9), bool)
    for row, n in enumerate(lengths):
        batch[row, 9 - n:] = rng.integers(1, 64, n)
        mask[row, 9 - n:] = True
    position_ids = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    prompt = rng.integers(1, 64, (1, 4))
    with torch.inference_mode():
        single_logits = model(torch.from_numpy(single)).logits.numpy()
        batch_logits = model(torch.from_numpy(batch), attention_mask=torch.from_numpy(mask).long(),
                             position_ids=torch.from_numpy(position_ids)).logits[:, -1].numpy()
        greedy = model.generate(torch.from_numpy(prompt), do_sample=False, max_new_tokens=16,
                                pad_token_id=0).numpy()
    np.savez(OUT / "golden_tiny_expected.npz", single_ids=single, single_logits=single_logits,
             batch_ids=batch, batch_mask=mask, batch_logits=batch_logits, greedy_prompt=prompt, greedy_ids=greedy)
    print(f"wrote {folder} and {OUT / 'golden_tiny_expected.npz'}")


if __name__ == "__main__":
    main()
