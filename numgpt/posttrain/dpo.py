"""Direct preference optimisation (DPO, Rafailov et al. 2023): `numgpt train`'s loop with another Objective.

    z    = beta * ((logp_c - ref_c) - (logp_r - ref_r))        one number per pair
    loss = mean over the pairs of -log sigmoid(z)             (TRL's DPOTrainer, loss_type="sigmoid")
         + sft_weight * mean over the batch's chosen-reply tokens of -log p      (loss_type=["sigmoid", "sft"],
                                                                      loss_weights=[1, sft_weight]; RPO)

logp_c (logp_r) is the SUM of the policy's log-probabilities of the chosen (rejected) reply's tokens given
the prompt -- its content and '<|end|>', the prompt's tokens and the padding masked out, as TRL sums its
completion tokens -- and ref_* the same sums under the reference model (the model DPO starts from).

Why the optional SFT term (sft_weight > 0, default 0): when a rejected reply differs from its chosen one by a
digit, DPO can widen the margin by lowering both replies' log-probabilities, and the policy drifts away from
the right answer (Pal et al. 2024; Pang et al.'s RPO adds the chosen reply's negative log-likelihood).
Normalised as SFT's loss is (every chosen-reply token of the whole batch counts the same): a pair's share
is sft_weight * B / W times its -logp_c, W the chosen-reply tokens of the batch's B pairs (nll_scale).

Why no reward model: DPO's optimum of "maximise reward, stay close to the reference (KL, strength 1/beta)"
is pi(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x), so the reward the policy implies is
r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) + beta * log Z(x). Z cancels in the Bradley-Terry preference
sigmoid(r(x, y_c) - r(x, y_r)) = sigmoid(z): maximising the likelihood of the observed preferences trains the
policy directly, and beta * (logp - ref) is the implicit reward (`implicit_reward`, the playground's).

The backward is the weighted cross-entropy backward with per-row weights: d loss / d logp of a reply is one
scalar per row (dz/dlogp_c = beta, dz/dlogp_r = -beta, d(-log sigmoid z)/dz = -sigmoid(-z)), and
d logp / d logits of each reply token is onehot - softmax, so each reply token's logits get
weights[token] * (softmax - onehot) with weights = -(d loss / d logp of its row): ops' weighted cross-entropy
backward, then backprop.backward through the model.

The reference model's sums are computed once, when the pairs are prepared, and stored beside the rows
(RUN/data/train_reference.npy, val_reference.npy, [P, 2] float64), with reference.json holding the sha256 of
the reference weights, of the rows and masks, and of the sums: a prepared folder used with another model,
or whose rows or sums changed, is refused. Training holds one model in memory.

Logged at each evaluation, on a fixed sample of training pairs (train_*) and on the held-out pairs (val_*):
the loss, the reward margin (mean z), the preference accuracy (share of pairs with z > 0), the chosen and
rejected rewards (means of beta * (logp - ref)), and the KL to the reference estimated as the mean per-token
log pi - log pi_ref over the chosen replies' tokens (k1, with the data's chosen replies standing in for
samples of pi: a drift measure that can be negative, not an exact KL).

Data: a pair is two rows of block_size + 1 tokens -- prompt + chosen, prompt + rejected -- each padded with
<|endoftext|>; one sequence per row (no packing: packing would let a reply attend to other pairs and change
its probability). A pair longer than max_tokens (pairs.MAX_TOKENS unless given) or the model's context is
left out and counted, as the reward model's data does (pairs.short_pairs; meta["dpo"] records the limit
and the counts). The batch draws B pairs at random (with replacement) like SFT's; a batch row is a pair.

    setup = setup_dpo("pairs.jsonl", "runs/dpo", init="runs/sft", beta=0.1, options={"max_iters": 200})
    result = setup.run.train()          # training.run.Run with DPO's Objective

Shape legend: P pairs, B pairs of a batch, L = T + 1 row length, T block size, N = 2 B T, V vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from ..backprop import Workspace, check_batch, hidden_forward, trained_rows_backward, trained_rows_nll
from ..config import GPTConfig
from ..errors import NumgptError
from ..ops import weighted_cross_entropy_backward
from ..params import Params, param_shapes
from ..training.comm import Communicator
from ..training.data import Dataset
from ..training.objective import Batch, Objective, with_frozen
from .packing import resume_checkpoint
from .pairs import RenderedPair, check_max_tokens, numbered_pairs, pair_length, render_pair, short_pairs, token_limit
from .sft import held_out_split

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer
    from ..training.loop import Trainer
    from ..training.run import Run

DEFAULT_BETA = 0.1          # TRL's default
DPO_FORMAT = "numgpt-dpo"
REFERENCE_FILE = "reference.json"
VAL_FRACTION = 0.1          # held-out share of the pairs when no val_file is given


def check_beta(beta: float) -> float:
    """beta as a float, or a one-line error: DPO's beta must be a finite number > 0."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise NumgptError(f"beta must be a number > 0, got {beta!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise NumgptError(f"beta must be a finite number > 0 (0.1 is TRL's default), got {beta!r}")
    return value


# ---- the loss over per-sequence log-probabilities, and its backward ---------------------------------------

