"""Scoring a model on the synthetic tasks: greedy exact match per family, format compliance, bits per byte.

    exact match        synth.check on the greedy reply (the held-out templates: phrasings never trained on)
    format compliance  the reply ends with the template's end token (<|end|>) within max_new_tokens and
                       carries an answer the checker can read (synth.extract_answer is not None)
    bits per byte      scoring.perplexity of a text: did post-training keep the language model?

A chat model answers its chat template's prompt; a base model (no chat tokens) answers a few-shot
"Question: ...\\nAnswer:" prompt (corpus.question_answer) and its reply ends at the first newline.
Replies are generated in batches through numgpt's batched decoding (generate.generate_ids).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..config import GPTConfig
from ..errors import NumgptError
from ..params import Params
from ..sampling import SamplingOptions
from .synth import REPLY_TOKENS, check, extract_answer, prompt_messages

BATCH = 32


def greedy_replies(params: Params, config: GPTConfig, prompts: Sequence[list[int]], stop_id: int, *,
                   max_new_tokens: int = REPLY_TOKENS, batch: int = BATCH) -> list[list[int]]:
    """The greedy continuation of each prompt up to and including stop_id (or max_new_tokens, fewer when
    the longest prompt leaves less room in the context)."""
    from ..generate import generate_ids

    longest = max((len(p) for p in prompts), default=0)
    room = min(max_new_tokens, config.n_positions - longest)
    if room <= 0:
        raise NumgptError(f"a prompt of {longest} tokens leaves no room to answer in the model's context of "
                          f"{config.n_positions}")
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch):
        out += generate_ids(params, config, list(prompts[i:i + batch]), max_new_tokens=room,
                            sampling=SamplingOptions(temperature=0), stop_ids=[stop_id])
    return out


def chat_replies(params: Params, config: GPTConfig, tokenizer, tasks: Sequence[Mapping], *,
                 max_new_tokens: int = REPLY_TOKENS) -> tuple[list[str], list[bool]]:
    """A chat model's greedy reply to each task (text without the end token) and whether it ended."""
    from .chat_format import chat_template

    template = chat_template(tokenizer)
    prompts = [template.render(prompt_messages(t), add_generation_prompt=True) for t in tasks]
    new = greedy_replies(params, config, prompts, template.end_id, max_new_tokens=max_new_tokens)
    ended = [bool(ids) and ids[-1] == template.end_id for ids in new]
    return [tokenizer.decode([t for t in ids if t != template.end_id]) for ids in new], ended


def few_shot_replies(params: Params, config: GPTConfig, tokenizer, tasks: Sequence[Mapping],
                     shots: Sequence[Mapping], *, max_new_tokens: int = REPLY_TOKENS) -> tuple[list[str], list[bool]]:
    """A base model's greedy reply to a few-shot Question/Answer prompt, cut at its first newline."""
    from .corpus import question_answer

    prefix = "".join(question_answer(s) + "\n\n" for s in shots)
    newline = tokenizer.encode("\n")[0]
    keep = max(config.n_positions - max_new_tokens, config.n_positions // 2)   # the prompt's last tokens
    prompts = [tokenizer.encode(prefix + question_answer(t, answer=False))[-keep:] for t in tasks]
    new = greedy_replies(params, config, prompts, newline, max_new_tokens=max_new_tokens)
    ended = [bool(ids) and ids[-1] == newline for ids in new]
    return [tokenizer.decode([t for t in ids if t != newline]).strip() for ids in new], ended


def scores(tasks: Sequence[Mapping], replies: Sequence[str], ended: Sequence[bool]) -> dict:
    """{"exact_match": {family: share}, "exact_match_all", "format_compliance"} of replies to tasks."""
    per: dict[str, list[bool]] = {}
    for task, reply in zip(tasks, replies):
        per.setdefault(task["family"], []).append(check(task, reply))
    formatted = [e and extract_answer(t, r) is not None for t, r, e in zip(tasks, replies, ended)]
    return {"exact_match": {f: round(float(np.mean(ok)), 4) for f, ok in sorted(per.items())},
            "exact_match_all": round(float(np.mean([check(t, r) for t, r in zip(tasks, replies)])), 4),
            "format_compliance": round(float(np.mean(formatted)), 4)}


def chat_scores(params: Params, config: GPTConfig, tokenizer, tasks: Sequence[Mapping]) -> dict:
    return scores(tasks, *chat_replies(params, config, tokenizer, tasks))


def few_shot_scores(params: Params, config: GPTConfig, tokenizer, tasks: Sequence[Mapping],
                    shots: Sequence[Mapping]) -> dict:
    return scores(tasks, *few_shot_replies(params, config, tokenizer, tasks, shots))


def bits_per_byte(params: Params, config: GPTConfig, tokenizer, text: str) -> float:
    """scoring.perplexity's bits per byte of text (with BOS when the vocabulary has <|endoftext|>)."""
    from ..scoring import perplexity
    return float(perplexity(params, config, tokenizer, text).bits_per_byte)
