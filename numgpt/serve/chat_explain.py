"""POST /v1/explain/chat: what the playground's Chat tab draws for an assistant turn. For the LAST message of
a conversation (the assistant's reply): its tokens, each token's probability under the served model given
everything before it (one forward over the rendered conversation), whether the SFT loss trains the token
(the chat format's mask), and the reply's reward -- a reward model's score (`--reward-model`) and/or DPO's
implicit reward beta * (log pi(reply) - log pi_ref(reply)) (`--reference`, `--dpo-beta`).

    POST /v1/explain/chat {"messages": [..., {"role": "user", ...}, {"role": "assistant", "content": "..."}]}
    -> {"template", "prompt_tokens", "tokens", "ids", "logprobs", "probabilities", "trained", "trained_note",
        "rewards": [{"kind", "name", "value", ...}], "reward_note"}

How the reply is placed: exactly where /v1/chat/completions generated it. On a chat model (its own
template) the conversation is the format's render_for_training(messages) -- posttrain's, reached through
ModelChatTemplate, which the CLI built -- and the reply is what follows the prompt ids of the messages
before it: its content's tokens and the end-of-turn token (whose probability is the model's will to stop
there); `trained` is SFT's mask over them. On a base model's transcript the prompt is the transcript up to
"Assistant:" and the reply is the rest of its turn (" {content}\\n"), encoded apart as generation produced
it; a transcript has no SFT mask (`trained` is null and `trained_note` says why).
Subtle: the reply is encoded again from its text; a sampled reply whose tokens are not BPE's own split of
the text is scored as BPE splits it -- the tokens a trainer would see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..errors import NumgptError
from ..generate import encode_prompt
from ..model import check_context
from ..scoring import token_logprobs
from .chat import ChatTemplate, ModelChatTemplate
from .errors import APIError
from .explain_routes import off_loop
from .judges import Reference, RewardModel
from .schemas import STRICT, Message

MAX_MESSAGES = 256     # a conversation must fit the model's context anyway; this bounds the work before that check
NO_MASK = ("no SFT mask: this model is served with a plain-text transcript, not a chat format numgpt trained "
           "(a model fine-tuned by numgpt sft has one, and its own template is used unless --chat-template)")
NO_REWARD = ("no reward: start the server with --reward-model RM (a reward model's score) or --reference MODEL "
             "(DPO's implicit reward against that reference)")


class ChatExplainRequest(BaseModel):
    model_config = STRICT
    messages: list[Message] = Field(..., min_length=1, max_length=MAX_MESSAGES,
                                    description="the conversation, ending with the assistant's reply to explain")


@dataclass(frozen=True)
class RenderedReply:
    """A conversation as token ids with the reply last: ids[start:] are the reply's tokens; `trained` is
    SFT's mask over them (None for a transcript, which has none)."""

    ids: list[int]
    start: int
    trained: list[int] | None


@dataclass(frozen=True)
class ChatView:
    """The reply's tokens with their probabilities, SFT mask and rewards (the JSON of /v1/explain/chat)."""

    template: str
    prompt_tokens: int
    tokens: list[str]
    ids: list[int]
    logprobs: list[float]            # ln p(token | everything before it), float64
    trained: list[bool] | None
    rewards: list[dict]

    def to_json(self) -> dict:
        return {"template": self.template, "prompt_tokens": self.prompt_tokens, "tokens": self.tokens,
                "ids": self.ids, "logprobs": self.logprobs,
                "probabilities": [float(np.exp(lp)) for lp in self.logprobs],
                "trained": self.trained, "trained_note": NO_MASK if self.trained is None else None,
                "rewards": self.rewards, "reward_note": None if self.rewards else NO_REWARD}


