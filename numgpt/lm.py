"""The user-facing model: `numgpt.load(...)` returns a LanguageModel that carries its config, weights and
tokenizer, with the everyday jobs as methods (logits, next-token distribution, generate, stream,
perplexity, log-probabilities).

    import numgpt
    lm = numgpt.load("path/to/gpt2")          # a Hugging Face GPT-2 folder, or a hub name already cached
    lm.next("I wish you a happy New", top=3)  # [(' Year', 0.97), (' Years', 0.018), ...] for GPT-2 124M
    lm.generate("Once upon a time", max_new_tokens=40, temperature=0.8, top_k=40, seed=1)   # a str
    lm.generate_batch(["Once", "Twice"], max_new_tokens=9, num_return_sequences=2)  # [[str, str], [str, str]]
    for piece in lm.stream("Once upon a time", max_new_tokens=40): print(piece, end="", flush=True)
    lm.perplexity(open("wiki.txt").read())
    lm.embed(["a text", "another"], pooling="mean")   # float32 [2, C]: pooled final hidden states

Decoding options are keyword-only and named as in transformers' generate: max_new_tokens, do_sample,
temperature, top_k, top_p, repetition_penalty, num_return_sequences, seed, stop (strings, matched in the
completion only, not across the prompt's end); plus sliding_window / window_stride, stop_at_eos and
logprobs (k: each new token's log-probability and its k most likely alternatives). Sampling is on by
default (temperature 1, no top-k/top-p); greedy when do_sample=False or temperature=0.

Speculative decoding (numgpt/speculative.py): speculative="ngram" drafts by prompt lookup,
speculative="draft" with draft_model=(a LanguageModel or a name load() takes, with the same tokenizer);
num_draft=K tokens per target forward (default 4). The output is what plain decoding gives (greedy: token
for token; sampling: the same distribution); `completions()` reports what it did (Completion.speculative).

    lm.generate("Repeat after me: to be or not to be.", speculative="ngram", num_draft=4, do_sample=False)

Structured outputs (numgpt/structured): regex=R (the whole text matches R, as re.fullmatch), json_schema=
(a dict: valid JSON against it) or json_object=True (any JSON object); the text can end only where it
matches, so one the model ends ("eos") always does; one cut by max_new_tokens ("length") may not.

    lm.generate("Name and age: ", json_schema={"type": "object", "properties": {"age": {"type": "integer"}}})

This object is the one facade over the model for a Python user and the CLI's model commands: every job --
text or token-id prompts, streaming with per-token log-probabilities, the prompt's own log-probabilities
(OpenAI's echo), a cancel between steps -- has one entry point here. Bad arguments are NumgptErrors that
name the argument and what it accepts. (The server runs its own continuous-batching engine over the same
model functions, serve/engine.py on slots.py; the teaching views read the model through numgpt.teach.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .formats.hf import load_checkpoint, load_tokenizer
from .formats.hub import BUILTIN_MODELS, DEFAULT_MODEL, builtin_model_folder, hf_cache_dir, resolve_model  # noqa: F401 -- re-exported
from .config import GPTConfig
from .errors import NumgptError, UnknownOptionError, describe, whole_number  # noqa: F401 -- Unknown...: importable here as before
from .generate import (Completion, GenerationOptions, Piece, Progress, TokenLogprob, encode_prompt,
                       generate_completions, generate_ids, options_speculation, stream_completions,
                       token_logprob_rows, top_logprobs)
from .embeddings import BATCH_TOKENS, embed_ids
from .model import check_context, check_finite_logits, forward
from .ops import softmax
from .panels import DecodeParams
from .params import Params
from .sampling import SamplingOptions
from .scoring import Perplexity, encode_text, perplexity, token_logprobs, with_bos

Prompt = str | Sequence[int]   # text, or token ids

# The model `load()` uses when given nothing: a small GPT-2 trained on Shakespeare, shipped in the package
# (README, "The built-in model"; made by dev/ship_builtin_model.py). Also loadable by the name 'builtin'.
BUILTIN_MODEL = BUILTIN_MODELS[DEFAULT_MODEL]


class NextToken(NamedTuple):
    """One candidate for the next token."""

    id: int
    token: str          # the decoded text of this single token (U+FFFD for a partial UTF-8 character)
    probability: float  # softmax of the raw logits (temperature 1, nothing filtered)


def load(name_or_folder: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
         download: bool = True, mmap: bool = False, threads: int | None = None,
         adapter: str | os.PathLike | None = None) -> "LanguageModel":
    """Load a GPT-2 model with its tokenizer.

    name_or_folder: a Hugging Face GPT-2 folder (config.json + model.safetensors, tokenizer files
        optional for GPT-2's vocabulary), or a hub name ('gpt2', 'openai-community/gpt2-medium') found in
        the hub cache or downloaded with huggingface_hub if installed and `download` is true. None or
        'builtin': the model built into the package.
    cache_dir: the Hugging Face hub cache to look in (default ~/.cache/huggingface/hub; the CLI honours
        HF_HUB_CACHE / HF_HOME, this function reads no environment variables).
    mmap: memory-map every weight as stored instead of copying the blocks' linear weights into memory
        stored [out, in] (the default, see formats.hf.load_checkpoint): loads in milliseconds and keeps
        no private copy -- for a model bigger than the RAM you can spare -- but batched decoding is
        ~1.7x slower and batch-1 decoding ~15% slower (BENCHMARKS.md, Inference), and 2-16 rows (a batch,
        a speculative verification) do not get the column panels the default copies on first use, at
        the cost of those weights' memory once more (panels.py: ~1.7x faster at 8 rows).
    threads: threads that read the weights, and that a few-row product's panels use (panels.DecodeParams)
        (None: every usable core; the CLI passes NUMGPT_NUM_THREADS).
    adapter: a PEFT LoRA adapter folder trained on this base (`numgpt train --lora-rank R` writes RUN/adapter),
        merged into the weights as they load (formats.peft.merge_adapter); one for another base is refused.
        A LoRA run's own checkpoints (RUN, RUN/best, RUN/latest) load with their adapter merged.
    """
    if name_or_folder is None:
        name_or_folder = builtin_model_folder()
    if not isinstance(name_or_folder, (str, os.PathLike)):
        raise NumgptError(f"load() takes a folder path or a model name (a str), got {describe(name_or_folder)}")
    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir({})
    folder = resolve_model(name_or_folder, cache_dir=cache, download=download)
    config, params = load_checkpoint(folder, for_inference=not mmap, threads=threads)
    from .formats.peft import merge_adapter, merge_run_adapter
    params = merge_run_adapter(folder, config, params)         # a LoRA run's checkpoint: base + its adapter
    if adapter is not None:
        params = merge_adapter(adapter, config, params)
    if not mmap and not isinstance(params, DecodeParams):     # an adapter merged into new arrays: panels again
        params = DecodeParams(params, threads)
    return LanguageModel(config=config, params=params, tokenizer=load_tokenizer(folder, config), folder=folder)


@dataclass
class LanguageModel:
    """A GPT-2 model ready to use: config, parameters (GPT-2 names, [in, out] weights; `load` stores the
    blocks' linear weights [out, in] behind [in, out] views, see formats.hf.load_checkpoint), tokenizer."""

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
        return encode_text(self.tokenizer, _text("text", text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(_token_ids("ids", ids, allow_empty=True))

    def logits(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits at every position: ids [T] -> float32 [T, V], or a batch of equal-length rows
        [B, T] -> [B, T, V]. Logits at t score the token at t + 1."""
        if isinstance(ids, (str, bytes)):
            raise NumgptError(f"logits() takes token ids, got a {type(ids).__name__}; encode text first: "
                              "lm.logits(lm.encode(text))")
        ids = np.asarray(ids)
        if ids.size == 0:
            raise NumgptError("ids are empty: give at least one token id")
        if ids.ndim not in (1, 2):
            raise NumgptError(f"ids must be 1-D [T] or 2-D [B, T], got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise NumgptError(f"ids must be integers, got {ids.dtype}")
        out = forward(self.params, self.config, np.atleast_2d(ids), all_logits=True)  # [B, T] -> [B, T, V]
        check_finite_logits(out, self.params)
        return out[0] if ids.ndim == 1 else out

    # ---- next token ---------------------------------------------------------------------------------

    def next_tokens(self, prompt: str, *, top: int = 10) -> list[NextToken]:
        """The `top` most likely next tokens after the prompt, most likely first (an empty prompt is
        predicted from <|endoftext|>)."""
        top = whole_number("top", top, minimum=1)
        ids = encode_prompt(self.tokenizer, _text("prompt", prompt))
        check_context(self.config, len(ids), fix="shorten the prompt")
        logits = forward(self.params, self.config, np.asarray([ids]))          # [1, T] -> [1, V]
        check_finite_logits(logits, self.params)
        probs = softmax(logits[0].astype(np.float64))                          # [V]
        return [NextToken(i, self.tokenizer.decode([i]), float(probs[i]))
                for i, _ in top_logprobs(probs, top)]                           # ranked by probability

    def next(self, prompt: str, *, top: int = 10) -> list[tuple[str, float]]:
        """The next-token distribution as (token text, probability), most likely first."""
        return [(t.token, t.probability) for t in self.next_tokens(prompt, top=top)]

    # ---- generation ---------------------------------------------------------------------------------

    def completions(self, prompt: Prompt | Sequence[Prompt], *, progress: Progress | None = None,
                    cancel: Callable[[], bool] | None = None, **options: Any) -> list[Completion]:
        """Completion objects (text, token ids, finish reason, log-probabilities if asked) for every
        prompt and sample, prompt-major. A prompt is text or a list of token ids."""
        prompts, _ = self._prompts(prompt)
        opts, draft = self._options(options)
        return generate_completions(self.params, self.config, self.tokenizer, prompts,
                                    opts, progress=progress, cancel=cancel, draft=draft)

    def generate_batch(self, prompts: Sequence[Prompt], **options: Any) -> list[list[str]]:
        """Continue several prompts (left-padded into one batch); returns the new text only, always as one
        list per prompt holding its num_return_sequences samples: out[i][j] is sample j of prompt i."""
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple, np.ndarray)) and len(prompts)
                                        and all(_is_id(t) for t in prompts)):
            raise NumgptError("generate_batch() takes a list of prompts (each text or token ids); for one prompt "
                              "use generate(), or pass [prompt]")
        checked, _ = self._prompts(prompts)
        opts, draft = self._options(options)
        texts = [c.text for c in generate_completions(self.params, self.config, self.tokenizer, checked, opts,
                                                      draft=draft)]
        n = opts.num_return_sequences
        return [texts[i:i + n] for i in range(0, len(texts), n)]

    def generate(self, prompt: Prompt, **options: Any) -> str:
        """Continue one prompt (text, or a list of token ids); returns the new text, a str. The thin
        convenience over generate_batch, which takes several prompts and samples. Options: see the module
        docstring (GenerationOptions and SamplingOptions' fields)."""
        prompts, single = self._prompts(prompt)
        if not single:
            raise NumgptError("generate() takes one prompt (text or token ids) and returns its text; for several "
                              "prompts use generate_batch(), which returns each prompt's samples")
        opts, draft = self._options(options)
        if opts.num_return_sequences != 1:
            raise NumgptError("generate() returns one text; for num_return_sequences > 1 use "
                              "generate_batch([prompt], ...), which returns the samples as a list")
        return generate_completions(self.params, self.config, self.tokenizer, prompts, opts, draft=draft)[0].text

    def generate_ids(self, prompts: Sequence[Sequence[int]], **options: Any) -> list[list[list[int]]]:
        """Token ids in, token ids out (transformers' generate without the prompt): out[i][j] is the new ids
        of sample j of prompt i, ending with <|endoftext|> (included) when it was drawn and stop_at_eos.
        No text is decoded, so the text options (stop, logprobs) are refused: use completions()."""
        opts, draft = self._options(options)
        if opts.stop or opts.logprobs:
            raise NumgptError("generate_ids() decodes no text, so stop strings and logprobs do not apply; "
                              "use completions(), whose Completion objects carry token_ids")
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)) or not prompts \
                or any(_is_id(p) for p in prompts):
            raise NumgptError(f"prompts must be a non-empty list of token-id lists, got {describe(prompts)}")
        checked = [_token_ids(f"prompts[{k}]", p, self.config.vocab_size) for k, p in enumerate(prompts)]
        eos = self.tokenizer.eot_id if opts.stop_at_eos else None
        ids = generate_ids(self.params, self.config, checked, max_new_tokens=opts.max_new_tokens,
                           sampling=opts.sampling, seed=opts.seed, num_return_sequences=opts.num_return_sequences,
                           stop_ids=() if eos is None else (eos,), sliding_window=opts.sliding_window,
                           window_stride=opts.window_stride,
                           speculative=options_speculation(opts, self.config, draft))
        n = opts.num_return_sequences
        return [ids[i:i + n] for i in range(0, len(ids), n)]

    def stream(self, prompt: Prompt, *, progress: Progress | None = None,
               cancel: Callable[[], bool] | None = None, **options: Any) -> Iterator[str]:
        """Yield the new text piece by piece as it is generated (UTF-8 safe; text that could still be the
        start of a stop string is held back). The pieces concatenate to what `generate` returns.
        One prompt and one sample; `stream_pieces` streams several, each piece naming its sequence."""
        prompts, single = self._prompts(prompt)
        opts, draft = self._options(options)
        if not single or opts.num_return_sequences != 1:
            raise NumgptError("stream() takes one prompt and one sample; use stream_pieces() for more "
                              "(each piece says which sequence it belongs to), or generate()")
        for piece in stream_completions(self.params, self.config, self.tokenizer, prompts, opts,
                                        progress=progress, cancel=cancel, draft=draft):
            if piece.text:
                yield piece.text

    def stream_pieces(self, prompt: Prompt | Sequence[Prompt], *, progress: Progress | None = None,
                      cancel: Callable[[], bool] | None = None,
                      completions: list[Completion] | None = None, **options: Any) -> Iterator[Piece]:
        """Every step of generation as Piece(sequence, text, token): the text that became final for that
        sequence ("" while held back) and the token with its log-probabilities (logprobs=k). Several
        prompts and samples stream together (sequence i*n + j is sample j of prompt i); `completions`, if
        a list, receives the finished Completion objects at the end."""
        prompts, _ = self._prompts(prompt)
        opts, draft = self._options(options)
        yield from stream_completions(self.params, self.config, self.tokenizer, prompts,
                                      opts, progress=progress,
                                      completions=completions, cancel=cancel, draft=draft)

    def _options(self, options: dict[str, Any]) -> tuple[GenerationOptions, tuple[Params, GPTConfig] | None]:
        """The generation options, and the draft model's (params, config) taken out of them: draft_model
        is a LanguageModel or a name load() takes, refused unless its tokenizer is this model's."""
        options = dict(options)
        draft = options.pop("draft_model", None)
        structured = {k: options.pop(k) for k in ("regex", "json_schema", "json_object") if k in options}
        structured = {k: v for k, v in structured.items() if v is not None and v is not False}   # None: not given
        if structured:
            if options.get("constraint") is not None:
                raise NumgptError(f"give constraint= or {' and '.join(f'{k}=' for k in structured)}, not both")
            options["constraint"] = self.constraint(**structured, stop_at_eos=options.get("stop_at_eos", True))
        opts = checked_options(options)
        if draft is None:
            return opts, None
        if opts.speculative != "draft":
            raise NumgptError("draft_model applies only with speculative='draft'; add it, or drop draft_model")
        if isinstance(draft, (str, os.PathLike)):
            draft = load(draft)
        if not isinstance(draft, LanguageModel):
            raise NumgptError(f"draft_model must be a LanguageModel or a model name, got {describe(draft)}")
        check_draft_model(self, draft)
        return opts, (draft.params, draft.config)

    def constraint(self, *, regex: str | None = None, json_schema: Any = None, json_object: bool = False,
                   stop_at_eos: bool = True) -> Any:
        """The Constraint generation options take as constraint=... (what regex=, json_schema= and
        json_object=True build): exactly one of them; the text ends at <|endoftext|> only where it is a
        whole match (numgpt/structured). Kept per schema, so using it again costs nothing."""
        from .structured import build_constraint
        ends = () if not stop_at_eos or self.tokenizer.eot_id is None else (self.tokenizer.eot_id,)
        return build_constraint(self.tokenizer, regex=regex, json_schema=json_schema, json_object_mode=json_object,
                                end_ids=ends, vocab_size=self.config.vocab_size)

    def _prompts(self, prompt: Prompt | Sequence[Prompt]) -> tuple[list[Prompt], bool]:
        """(the prompts as a list, whether one prompt was given), each checked: text, or token ids."""
        if isinstance(prompt, str):
            return [prompt], True
        if isinstance(prompt, (list, tuple, np.ndarray)) and len(prompt) and all(_is_id(t) for t in prompt):
            return [_token_ids("prompt", prompt, self.config.vocab_size)], True
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise NumgptError("prompt must be a str, a list of token ids, or a non-empty list of those, got "
                              + ("an empty list" if isinstance(prompt, (list, tuple)) else describe(prompt)))
        out: list[Prompt] = []
        for k, p in enumerate(prompt):
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, (list, tuple, np.ndarray)):
                out.append(_token_ids(f"prompt[{k}]", p, self.config.vocab_size))
            else:
                raise NumgptError(f"prompt[{k}] must be a str or a list of token ids, got {describe(p)}")
        return out, False

    # ---- embeddings ---------------------------------------------------------------------------------

    def embed(self, inputs: Prompt | Sequence[Prompt], *, pooling: str = "mean", truncate: bool = False,
              batch_tokens: int = BATCH_TOKENS) -> np.ndarray:
        """Embedding vectors: the final hidden states (after ln_f, as transformers' GPT2Model) pooled over
        each input's tokens, "mean" or "last" (numgpt/embeddings.py). One input (text or token ids) ->
        float32 [C]; a list of them -> [n, C], batched by length. An input beyond the context is refused,
        or cut to its first n_positions tokens if truncate."""
        if isinstance(inputs, np.ndarray):
            inputs = inputs.tolist()                           # ids [T], or rows of ids [n, T]
        single = isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and len(inputs) > 0
                                             and all(_is_id(t) for t in inputs))
        items = [inputs] if single else inputs
        if not isinstance(items, (list, tuple)) or not items:
            raise NumgptError("inputs must be a str, a list of token ids, or a non-empty list of those, got "
                              + ("an empty list" if isinstance(items, (list, tuple)) else describe(items)))
        scalars = [p for p in items if not isinstance(p, (str, list, tuple, np.ndarray))]
        if scalars and len(scalars) < len(items):
            mixed = "strings" if any(isinstance(p, str) for p in items) else "lists of token ids"
            raise NumgptError(f"inputs mixes {mixed} and single token ids: give a text, a list of texts, a list "
                              "of token ids, or a list of lists of ids")
        if scalars:
            raise NumgptError(f"inputs holds {describe(next(p for p in scalars if not _is_id(p)))}: token ids "
                              "must be ints")
        ids = [self.encode(p) if isinstance(p, str) else _token_ids(f"inputs[{k}]", p, allow_empty=True)
               for k, p in enumerate(items)]
        out = embed_ids(self.params, self.config, ids, pooling=pooling, truncate=truncate, batch_tokens=batch_tokens)
        return out[0] if single else out

    # ---- scoring ------------------------------------------------------------------------------------

    def prompt_logprobs(self, prompt: Prompt, *, top: int = 0) -> list[TokenLogprob | None]:
        """Each token of the prompt with ln p(token | tokens before it) and the `top` most likely
        alternatives there; None for the first token, which nothing predicts (OpenAI's echo)."""
        top = whole_number("top", top, minimum=0)
        (ids,), _ = self._prompts([prompt])
        ids = encode_prompt(self.tokenizer, ids) if isinstance(ids, str) else list(ids)
        if len(ids) < 2:
            return [None] * len(ids)
        logits = self.logits(ids[:-1])                                          # [T-1, V]
        return [None] + token_logprob_rows(logits, np.asarray(ids[1:]), top)

    def score(self, text: str, *, stride: int | None = None, bos: bool | None = None,
              progress: Progress | None = None) -> Perplexity:
        """Perplexity, bits per byte and token counts of a text (definitions in numgpt/scoring.py)."""
        return perplexity(self.params, self.config, self.tokenizer, _text("text", text), stride=stride, bos=bos,
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


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise NumgptError(f"{name} must be a str, got {describe(value)}"
                          + ("; decode bytes first" if isinstance(value, bytes) else ""))
    return value


def _is_id(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _token_ids(name: str, ids: object, vocab_size: int | None = None, *, allow_empty: bool = False) -> list[int]:
    """A list of token ids, checked: ints (not bools), in the vocabulary when its size is given, not
    empty unless allowed."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple, np.ndarray)):
        raise NumgptError(f"{name} must be a list of token ids, got {describe(ids)}")
    bad = [t for t in ids if not _is_id(t)]
    if bad:
        raise NumgptError(f"{name} must hold token ids (ints), got {describe(bad[0])}")
    out = [int(t) for t in ids]
    if not out and not allow_empty:
        raise NumgptError(f"{name} is empty: give at least one token id")
    if vocab_size is not None and not all(0 <= t < vocab_size for t in out):
        raise NumgptError(f"{name}: token ids must be in 0..{vocab_size - 1}, got {min(out)}..{max(out)}")
    return out


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers map text to the same ids (same vocabulary, merges and special tokens)."""
    if a is b:
        return True
    return all(getattr(a, name, None) == getattr(b, name, None) for name in ("_vocab", "_merges", "_special")) \
        and a.vocab_size == b.vocab_size and a.eot_id == b.eot_id


def check_draft_model(model: LanguageModel, draft: LanguageModel) -> None:
    """A draft model for speculative decoding must share the model's tokenizer and vocabulary (one line if not)."""
    name = f"the draft model {draft.folder}" if draft.folder else "the draft model"
    if draft.config.vocab_size != model.config.vocab_size:
        raise NumgptError(f"{name} has a vocabulary of {draft.config.vocab_size} tokens, the model "
                          f"{model.config.vocab_size}: a draft model must share the model's tokenizer")
    if not same_tokenizer(model.tokenizer, draft.tokenizer):
        raise NumgptError(f"{name} has another tokenizer (the same {draft.config.vocab_size} ids, other tokens or "
                          "merges): a draft model must share the model's tokenizer")


def checked_options(options: dict[str, Any]) -> GenerationOptions:
    """LanguageModel's **options as GenerationOptions (`GenerationOptions.from_mapping`: an unknown name is an
    UnknownOptionError, a NumgptError and a TypeError, listing the known ones)."""
    return GenerationOptions.from_mapping(options)


def generation_options(**options: Any) -> GenerationOptions:
    """GenerationOptions from transformers-style keyword arguments (max_new_tokens, do_sample, temperature,
    top_k, top_p, repetition_penalty, num_return_sequences, seed, stop, stop_at_eos, sliding_window,
    window_stride, logprobs, plus OpenAI's min_p, presence_penalty, frequency_penalty and logit_bias)."""
    return GenerationOptions.from_mapping(options)