def dpo_loss_forward(logps: np.ndarray, ref: np.ndarray, beta: float) -> tuple[float, np.ndarray]:
    """(mean over pairs of -log sigmoid(z), z [P]) with z = beta * ((logp_c - ref_c) - (logp_r - ref_r)).
    logps, ref: [P, 2] (chosen, rejected) summed reply log-probabilities."""
    z = beta * ((logps[:, 0] - ref[:, 0]) - (logps[:, 1] - ref[:, 1]))     # [P, 2] -> [P]
    return float(np.mean(np.logaddexp(0.0, -z))), z                       # -log sigmoid(z), never log(0)


def dpo_loss_backward(z: np.ndarray, beta: float, *, scale: float = 1.0) -> np.ndarray:
    """d(scale * mean(-log sigmoid z)) / d logps: [P] -> [P, 2]; -sigmoid(-z) * beta / P into the chosen
    column, its negative into the rejected one."""
    g = -scale * beta * np.exp(-np.logaddexp(0.0, z)) / len(z)               # sigmoid(-z), stable both ways
    return np.stack([g, -g], axis=1)


def chosen_nll_forward(logps: np.ndarray, nll_scale: np.ndarray, sft_weight: float) -> float:
    """The SFT term of a slice of pairs: sft_weight * mean over its pairs of nll_scale * -logp_c, with
    nll_scale = B / W per pair [P] (module docstring), so the slices' row-weighted mean is sft_weight times
    the mean -log p over the whole batch's chosen-reply tokens."""
    return float(sft_weight * np.mean(nll_scale * -logps[:, 0]))


def chosen_nll_backward(nll_scale: np.ndarray, sft_weight: float, *, scale: float = 1.0) -> np.ndarray:
    """d(scale * chosen_nll_forward) / d logps: [P] -> [P, 2], -scale * sft_weight * nll_scale / P into the
    chosen column, 0 into the rejected one."""
    g = -scale * sft_weight * nll_scale / len(nll_scale)
    return np.stack([g, np.zeros_like(g)], axis=1)


def check_sft_weight(sft_weight: float) -> float:
    """sft_weight as a float, or a one-line error: the weight of DPO's SFT term must be finite and >= 0."""
    try:
        value = float(sft_weight)
    except (TypeError, ValueError):
        raise NumgptError(f"sft_weight must be a number >= 0, got {sft_weight!r}") from None
    if not (0.0 <= value < math.inf):
        raise NumgptError(f"sft_weight must be a finite number >= 0 (0: plain DPO), got {sft_weight!r}")
    return value


# ---- per-sequence log-probabilities through the model ----------------------------------------------------

def reply_logps_forward(params: Params, config: GPTConfig, ids: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                        *, dropout: float = 0.0, rng: np.random.Generator | None = None,
                        workspace: Workspace | None = None) -> tuple[np.ndarray, tuple]:
    """Sum over each row of mask * log p(target): [R, T] each -> [R] float64, and what the backward needs.
    Only the reply positions (mask not 0) are projected onto the vocabulary (backprop.trained_rows_logits)."""
    check_batch(config, ids, targets)
    workspace = Workspace() if workspace is None else workspace
    xf, tape = hidden_forward(params, config, ids, dropout=dropout, rng=rng)     # [R, T] -> [N, C]
    keep, nll, probs = trained_rows_nll(params, xf, mask, targets, workspace)   # [n], [N] (0 off the replies)
    logps = -(nll.reshape(ids.shape) * mask).sum(axis=1)                  # [R, T] -> [R]
    return logps, (tape, xf, keep, probs, targets.reshape(-1)[keep], mask)


def reply_logps_backward(dlogps: np.ndarray, ctx: tuple, params: Params, config: GPTConfig, grads: Params, *,
                         workspace: Workspace | None = None, block_done: Callable[[int], None] | None = None) -> None:
    """Add d(loss)/d(param) given d(loss)/d(logps) [R]: logp = -sum mask * nll, so each token's weight in the
    weighted cross-entropy backward is -dlogps[row] * mask (a per-row scalar times the mask)."""
    tape, xf, keep, probs, targets, mask = ctx
    weights = -(dlogps[:, None] * mask).reshape(-1)[keep]                 # [R] x [R, T] -> [N] -> [n]
    dlogits = weighted_cross_entropy_backward(probs, targets, weights)    # [n, V]
    trained_rows_backward(dlogits, keep, xf, tape, params, config, grads,
                          workspace=Workspace() if workspace is None else workspace, block_done=block_done)