def chat_explain_router(lm, settings) -> APIRouter:
    """POST /v1/explain/chat for `lm` (the served LanguageModel) with the server's chat template and judges."""
    router = APIRouter()

    @router.post("/v1/explain/chat")
    async def chat(body: ChatExplainRequest):
        template = settings.chat_template
        if template is None:
            raise APIError(400, "chat is turned off on this server (--chat-template none)", code="chat_disabled")
        pairs = [(m.role, m.text()) for m in body.messages]
        return await off_loop(settings.request_timeout, chat_view, lm, template, pairs,
                              reward_model=settings.reward_model, reference=settings.reference)

    return router


def chat_view(lm, template: ChatTemplate | ModelChatTemplate, messages: list[tuple[str, str]], *,
              reward_model: RewardModel | None = None, reference: Reference | None = None) -> ChatView:
    """The view of the last message (the assistant's reply) of `messages`, (role, text) pairs."""
    if messages[-1][0] != "assistant":
        raise NumgptError(f"the last message is the {messages[-1][0]}'s: end the conversation with the "
                          "assistant's reply to explain")
    reply = render_reply(template, lm.tokenizer, messages)
    check_context(lm.config, len(reply.ids), fix="start a new chat (this view scores the whole conversation "
                                                  "in one pass)")
    logprobs = reply_logprobs(lm, reply)                                          # [R]
    rewards = []
    if reward_model is not None:
        conversation = [{"role": "system" if r == "developer" else r, "content": t} for r, t in messages]
        rewards.append({"kind": "reward model", "name": reward_model.name,
                        "value": float(reward_model.score(conversation))})
    if reference is not None:
        rewards.append(dpo_reward(reference, reply, float(logprobs.sum())))
    return ChatView(template="model's own" if isinstance(template, ModelChatTemplate) else "transcript",
                    prompt_tokens=reply.start, tokens=[lm.tokenizer.decode([i]) for i in reply.ids[reply.start:]],
                    ids=reply.ids[reply.start:], logprobs=logprobs.tolist(),
                    trained=None if reply.trained is None else [bool(m) for m in reply.trained], rewards=rewards)


def render_reply(template: ChatTemplate | ModelChatTemplate, tokenizer, messages: list[tuple[str, str]]
                 ) -> RenderedReply:
    """The conversation's ids with the reply last, placed where chat generation put it (module docstring)."""
    if isinstance(template, ModelChatTemplate):
        ids, mask = template.training_ids(messages)
        prompt = template.prompt_ids(tokenizer, messages[:-1])
        if ids[:len(prompt)] != prompt:     # the format promises it (posttrain.chat_format's docstring, (b))
            raise NumgptError("the chat format's prompt is not a prefix of the rendered conversation")
        return RenderedReply(ids, len(prompt), mask[len(prompt):])
    prompt_text = template.render(messages[:-1])                     # ends with the generation prompt
    turn = template.render(messages)[:-len(template.generation_prompt) or None]   # without the next one
    if not turn.startswith(prompt_text):
        raise NumgptError("this transcript template's assistant turn does not begin with its generation prompt "
                          f"({template.generation_prompt!r}), so a reply cannot be placed after it")
    prompt = encode_prompt(tokenizer, prompt_text)
    reply = tokenizer.encode(turn[len(prompt_text):], allowed_special="all")
    return RenderedReply(prompt + reply, len(prompt), None)


def reply_logprobs(lm, reply: RenderedReply) -> np.ndarray:
    """ln p(token | everything before it) of each reply token: one forward over the conversation. -> [R]"""
    return token_logprobs(lm.params, lm.config, reply.ids)[reply.start - 1:]     # [T - 1] -> [R]


def dpo_reward(reference: Reference, reply: RenderedReply, policy_logprob: float) -> dict:
    """DPO's implicit reward of the reply against the reference, with the two sums it is made of."""
    check_context(reference.lm.config, len(reply.ids), fix="the reference model's context is shorter: start a "
                                                            "new chat")
    ref = float(reply_logprobs(reference.lm, reply).sum())
    return {"kind": "implicit DPO", "name": reference.name, "beta": reference.beta,
            "value": float(reference.reward(policy_logprob, ref, reference.beta)),
            "policy_logprob": policy_logprob, "reference_logprob": ref}
