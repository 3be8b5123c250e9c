"""numgpt's chat format: the special tokens of a conversation, rendered to ids (with SFT's loss mask), and
the same format as a Jinja `chat_template` so that transformers' `apply_chat_template` gives the same ids.

The format. A conversation starts with '<|endoftext|>' (the document separator GPT-2 was pre-trained
with: a new document begins), then each message is its role's token, its content, and '<|end|>':

    <|endoftext|><|system|>You count.<|end|><|user|>1, 2, ...<|end|><|assistant|>3<|end|>

with nothing between the tokens and the contents (no newlines). Why: special tokens cut the text into
segments that BPE encodes separately, so every content is encoded on its own, exactly as it would be
alone. Then (a) the loss mask is exact (no token straddles a header and a content, as "\\n" + content
can), (b) the generation prompt '<|endoftext|>...<|assistant|>' is a prefix of the rendered conversation
that continues it, so what the model sees when it answers is what it was trained on, and (c) a reply is
`encode(content) + [<|end|>]`, which DPO and RL can append to a rendered prompt. The model ends its
turn with '<|end|>' (the id to stop generating at: `ChatTemplate.end_id`).

The rules: an optional system message first (and only first), then user and assistant messages
alternating, starting with the user; each message is a mapping with "role" and "content" (a str); other
keys are ignored, except OpenAI's "weight" (0 or 1) on an assistant message, 0 meaning "shown, not
trained on". With the generation prompt the last message must be the user's. Anything else is a
one-line NumgptError (the Jinja template raises for the same role, order and content errors).

Special-token strings inside a content (a user typing '<|end|>'): by default they are plain text, so a
message can never forge or end a turn; the content is cut at each such string and each part, the string
included, is encoded as ordinary text -- exactly transformers' `apply_chat_template(...,
sanitize_control_tokens=True)`. With allow_special=True they become their special tokens, as
transformers' `apply_chat_template` does by default (for trusted data that writes turns on purpose).

The SFT loss mask (`render_for_training`): 1 on each assistant message's content tokens and its '<|end|>'
(learning to stop), 0 on everything else -- transformers' `return_assistant_tokens_mask=True` over the
template's `{% generation %}` blocks gives the same mask.

Adding the tokens to a model (`add_chat_tokens`): new ids after the vocabulary, the tied wte/head grown
by rows equal to the mean of the existing rows. transformers' `resize_token_embeddings(mean_resizing=True)`
samples the new rows from N(mean, 1e-9 * covariance) (modeling_utils.py, 5.x; the plain mean when that
covariance is not positive definite), i.e. the mean plus noise of about 3e-5 of the rows' spread; numgpt
takes the mean itself: the same rows within that noise, deterministic, with no random state to pass.

numgpt does not need jinja2: the renderer is plain Python, and CHAT_TEMPLATE is the same format for HF.
References: transformers' chat templating docs and apply_chat_template; OpenAI's fine-tuning chat format.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..config import GPTConfig
from ..errors import NumgptError
from ..params import Params
from ..tokenizer import ENDOFTEXT, Tokenizer

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (ENDOFTEXT, SYSTEM, USER, ASSISTANT, END)        # in the order they are appended
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
ORDER_RULE = ("an optional system message first, then user and assistant messages alternating, starting "
              "with the user")

# The format above in Jinja, for transformers (whose environment has trim_blocks/lstrip_blocks on: the
# template is written without whitespace outside its tags, so none of that matters). Token strings are
# literals, never built from a role, so that sanitize_control_tokens finds and protects them.
CHAT_TEMPLATE = "".join([
    "{%- set first = 1 if messages[0]['role'] == 'system' else 0 -%}",
    "<|endoftext|>",
    "{%- for message in messages -%}",
    "{%- set expected = 'system' if loop.index0 < first else ['user', 'assistant'][(loop.index0 - first) % 2] -%}",
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}",
    "{{ raise_exception('unknown role ' + message['role'] + ': the roles are system, user and assistant') }}",
    "{%- elif message['role'] != expected -%}",
    "{{ raise_exception('roles out of order: " + ORDER_RULE + "') }}",
    "{%- elif message['content'] is not string -%}",
    "{{ raise_exception('a message content must be a string') }}",
    "{%- elif expected == 'system' -%}<|system|>{{ message['content'] }}<|end|>",
    "{%- elif expected == 'user' -%}<|user|>{{ message['content'] }}<|end|>",
    "{%- elif message['weight'] is defined and message['weight'] == 0 -%}",
    "<|assistant|>{{ message['content'] }}<|end|>",
    "{%- else -%}<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}",
    "{%- endif -%}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt -%}",
    "{%- if ((messages | length) - first) % 2 == 1 -%}<|assistant|>",
    "{%- else -%}{{ raise_exception('add_generation_prompt needs the last message to be from the user') }}",
    "{%- endif -%}",
    "{%- endif -%}",
])


@dataclass(frozen=True)
class ChatTemplate:
    """numgpt's chat format over one tokenizer: renders conversations to ids (see the module docstring).

    `start_id` is '<|endoftext|>', `role_ids` maps each role to its token's id, `end_id` is '<|end|>'
    (where a reply ends: stop generating there)."""

    tokenizer: Tokenizer
    start_id: int
    role_ids: Mapping[str, int]
    end_id: int

    def render(self, messages: Sequence[Mapping], *, add_generation_prompt: bool = False,
               allow_special: bool = False) -> list[int]:
        """A conversation -> ids; with add_generation_prompt, followed by the assistant's token (a prompt)."""
        return self.render_for_training(messages, add_generation_prompt=add_generation_prompt,
                                        allow_special=allow_special, need_reply=False)[0]

    def render_for_training(self, messages: Sequence[Mapping], *, add_generation_prompt: bool = False,
                            allow_special: bool = False, need_reply: bool = True) -> tuple[list[int], list[int]]:
        """(ids, loss mask): the mask is 1 on assistant contents and their '<|end|>' (unless the message has
        "weight": 0), 0 elsewhere. need_reply: refuse a conversation with no assistant message to learn."""
        checked = check_messages(messages, add_generation_prompt=add_generation_prompt)
        if need_reply and not any(role == "assistant" for role, _, _ in checked):
            raise NumgptError("the conversation has no assistant message: nothing to learn from")
        ids, mask = [self.start_id], [0]
        for role, content, trained in checked:
            body = [*self.encode_content(content, allow_special=allow_special), self.end_id]
            ids += [self.role_ids[role], *body]
            mask += [0, *[int(trained)] * len(body)]
        if add_generation_prompt:
            ids.append(self.role_ids["assistant"])
            mask.append(0)
        return ids, mask

    def render_reply(self, content: str, *, allow_special: bool = False) -> list[int]:
        """An assistant reply as it follows a generation prompt: its content's ids and '<|end|>'."""
        return [*self.encode_content(_content(content, "the reply"), allow_special=allow_special), self.end_id]

    def encode_content(self, content: str, *, allow_special: bool = False) -> list[int]:
        """A message's content -> ids. Special-token strings in it are plain text, each encoded apart from
        the text around it (as transformers' sanitize_control_tokens does), or special ids if allowed."""
        tok = self.tokenizer
        if allow_special:
            return tok.encode(content, allowed_special="all")
        ids: list[int] = []
        rest = content
        while (found := tok.find_special(rest)) is not None:
            token, at = found
            ids += tok.encode_ordinary(rest[:at]) + tok.encode_ordinary(token)
            rest = rest[at + len(token):]
        return ids + tok.encode_ordinary(rest)


