"""A reward model: GPT-2 with classify.py's linear head of ONE output over a conversation's last token, trained
on preference pairs with the Bradley-Terry loss (the first stage of RLHF: InstructGPT, TRL's RewardTrainer).

    r(x, y)  = ln_f(blocks(embed(prompt x + reply y)))[last real token] @ score^T     score: [1, C]
    loss     = mean over pairs of -log sigmoid(r(x, y_chosen) - r(x, y_rejected))

Why this loss: Bradley and Terry's model of a preference, P(y_chosen beats y_rejected) = sigmoid(r_chosen -
r_rejected), and the loss is its negative log-likelihood over the pairs people (or the checker) ranked. Only
a DIFFERENCE of rewards enters it, so the reward is defined up to a constant: adding c to every reward
changes nothing, and a reward's sign alone means nothing -- compare two replies to the same prompt. The
gradient is d loss / d r_chosen = -sigmoid(r_rejected - r_chosen) / P (and the opposite for r_rejected):
a pair already ranked right by a wide margin teaches little, a pair ranked wrong teaches most.

A conversation is rendered in numgpt's chat format (pairs.render_pair: the prompt with the generation
prompt, then the reply and its '<|end|>'), so the head reads the reply's '<|end|>': the token that has
seen the prompt and the whole reply. Rows are right-padded with '<|endoftext|>' (pad_token_id, as in
classify.py): a conversation starts with it but never ends with it, so transformers' "rightmost token that
is not the pad" is the same '<|end|>', and GPT2ForSequenceClassification(num_labels=1) gives the same reward.

A batch is B pairs drawn at random (with replacement) from the packed pairs: (ids [B, 2, T], last [B, 2]),
row b holding prompt+chosen and prompt+rejected, padded to the longest of the whole batch (so every slice
of rows, over threads or ranks, computes its rows' numbers exactly as the whole batch would). The loss is
a mean over pairs, so a batch split over threads or ranks has the loss of the whole.

Training is numgpt's one loop (training.run.setup_run and loop.train with this Objective): checkpoints in
RUN/latest and RUN/best (the lowest held-out Bradley-Terry loss; the head is a tensor beyond GPT-2's
schema, kept in extra_params.safetensors), bit-exact resume after Ctrl-C, the run lock, threads and
mpiexec. What trains: the head, the last N blocks with ln_f and the head, everything, or a LoRA adapter and
the head (lora.py). With the head alone the frozen body's state of every row is computed once
(`PooledPairs`, `head_reward_objective`): the same batches and updates, without the body's forward per
step. Each evaluation scores every held-out pair (and eval_iters x batch_size train pairs for the train
loss): the Bradley-Terry loss, the pairwise accuracy (reward chosen > rejected) and the mean margin
r_chosen - r_rejected. At the end RUN/model is written: the best checkpoint as a
GPT2ForSequenceClassification folder (num_labels=1) that transformers loads.

Subtle: ln_f's bias adds the same bias . score to both rewards of a pair, so its gradient is exactly zero
(the constant the loss cannot see) up to float32 rounding -- which Adam, dividing by its own tiny scale,
turns into steps of about lr. Harmless: whatever it does shifts every reward by one constant.

The run folder:
    RUN/data      the pairs rendered and packed: train.bin, val.bin ([pairs, 2, L] tokens), train_last.bin,
                  val_last.bin (int32 [pairs, 2], the last real token of each row), tokenizer/, meta.json
    RUN/latest, RUN/best   training checkpoints;   RUN/model   the reward model to use (`load_reward_model`)

Shape legend: P pairs of a batch, T time (the longest row of the batch), N = 2 P T rows of hidden states,
C channels.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..atomic import TMP_SUFFIX, replace_folder_atomically, write_bytes_atomically
from ..backprop import Workspace, hidden_backward, hidden_forward
from ..config import GPTConfig
from ..errors import NumgptError
from ..params import INIT_STD, Params
from ..tokenizer import Tokenizer
from ..training.comm import Communicator
from ..training.data import META_FILE, Dataset, tokenizer_fingerprint
from ..training.objective import Batch, Objective
from .classify import (SCORE, Classifier, first_trained_block, head_backward, head_forward, last_hidden,
                       reached_grads, trainable_names)
from .packing import resume_checkpoint
from .pairs import check_max_tokens, render_pair, short_pairs, token_limit, whole_reply_pairs
from .sft import held_out_split

if TYPE_CHECKING:
    from ..training.run import Run
    from .lora import LoraConfig

REWARD_FORMAT = "numgpt-reward"
REWARD_LABEL = "reward"                  # id2label of the one output
DATA_SUBDIR, MODEL_SUBDIR = "data", "model"
VAL_FRACTION = 0.1
HEAD_STREAM = 3                          # the rng stream of the head's initialisation (LoRA's is 2)
EVAL_BATCH = 16                          # pairs per forward when scoring every held-out pair


# ---- the loss: Bradley-Terry, forward and backward side by side ------------------------------------------

def bt_loss_forward(r_chosen: np.ndarray, r_rejected: np.ndarray) -> tuple[float, np.ndarray]:
    """mean over pairs of -log sigmoid(r_chosen - r_rejected) = mean softplus(-(r_c - r_r)) (stable: logaddexp),
    in float64; returns it and the margins d = r_c - r_r [P] (what the backward needs)."""
    d = r_chosen.astype(np.float64) - r_rejected.astype(np.float64)          # [P]
    return float(np.logaddexp(0.0, -d).mean()), d


def bt_loss_backward(d: np.ndarray, *, scale: float = 1.0, dtype: np.dtype = np.float32
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Differentiates `bt_loss_forward`: d loss / d r_chosen = -sigmoid(-d) / P, d loss / d r_rejected its
    opposite; each times scale, in dtype. sigmoid(-d) = exp(-logaddexp(0, d)), stable for any d."""
    g = -scale * np.exp(-np.logaddexp(0.0, d)) / len(d)                       # [P]
    return g.astype(dtype), (-g).astype(dtype)