def reply_logps(params: Params, config: GPTConfig, ids: np.ndarray, targets: np.ndarray, mask: np.ndarray, *,
                batch_rows: int = 16, workspace: Workspace | None = None,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The summed reply log-probabilities [R] of rows [R, T], batch_rows at a time, no dropout, no gradients;
    progress(rows done) after each batch."""
    out = np.zeros(len(ids), np.float64)
    for start in range(0, len(ids), batch_rows):
        part = slice(start, start + batch_rows)
        out[part], _ = reply_logps_forward(params, config, ids[part], targets[part], mask[part], workspace=workspace)
        if progress is not None:
            progress(min(start + batch_rows, len(ids)))
    return out


def implicit_reward(policy_params: Params, reference_params: Params, config: GPTConfig,
                    prompt_ids: Sequence[int], reply_ids: Sequence[int], beta: float) -> float:
    """DPO's implicit reward of a reply, beta * (log pi(reply | prompt) - log pi_ref(reply | prompt)), the
    log-probabilities summed over the reply's tokens (the module docstring says why it is a reward)."""
    beta = check_beta(beta)
    if not prompt_ids or not reply_ids:
        raise NumgptError("implicit_reward needs a prompt and a reply of at least one token each")
    seq = np.asarray([*prompt_ids, *reply_ids], np.int64)[None]           # [1, L]
    mask = np.zeros((1, seq.shape[1] - 1))
    mask[0, len(prompt_ids) - 1:] = 1                                     # the targets that are reply tokens
    logp, ref = (reply_logps(p, config, seq[:, :-1], seq[:, 1:], mask)[0] for p in (policy_params, reference_params))
    return float(beta * (logp - ref))


# ---- the Objective: batches of pairs, the loss, the evaluation -------------------------------------------

@dataclass(frozen=True)
class PairBatches:
    """DPO's batch function: B random pairs of a split, (ids, targets, mask) [b, 2, T] each, their
    reference sums [b, 2] and nll_scale [b] = B / (the B pairs' chosen-reply tokens), for this rank's rows b
    of the B drawn."""

    masks: Mapping[str, np.ndarray] = field(repr=False)        # split -> [P, 2, L] uint8
    refs: Mapping[str, np.ndarray] = field(repr=False)         # split -> [P, 2] float64

    def __call__(self, data: Dataset, split: str, batch_size: int, block_size: int, rng: np.random.Generator,
                 rows: slice) -> Batch:
        pairs = self.pairs(data, split, block_size)                        # [P, 2, L]
        pick = rng.integers(0, len(pairs), size=batch_size)                # [B] every rank alike
        chosen_tokens = float(self.masks[split][pick, 0, 1:].sum())         # W of the whole batch
        return self.rows_of(pairs, split, pick[rows], batch_size / max(chosen_tokens, 1.0))

    def pairs(self, data: Dataset, split: str, block_size: int) -> np.ndarray:
        L = self.masks[split].shape[2]
        if block_size != L - 1:
            raise NumgptError(f"the DPO data was prepared for block_size {L - 1}, not {block_size}; prepare it again "
                              f"with block_size {block_size}, or train with block_size {L - 1}")
        return data.split(split).reshape(-1, 2, L)

    def rows_of(self, pairs: np.ndarray, split: str, pick: np.ndarray, nll_scale: float) -> Batch:
        chosen = pairs[pick].astype(np.int64)                              # [b, 2, L]
        mask = self.masks[split][pick, :, 1:].astype(np.float64)          # [b, 2, T] the reply targets
        return chosen[..., :-1], chosen[..., 1:], mask, self.refs[split][pick], np.full(len(pick), nll_scale)


@dataclass(frozen=True)
class DpoLoss:
    """DPO's loss function (objective.LossFn) of batch = (ids, targets, mask [b, 2, T], ref [b, 2],
    nll_scale [b]): the mean over the slice's pairs, plus sft_weight's SFT term, and its gradient through the
    model (module docstring)."""

    beta: float
    sft_weight: float = 0.0

    def __call__(self, params: Params, config: GPTConfig, batch: Batch, grads: Params, *, scale: float = 1.0,
                 dropout: float = 0.0, rng: np.random.Generator | None = None, workspace: Workspace | None = None,
                 block_done: Callable[[int], None] | None = None) -> float:
        ids, targets, mask, ref, nll_scale = batch
        b, _, T = ids.shape
        workspace = Workspace() if workspace is None else workspace
        logps, ctx = reply_logps_forward(params, config, ids.reshape(2 * b, T), targets.reshape(2 * b, T),
                                         mask.reshape(2 * b, T), dropout=dropout, rng=rng, workspace=workspace)
        loss, z = dpo_loss_forward(logps.reshape(b, 2), ref, self.beta)    # [2b] -> [b, 2]
        dlogps = dpo_loss_backward(z, self.beta, scale=scale)               # [b, 2]
        if self.sft_weight:
            loss += chosen_nll_forward(logps.reshape(b, 2), nll_scale, self.sft_weight)
            dlogps += chosen_nll_backward(nll_scale, self.sft_weight, scale=scale)
        reply_logps_backward(dlogps.reshape(-1), ctx, params, config, with_frozen(params, grads, workspace),
                             workspace=workspace, block_done=block_done)
        return loss

    def value(self, params: Params, config: GPTConfig, batch: Batch, workspace: Workspace | None = None) -> float:
        """The loss of a batch with no dropout and no gradients (objective.ValueFn)."""
        ids, targets, mask, ref, nll_scale = batch
        b, _, T = ids.shape
        logps = reply_logps(params, config, ids.reshape(2 * b, T), targets.reshape(2 * b, T), mask.reshape(2 * b, T),
                            batch_rows=2 * b, workspace=workspace).reshape(b, 2)
        return dpo_loss_forward(logps, ref, self.beta)[0] + chosen_nll_forward(logps, nll_scale, self.sft_weight)


def dpo_metrics(logps: np.ndarray, ref: np.ndarray, beta: float, chosen_tokens: np.ndarray,
                sft_weight: float = 0.0) -> dict[str, float]:
    """What a DPO evaluation logs, from summed log-probabilities [P, 2] of the policy and the reference and
    the chosen replies' token counts [P] (see the module docstring: KL is the k1 estimate on chosen replies;
    chosen_nll the mean -log p per chosen-reply token; loss includes sft_weight times it)."""
    loss, z = dpo_loss_forward(logps, ref, beta)
    chosen_nll = float(-logps[:, 0].sum() / max(chosen_tokens.sum(), 1))
    rewards = beta * (logps - ref)                                         # [P, 2]
    return {"loss": loss + sft_weight * chosen_nll, "chosen_nll": chosen_nll,
            "margin": float(z.mean()), "accuracy": float((z > 0).mean()),
            "chosen_reward": float(rewards[:, 0].mean()), "rejected_reward": float(rewards[:, 1].mean()),
            "kl": float((logps[:, 0] - ref[:, 0]).sum() / max(chosen_tokens.sum(), 1))}


@dataclass(frozen=True)
class DpoEstimate:
    """DPO's evaluation (objective.EstimateFn): the loss and dpo_metrics on the first eval_iters * batch_size
    pairs of a seeded permutation of each split (all of them if fewer; the same pairs every time), the
    rows split over the ranks and threads like a training batch. Keys: train, val, train_margin, val_kl..."""

    batches: PairBatches
    beta: float
    sft_weight: float = 0.0

    def __call__(self, t: "Trainer") -> dict[str, float]:
        from ..training.loop import EVAL_STREAM

        tc, out = t.tc, {}
        for split in ("train", "val"):
            pairs = self.batches.pairs(t.data, split, tc.block_size)               # [P, 2, L]
            n = min(len(pairs), tc.eval_iters * tc.batch_size)
            pick = np.random.default_rng([tc.seed, EVAL_STREAM]).permutation(len(pairs))[:n]
            ids, targets, mask, ref, _ = self.batches.rows_of(pairs, split, pick, 1.0)
            logps = self.policy_logps(t, ids, targets, mask)                       # [n, 2]
            figures = dpo_metrics(logps, ref, self.beta, mask[:, 0].sum(axis=1), self.sft_weight)
            out[split] = figures.pop("loss")
            out.update({f"{split}_{name}": value for name, value in figures.items()})
        return out

    @staticmethod
    def policy_logps(t: "Trainer", ids: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[n, 2] summed reply log-probabilities, batch_size pairs at a time, each split over the ranks and
        threads (t.dp), each rank filling its rows and the ranks' rows summed into every rank's copy."""
        n, _, T = ids.shape
        out = np.zeros((n, 2), np.float64)

        def fill(params, config, batch, workspace) -> float:
            b_ids, b_targets, b_mask, where = batch
            b = len(where)
            out[where] = reply_logps(params, config, b_ids.reshape(2 * b, T), b_targets.reshape(2 * b, T),
                                     b_mask.reshape(2 * b, T), batch_rows=2 * b, workspace=workspace).reshape(b, 2)
            return 0.0
        for start in range(0, n, t.tc.batch_size):
            part = slice(start, start + t.tc.batch_size)
            t.dp.evaluate(fill, t.state.params, t.config, (ids[part], targets[part], mask[part], np.arange(n)[part]))
        t.dp.comm.allreduce_sum(out.reshape(-1))                                   # the other ranks' rows
        return out


def dpo_objective(data: Dataset, beta: float, *, sft_weight: float = 0.0,
                  trainable: frozenset[str] | None = None) -> Objective:
    """The Objective of DPO (plus sft_weight's SFT term) on a folder `prepare_dpo` wrote (opened by
    training.data.load_dataset); the reference cache is checked against the rows first (`check_reference`)."""
    if "dpo" not in data.meta:
        raise NumgptError(f"{data.folder}: not DPO data (no reference log-probabilities); give `numgpt dpo` a "
                          "preference-pairs JSONL file")
    beta, sft_weight = check_beta(beta), check_sft_weight(sft_weight)
    check_reference(data.folder)
    batches = PairBatches(*load_pair_arrays(data.folder, data.meta))
    loss = DpoLoss(beta, sft_weight)
    return Objective(batch=batches, loss=loss, evaluate=loss.value, trainable=trainable,
                     estimate=DpoEstimate(batches, beta, sft_weight))


# ---- preparing: pairs rendered into rows, the reference's sums computed once and cached ------------------

def pair_rows(rendered: Sequence[tuple[str, RenderedPair]], *, block_size: int,
              pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Each (where, (prompt, chosen, rejected) ids) as two rows of block_size + 1 tokens, prompt + reply padded
    with pad_id: (tokens [P, 2, L] int64, mask [P, 2, L] uint8, 1 on the reply's tokens). A pair longer
    than a row is refused, naming `where` (a block_size chosen below the pairs' max_tokens)."""
    L = block_size + 1
    tokens = np.full((len(rendered), 2, L), pad_id, np.int64)
    mask = np.zeros((len(rendered), 2, L), np.uint8)
    for i, (where, (prompt, *replies)) in enumerate(rendered):
        for j, reply in enumerate(replies):
            n = len(prompt) + len(reply)
            if n > L:
                raise NumgptError(f"{where}: the prompt and {('chosen', 'rejected')[j]} reply are {n} tokens, longer "
                                  f"than a row (block_size + 1 = {L}); raise block_size, or leave such pairs out "
                                  f"with max_tokens {L}")
            tokens[i, j, :n] = prompt + reply
            mask[i, j, len(prompt):n] = 1
    return tokens, mask


def longest_pair(rendered: Sequence[tuple[str, RenderedPair]]) -> tuple[int, str]:
    """(tokens, where) of the longest prompt + reply of the rendered pairs (pairs.pair_length)."""
    return max((pair_length(ids), where) for where, ids in rendered)


def weights_sha256(config: GPTConfig, params: Params) -> str:
    """sha256 over the parameters' names and float32 bytes, in the schema's order: the reference's identity."""
    h = hashlib.sha256()
    for name in param_shapes(config):
        h.update(name.encode() + b"\0" + np.ascontiguousarray(params[name], np.float32).tobytes())
    return h.hexdigest()


def files_sha256(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def _row_files(folder: Path, meta: Mapping) -> list[Path]:
    return [folder / s[key] for s in meta["splits"].values() for key in ("file", "mask_file")]


def _reference_files(folder: Path, meta: Mapping) -> list[Path]:
    return [folder / s["reference_file"] for s in meta["splits"].values()]


def prepare_dpo(pairs_file: str | Path, out_dir: str | Path, tokenizer: "Tokenizer",
                reference: tuple[GPTConfig, Params], *, block_size: int | None = None, max_tokens: int | None = None,
                val_fraction: float = VAL_FRACTION, val_file: str | Path | None = None, seed: int = 1337,
                reference_name: str = "", progress: Callable[[int, int], None] | None = None) -> dict:
    """Preference pairs -> a DPO data folder at out_dir with the reference model's summed reply
    log-probabilities cached (module docstring); returns the meta. Every pair is checked (pairs.py) and
    rendered before anything is computed or written; a pair longer than max_tokens (None: MAX_TOKENS) or the
    context is left out (pairs.short_pairs; meta["dpo"]["dropped"] counts them per split); block_size None:
    the longest pair's length - 1. progress(pairs scored, pairs in all) while the reference scores them (the
    long part)."""
    from .packing import file_sha256

    config, params = reference
    if block_size is not None and not (isinstance(block_size, int) and block_size >= 1):
        raise NumgptError(f"block_size must be a whole number >= 1, got {block_size!r}")
    named = lambda path: [(f"{path}:{n}", p) for n, p in numbered_pairs(path)]  # noqa: E731
    if val_file is not None:
        sets = {"train": named(pairs_file), "val": named(val_file)}
    else:
        sets = dict(zip(("train", "val"), held_out_split(named(pairs_file), val_fraction, seed, noun="pair")))
    rendered: dict[str, list] = {name: [] for name in sets}
    for name, pairs in sets.items():
        for where, pair in pairs:
            try:
                rendered[name].append((where, render_pair(tokenizer, pair)))
            except NumgptError as e:
                raise NumgptError(f"{where}: {e}") from None
    limit = token_limit(max_tokens, config.n_positions)
    rendered, dropped = short_pairs(rendered, limit, config.n_positions, ids=lambda item: item[1])
    longest, _ = max(longest_pair(r) for r in rendered.values())
    block_size = longest - 1 if block_size is None else block_size
    splits = {name: pair_rows(r, block_size=block_size, pad_id=tokenizer.eot_id) for name, r in rendered.items()}
    total, refs, before = sum(len(tokens) for tokens, _ in splits.values()), {}, 0
    for name, (tokens, mask) in splits.items():
        refs[name] = reference_sums(config, params, tokens, mask, progress=None if progress is None else
                                    lambda pairs, before=before: progress(before + pairs, total))
        before += len(tokens)
    info = {"format": DPO_FORMAT, "block_size": block_size, "pairs": {k: len(v) for k, v in sets.items()},
            "source": str(pairs_file), "source_sha256": file_sha256(pairs_file),
            "val_source": None if val_file is None else str(val_file), "max_tokens": limit, "dropped": dropped}
    return write_dpo_folder(out_dir, tokenizer, splits, refs, info=info,
                            reference={"model": reference_name, "model_sha256": weights_sha256(config, params)})


def reference_sums(config: GPTConfig, params: Params, tokens: np.ndarray, mask: np.ndarray, *,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The reference model's summed reply log-probabilities of pair rows [P, 2, L]: [P, 2] float64;
    progress(pairs done) as it goes."""
    P, _, L = tokens.shape
    rows = tokens.reshape(2 * P, L)
    return reply_logps(params, config, rows[:, :-1], rows[:, 1:], mask.reshape(2 * P, L)[:, 1:],
                       progress=None if progress is None else lambda r: progress(r // 2)).reshape(P, 2)


def write_dpo_folder(out: str | Path, tokenizer: "Tokenizer", splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     refs: Mapping[str, np.ndarray], *, info: Mapping, reference: Mapping) -> dict:
    """The rows, masks and reference sums of each split as a data folder at out (training/data.py's format,
    meta["dpo"] added), written as OUT.tmp and renamed into place (nothing half-written); returns the meta.
    meta's bytes = tokens per split, so the loop's val_bpb reads as the loss in bits (DPO's loss is per
    pair, not per byte)."""
    from ..atomic import write_bytes_atomically
    from .packing import write_token_folder

    def write_reference(tmp: Path, meta: dict) -> None:
        cache = {**reference, "data_sha256": files_sha256(_row_files(tmp, meta)),
                 "logps_sha256": files_sha256(_reference_files(tmp, meta))}
        write_bytes_atomically(tmp / REFERENCE_FILE, (json.dumps(cache, indent=2) + "\n").encode())

    side = {name: {f"{name}_mask.bin": mask.astype(np.uint8).tobytes(),
                   f"{name}_reference.npy": npy_bytes(refs[name].astype(np.float64))}
            for name, (tokens, mask) in splits.items()}
    meta_splits = {name: {"mask_file": f"{name}_mask.bin", "reference_file": f"{name}_reference.npy",
                          "tokens": int(tokens.size), "pairs": int(tokens.shape[0]), "reply_tokens": int(mask.sum()),
                          "bytes": int(tokens.size), "chars": int(tokens.size)}
                   for name, (tokens, mask) in splits.items()}
    return write_token_folder(out, tokenizer, {name: tokens for name, (tokens, _) in splits.items()}, side,
                              meta_splits, ("dpo", info), finish=write_reference)


def npy_bytes(array: np.ndarray) -> bytes:
    """The bytes np.save writes for an array (a .npy file)."""
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def is_dpo_folder(path: str | Path) -> bool:
    """A folder `write_dpo_folder` wrote (meta.json with a "dpo" part)."""
    meta = Path(path) / "meta.json"
    try:
        dpo = json.loads(meta.read_text(encoding="utf-8")).get("dpo", {}) if meta.is_file() else {}
        return dpo.get("format") == DPO_FORMAT
    except (ValueError, AttributeError):
        return False


def read_reference(folder: str | Path) -> dict:
    path = Path(folder) / REFERENCE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise NumgptError(f"{path}: missing or not JSON; the reference log-probabilities cannot be trusted: "
                          "prepare the pairs again") from None


def check_reference(folder: str | Path) -> None:
    """Refuse a reference cache whose rows or sums are not the ones it was computed with (hashed)."""
    folder = Path(folder)
    meta, cache = json.loads((folder / "meta.json").read_text(encoding="utf-8")), read_reference(folder)
    for key, files, what in (("data_sha256", _row_files(folder, meta), "other pair rows than these"),
                             ("logps_sha256", _reference_files(folder, meta), "other values than these")):
        if not all(f.is_file() for f in files) or files_sha256(files) != cache.get(key):
            raise NumgptError(f"{folder / REFERENCE_FILE}: the cached reference log-probabilities were made for "
                              f"{what} (sha256 differs); prepare the pairs again")


def check_reference_model(folder: str | Path, config: GPTConfig, params: Params, init: str | Path) -> None:
    """Refuse a prepared folder whose reference sums were computed with another model than `init`'s."""
    cache = read_reference(folder)
    if cache.get("model_sha256") != weights_sha256(config, params):
        raise NumgptError(f"{Path(folder) / REFERENCE_FILE}: the reference log-probabilities were computed with "
                          f"another model ({cache.get('model') or 'unnamed'}), not {init}; prepare the pairs again "
                          f"with --init {init}, or pass --init {cache.get('model') or 'that model'}")


def load_pair_arrays(folder: str | Path, meta: Mapping) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(masks [P, 2, L] uint8, reference sums [P, 2] float64) of both splits, checked against the meta."""
    folder, L = Path(folder), meta["dpo"]["block_size"] + 1
    masks, refs = {}, {}
    for name, split in meta["splits"].items():
        path, ref_path = folder / split["mask_file"], folder / split["reference_file"]
        if not path.is_file() or path.stat().st_size != split["tokens"] or not ref_path.is_file():
            raise NumgptError(f"{folder}: {split['mask_file']} or {split['reference_file']} missing or not as "
                              "meta.json says; prepare the pairs again")
        masks[name] = np.fromfile(path, np.uint8).reshape(-1, 2, L)
        refs[name] = np.load(ref_path)
        if refs[name].shape != (split["pairs"], 2):
            raise NumgptError(f"{ref_path}: {refs[name].shape} sums for {split['pairs']} pairs; prepare the pairs "
                              "again")
    return masks, refs


def dpo_block_size(folder: str | Path) -> int:
    """The block size a prepared DPO folder's rows were made for."""
    return int(json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8"))["dpo"]["block_size"])


# ---- a run of DPO, as `numgpt dpo` sets it up -------------------------------------------------------------

DATA_SUBDIR, INIT_SUBDIR = "data", "init"     # RUN/data: the pair rows and reference sums; RUN/init: a grown model
SETTINGS_FILE = "dpo.json"                    # RUN/dpo.json: the run's beta and sft_weight (kept on resume)


@dataclass
class DpoSetup:
    """What setup_dpo did: the run ready to train (None with prepare_only), the prepared data's meta (None
    when PAIRS was a prepared folder, or on resume), the run's beta and sft_weight, and whether chat tokens
    were added."""

    run: "Run | None"
    beta: float
    sft_weight: float = 0.0
    meta: dict | None = None
    added_chat_tokens: bool = False


def setup_dpo(pairs_path: str | Path, run_dir: str | Path, *, init: str | Path | None = None,
              beta: float | None = None, sft_weight: float | None = None, options: Mapping | None = None,
              resume: bool = False, block_size: int | None = None, max_tokens: int | None = None,
              val_fraction: float = VAL_FRACTION, val_file: str | Path | None = None, seed: int = 1337,
              cache_dir: str | Path | None = None, default_threads: int = 0, prepare_only: bool = False,
              comm: Communicator | None = None, ranks_here: int = 1,
              progress: Callable[[int, int], None] | None = None) -> DpoSetup:
    """`numgpt dpo PAIRS --init MODEL --out RUN --beta B`, up to the first step (then `.run.train()`).

    pairs_path: preference-pairs JSONL (rendered, with the reference sums, into RUN/data, or into run_dir
    itself with prepare_only), or a folder prepared before (its reference must be init's model); init: the
    model DPO starts from and the reference (a chat-token-less one is grown into RUN/init, as SFT does);
    beta: DPO's beta (None: DEFAULT_BETA for a new run, the run's own on resume); sft_weight: the weight of
    the chosen replies' SFT term (None: 0 for a new run, the run's own on resume); resume: continue
    RUN/latest; options: TrainConfig fields as setup_run's; block_size: rows' length - 1 (default: the
    longest pair's); max_tokens: pairs longer than this (None: MAX_TOKENS) or the context are left out and
    counted (pairs JSONL only: a prepared folder and a resumed run keep their pairs); val_fraction /
    val_file: the held-out pairs; comm, ranks_here: as setup_run's (rank 0 alone prepares and writes, the
    others wait at a barrier); progress(done, total): the reference scoring the pairs (prepare_dpo). A
    refusal before training leaves nothing this made (run_dir itself goes when it did not exist)."""
    from ..formats import hf_cache_dir
    from ..training.comm import SingleProcess
    from ..training.lock import check_not_locked
    from ..training.loop import LATEST

    run, given = Path(run_dir), Path(pairs_path)
    check_max_tokens(max_tokens)
    beta = None if beta is None else check_beta(beta)
    sft_weight = None if sft_weight is None else check_sft_weight(sft_weight)
    cache_dir = hf_cache_dir({}) if cache_dir is None else cache_dir
    comm = SingleProcess() if comm is None else comm
    ranks = {"comm": comm, "ranks_here": ranks_here, "default_threads": default_threads, "cache_dir": cache_dir}
    if resume:
        return _resume(given, run, {"beta": beta, "sft_weight": sft_weight}, options, val_file, max_tokens,
                       resume_checkpoint(resume), **ranks)
    if init is None:
        raise NumgptError("--init MODEL is required: the model DPO starts from and keeps as its reference (an SFT "
                          "run, builtin, a model folder)")
    if prepare_only:
        from .packing import check_prepare_only
        check_prepare_only(given, run)
    if (run / LATEST).exists() and not prepare_only:
        from .packing import existing_run_error
        raise existing_run_error(run, ours=(run / SETTINGS_FILE).is_file() or not (run / DATA_SUBDIR).exists())
    if comm.rank == 0:
        check_not_locked(run)
    settings = {"beta": DEFAULT_BETA if beta is None else beta, "sft_weight": sft_weight or 0.0}
    existed, made = run.exists(), []
    try:
        setup = DpoSetup(run=None, **settings)
        data_dir, init_dir = given if given.is_dir() else run if prepare_only else run / DATA_SUBDIR, None
        if comm.rank == 0:                               # rank 0 alone prepares and writes
            init_dir, setup.meta, setup.added_chat_tokens = _prepared(
                given, run, init, made, cache_dir=cache_dir, block_size=block_size, max_tokens=max_tokens,
                val_fraction=val_fraction, val_file=val_file, seed=seed, prepare_only=prepare_only, progress=progress)
            if not prepare_only:
                _write_settings(run, settings)
        comm.barrier()
        init_dir = _agreed_init(comm, run, init_dir, init, cache_dir)
        if not prepare_only:
            setup.run = _new_run(run, init_dir, data_dir, options, settings, **ranks)
        return setup
    except BaseException:
        if comm.rank > 0:
            raise
        if not existed:
            shutil.rmtree(run, ignore_errors=True)
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _prepared(given: Path, run: Path, init: str | Path, made: list, *, cache_dir, block_size: int | None,
              prepare_only: bool, **prepare) -> tuple[Path | None, dict | None, bool]:
    """(the folder of the model to train, the new data's meta, whether chat tokens were added): the pairs
    prepared with the reference = init's model (grown, and then saved as RUN/init), or a prepared folder
    checked against it. The reference's weights are let go before training loads the policy."""
    from ..formats import save_checkpoint
    from ..formats.hf import load_checkpoint
    from ..training.data import check_replaceable
    from .sft import chat_model

    model = chat_model(init, cache_dir)
    config, params = model.grown if model.grown is not None else load_checkpoint(model.folder)
    meta = None
    if given.is_dir():
        if not is_dpo_folder(given):
            raise NumgptError(f"{given}: a folder, but not one `numgpt dpo --prepare-only` made; pass pairs JSONL")
        if prepare["val_file"] is not None:
            raise NumgptError(f"{given} is already prepared with its validation pairs; --val applies to pairs JSONL")
        if prepare["max_tokens"] is not None:
            raise NumgptError(f"{given} is already prepared with its pairs{_left_out(given)}; max_tokens applies to "
                              "pairs JSONL")
        if block_size is not None and block_size != dpo_block_size(given):
            raise NumgptError(f"{given} was prepared for --block-size {dpo_block_size(given)}; prepare it again "
                              f"for {block_size}")
        check_reference_model(given, config, params, init)
        check_reference(given)
    else:
        out = run if prepare_only else run / DATA_SUBDIR
        check_replaceable(out)
        if not prepare_only:
            made.append(out)
        meta = prepare_dpo(given, out, model.tokenizer, (config, params), block_size=block_size,
                           reference_name=str(init), **prepare)
    if prepare_only:
        return None, meta, model.grown is not None
    if model.grown is None:
        return model.folder, meta, False
    made.append(run / INIT_SUBDIR)
    save_checkpoint(run / INIT_SUBDIR, config, params, tokenizer=model.tokenizer)
    return run / INIT_SUBDIR, meta, True


def _agreed_init(comm: Communicator, run: Path, init_dir: Path | None, init: str | Path, cache_dir) -> Path | None:
    """The model folder to train, on every rank: rank 0's (it alone prepared), told to the others as one flag
    -- RUN/init (the chat tokens were added) or init's own folder, which they resolve as rank 0 did."""
    if comm.size == 1:
        return init_dir
    from ..formats import resolve_model

    grown = np.array([1.0 if comm.rank == 0 and init_dir == run / INIT_SUBDIR else 0.0])
    comm.broadcast(grown)
    if comm.rank == 0:
        return init_dir
    return run / INIT_SUBDIR if grown[0] else resolve_model(init, cache_dir=cache_dir)


def _write_settings(run: Path, settings: Mapping[str, float]) -> None:
    from ..atomic import write_bytes_atomically
    run.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(run / SETTINGS_FILE, (json.dumps(dict(settings)) + "\n").encode())


def _new_run(run: Path, init: Path | None, data_dir: Path, options: Mapping | None, settings: Mapping[str, float],
             **ranks) -> "Run":
    """setup_run from the model folder (RUN/init when the chat tokens were added) with DPO's Objective."""
    from ..training.run import setup_run

    setup = setup_run(data_dir, run, options={**(options or {}), "block_size": dpo_block_size(data_dir)},
                      init=init, sequences_per_row=2, **ranks)     # a row is a pair: chosen and rejected
    setup.objective = dpo_objective(setup.data, **settings)
    return setup


def _resume(given: Path, run: Path, asked: Mapping[str, float | None], options: Mapping | None, val_file,
            max_tokens: int | None, checkpoint: str, **ranks) -> DpoSetup:
    """setup_run of RUN/checkpoint (latest or best) on RUN/data with the run's beta and sft_weight, refusing
    another pairs file or another value of either (asked: the values given, None where not given), and a
    val_file or max_tokens (the run keeps the pairs it was prepared with)."""
    from ..training.run import setup_run
    from .packing import check_same_source

    data_dir = run / DATA_SUBDIR
    settings = run / SETTINGS_FILE
    if not settings.is_file():
        raise NumgptError(f"{run} holds no DPO run to resume (no {settings}); start one with --init MODEL")
    saved = {"sft_weight": 0.0, **json.loads(settings.read_text(encoding="utf-8"))}    # runs before sft_weight: 0
    for name, value in asked.items():
        if value is not None and value != saved[name]:
            raise NumgptError(f"{run} trains with {name} {saved[name]}; a resumed run keeps it: leave out {name}=, "
                              "or start a new run")
    if val_file is not None:
        raise NumgptError(f"{run} keeps the held-out pairs it was prepared with; --val applies to a new run")
    folder = data_dir if is_dpo_folder(data_dir) else Path(_run_data_dir(run))
    if max_tokens is not None:
        raise NumgptError(f"{run} keeps the pairs it was prepared with{_left_out(folder)}; max_tokens applies to a "
                          "new run")
    if given.is_dir() and given.resolve() != folder.resolve():
        raise NumgptError(f"{run} trains on {folder}, not {given}; resume with that folder, or start a new run")
    if given.is_file():
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["dpo"]
        check_same_source(given, run, meta.get("source"), meta.get("source_sha256"))
    setup = setup_run(folder, run, options=options, resume_from=checkpoint, sequences_per_row=2, **ranks)
    setup.objective = dpo_objective(setup.data, **saved)
    return DpoSetup(run=setup, **saved)


def _left_out(folder: Path) -> str:
    """' (none over N tokens)': the limit a prepared folder's pairs were kept under, as a refusal says it;
    '' for a folder prepared before the limit was recorded."""
    limit = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["dpo"].get("max_tokens")
    return "" if limit is None else f" (none over {limit} tokens)"


def _run_data_dir(run: Path) -> str:
    """The data folder a run trained on (train_config.json's data_dir: a folder prepared before the run)."""
    from ..training.loop import CONFIG_FILE

    try:
        return json.loads((run / CONFIG_FILE).read_text(encoding="utf-8"))["data_dir"]
    except (OSError, ValueError, KeyError):
        raise NumgptError(f"{run} holds no DPO run to resume (no {run / DATA_SUBDIR}); start one with --init MODEL") \
            from None


__all__ = ["DEFAULT_BETA", "DpoEstimate", "DpoLoss", "DpoSetup", "PairBatches", "check_beta", "check_reference",
           "check_reference_model", "check_sft_weight", "chosen_nll_backward", "chosen_nll_forward",
           "dpo_loss_backward", "dpo_loss_forward", "dpo_metrics", "dpo_objective",
           "implicit_reward", "is_dpo_folder", "prepare_dpo", "reply_logps", "reply_logps_backward",
           "reply_logps_forward", "setup_dpo", "weights_sha256", "write_dpo_folder"]
