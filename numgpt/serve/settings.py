"""What `numgpt serve` is started with: one frozen dataclass the app, its routes and middleware read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .chat import ChatTemplate, ModelChatTemplate
from .judges import Reference, RewardModel


@dataclass(frozen=True)
class ServerSettings:
    """What `numgpt serve` is started with (see its --help for each)."""

    model_name: str = "numgpt"
    api_key: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    max_tokens_limit: int | None = None      # None: the model's context
    max_body_bytes: int = 1 << 20
    request_timeout: float = 300.0
    log_prompts: bool = False
    chat_template: ChatTemplate | ModelChatTemplate | None = ChatTemplate()   # None: chat off
    reward_model: RewardModel | None = None      # the Chat tab's reward of a reply (--reward-model)
    reference: Reference | None = None           # DPO's reference, for the implicit reward (--reference)
    speculative: str | None = None               # "ngram" or "draft": every request decodes speculatively
    num_draft: int | None = None                 # tokens drafted per forward (None: generate's default)
    draft_model: Any = None                      # the LanguageModel drafting for speculative="draft"
    embedding_pooling: str = "mean"              # /v1/embeddings' pooling: "mean" or "last" (numgpt.embeddings)
    adapter: str | None = None                   # the LoRA adapter merged into the model (--adapter), said in /v1/models
