"""GRPO's loss on sampled tokens and its hand-written backward: RL on verifiable rewards (issue 22, item 3).

For each prompt G answers are sampled and rewarded; within each group of G the advantage of answer i is

    A_i = (r_i - mean(r)) / (std(r) + eps)          std with Bessel's correction, eps = 1e-4 (TRL's)

so a group whose rewards are all equal has A = 0 and teaches nothing through the policy term. Every
sampled token t of answer i then carries (ratio = exp(logp - logp_old), d = ref_logp - logp):

    l_t = -min(ratio * A_i, clip(ratio, 1 - eps_clip, 1 + eps_clip) * A_i)  +  beta * (exp(d) - d - 1)

PPO's clipped surrogate and the k3 estimator of KL(policy || reference) (Schulman's; GRPO's paper, TRL's
GRPOTrainer). logp is the model's log-probability at temperature 1 (nanochat's convention; TRL divides
the logits by the sampling temperature first). With one update per sampled batch the sampling policy IS
the current one: logp_old is logp itself, held constant (TRL's detach), so ratio = 1 and the clip never acts.

Normalisation: per token within each group, then the mean over the groups,

    loss = mean over groups g of  sum over the tokens of g's G answers of l_t  /  (tokens of g's answers)

Every token of a group weighs the same, so a long wrong answer is pushed down per token as hard as a
short one (DAPO's argument against GRPO's per-sequence mean, which lets long answers grow), and the
normaliser is local to a group, which one rank samples whole: no token count has to cross the ranks, and
the loss of a batch does not depend on how its rows are split (TRL's default "dapo" normalises over every
token of the whole batch, a count that would need a sum over the ranks first). The batch carries that
normalisation as `norm` = G / (tokens of the group) on each sampled token (0 elsewhere), so the loss is
sum(norm * l) / B over the B rows, the form training/objective.py's loss functions return.

The backward: d loss / d logp_t is one scalar per token, so the model's backward is the weighted
cross-entropy's (nll = -logp) with weights w_t = -norm_t * dl_t/dlogp_t:

    dl/dlogp = -ratio * A * [not clipped]  +  beta * (1 - exp(d))

where "clipped" is where the min takes the constant clipped branch (A > 0 and ratio > 1 + eps_clip, or
A < 0 and ratio < 1 - eps_clip): there the gradient is 0.

Shape legend: B rows (answers), T time, N = B * T positions, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..backprop import (Workspace, check_batch, forward_for_training, hidden_forward, trained_rows_backward,
                        trained_rows_nll)
from ..config import GPTConfig
from ..errors import NumgptError
from ..ops import token_nll_, weighted_cross_entropy_backward
from ..params import Params
from ..training.objective import Batch, with_frozen

ADVANTAGE_EPS = 1e-4          # added to the group's std (TRL's value): a group of equal rewards gets A = 0


def group_advantages(rewards: np.ndarray, *, eps: float = ADVANTAGE_EPS) -> np.ndarray:
    """(r - mean) / (std + eps) within each group, std with Bessel's correction (torch.std's, TRL's).
    [P, G] -> [P, G] float64; G must be >= 2."""
    r = np.asarray(rewards, dtype=np.float64)                         # [P, G]
    if r.ndim != 2 or r.shape[1] < 2:
        raise NumgptError(f"rewards must be [prompts, group] with a group of at least 2, got {r.shape}")
    mean = r.mean(axis=1, keepdims=True)                              # [P, 1]
    std = r.std(axis=1, ddof=1, keepdims=True)                        # [P, 1]
    return (r - mean) / (std + eps)


def grpo_token_terms(logp: np.ndarray, old: np.ndarray, ref: np.ndarray, adv: np.ndarray, *, clip: float,
                     kl: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(l_t, dl_t/dlogp_t, k3_t) per sampled token (module docstring), float64, each [n] like the inputs."""
    ratio = np.exp(logp - old)                                        # [n]
    clipped_ratio = np.clip(ratio, 1.0 - clip, 1.0 + clip)
    surrogate = np.minimum(ratio * adv, clipped_ratio * adv)
    d = ref - logp
    k3 = np.exp(d) - d - 1.0                                          # >= 0, KL(policy || ref) in expectation
    terms = -surrogate + kl * k3
    clipped = ((adv > 0) & (ratio > 1.0 + clip)) | ((adv < 0) & (ratio < 1.0 - clip))
    dlogp = np.where(clipped, 0.0, -ratio * adv) + kl * (1.0 - np.exp(d))
    return terms, dlogp, k3


@dataclass(frozen=True)
class GrpoLoss:
    """GRPO's loss function (objective.LossFn) of batch = (ids, targets, norm, adv, old, ref): ids and
    targets [b, T] (prompt + answer, padded), norm [b, T] (G / tokens of the group on sampled tokens, else
    0), adv [b] the row's advantage, old and ref [b, T] the sampling policy's and the reference's logp of
    each target. on_policy: one update per sampled batch, logp_old = logp (old is not read)."""

    clip: float
    kl: float
    on_policy: bool = True

    def __call__(self, params: Params, config: GPTConfig, batch: Batch, grads: Params, *, scale: float = 1.0,
                 dropout: float = 0.0, rng: np.random.Generator | None = None,
                 workspace: Workspace | None = None, block_done: Callable[[int], None] | None = None) -> float:
        ids, targets, norm, adv, old, ref = batch
        check_batch(config, ids, targets)
        ws = Workspace() if workspace is None else workspace
        B, T = ids.shape
        xf, tape = hidden_forward(params, config, ids, dropout=dropout, rng=rng)   # [B, T] -> [N, C]
        keep, nll, probs = trained_rows_nll(params, xf, norm, targets, ws)   # the sampled tokens: [n], [N], [n, V]
        loss, weights = self.token_weights(-nll, batch)               # float, [N] d loss / d nll
        dlogits = weighted_cross_entropy_backward(probs, targets.reshape(-1)[keep], weights[keep], scale=scale / B)
        trained_rows_backward(dlogits, keep, xf, tape, params, config, with_frozen(params, grads, ws), workspace=ws,
                              block_done=block_done)
        return loss / B

    def token_weights(self, logp: np.ndarray, batch: Batch) -> tuple[float, np.ndarray]:
        """(sum of norm * l over the batch, d that sum / d nll per position [N]) from logp [N] of every
        position; positions with norm 0 (prompt, padding) count for nothing and get weight 0."""
        _, targets, norm, adv, old, ref = batch
        B, T = targets.shape
        n = norm.reshape(-1)                                          # [N]
        on = np.flatnonzero(n)                                        # the sampled tokens
        lp = logp[on]
        a = np.repeat(np.asarray(adv, dtype=np.float64), T)[on]       # [B] -> [N] -> [n]
        o = lp if self.on_policy else old.reshape(-1)[on]
        terms, dlogp, _ = grpo_token_terms(lp, o, ref.reshape(-1)[on], a, clip=self.clip, kl=self.kl)
        weights = np.zeros(B * T, dtype=np.float64)
        weights[on] = -n[on] * dlogp                                  # nll = -logp
        return float(np.dot(n[on], terms)), weights


def grpo_value(loss: GrpoLoss, params: Params, config: GPTConfig, batch: Batch) -> float:
    """The loss of `GrpoLoss` without gradients (tests, diagnostics)."""
    ids, targets = batch[0], batch[1]
    logits, _ = forward_for_training(params, config, ids)
    nll, _ = token_nll_(logits, targets.reshape(-1))
    return loss.token_weights(-nll, batch)[0] / ids.shape[0]
