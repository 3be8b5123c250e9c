"""What judges a reply in the playground's Chat tab (POST /v1/explain/chat, chat_explain.py): a reward model
(`numgpt serve --reward-model RM`) and DPO's reference model (`--reference MODEL --dpo-beta B`).

Both are built by the CLI and handed in through ServerSettings: the reward model is numgpt.posttrain's,
and serve never imports posttrain (the house rule tests/test_layout.py checks); the reference is a plain
LanguageModel whose log-probabilities serve computes with the core's own scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Conversation = Sequence[Mapping[str, str]]      # [{"role": ..., "content": ...}, ...], the reply last


@dataclass(frozen=True)
class RewardModel:
    """A reward model the CLI loaded: `score(conversation)` is the reward of a conversation that ends with
    the assistant's reply (a Bradley-Terry score: only differences between replies mean something);
    `name` says which model it is (shown beside the reward)."""

    name: str
    score: Callable[[Conversation], float]


def implicit_reward(policy_logprob: float, reference_logprob: float, beta: float) -> float:
    """DPO's implicit reward of a reply: beta * (log pi(reply) - log pi_ref(reply)), each log-probability the
    sum over the reply's tokens (Rafailov et al. 2023, eq. 5, without the prompt-only term that cancels)."""
    return beta * (policy_logprob - reference_logprob)


@dataclass(frozen=True)
class Reference:
    """DPO's reference model (a LanguageModel with the served model's vocabulary) and beta: the implicit
    reward is `reward(log pi(reply), log pi_ref(reply), beta)`; `name` says which model it is."""

    lm: Any
    beta: float
    name: str
    reward: Callable[[float, float, float], float] = implicit_reward