def pair_rewards(xf: np.ndarray, last: np.ndarray, T: int, score: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Rewards [P, 2] (chosen, rejected) of the hidden states xf [2PT, C] of rows ids [P, 2, T] flattened to
    [2P, T]; last [P, 2]. classify.head_forward with one output."""
    logits, ctx = head_forward(xf, last.reshape(-1), T, score)              # [2P, 1]
    return logits.reshape(-1, 2), ctx                                       # [2P, 1] -> [P, 2]


# ---- the Objective's loss ---------------------------------------------------------------------------------

def reward_loss(params: Params, config: GPTConfig, batch: Batch, grads: Params, *, scale: float = 1.0,
                dropout: float = 0.0, rng: np.random.Generator | None = None, workspace: Workspace | None = None,
                block_done: Callable[[int], None] | None = None) -> float:
    """The Bradley-Terry loss of batch = (ids [P, 2, T], last [P, 2]); adds scale * its gradient into grads
    (the trained parameters, SCORE among them). The objective.LossFn of the reward model. With the head
    alone the body runs model.py's inference forward (no tape, no backward through it)."""
    ids, last = batch
    P, _, T = ids.shape
    rows = ids.reshape(2 * P, T)                                              # [P, 2, T] -> [2P, T]
    score = params[SCORE]
    first = first_trained_block(grads, config.n_layer)
    if first is None:                                          # the head alone
        pooled = last_hidden(params, config, rows, last.reshape(-1))          # [2P, C]
        rewards = (pooled @ score.T).reshape(P, 2)                            # [2P, 1] -> [P, 2]
        loss, d = bt_loss_forward(rewards[:, 0], rewards[:, 1])
        dlogits = np.stack(bt_loss_backward(d, scale=scale), axis=1).reshape(-1, 1)   # [P, 2] -> [2P, 1]
        grads[SCORE] += dlogits.T @ pooled                                    # [1, 2P] x [2P, C] -> [1, C]
        return loss
    if dropout > 0 and rng is None:
        raise NumgptError("dropout > 0 needs an rng (np.random.Generator)")
    full = reached_grads(params, grads, first, Workspace() if workspace is None else workspace)
    xf, tape = hidden_forward(params, config, rows, dropout=dropout, rng=rng)   # [2PT, C]
    rewards, head = pair_rewards(xf, last, T, score)
    loss, d = bt_loss_forward(rewards[:, 0], rewards[:, 1])
    dlogits = np.stack(bt_loss_backward(d, scale=scale, dtype=xf.dtype), axis=1).reshape(-1, 1)   # [2P, 1]
    dxf = head_backward(dlogits, head, score, full[SCORE])
    hidden_backward(dxf, tape, params, config, full, first_block=first)
    return loss


@dataclass(frozen=True)
class LoraRewardLoss:
    """`reward_loss` over a LoRA-adapted body (lora.py): gradients of the adapters and the head only."""

    lora: "LoraConfig"

    def __call__(self, params: Params, config: GPTConfig, batch: Batch, grads: Params, *, scale: float = 1.0,
                 dropout: float = 0.0, rng: np.random.Generator | None = None, workspace: Workspace | None = None,
                 block_done: Callable[[int], None] | None = None) -> float:
        from .lora import lora_hidden_backward, lora_hidden_forward

        ids, last = batch
        P, _, T = ids.shape
        if dropout > 0 and rng is None:
            raise NumgptError("dropout > 0 needs an rng (np.random.Generator)")
        xf, tape = lora_hidden_forward(params, config, self.lora, ids.reshape(2 * P, T), dropout=dropout, rng=rng)
        rewards, head = pair_rewards(xf, last, T, params[SCORE])
        loss, d = bt_loss_forward(rewards[:, 0], rewards[:, 1])
        dlogits = np.stack(bt_loss_backward(d, scale=scale, dtype=xf.dtype), axis=1).reshape(-1, 1)
        dxf = head_backward(dlogits, head, params[SCORE], grads[SCORE])
        lora_hidden_backward(dxf, tape, params, config, self.lora, grads)
        return loss


def reward_value(params: Params, config: GPTConfig, batch: Batch, workspace: Workspace | None = None) -> float:
    """The Bradley-Terry loss of a batch, no dropout, no gradients."""
    ids, last = batch
    r = rewards_of_rows(params, config, ids, last)
    return bt_loss_forward(r[:, 0], r[:, 1])[0]


def rewards_of_rows(params: Params, config: GPTConfig, ids: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Rewards [P, 2] of pair rows ids [P, 2, T], last [P, 2] (model.py's inference forward)."""
    P, _, T = ids.shape
    pooled = last_hidden(params, config, ids.reshape(2 * P, T), last.reshape(-1))   # [2P, C]
    return (pooled @ params[SCORE].T).reshape(P, 2)                                   # [2P, 1] -> [P, 2]


# ---- the packed pairs and their batches -----------------------------------------------------------------

@dataclass(frozen=True)
class PairBatches:
    """The batch function of the reward model: random pairs of a split (see the module docstring)."""

    lasts: Mapping[str, np.ndarray] = field(repr=False)        # split -> [pairs, 2] int32

    def rows(self, data: Dataset, split: str) -> np.ndarray:
        """The split's pairs as rows [pairs, 2, L] (a view of the memory map)."""
        return data.split(split).reshape(len(self.lasts[split]), 2, -1)

    def __call__(self, data: Dataset, split: str, batch_size: int, block_size: int, rng: np.random.Generator,
                 rows: slice) -> Batch:
        last = self.lasts[split]
        pick = rng.integers(0, len(last), size=batch_size)                 # [B] the whole batch, every rank alike
        T = int(last[pick].max()) + 1                                       # the longest row of the whole batch
        mine = pick[rows]
        return self.rows(data, split)[mine, :, :T].astype(np.int64), last[mine].astype(np.int64)


def pack_pairs(rendered: Sequence[tuple[list[int], list[int]]], length: int, pad_id: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [pairs, 2, length] right-padded with pad_id, last [pairs, 2] int32)."""
    tokens = np.full((len(rendered), 2, length), pad_id, np.int64)
    last = np.zeros((len(rendered), 2), np.int32)
    for i, seqs in enumerate(rendered):
        for j, seq in enumerate(seqs):
            tokens[i, j, :len(seq)] = seq
            last[i, j] = len(seq) - 1
    return tokens, last


def write_reward_folder(out: Path, tokenizer: Tokenizer, splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
                        info: Mapping) -> dict:
    """The packed pairs of each split as a data folder training/data.load_dataset opens (OUT.tmp renamed
    into place); returns the meta. "bytes" and "chars" equal the tokens: the loop's bits-per-byte figure is
    then the Bradley-Terry loss in bits (a pair's text has no per-byte meaning here)."""
    from .packing import write_token_folder

    side = {name: {f"{name}_last.bin": last.astype(np.int32).tobytes()} for name, (_, last) in splits.items()}
    meta_splits = {name: {"last_file": f"{name}_last.bin", "pairs": len(last), "tokens": int(tokens.size),
                          "bytes": int(tokens.size), "chars": int(tokens.size)} for name, (tokens, last) in splits.items()}
    return write_token_folder(out, tokenizer, {name: tokens for name, (tokens, _) in splits.items()}, side,
                              meta_splits, ("reward", {"format": REWARD_FORMAT, **info}))


def load_lasts(data: Dataset) -> dict[str, np.ndarray]:
    """The last-token index of every row of both splits, [pairs, 2] int32, checked against the meta."""
    if data.meta.get("reward", {}).get("format") != REWARD_FORMAT:
        raise NumgptError(f"{data.folder}: not reward-model data (no packed pairs); give `numgpt reward train` a "
                          "pairs JSONL file")
    lasts = {}
    for name, split in data.meta["splits"].items():
        path = data.folder / split["last_file"]
        if not path.is_file() or path.stat().st_size != split["pairs"] * 2 * 4:
            raise NumgptError(f"{path}: missing or not the size {META_FILE} says; the run's data is damaged")
        lasts[name] = np.fromfile(path, np.int32).reshape(-1, 2)
    return lasts


# ---- the Objective, with its evaluation over every held-out pair ----------------------------------------

def pair_metrics(rewards: np.ndarray) -> dict[str, float]:
    """Bradley-Terry loss, pairwise accuracy (r_chosen > r_rejected; a tie counts as wrong) and mean margin
    of rewards [P, 2]."""
    loss, d = bt_loss_forward(rewards[:, 0], rewards[:, 1])
    return {"loss": loss, "accuracy": float(np.mean(d > 0)), "margin": float(np.mean(d))}


def rewards_of_pairs(params: Params, config: GPTConfig, rows: np.ndarray, last: np.ndarray, *,
                     batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Rewards [pairs, 2] of packed pair rows [pairs, 2, L] (batch_size pairs a forward, each batch cut to its
    longest row)."""
    return pair_states(params, config, rows, last, batch_size=batch_size) @ params[SCORE][0]   # [pairs, 2, C] -> [pairs, 2]


def pair_states(params: Params, config: GPTConfig, rows: np.ndarray, last: np.ndarray, *,
                batch_size: int = EVAL_BATCH) -> np.ndarray:
    """The final hidden state (after ln_f) at each row's last token, [pairs, 2, C], of packed pair rows
    [pairs, 2, L]: batch_size pairs a forward (model.py's inference blocks), each batch cut to its longest row."""
    out = np.empty((len(last), 2, config.n_embd), np.float32)
    for start in range(0, len(last), batch_size):
        lb = last[start:start + batch_size].astype(np.int64)                 # [b, 2]
        ids = np.asarray(rows[start:start + len(lb), :, :int(lb.max()) + 1], np.int64)   # [b, 2, T]
        b, _, T = ids.shape
        out[start:start + b] = last_hidden(params, config, ids.reshape(2 * b, T), lb.reshape(-1)).reshape(b, 2, -1)
    return out


# ---- the head alone: the frozen body's states computed once ----------------------------------------------

@dataclass(frozen=True)
class PooledPairs:
    """The batch function when the head trains alone: each row's state at its last token (`pair_states`),
    computed once -- the frozen body never changes and runs no dropout -- and drawn by PairBatches's draws
    of the rng (the same pairs, step for step)."""

    states: Mapping[str, np.ndarray] = field(repr=False)      # split -> [pairs, 2, C]

    def __call__(self, data: Dataset, split: str, batch_size: int, block_size: int, rng: np.random.Generator,
                 rows: slice) -> Batch:
        states = self.states[split]
        pick = rng.integers(0, len(states), size=batch_size)                # [B]
        return (states[pick[rows]],)                                        # [b, 2, C]


def pooled_pairs(params: Params, config: GPTConfig, data: Dataset, batches: PairBatches) -> PooledPairs:
    """The states of every pair of both splits under the (frozen) body of params."""
    return PooledPairs({split: pair_states(params, config, batches.rows(data, split), batches.lasts[split])
                        for split in ("train", "val")})


def head_reward_loss(params: Params, config: GPTConfig, batch: Batch, grads: Params, *, scale: float = 1.0,
                     dropout: float = 0.0, rng: np.random.Generator | None = None,
                     workspace: Workspace | None = None, block_done: Callable[[int], None] | None = None) -> float:
    """`reward_loss` of the head alone on cached states: batch = (states [P, 2, C],)."""
    (pooled,) = batch
    rewards = pooled @ params[SCORE][0]                                     # [P, 2, C] x [C] -> [P, 2]
    loss, d = bt_loss_forward(rewards[:, 0], rewards[:, 1])
    dc, dr = bt_loss_backward(d, scale=scale)                               # [P] each
    grads[SCORE] += (dc @ pooled[:, 0] + dr @ pooled[:, 1])[None]          # [P] x [P, C] -> [1, C]
    return loss


def head_reward_value(params: Params, config: GPTConfig, batch: Batch, workspace: Workspace | None = None) -> float:
    (pooled,) = batch
    rewards = pooled @ params[SCORE][0]                                     # [P, 2]
    return bt_loss_forward(rewards[:, 0], rewards[:, 1])[0]


def head_reward_objective(pooled: PooledPairs) -> Objective:
    """The head trained alone on PooledPairs: the updates of reward_objective({SCORE}) without a forward of the
    body at every step (or at every evaluation)."""
    def rewards(t: Any, split: str, n: int | None) -> np.ndarray:
        return pooled.states[split][:n] @ t.state.params[SCORE][0]         # [n, 2, C] -> [n, 2]
    return Objective(batch=pooled, loss=head_reward_loss, evaluate=head_reward_value, trainable=frozenset([SCORE]),
                     estimate=partial(estimate_with, rewards))


def reward_objective(trainable: frozenset[str], batches: PairBatches, lora: "LoraConfig | None" = None
                     ) -> Objective:
    """The training task: pair batches, the Bradley-Terry loss (over a LoRA adapter if given), these trained
    parameters, and an evaluation over every held-out pair (`estimate`)."""
    loss = reward_loss if lora is None else LoraRewardLoss(lora)

    def rewards(t: Any, split: str, n: int | None) -> np.ndarray:
        params = t.state.params
        if lora is not None:
            from .lora import merge
            params = {**merge(params, t.config, lora), SCORE: params[SCORE]}
        return rewards_of_pairs(params, t.config, batches.rows(t.data, split), batches.lasts[split][:n])
    return Objective(batch=batches, loss=loss, evaluate=reward_value, trainable=frozenset(trainable),
                     estimate=partial(estimate_with, rewards))


def estimate_with(rewards: Callable[[Any, str, int | None], np.ndarray], t: Any) -> dict[str, Any]:
    """The loop's evaluation (objective.EstimateFn) from rewards(trainer, split, n) -> [n, 2] (the first n pairs;
    None: all): the Bradley-Terry loss of the first eval_iters x batch_size train pairs and of every held-out
    pair, with the held-out pairwise accuracy and mean margin."""
    train = pair_metrics(rewards(t, "train", t.tc.eval_iters * t.tc.batch_size))
    val = pair_metrics(rewards(t, "val", None))
    return {"train": train["loss"], "val": val["loss"], "val_accuracy": val["accuracy"], "val_margin": val["margin"]}


# ---- a run, as `numgpt reward train` sets it up ----------------------------------------------------------

@dataclass
class RewardSetup:
    """What setup_reward did: the run ready to train, the packed data's meta (None on resume), and how many
    pairs per split were left out as longer than the limit (pairs.short_pairs)."""

    run: "Run"
    meta: dict | None = None
    dropped: dict[str, int] = field(default_factory=dict)


def setup_reward(pairs: str | Path, run_dir: str | Path, *, init: str | Path | None = None, resume: bool = False,
                 options: Mapping | None = None, train: str = "head", lora: "LoraConfig | None" = None,
                 max_tokens: int | None = None, val_fraction: float = VAL_FRACTION, val_file: str | Path | None = None,
                 seed: int = 1337, cache_dir: str | Path | None = None, default_threads: int = 0,
                 comm: Communicator | None = None, ranks_here: int = 1) -> RewardSetup:
    """`numgpt reward train PAIRS --init MODEL --out RUN`, up to the first step (then `.run.train()`).

    pairs: preference JSONL (pairs.py), rendered and packed into RUN/data; init: the chat model to start
    from (an SFT run or model folder with numgpt's chat template); resume: continue RUN/latest (pairs must
    be the file it was packed from); options: TrainConfig fields as setup_run's (block_size is the packed
    rows'); train: 'head', 'last-N' or 'all' (classify.trainable_names); lora: an adapter and the head
    instead; max_tokens: pairs longer than this (None: MAX_TOKENS) or the context are left out and counted
    (pairs.short_pairs); val_file or val_fraction: the held-out pairs; comm, ranks_here: as setup_run's
    (rank 0 alone packs; the others wait at a barrier). A refusal before training leaves nothing this made.
    After `.run.train()`, `export_reward_model(run)` writes RUN/model (the CLI does)."""
    from ..formats import hf_cache_dir
    from ..training.comm import SingleProcess
    from ..training.lock import check_not_locked
    from ..training.loop import LATEST

    run = Path(run_dir)
    check_max_tokens(max_tokens)
    cache_dir = hf_cache_dir({}) if cache_dir is None else cache_dir
    comm = SingleProcess() if comm is None else comm
    ranks = {"comm": comm, "ranks_here": ranks_here, "default_threads": default_threads, "cache_dir": cache_dir}
    if resume:
        return RewardSetup(run=_resume_run(Path(pairs), run, options, val_file, resume_checkpoint(resume), **ranks))
    if init is None:
        raise NumgptError("--init MODEL is required: the chat model the reward model starts from (an SFT run)")
    if (run / LATEST).exists():
        from .packing import existing_run_error
        meta = run / DATA_SUBDIR / META_FILE
        raise existing_run_error(run, ours=not meta.is_file() or "reward" in json.loads(meta.read_text(encoding="utf-8")))
    if comm.rank == 0:
        check_not_locked(run)
    folder, tokenizer, config = _chat_model(init, cache_dir)
    trainable = trainable_names(config, train)                # a bad --train is refused before any work
    existed = run.exists()
    try:
        meta, dropped = None, {}
        if comm.rank == 0:                                     # rank 0 alone writes; the others read it after
            meta, dropped = prepare_pairs(pairs, run / DATA_SUBDIR, tokenizer, max_tokens=max_tokens,
                                          context=config.n_positions, val_fraction=val_fraction, val_file=val_file,
                                          seed=seed)
        comm.barrier()
        return RewardSetup(_new_run(run, folder, options, trainable, lora, **ranks), meta, dropped)
    except BaseException:
        if comm.rank == 0:
            shutil.rmtree(run if not existed else run / DATA_SUBDIR, ignore_errors=True)
        raise


def _chat_model(init: str | Path, cache_dir: str | Path) -> tuple[Path, Tokenizer, GPTConfig]:
    """(folder, tokenizer, config) of --init, refused in one line unless it has numgpt's chat template."""
    from ..formats import load_tokenizer, resolve_model
    from ..formats.hf import load_config
    from .chat_format import chat_template

    folder = resolve_model(init, cache_dir=cache_dir)
    if _has_score_head(folder):
        raise NumgptError(f"--init {init}: a reward model or classifier (it has a score head); start from the chat "
                          "language model it was trained from (an SFT run)")
    config = load_config(folder)
    tokenizer = load_tokenizer(folder, config)
    if chat_template(tokenizer) is None:
        raise NumgptError(f"--init {init}: the model has no chat template, so it cannot read the pairs' "
                          "conversations; start from a chat model: `numgpt sft CHATS --init MODEL --out RUN`, "
                          "then --init RUN")
    return folder, tokenizer, config


def _has_score_head(folder: Path) -> bool:
    """Whether a model folder's weights hold SCORE (a GPT2ForSequenceClassification folder)."""
    from ..formats.hf import weight_files
    from ..formats.safetensors import checked_header

    try:
        files = weight_files(folder)
    except NumgptError:
        return False                                # not a model folder: load_config says what is missing
    return any(f.is_file() and SCORE in checked_header(f) for f in files)


def prepare_pairs(pairs_file: str | Path, out: Path, tokenizer: Tokenizer, *, max_tokens: int | None = None,
                  context: int, val_fraction: float = VAL_FRACTION, val_file: str | Path | None = None,
                  seed: int = 1337) -> tuple[dict, dict[str, int]]:
    """Pairs JSONL -> the packed data folder `out`; returns (meta, pairs left out per split: longer than
    max_tokens or the model's context, pairs.short_pairs). Every line is checked (pairs.py) and rendered
    before anything is written."""
    from .packing import file_sha256

    if val_file is not None:
        train_set, val_set = whole_reply_pairs(pairs_file), whole_reply_pairs(val_file)
    else:
        train_set, val_set = held_out_split(whole_reply_pairs(pairs_file), val_fraction, seed, noun="pair")
    limit = token_limit(max_tokens, context)
    kept, dropped = short_pairs({name: [render_pair(tokenizer, pair) for pair in split]
                                 for name, split in (("train", train_set), ("val", val_set))}, limit, context)
    rendered = {name: [(p + c, p + r) for p, c, r in split] for name, split in kept.items()}
    length = max(len(s) for split in rendered.values() for pair in split for s in pair)
    splits = {name: pack_pairs(r, length, tokenizer.eot_id) for name, r in rendered.items()}
    info = {"row_length": length, "max_tokens": limit, "source": str(pairs_file),
            "source_sha256": file_sha256(pairs_file), "val_source": None if val_file is None else str(val_file),
            "dropped": dropped}
    return write_reward_folder(out, tokenizer, splits, info), dropped


def _new_run(run: Path, init: Path, options: Mapping | None, trainable: frozenset[str], lora: "LoraConfig | None",
             **ranks) -> "Run":
    """setup_run from the chat model with a new head (N(0, 0.02), seeded from (seed, HEAD_STREAM)), and the
    LoRA adapters if asked (lora.py's initialisation); the reward Objective."""
    from ..training.loop import keep_trained_moments
    from ..training.run import setup_run

    data_dir = run / DATA_SUBDIR
    row_length = json.loads((data_dir / META_FILE).read_text(encoding="utf-8"))["reward"]["row_length"]
    setup = setup_run(data_dir, run, options={**(options or {}), "block_size": row_length}, init=init, **ranks)
    params, config, tc = setup.state.params, setup.config, setup.tc
    head_rng = np.random.default_rng([tc.seed, HEAD_STREAM])
    params[SCORE] = (head_rng.standard_normal((1, config.n_embd)) * INIT_STD).astype(np.float32)   # [1, C]
    if lora is not None:
        from .lora import LORA_STREAM, adapter_shapes, init_adapters
        params.update(init_adapters(config, lora, np.random.default_rng([tc.seed, LORA_STREAM])))
        trainable = frozenset(adapter_shapes(config, lora)) | {SCORE}
        setup.tc = dataclasses.replace(tc, lora=lora.to_dict())
    setup.objective = _objective(setup, trainable, lora)
    keep_trained_moments(setup.state, setup.objective.trainable_params(params))
    return setup


def _objective(setup: "Run", trainable: frozenset[str], lora: "LoraConfig | None") -> Objective:
    """The reward Objective of a run: on cached states when the head trains alone, else on the packed pairs."""
    batches = PairBatches(load_lasts(setup.data))
    if lora is None and trainable == {SCORE}:
        return head_reward_objective(pooled_pairs(setup.state.params, setup.config, setup.data, batches))
    return reward_objective(trainable, batches, lora)


def _resume_run(given: Path, run: Path, options: Mapping | None, val_file: str | Path | None, checkpoint: str,
                **ranks) -> "Run":
    """setup_run of RUN/checkpoint (latest or best) on RUN/data, refusing another pairs file than the run's;
    the trained set is the checkpoint's (the parameters it keeps optimizer moments for)."""
    from ..training.run import setup_run
    from .lora import LoraConfig
    from .packing import check_same_source

    data_dir = run / DATA_SUBDIR
    meta_path = data_dir / META_FILE
    if not meta_path.is_file():
        raise NumgptError(f"{run} holds no reward-model run to resume (no {data_dir}); start one with --init MODEL")
    if val_file is not None:
        raise NumgptError(f"{run} is already packed with its validation pairs; --val applies when starting a run")
    saved = json.loads(meta_path.read_text(encoding="utf-8")).get("reward")
    if saved is None:
        raise NumgptError(f"{run} holds no reward-model run to resume (its {data_dir} is another command's data); "
                          "start one with --init MODEL")
    if given.is_file():
        check_same_source(given, run, saved.get("source"), saved.get("source_sha256"))
    setup = setup_run(data_dir, run, options=options, resume_from=checkpoint, **ranks)
    if SCORE not in setup.state.params:
        raise NumgptError(f"{run / checkpoint}: no score head ({SCORE}); not a reward-model run")
    lora = None if setup.tc.lora is None else LoraConfig.from_dict(setup.tc.lora)
    setup.objective = _objective(setup, frozenset(setup.state.optim.m), lora)
    return setup


# ---- the reward model to use: exported, loaded, scoring conversations -----------------------------------

def export_reward_model(run: "Run") -> Path:
    """Write RUN/model: RUN/best (the lowest held-out loss; RUN/latest, else the current state, when there
    is none) as a GPT2ForSequenceClassification folder of one output, LoRA merged. Returns the folder."""
    from ..training.loop import BEST, LATEST
    from ..training.state import checkpoint_folder, load_train_checkpoint
    from .lora import LoraConfig, merge

    params = run.state.params
    for name in (BEST, LATEST):
        if (run.folder / name).exists():
            params = load_train_checkpoint(checkpoint_folder(run.folder / name))[1].params
            break
    if run.tc.lora is not None:
        params = {**merge(params, run.config, LoraConfig.from_dict(run.tc.lora)), SCORE: params[SCORE]}
    tokenizer = Tokenizer.load(run.data.tokenizer_dir)
    max_tokens = int(run.data.meta["reward"]["max_tokens"])
    body = {k: v for k, v in params.items() if ".lora_" not in k}
    model = Classifier(run.config, body, [REWARD_LABEL], tokenizer, tokenizer.eot_id, max_tokens)
    folder = run.folder / MODEL_SUBDIR
    tmp = folder.with_name(folder.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp, settings={"reward_model": True, "init": run.tc.init})
    _drop_problem_type(tmp)
    return replace_folder_atomically(tmp, folder)


def _drop_problem_type(folder: Path) -> None:
    """config.json without classify's problem_type (single-label classification): with one output
    transformers then treats the head as a regression, as TRL's reward models are saved."""
    path = folder / "config.json"
    hf = json.loads(path.read_text(encoding="utf-8"))
    hf.pop("problem_type", None)
    write_bytes_atomically(path, (json.dumps(hf, indent=2) + "\n").encode())


@dataclass(frozen=True)
class RewardModel:
    """A trained reward model: scores conversations (prompt messages + one assistant reply) in numgpt's chat
    format. Rewards are comparable only between replies to the same prompt (the module docstring)."""

    classifier: Classifier

    @property
    def tokenizer(self) -> Tokenizer:
        return self.classifier.tokenizer

    def render(self, conversation: Sequence[Mapping]) -> list[int]:
        """The ids the head reads: the conversation rendered whole (it must end with the assistant's reply)."""
        from .chat_format import check_messages, render_chat

        checked = check_messages(conversation)
        if checked[-1][0] != "assistant":
            raise NumgptError("a conversation to score ends with the assistant's reply (the reward is the reply's), "
                              f"not a {checked[-1][0]} message")
        return render_chat(self.tokenizer, conversation)

    def fits(self, conversation: Sequence[Mapping]) -> bool:
        """Whether the conversation fits the model's context (`score` refuses one that does not)."""
        return len(self.render(conversation)) <= self.classifier.config.n_positions

    def encode(self, conversation: Sequence[Mapping]) -> list[int]:
        """`render`, refused in one line when longer than the model's context."""
        ids = self.render(conversation)
        limit = self.classifier.config.n_positions
        if len(ids) > limit:
            raise NumgptError(f"a conversation of {len(ids)} tokens is longer than the reward model's context "
                              f"({limit}); shorten it")
        return ids

    def score(self, conversations: Sequence[Sequence[Mapping]], *, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """The reward of each conversation's last (assistant) message, [n] float32."""
        from .classify import logits_of

        seqs = [np.asarray(self.encode(c), np.int64) for c in conversations]
        if not seqs:
            return np.zeros(0, np.float32)
        m = self.classifier
        return logits_of(m.params, m.config, seqs, m.pad_token_id, batch_size=batch_size)[:, 0]   # [n, 1] -> [n]

    def score_pairs(self, pairs: Sequence[Mapping]) -> np.ndarray:
        """Rewards [len(pairs), 2] (chosen, rejected) of preference pairs (pairs.py's records; see `pair_fits`)."""
        convs = [[*p["prompt"], p[key][0]] for p in pairs for key in ("chosen", "rejected")]
        return self.score(convs).reshape(-1, 2)

    def pair_fits(self, pair: Mapping) -> bool:
        """Whether both conversations of a pair fit the model's context."""
        return all(self.fits([*pair["prompt"], pair[key][0]]) for key in ("chosen", "rejected"))


def load_reward_model(folder: str | Path) -> RewardModel:
    """The reward model of a `numgpt reward train` run (its RUN/model) or of a GPT2ForSequenceClassification
    folder with one output and numgpt's chat template. Anything else is a one-line NumgptError."""
    from ..formats import resolve_model
    from ..formats.hf import CONFIG_FILE
    from ..training.state import STATE_FILE
    from .chat_format import chat_template
    from .classify import load_classifier_folder

    folder = Path(folder)
    if not folder.exists():
        raise NumgptError(f"{folder}: no such folder; pass the --out folder of `numgpt reward train`")
    if (folder / MODEL_SUBDIR / CONFIG_FILE).is_file():
        folder = folder / MODEL_SUBDIR
    elif (folder / STATE_FILE).is_file() and (folder.parent / MODEL_SUBDIR / CONFIG_FILE).is_file():
        raise NumgptError(f"{folder}: a training checkpoint of `numgpt reward train`, not the reward model; score "
                          f"with {folder.parent} (its {MODEL_SUBDIR}/: the best checkpoint, exported when the "
                          "run ends or stops)")
    folder = resolve_model(folder, cache_dir=None)  # another command's run: its checkpoint, said below what it is
    if not (folder / CONFIG_FILE).is_file():
        raise NumgptError(f"{folder}: not a reward model (no config.json); pass the --out folder of `numgpt reward "
                          "train`")
    if not _has_score_head(folder):
        raise NumgptError(f"{folder}: not a reward model (no score head, {SCORE}); train one with `numgpt reward "
                          "train PAIRS --init SFT_RUN --out RM`")
    model = load_classifier_folder(folder)
    if len(model.labels) != 1:
        raise NumgptError(f"{folder}: a classifier of {len(model.labels)} labels, not a reward model (one output)")
    if chat_template(model.tokenizer) is None:
        raise NumgptError(f"{folder}: the model has no chat template; a reward model scores chat conversations")
    return RewardModel(model)


def check_same_tokenizer(reward_tokenizer: Tokenizer, policy_tokenizer: Tokenizer, what: str) -> None:
    """Refuse (one line naming `what`) a reward model whose vocabulary is not the policy's: it would read the
    policy's token ids as other text."""
    if tokenizer_fingerprint(reward_tokenizer) != tokenizer_fingerprint(policy_tokenizer):
        raise NumgptError(f"{what}: a reward model for another tokenizer ({reward_tokenizer.vocab_size} tokens) "
                          f"than the policy's ({policy_tokenizer.vocab_size} tokens); train the reward model from "
                          "the policy's SFT model")


__all__ = ["LoraRewardLoss", "PairBatches", "PooledPairs", "RewardModel", "RewardSetup", "bt_loss_backward",
           "bt_loss_forward", "check_same_tokenizer", "estimate_with", "export_reward_model", "head_reward_loss",
           "head_reward_objective", "load_reward_model", "pair_metrics", "pair_rewards", "pair_states", "pooled_pairs",
           "prepare_pairs", "reward_loss", "reward_objective", "reward_value", "rewards_of_pairs", "setup_reward"]
