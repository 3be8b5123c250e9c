"""numgpt: GPT-2 from scratch in NumPy.

The public API (everything else is internal and may change):
    load, LanguageModel, NextToken            -- a model with its tokenizer: generate, next, perplexity, embed (lm.py)
    GPTConfig, PRESETS                        -- the architecture's hyperparameters (config.py)
    forward, KVCache                          -- the forward pass with its key/value cache (model.py, kvcache.py)
    load_checkpoint, save_checkpoint, resolve_model, checkpoint_summary   -- Hugging Face folders (formats/)
    Tokenizer, train_bpe                      -- byte-level BPE, and training a new vocabulary (tokenizer/)
    SamplingOptions, GenerationOptions, Completion, TokenLogprob, Piece, Perplexity   -- decoding and scoring
    loss_and_grads, accumulate_grads, AdamWConfig, TrainConfig, prepare, load_dataset, train   -- training
    setup_run, Run                            -- what `numgpt train` does: data, run folder, resume, then train
                                              (training/; its communicator seam: training/comm.py)
    NumgptError                               -- every user-facing error (one line, no traceback in the CLI)
"""

import os as _os

from .machine import quiet_blas_threads

quiet_blas_threads(_os.environ)   # before anything imports NumPy: OpenBLAS reads it once (machine.py)

# The public API is loaded on first use (PEP 562): `import numgpt` itself reads no NumPy, so the `numgpt`
# command's first ~0.3 s (its console script imports this package before main() can catch a Ctrl-C) is
# only Python starting; main() loads the rest where a Ctrl-C is one line, not a traceback.
_WHERE = {"accumulate_grads": "backprop", "loss_and_grads": "backprop", "PRESETS": "config", "GPTConfig": "config",
          "NumgptError": "errors", "Completion": "generate", "GenerationOptions": "generate", "Piece": "generate",
          "TokenLogprob": "generate", "KVCache": "kvcache", "LanguageModel": "lm", "NextToken": "lm", "load": "lm",
          "forward": "model", "SamplingOptions": "sampling", "Perplexity": "scoring",
          "checkpoint_summary": "formats", "load_checkpoint": "formats", "resolve_model": "formats",
          "save_checkpoint": "formats", "Tokenizer": "tokenizer", "train_bpe": "tokenizer",
          "AdamWConfig": "training", "Run": "training", "TrainConfig": "training", "load_dataset": "training",
          "prepare": "training", "setup_run": "training", "train": "training"}


def __getattr__(name: str):
    """numgpt.load and the rest of __all__, imported from their module the first time they are asked for."""
    if name not in _WHERE:
        raise AttributeError(f"module 'numgpt' has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = ["load", "LanguageModel", "NextToken", "GPTConfig", "PRESETS", "forward", "KVCache",
           "load_checkpoint", "save_checkpoint", "resolve_model", "checkpoint_summary", "Tokenizer", "train_bpe",
           "SamplingOptions", "GenerationOptions", "Completion", "TokenLogprob", "Piece", "Perplexity", "loss_and_grads",
           "accumulate_grads", "AdamWConfig", "TrainConfig", "prepare", "load_dataset", "train", "setup_run", "Run", "NumgptError"]
__version__ = "0.1.0"
