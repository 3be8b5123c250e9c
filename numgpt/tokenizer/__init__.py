"""GPT-2's byte-level BPE tokenizer, and training new vocabularies.

    bpe.py     the tokenizer: pre-tokenization, merges by rank (a plain version and two fast twins),
               special tokens, streaming decode, explain
    files.py   the vocabulary files (Hugging Face vocab.json + merges.txt, OpenAI encoder.json + vocab.bpe)
    train.py   learning a merge list from text, with incremental pair counts
"""

from .bpe import ENDOFTEXT, GPT2_SPLIT_PATTERN, StreamDecoder, Tokenizer, pretokenize, show_bytes
from .train import train_bpe

__all__ = ["ENDOFTEXT", "GPT2_SPLIT_PATTERN", "StreamDecoder", "Tokenizer", "pretokenize", "show_bytes",
           "train_bpe"]
