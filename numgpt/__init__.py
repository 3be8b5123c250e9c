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

from .backprop import accumulate_grads, loss_and_grads  # noqa: E402
from .config import PRESETS, GPTConfig
from .errors import NumgptError
from .generate import Completion, GenerationOptions, Piece, TokenLogprob
from .kvcache import KVCache
from .lm import LanguageModel, NextToken, load
from .model import forward
from .sampling import SamplingOptions
from .scoring import Perplexity
from .formats import checkpoint_summary, load_checkpoint, resolve_model, save_checkpoint
from .tokenizer import Tokenizer, train_bpe
from .training import AdamWConfig, Run, TrainConfig, load_dataset, prepare, setup_run, train

__all__ = ["load", "LanguageModel", "NextToken", "GPTConfig", "PRESETS", "forward", "KVCache",
           "load_checkpoint", "save_checkpoint", "resolve_model", "checkpoint_summary", "Tokenizer", "train_bpe",
           "SamplingOptions", "GenerationOptions", "Completion", "TokenLogprob", "Piece", "Perplexity", "loss_and_grads",
           "accumulate_grads", "AdamWConfig", "TrainConfig", "prepare", "load_dataset", "train", "setup_run", "Run", "NumgptError"]
__version__ = "0.1.0"
