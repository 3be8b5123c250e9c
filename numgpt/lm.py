"""The user-facing model: `numgpt.load(...)` returns a LanguageModel that carries its config, weights and
tokenizer, with the everyday jobs as methods (logits, next-token distribution, generate, stream,
perplexity, log-probabilities).

    import numgpt
    lm = numgpt.load("path/to/gpt2")          # a Hugging Face GPT-2 folder, or a hub name already cached
    lm.next("I wish you a happy New", top=3)  # [(' Year', 0.97), (' Years', 0.018), ...] for GPT-2 124M
    lm.generate("Once upon a time", max_new_tokens=40, temperature=0.8, top_k=40, seed=1)
    for piece in lm.stream("Once upon a time", max_new_tokens=40): print(piece, end="", flush=True)
    lm.perplexity(open("wiki.txt").read())

Decoding options are keyword-only and named as in transformers' generate: max_new_tokens, do_sample,
temperature, top_k, top_p, repetition_penalty, num_return_sequences, seed, stop (strings); plus
sliding_window / window_stride and stop_at_eos. Sampling is on by default (temperature 1, no top-k/top-p);
greedy when do_sample=False or temperature=0.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .formats.hf import load_checkpoint, load_tokenizer
from .formats.hub import hf_cache_dir, resolve_model
from .config import GPTConfig
from .errors import NumgptError
from .generate import Completion, GenerationOptions, Progress, encode_prompt, generate_completions, stream_completions
from .model import forward
from .params import Params
from .sampling import SamplingOptions
from .scoring import Perplexity, encode_text, perplexity, token_logprobs, with_bos

# The model `load()` uses when given nothing: a small GPT-2 trained on Shakespeare, shipped in the package
# (README, "The built-in model"; made by dev/ship_builtin_model.py).
BUILTIN_MODEL = Path(__file__).parent / "assets" / "model"


class NextToken(NamedTuple):
    """One candidate for the next token."""

    id: int
    token: str          # the decoded text of this single token (U+FFFD for a partial UTF-8 character)
    probability: float  # softmax of the raw logits (temperature 1, nothing filtered)


def load(name_or_folder: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
         download: bool = True, mmap: bool = False) -> "LanguageModel":
    """Load a GPT-2 model with its tokenizer.

    name_or_folder: a Hugging Face GPT-2 folder (config.json + model.safetensors, tokenizer files
        optional for GPT-2's vocabulary), or a hub name ('gpt2', 'openai-community/gpt2-medium') found in
        the hub cache or downloaded with huggingface_hub if installed and `download` is true. None: the
        model built into the package.
    cache_dir: the Hugging Face hub cache to look in (default ~/.cache/huggingface/hub; the CLI honours
        HF_HUB_CACHE / HF_HOME, this function reads no environment variables).
    mmap: memory-map every weight as stored instead of copying the blocks' linear weights into memory
        stored [out, in] (the default, see checkpoint.load_checkpoint): loads in milliseconds and keeps
        no private copy -- for a model bigger than the RAM you can spare -- but batched decoding is
        ~1.7x slower and batch-1 decoding ~15% slower (BENCHMARKS.md, Inference).
    """
    if name_or_folder is None:
        name_or_folder = builtin_model_folder()
    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir({})
    folder = resolve_model(name_or_folder, cache_dir=cache, download=download)
    config, params = load_checkpoint(folder, for_inference=not mmap)
    return LanguageModel(config=config, params=params, tokenizer=load_tokenizer(folder, config), folder=folder)


def builtin_model_folder() -> Path:
    """The folder of the model built into the package; a one-line error if the installation lacks it."""
    if not (BUILTIN_MODEL / "config.json").is_file():
        raise NumgptError(f"the built-in model is missing from this installation ({BUILTIN_MODEL}); "
                          "reinstall numgpt, or pass a model folder or name: numgpt.load('path/to/gpt2') "
                          "(CLI: --model PATH)")
    return BUILTIN_MODEL


@dataclass
class LanguageModel:
    """A GPT-2 model ready to use: config, parameters (GPT-2 names, [in, out] weights; `load` stores the
    blocks' linear weights [out, in] behind [in, out] views, see load_checkpoint), tokenizer."""

    config: GPTConfig
    params: Params
    tokenizer: Any
    folder: Path | None = None

    def __repr__(self) -> str:
        c = self.config
        return (f"LanguageModel({str(self.folder)!r}, n_layer={c.n_layer}, n_head={c.n_head}, "
                f"n_embd={c.n_embd}, n_positions={c.n_positions}, vocab_size={c.vocab_size})")

    # ---- raw model ----------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Text -> ids with this model's tokenizer (special tokens written in the text are allowed)."""
        return encode_text(self.tokenizer, text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def logits(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits at every position: ids [T] -> float32 [T, V], or a batch of equal-length rows
        [B, T] -> [B, T, V]. Logits at t score the token at t + 1."""
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2):
            raise NumgptError(f"ids must be 1-D [T] or 2-D [B, T], got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise NumgptError(f"ids must be integers, got {ids.dtype}")
        out = forward(self.params, self.config, np.atleast_2d(ids), all_logits=True)  # [B, T] -> [B, T, V]
        return out[0] if ids.ndim == 1 else out

    # ---- next token ---------------------------------------------------------------------------------

    def next_tokens(self, prompt: str, *, top: int = 10) -> list[NextToken]:
        """The `top` most likely next tokens after the prompt, most likely first (an empty prompt is
        predicted from <|endoftext|>)."""
        if top < 1:
            raise NumgptError(f"top must be >= 1, got {top}")
        ids = encode_prompt(self.tokenizer, prompt)
        logits = forward(self.params, self.config, np.asarray([ids]))[0].astype(np.float64)  # [1, T] -> [V]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = min(top, len(probs))
        best = np.argpartition(-probs, top - 1)[:top]
        best = best[np.lexsort((best, -probs[best]))]  # descending probability, lower id first on ties
        return [NextToken(int(i), self.tokenizer.decode([int(i)]), float(probs[i])) for i in best]

    def next(self, prompt: str, *, top: int = 10) -> list[tuple[str, float]]:
        """The next-token distribution as (token text, probability), most likely first."""
        return [(t.token, t.probability) for t in self.next_tokens(prompt, top=top)]

    # ---- generation ---------------------------------------------------------------------------------

    def completions(self, prompt: str | Sequence[str], *, progress: Progress | None = None,
                    **options: Any) -> list[Completion]:
        """Completion objects (text, token ids, finish reason) for every prompt and sample, prompt-major."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return generate_completions(self.params, self.config, self.tokenizer, prompts,
                                    generation_options(**options), progress=progress)

    def generate(self, prompt: str | Sequence[str], **options: Any) -> str | list[str] | list[list[str]]:
        """Continue the prompt(s); returns only the new text.

        One prompt: a str (a list of num_return_sequences strs if that is > 1). A list of prompts: a list
        with one entry per prompt, each a str or (num_return_sequences > 1) a list of strs.
        Options: see the module docstring and `generation_options`.
        """
        texts = [c.text for c in self.completions(prompt, **options)]
        n = options.get("num_return_sequences", 1)
        per_prompt = texts if n == 1 else [texts[i:i + n] for i in range(0, len(texts), n)]
        return per_prompt[0] if isinstance(prompt, str) else per_prompt

    def stream(self, prompt: str, *, progress: Progress | None = None, **options: Any) -> Iterator[str]:
        """Yield the new text piece by piece as it is generated (UTF-8 safe; text that could still be the
        start of a stop string is held back). The pieces concatenate to what `generate` returns."""
        opts = generation_options(**options)
        if not isinstance(prompt, str) or opts.num_return_sequences != 1:
            raise NumgptError("stream() takes one prompt and one sample; use generate() for more")
        for _, piece in stream_completions(self.params, self.config, self.tokenizer, [prompt], opts,
                                           progress=progress):
            yield piece

    # ---- scoring ------------------------------------------------------------------------------------

    def score(self, text: str, *, stride: int | None = None, bos: bool | None = None,
              progress: Progress | None = None) -> Perplexity:
        """Perplexity, bits per byte and token counts of a text (definitions in numgpt/scoring.py)."""
        return perplexity(self.params, self.config, self.tokenizer, text, stride=stride, bos=bos,
                          progress=progress)

    def perplexity(self, text: str, *, stride: int | None = None, bos: bool | None = None) -> float:
        """Token-level perplexity of a text: exp(mean -ln p) over the predicted tokens (every token when
        BOS is prepended, the default where the vocabulary has <|endoftext|>)."""
        return self.score(text, stride=stride, bos=bos).perplexity

    def logprobs(self, text: str, *, stride: int | None = None, bos: bool | None = None) -> list[tuple[str, float]]:
        """(token text, ln p(token | preceding tokens)) for every predicted token of the text."""
        ids, _ = with_bos(self.tokenizer, self.encode(text), bos)
        scores = token_logprobs(self.params, self.config, ids, stride=stride)
        return [(self.tokenizer.decode([t]), float(s)) for t, s in zip(ids[1:], scores)]


def generation_options(*, max_new_tokens: int = 64, do_sample: bool = True, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                       num_return_sequences: int = 1, seed: int | None = None,
                       stop: str | Sequence[str] | None = None, stop_at_eos: bool = True,
                       sliding_window: bool = False, window_stride: int = 0) -> GenerationOptions:
    """GenerationOptions from transformers-style keyword arguments; unknown names are a TypeError."""
    sampling = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p,
                               repetition_penalty=repetition_penalty, do_sample=do_sample)
    stop = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    return GenerationOptions(max_new_tokens=max_new_tokens, sampling=sampling, stop=stop,
                             stop_at_eos=stop_at_eos, num_return_sequences=num_return_sequences, seed=seed,
                             sliding_window=sliding_window, window_stride=window_stride)
