"""numgpt: GPT-2 from scratch in NumPy.

The public API (everything else is internal and may change):
"""

from .config import GPTConfig, PRESETS
from .errors import NumgptError
from .kvcache import KVCache  # model/checkpoint engineer
from .model import forward  # model/checkpoint engineer
from .tokenizer import Tokenizer  # tokenizer engineer
from .bpe_train import train_bpe  # tokenizer engineer
from .checkpoint import load_checkpoint, save_checkpoint, resolve_model, checkpoint_summary  # model/checkpoint engineer
from .sampling import SamplingOptions  # generation engineer
from .generate import GenerationOptions, Completion  # generation engineer
from .scoring import Perplexity  # generation engineer
from .lm import load, LanguageModel, NextToken  # generation engineer
from .backprop import loss_and_grads, accumulate_grads  # training engineer
from .optim import AdamWConfig  # training engineer
from .data import prepare, load_dataset  # training engineer
from .train import TrainConfig  # training engineer (the loop: numgpt.train.train; not re-exported, it would shadow the module)

__all__ = ["GPTConfig", "PRESETS", "NumgptError"]
__all__ += ["KVCache", "forward", "load_checkpoint", "save_checkpoint", "resolve_model", "checkpoint_summary"]  # model/checkpoint engineer
__all__ += ["Tokenizer", "train_bpe"]  # tokenizer engineer
__all__ += ["load", "LanguageModel", "NextToken", "SamplingOptions", "GenerationOptions", "Completion", "Perplexity"]  # generation engineer
__all__ += ["loss_and_grads", "accumulate_grads", "AdamWConfig", "prepare", "load_dataset", "TrainConfig"]  # training engineer
__version__ = "0.1.0"
