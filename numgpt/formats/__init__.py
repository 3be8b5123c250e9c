"""File formats and where models come from: safetensors, Hugging Face GPT-2 folders, model names.

    safetensors.py   read (memory-mapped or transposed for inference) and write .safetensors with NumPy
    hf.py            config.json + model.safetensors (+ shards, tokenizer files) in and out; `numgpt info`
    hub.py           a name -> a folder: local folders, `numgpt train` run folders, the Hugging Face cache
    peft.py          PEFT LoRA adapter folders (adapter_config.json + adapter_model.safetensors) in and out
"""

from .hf import checkpoint_summary, load_checkpoint, load_config, load_params, load_tokenizer, save_checkpoint
from .hub import hf_cache_dir, resolve_model
from .safetensors import read_safetensors, write_safetensors

__all__ = ["checkpoint_summary", "load_checkpoint", "load_config", "load_params", "load_tokenizer",
           "save_checkpoint", "hf_cache_dir", "resolve_model", "read_safetensors", "write_safetensors"]
