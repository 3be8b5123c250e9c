"""Shared test fixtures. Each engineer keeps one block, marked by a comment; checkpoints go in tmp dirs."""

import types

import pytest


# ---- generation, scoring, inference CLI (issue 3) -----------------------------------------------------

def _hf_checkpoint(tmp_path_factory, name, seed, **config):
    """A randomly initialised transformers GPT2LMHeadModel saved with save_pretrained (config.json +
    model.safetensors) into a tmp folder; returns folder, the torch model (eval mode) and its config."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    hf_config = transformers.GPT2Config(**config)
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    return types.SimpleNamespace(folder=folder, model=model, config=hf_config)


@pytest.fixture(scope="session")
def hf_tiny_vocab_ckpt(tmp_path_factory):
    """Small vocabulary, 128 positions: for id-level generation against transformers. Init scaled up
    (initializer_range 0.3) so that logits are far from ties and greedy paths are robust to float rounding.
    eos = bos = 299 (the last id), so stopping at eos is exercised."""
    return _hf_checkpoint(tmp_path_factory, "tiny_vocab", 0, vocab_size=300, n_positions=128, n_embd=32,
                          n_layer=2, n_head=4, initializer_range=0.3, bos_token_id=299, eos_token_id=299)


@pytest.fixture(scope="session")
def hf_gpt2_vocab_ckpt(tmp_path_factory):
    """GPT-2's 50257-token vocabulary (so GPT-2's tokenizer applies) with a narrow model (n_embd 16) to
    stay fast; 256 positions; init scaled up as above."""
    return _hf_checkpoint(tmp_path_factory, "gpt2_vocab", 1, vocab_size=50257, n_positions=256, n_embd=16,
                          n_layer=2, n_head=2, initializer_range=0.2)


@pytest.fixture(scope="session")
def hf_short_context_ckpt(tmp_path_factory):
    """GPT-2's vocabulary with only 32 positions: texts of ~200 tokens need the strided perplexity."""
    return _hf_checkpoint(tmp_path_factory, "short_context", 2, vocab_size=50257, n_positions=32, n_embd=16,
                          n_layer=2, n_head=2, initializer_range=0.1)

# ---- end of generation, scoring, inference CLI block ---------------------------------------------------