def check_messages(messages: Sequence[Mapping], *, add_generation_prompt: bool = False
                   ) -> list[tuple[str, str, bool]]:
    """(role, content, trained) of each message, after checking the format's rules (module docstring);
    `trained` is False for an assistant message with "weight": 0 and for every other role."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence) or not messages:
        raise NumgptError(f"a conversation is a non-empty list of messages, got {type(messages).__name__}"
                          f"{' (empty)' if isinstance(messages, Sequence) and not messages else ''}")
    first = 1 if isinstance(messages[0], Mapping) and messages[0].get("role") == "system" else 0
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise NumgptError(f"messages[{i}]: a message is an object with role and content, got "
                              f"{type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLE_TOKENS:
            raise NumgptError(f"messages[{i}]: unknown role {role!r}; the roles are system, user and assistant")
        expected = "system" if i < first else ("user", "assistant")[(i - first) % 2]
        if role != expected:
            raise NumgptError(f"messages[{i}]: role {role!r} where {expected!r} belongs (roles out of order: "
                              f"{ORDER_RULE})")
        checked.append((role, _content(message.get("content"), f"messages[{i}]"), _trained(message, i)))
    if add_generation_prompt and checked[-1][0] != "user":
        raise NumgptError(f"the conversation must end with the user's message for the assistant to answer, not the "
                          f"{checked[-1][0]}'s (add_generation_prompt)")
    return checked


def _content(content: object, where: str) -> str:
    if not isinstance(content, str):
        raise NumgptError(f"{where}: content must be a string, got {type(content).__name__}")
    return content


def _trained(message: Mapping, i: int) -> bool:
    """Whether SFT learns this message: assistant messages, unless OpenAI's "weight" is 0."""
    weight = message.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise NumgptError(f"messages[{i}]: weight must be 0 or 1 (OpenAI's fine-tuning format), got {weight!r}")
    if weight != 1 and message["role"] != "assistant":
        raise NumgptError(f"messages[{i}]: only assistant messages have a weight (the others are never trained on)")
    return message["role"] == "assistant" and weight == 1


# ---- a tokenizer's template ---------------------------------------------------------------------------

def chat_template(tokenizer: Tokenizer) -> ChatTemplate | None:
    """numgpt's chat format over `tokenizer`, or None when the tokenizer has no chat template (a base
    model: callers keep their plain-text transcript). A template that is not numgpt's, or chat tokens
    missing, is a NumgptError: numgpt renders only its own format (it does not run Jinja)."""
    if tokenizer.chat_template is None:
        return None
    if tokenizer.chat_template != CHAT_TEMPLATE:
        raise NumgptError("the tokenizer's chat_template is not numgpt's chat format, which is the only one numgpt "
                          "renders (it does not run Jinja); add numgpt's with numgpt.posttrain.with_chat_tokens")
    special = tokenizer.special_tokens
    missing = [t for t in CHAT_TOKENS if t not in special]
    if missing:
        raise NumgptError(f"the chat template uses {missing[0]!r}, which is not a special token of this vocabulary; "
                          "add the chat tokens with numgpt.posttrain.with_chat_tokens")
    return ChatTemplate(tokenizer, special[ENDOFTEXT], {r: special[t] for r, t in ROLE_TOKENS.items()}, special[END])


def load_chat_template(folder: str | os.PathLike) -> ChatTemplate | None:
    """The chat format of a model or tokenizer folder (its tokenizer files), or None when it has no
    chat template (see `chat_template`)."""
    return chat_template(Tokenizer.load(folder))


def render_chat(tokenizer: Tokenizer, messages: Sequence[Mapping], *, add_generation_prompt: bool = False,
                allow_special: bool = False) -> list[int]:
    """A conversation -> ids in numgpt's chat format (the tokenizer needs the chat tokens and template)."""
    return _required(tokenizer).render(messages, add_generation_prompt=add_generation_prompt,
                                       allow_special=allow_special)


def render_for_training(tokenizer: Tokenizer, messages: Sequence[Mapping], *,
                        allow_special: bool = False) -> tuple[list[int], list[int]]:
    """(ids, SFT loss mask) of a conversation: 1 on assistant contents and their '<|end|>', else 0."""
    return _required(tokenizer).render_for_training(messages, allow_special=allow_special)


def _required(tokenizer: Tokenizer) -> ChatTemplate:
    template = chat_template(tokenizer)
    if template is None:
        raise NumgptError("this tokenizer has no chat template; add the chat tokens and numgpt's template with "
                          "numgpt.posttrain.with_chat_tokens (or `numgpt train-tokenizer --chat`)")
    return template


# ---- adding the chat tokens ---------------------------------------------------------------------------

def with_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` with the chat tokens it lacks appended as special tokens (new ids after the current
    ones, in CHAT_TOKENS order) and numgpt's chat template. A vocabulary where one of those strings is an
    ordinary token is refused; one with another chat template is refused rather than overwritten."""
    if tokenizer.chat_template not in (None, CHAT_TEMPLATE):
        raise NumgptError("the tokenizer already has a chat_template that is not numgpt's; numgpt will not "
                          "replace it (remove it from tokenizer_config.json first if that is what you want)")
    return tokenizer.with_special_tokens(CHAT_TOKENS, chat_template=CHAT_TEMPLATE)


def add_chat_tokens(config: GPTConfig, params: Params, tokenizer: Tokenizer
                    ) -> tuple[GPTConfig, Params, Tokenizer]:
    """A model that knows the chat tokens: (config, params, tokenizer) with the missing chat tokens added
    (new ids after the vocabulary), wte (tied to the output head) grown by rows equal to the mean of its
    rows, and config.vocab_size to match. If '<|endoftext|>' is new, it becomes the config's bos/eos where
    those were unset (as numgpt train does for a vocabulary that has it). The inputs are not modified."""
    if tokenizer.vocab_size != config.vocab_size:
        raise NumgptError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                          f"{config.vocab_size}; they belong to different models")
    chat_tok = with_chat_tokens(tokenizer)
    added = chat_tok.vocab_size - tokenizer.vocab_size
    wte = params["wte.weight"]                                      # [V, C]
    mean = wte.mean(axis=0, dtype=np.float64).astype(wte.dtype)     # [C]
    grown = np.concatenate([wte, np.broadcast_to(mean, (added, wte.shape[1]))])   # [V + added, C]
    eot = chat_tok.eot_id if tokenizer.eot_id is None else None
    config = dataclasses.replace(
        config, vocab_size=chat_tok.vocab_size,
        bos_token_id=config.bos_token_id if config.bos_token_id is not None else eot,
        eos_token_id=config.eos_token_id if config.eos_token_id is not None else eot)
    return config, {**params, "wte.weight": grown}, chat_tok
