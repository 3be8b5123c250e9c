"""Sequence classification with GPT-2: a linear head over the last real token's final hidden state.

    logits = ln_f(blocks(embed(ids)))[b, last[b]] @ score^T          GPT2ForSequenceClassification
    loss   = mean over rows b of w[y_b] * -log softmax(logits[b])[y_b]   (w: class weights, default 1)

The head `score.weight` [K, C] has no bias, as transformers' `score` (nn.Linear(n_embd, num_labels,
bias=False)). GPT-2 reads left to right, so the last token is the one that has seen the whole text.

Padding: batches are RIGHT-padded with pad_token_id, and the head reads row b at last[b], its last real
token. Causal attention never lets a real token see the padding after it, so no attention mask is needed
and a padded row gives its text's logits exactly. transformers finds the same token as "the rightmost
token that is not pad_token_id"; so pad_token_id must be a token no text ends with. numgpt pads with
'<|endoftext|>' (GPT-2's eos, as transformers' docs advise), and encodes texts with `encode_ordinary`,
which never produces a special id; a vocabulary without '<|endoftext|>' (the built-in model's) gets it
added as a new special token with a wte row equal to the mean of the others (`with_pad_token`).

What trains (`trainable_names`): the head only, the last N blocks with ln_f and the head, or everything.
Training is numgpt's training step (training/loop.train_step) with this task's Objective: its batches
(random texts, right-padded), its loss and the trainable set; so the threads, AdamW, clipping and the
learning-rate schedule are `numgpt train`'s. A batch is batch_size texts drawn at random with replacement
(so the state's rng alone decides them); texts are cut to their first max_tokens tokens. With the head
alone the frozen body runs the inference forward (model.py's fast blocks, no dropout, no tape), and
train_classifier runs it once per text (`PooledStates`, `head_objective`): the same steps, without the
body's forward at every one. Class weights scale each row's loss, and the loss stays a mean over rows
(torch's weighted mean divides by the sum of the weights instead), so that a batch split over threads
has the loss of the whole. Training stops cleanly on Ctrl-C; it does not resume.

Forward and backward side by side: backprop.py's `hidden_forward`/`hidden_backward` (the body up to ln_f,
shared with language-model training), `head_forward`/`head_backward`, `class_loss_forward`/`class_loss_backward`;
tests check them against torch autograd in float64.

Shape legend: B batch, T time (the longest text of the batch), N = B * T rows, C channels, K labels.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backprop import Workspace, hidden_backward, hidden_forward
from ..config import GPTConfig
from ..errors import NumgptError
from ..formats.hf import CLASSIFIER_HEAD, load_classifier, save_classifier
from ..model import BlockBuffers, block_, check_context, embed
from ..ops import layer_norm
from ..params import INIT_STD, Params, layers
from ..tokenizer import ENDOFTEXT, Tokenizer
from ..training.objective import Batch, Objective, with_frozen
from .classdata import Example, label_names

if TYPE_CHECKING:
    from ..training.loop import TrainConfig, Trainer
    from .lora import LoraConfig

SCORE = CLASSIFIER_HEAD                 # "score.weight", [K, C]
SETTINGS_FILE = "numgpt_classify.json"  # how the classifier was trained: max_tokens, fields, trained set
MAX_TOKENS = 256                        # texts are cut to their first MAX_TOKENS tokens (or n_positions)
TRAIN_CHOICES = "head | last-N (the last N blocks, ln_f and the head) | all"


# ---- the model: a GPT-2 body, its head, its labels ----------------------------------------------------------

@dataclass(frozen=True)
class Classifier:
    """A GPT-2 with a classification head: params holds SCORE beside the GPT-2 tensors."""

    config: GPTConfig
    params: Params
    labels: list[str]               # label i is output i
    tokenizer: Tokenizer
    pad_token_id: int
    max_tokens: int = MAX_TOKENS

    def encode(self, texts: Sequence[str]) -> tuple[list[np.ndarray], int]:
        """Token ids of each text (ordinary tokens only: never the pad id), cut to max_tokens; and how
        many texts were cut."""
        seqs, cut = [], 0
        for text in texts:
            ids = self.tokenizer.encode_ordinary(text)
            if not ids:
                raise NumgptError(f"the text {text!r} has no tokens; every text needs at least one")
            cut += len(ids) > self.max_tokens
            seqs.append(np.asarray(ids[:self.max_tokens], np.int64))
        return seqs, cut

    def logits(self, texts: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
        """Head logits [len(texts), K], batch_size texts at a time (right-padded)."""
        return self.token_logits(self.encode(texts)[0], batch_size=batch_size)

    def token_logits(self, seqs: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
        """`logits` of texts already encoded (`encode`, which also says how many were cut)."""
        return logits_of(self.params, self.config, seqs, self.pad_token_id, batch_size=batch_size)

    def save(self, folder: str | Path, *, settings: dict[str, Any] | None = None) -> Path:
        """A GPT2ForSequenceClassification folder (formats.hf.save_classifier) with the tokenizer and
        SETTINGS_FILE (max_tokens, and whatever `settings` adds)."""
        info = {"max_tokens": self.max_tokens, **(settings or {})}
        folder = save_classifier(folder, self.config, self.params, labels=self.labels,
                                 pad_token_id=self.pad_token_id, tokenizer=self.tokenizer,
                                 extra_files={SETTINGS_FILE: (json.dumps(info, indent=2) + "\n").encode()})
        declare_pad_token(folder, self.tokenizer.id_to_token(self.pad_token_id))
        return folder


def declare_pad_token(folder: Path, token: str) -> None:
    """Name the pad token in the tokenizer files transformers reads (tokenizer_config.json,
    special_tokens_map.json), so its tokenizer pads batches as numgpt does (a text-classification
    pipeline needs it)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            info = json.loads(path.read_text(encoding="utf-8"))
            path.write_text(json.dumps({**info, "pad_token": token}, indent=2) + "\n", encoding="utf-8")


def load_classifier_folder(folder: str | Path) -> Classifier:
    """The Classifier saved in a folder (ours, or any GPT2ForSequenceClassification folder with GPT-2's
    layout and a tokenizer)."""
    from ..formats.hf import load_tokenizer

    folder = Path(folder)
    config, params, labels, pad = load_classifier(folder)
    tokenizer = load_tokenizer(folder, config)
    settings = read_settings(folder)
    max_tokens = min(int(settings.get("max_tokens", config.n_positions)), config.n_positions)
    pad = tokenizer.eot_id if pad is None else pad
    return Classifier(config, params, labels, tokenizer, 0 if pad is None else pad, max_tokens)


def read_settings(folder: Path) -> dict[str, Any]:
    """SETTINGS_FILE of a classifier folder, {} when absent (a folder from elsewhere)."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NumgptError(f"{path}: damaged ({e}); delete it to use the model's n_positions") from None
    return info if isinstance(info, dict) else {}


def new_classifier(config: GPTConfig, params: Params, tokenizer: Tokenizer, labels: Sequence[str], *,
                   rng: np.random.Generator, max_tokens: int = MAX_TOKENS) -> Classifier:
    """A pre-trained GPT-2 with a new head: score ~ N(0, 0.02) (transformers' _init_weights), a pad token
    (`with_pad_token`), texts cut at min(max_tokens, n_positions)."""
    config, params, tokenizer, pad = with_pad_token(config, params, tokenizer)
    head = (rng.standard_normal((len(labels), config.n_embd)) * INIT_STD).astype(np.float32)   # [K, C]
    return Classifier(config, {**params, SCORE: head}, list(labels), tokenizer, pad,
                      min(max_tokens, config.n_positions))


def with_pad_token(config: GPTConfig, params: Params, tokenizer: Tokenizer
                   ) -> tuple[GPTConfig, Params, Tokenizer, int]:
    """(config, params, tokenizer, pad id): '<|endoftext|>' pads. A vocabulary without it gets it as a new
    special token, wte growing by one row equal to the mean of the others (transformers' resizing); the
    inputs are not modified. (The pad row's value never reaches a real token: it only sits after them.)"""
    if tokenizer.eot_id is not None:
        return config, params, tokenizer, tokenizer.eot_id
    grown = tokenizer.with_special_tokens([ENDOFTEXT])
    wte = params["wte.weight"]                                              # [V, C]
    mean = wte.mean(axis=0, dtype=np.float64).astype(wte.dtype)[None]       # [1, C]
    eot = grown.eot_id
    config = dataclasses.replace(config, vocab_size=grown.vocab_size, bos_token_id=eot, eos_token_id=eot)
    return config, {**params, "wte.weight": np.concatenate([wte, mean])}, grown, eot


# ---- batches --------------------------------------------------------------------------------------------------

def pad_right(seqs: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, T], last [B]): the sequences right-padded with pad_id to the longest, and the index of
    each row's last real token."""
    lengths = np.array([len(s) for s in seqs], np.int64)                    # [B]
    ids = np.full((len(seqs), int(lengths.max())), pad_id, np.int64)        # [B, T]
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = s
    return ids, lengths - 1


@dataclass(frozen=True)
class LabelledTokens:
    """Tokenized texts and label ids of the train and val splits: what the classification batches draw
    from (the training loop's `data`)."""

    train: tuple[list[np.ndarray], np.ndarray]      # (token ids of each text, label ids [n])
    val: tuple[list[np.ndarray], np.ndarray]
    pad_token_id: int

    def split(self, name: str) -> tuple[list[np.ndarray], np.ndarray]:
        return {"train": self.train, "val": self.val}[name]


def classification_batch(data: LabelledTokens, split: str, batch_size: int, block_size: int,
                         rng: np.random.Generator, rows: slice) -> Batch:
    """batch_size random texts of a split (drawn with replacement), right-padded to the longest of the
    whole batch: (ids [rows, T], last [rows], labels [rows]). block_size is unused (texts are already
    cut); the signature is objective.BatchFn's."""
    seqs, labels = data.split(split)
    pick = rng.integers(0, len(labels), batch_size)                         # [B]
    ids, last = pad_right([seqs[i] for i in pick], data.pad_token_id)
    return ids[rows], last[rows], labels[pick][rows]


# ---- forward and backward, side by side ----------------------------------------------------------------------

def head_forward(xf: np.ndarray, last: np.ndarray, T: int, score: np.ndarray) -> tuple[np.ndarray, tuple]:
    """logits [B, K] = xf[row of (b, last[b])] @ score^T; returns them and what `head_backward` needs."""
    rows = np.arange(len(last)) * T + last                                  # [B] rows of xf
    pooled = xf[rows]                                                       # [N, C] -> [B, C]
    return pooled @ score.T, (rows, pooled, xf.shape)                      # [B, C] x [C, K] -> [B, K]


def head_backward(dlogits: np.ndarray, ctx: tuple, score: np.ndarray, dscore: np.ndarray) -> np.ndarray:
    """Differentiates logits = pooled @ score^T, pooled = xf[rows]: dscore += dlogits^T pooled; returns
    dxf [N, C], zero except at the pooled rows."""
    rows, pooled, shape = ctx
    dscore += dlogits.T @ pooled                                            # [K, B] x [B, C] -> [K, C]
    dxf = np.zeros(shape, pooled.dtype)                                     # [N, C]
    dxf[rows] = dlogits @ score                                             # [B, K] x [K, C] -> [B, C]
    return dxf


def class_loss_forward(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None
                       ) -> tuple[float, np.ndarray]:
    """mean over rows of w[y] * -log softmax(logits)[y] (w = 1 without class weights), and the
    probabilities [B, K]. Note: a mean over rows, not torch's weighted mean (divided by the sum of the
    weights), so that the loss of a batch is the mean of its slices' losses (threads, ranks)."""
    B = len(labels)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)    # [B, K]
    log_total = np.log(np.exp(shifted).sum(axis=1))                            # [B]
    nll = log_total - shifted[np.arange(B), labels]                            # [B]
    w = np.ones(B) if weights is None else weights[labels]
    probs = np.exp(shifted - log_total[:, None])                               # [B, K]
    return float(np.dot(w, nll) / B), probs


def class_loss_backward(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, *,
                        scale: float = 1.0, dtype: np.dtype = np.float32) -> np.ndarray:
    """Differentiates `class_loss_forward` through the softmax: dlogits[b] = scale * w[y_b] / B *
    (probs[b] - onehot(y_b)), in dtype."""
    B = len(labels)
    d = probs.copy()                                                            # [B, K]
    d[np.arange(B), labels] -= 1
    w = np.ones(B) if weights is None else weights[labels]
    d *= (scale * w / B)[:, None]
    return d.astype(dtype)


# ---- the loss of the Objective --------------------------------------------------------------------------------

def first_trained_block(trained: Sequence[str] | Params, n_layer: int) -> int | None:
    """Where the backward into the body must reach: 0 if the embeddings train, else the lowest trained
    block, n_layer if only ln_f (of the body) trains; None if the body is frozen (the head alone)."""
    names = set(trained)
    if names & {"wte.weight", "wpe.weight"}:
        return 0
    blocks = [int(n.split(".")[1]) for n in names if n.startswith("h.")]
    if blocks:
        return min(blocks)
    return n_layer if names & {"ln_f.weight", "ln_f.bias"} else None


def classification_loss(params: Params, config: GPTConfig, batch: Batch, grads: Params, *, scale: float = 1.0,
                        dropout: float = 0.0, rng: np.random.Generator | None = None,
                        workspace: Workspace | None = None, block_done: Callable[[int], None] | None = None,
                        class_weights: np.ndarray | None = None) -> float:
    """The classification loss of batch = (ids [B, T], last [B], labels [B]); adds scale * its gradient
    into grads (the trained parameters; SCORE among them). The objective.LossFn of this task."""
    ids, last, labels = batch
    score = params[SCORE]
    first = first_trained_block(grads, config.n_layer)
    if first is None:                                          # the head alone: no tape, no body backward
        pooled = last_hidden(params, config, ids, last)        # [B, C]
        loss, probs = class_loss_forward(pooled @ score.T, labels, class_weights)
        grads[SCORE] += class_loss_backward(probs, labels, class_weights, scale=scale).T @ pooled
        return loss
    if dropout > 0 and rng is None:
        raise NumgptError("dropout > 0 needs an rng (np.random.Generator)")
    full = reached_grads(params, grads, first, Workspace() if workspace is None else workspace)
    xf, tape = hidden_forward(params, config, ids, dropout=dropout, rng=rng)
    logits, head = head_forward(xf, last, ids.shape[1], score)
    loss, probs = class_loss_forward(logits, labels, class_weights)
    dlogits = class_loss_backward(probs, labels, class_weights, scale=scale, dtype=xf.dtype)
    dxf = head_backward(dlogits, head, score, full[SCORE])
    hidden_backward(dxf, tape, params, config, full, first_block=first)
    return loss


def reached_grads(params: Params, grads: Params, first_block: int, workspace: Workspace) -> Params:
    """The gradients a backward down to first_block writes: grads' own, and zeroed scratch buffers for the
    frozen tensors it reaches (ln_f, blocks first_block.., the embeddings when 0); objective.with_frozen
    for the part of the body that runs backward, so a frozen wte costs no [V, C] buffer."""
    def reached(name: str) -> bool:
        if first_block == 0 or name.startswith(("ln_f.", SCORE)):
            return True
        return name.startswith("h.") and int(name.split(".")[1]) >= first_block
    return with_frozen({n: p for n, p in params.items() if reached(n)}, grads, workspace) | grads


def classification_value(params: Params, config: GPTConfig, batch: Batch, workspace: Workspace | None = None,
                         *, class_weights: np.ndarray | None = None) -> float:
    """The classification loss of a batch, no dropout, no gradients (the objective's evaluate)."""
    ids, last, labels = batch
    logits = last_hidden(params, config, ids, last) @ params[SCORE].T
    return class_loss_forward(logits, labels, class_weights)[0]


@dataclass(frozen=True)
class PooledStates:
    """The frozen body's `pooled_states` of each split's texts, with their label ids: all a head trained
    alone reads, computed once (the body never changes, and runs no dropout)."""

    train: tuple[np.ndarray, np.ndarray]            # (states [n, C], label ids [n])
    val: tuple[np.ndarray, np.ndarray]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return {"train": self.train, "val": self.val}[name]


def pooled_batch(data: PooledStates, split: str, batch_size: int, block_size: int, rng: np.random.Generator,
                 rows: slice) -> Batch:
    """`classification_batch`'s texts (the same draws of rng) as their cached states: (states [rows, C],
    labels [rows])."""
    states, labels = data.split(split)
    pick = rng.integers(0, len(labels), batch_size)                         # [B]
    return states[pick][rows], labels[pick][rows]


def head_loss(params: Params, config: GPTConfig, batch: Batch, grads: Params, *, scale: float = 1.0,
              dropout: float = 0.0, rng: np.random.Generator | None = None, workspace: Workspace | None = None,
              block_done: Callable[[int], None] | None = None, class_weights: np.ndarray | None = None) -> float:
    """`classification_loss` of the head alone on cached states: batch = (states [B, C], labels [B])."""
    pooled, labels = batch
    loss, probs = class_loss_forward(pooled @ params[SCORE].T, labels, class_weights)     # [B, K]
    grads[SCORE] += class_loss_backward(probs, labels, class_weights, scale=scale).T @ pooled   # [K, C]
    return loss


def head_value(params: Params, config: GPTConfig, batch: Batch, workspace: Workspace | None = None,
               *, class_weights: np.ndarray | None = None) -> float:
    pooled, labels = batch
    return class_loss_forward(pooled @ params[SCORE].T, labels, class_weights)[0]


def head_objective(class_weights: np.ndarray | None = None) -> Objective:
    """The head trained alone on PooledStates: the same updates as classification_objective({SCORE}),
    without running the body every step."""
    return Objective(batch=pooled_batch, loss=partial(head_loss, class_weights=class_weights),
                     evaluate=partial(head_value, class_weights=class_weights), trainable=frozenset([SCORE]))


def classification_objective(trainable: frozenset[str], class_weights: np.ndarray | None = None) -> Objective:
    """The training task: classification batches, the weighted loss, these trained parameters."""
    return Objective(batch=classification_batch, loss=partial(classification_loss, class_weights=class_weights),
                     evaluate=partial(classification_value, class_weights=class_weights),
                     trainable=frozenset(trainable))


def trainable_names(config: GPTConfig, spec: str) -> frozenset[str]:
    """The parameters `--train spec` trains: 'head' (SCORE), 'last-N' (the last N blocks, ln_f and the
    head; 'last-N-blocks' too), 'all'."""
    from ..params import param_shapes

    names = list(param_shapes(config))
    if spec == "head":
        return frozenset([SCORE])
    if spec == "all":
        return frozenset(names + [SCORE])
    match = re.fullmatch(r"last-(\d+)(?:-blocks?)?", spec)
    if not match or not 1 <= int(match.group(1)) <= config.n_layer:
        raise NumgptError(f"--train {spec!r}: expected {TRAIN_CHOICES}, with N in 1..{config.n_layer} "
                          f"(the model's blocks)")
    first = config.n_layer - int(match.group(1))
    blocks = {n for n in names if n.startswith("h.") and int(n.split(".")[1]) >= first}
    return frozenset(blocks | {"ln_f.weight", "ln_f.bias", SCORE})


def balanced_weights(labels: np.ndarray, k: int) -> np.ndarray:
    """scikit-learn's 'balanced' class weights: n / (k * count of class c) [k]. A class with no example
    gets 1 (it is never read)."""
    counts = np.bincount(labels, minlength=k)
    return np.where(counts > 0, len(labels) / (k * np.maximum(counts, 1)), 1.0)


# ---- inference ---------------------------------------------------------------------------------------------

def last_hidden(params: Params, config: GPTConfig, ids: np.ndarray, last: np.ndarray) -> np.ndarray:
    """ln_f of the final hidden state at each row's last real token [B, C], by model.py's fast blocks
    (right padding, causal: the padding after `last` changes nothing)."""
    B, T = ids.shape
    check_context(config, T, fix="pass a smaller max_tokens")
    x = embed(params, ids, np.broadcast_to(np.arange(T), (B, T))).astype(np.float32)  # [B, T] -> [B, T, C]
    buffers = BlockBuffers.allocate(config, B, T)
    for p in layers(params, config):
        block_(p, config, x, None, None, buffers)                          # [B, T, C], in place
    x = x[np.arange(B), last]                                              # [B, T, C] -> [B, C]
    return layer_norm(x, params["ln_f.weight"], params["ln_f.bias"], config.layer_norm_epsilon)


def pooled_states(params: Params, config: GPTConfig, seqs: Sequence[np.ndarray], pad_id: int, *,
                  batch_size: int = 16) -> np.ndarray:
    """`last_hidden` of token sequences [n, C], batch_size at a time, the texts sorted by length so that a
    batch pads little (the result is in the given order)."""
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.empty((len(seqs), config.n_embd), np.float32)
    for start in range(0, len(seqs), batch_size):
        pick = order[start:start + batch_size]
        ids, last = pad_right([seqs[i] for i in pick], pad_id)
        out[pick] = last_hidden(params, config, ids, last)                 # [b, C]
    return out


def logits_of(params: Params, config: GPTConfig, seqs: Sequence[np.ndarray], pad_id: int, *,
              batch_size: int = 16) -> np.ndarray:
    """Head logits [n, K] of token sequences (`pooled_states` @ score^T)."""
    return pooled_states(params, config, seqs, pad_id, batch_size=batch_size) @ params[SCORE].T   # [n, C] -> [n, K]


# ---- metrics ---------------------------------------------------------------------------------------------------

def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """[k, k] counts: row = the true label, column = the predicted one (scikit-learn's layout)."""
    m = np.zeros((k, k), np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, and per label precision, recall, F1 and support, with the confusion matrix.
    A ratio with nothing to divide by is 0 (scikit-learn's zero_division default); macro-F1 averages over
    the labels that occur, as truth or as prediction (scikit-learn's f1_score(average="macro")): a label
    of the model that the data never mentions does not pull it down."""
    m = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), len(labels))
    tp = np.diag(m).astype(np.float64)                                     # [K]
    predicted, support = m.sum(axis=0), m.sum(axis=1)                      # [K] columns, rows
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    seen = (support + predicted) > 0                                     # [K] labels that occur
    return {"accuracy": float(tp.sum() / max(m.sum(), 1)), "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
            "per_label": [{"label": name, "precision": float(precision[i]), "recall": float(recall[i]),
                           "f1": float(f1[i]), "support": int(support[i])} for i, name in enumerate(labels)],
            "confusion": m}


# ---- training ----------------------------------------------------------------------------------------------------

@dataclass
class ClassifyResult:
    """How a classifier training ended: the last validation metrics, the folders written."""

    steps: int
    last_eval: dict[str, Any] | None
    saved: list[Path]
    interrupted: bool = False       # stopped by Ctrl-C or SIGTERM (OUT/latest saved at the last whole step)


def label_ids(examples: Sequence[Example], labels: Sequence[str], source: str) -> np.ndarray:
    """The label id of each example; a label the model does not know is a one-line error naming it."""
    index = {name: i for i, name in enumerate(labels)}
    for e in examples:
        if e.label not in index:
            raise NumgptError(f"{e.where or source}: label {e.label!r} is not one of the model's "
                              f"({', '.join(labels)})")
    return np.array([index[e.label] for e in examples], np.int64)


def split_examples(examples: Sequence[Example], val_fraction: float, rng: np.random.Generator
                   ) -> tuple[list[Example], list[Example]]:
    """(train, val): a random val_fraction of the examples (at least one when > 0) held out."""
    if not 0 <= val_fraction < 1:
        raise NumgptError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = rng.permutation(len(examples))
    n_val = max(1, round(val_fraction * len(examples))) if val_fraction > 0 else 0
    if len(examples) - n_val < 1:
        raise NumgptError("too few records to hold some out for validation; add records or pass val_fraction 0")
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


def evaluate_tokens(model: Classifier, seqs: list[np.ndarray], labels: np.ndarray, *, batch_size: int = 16,
                    class_weights: np.ndarray | None = None) -> dict[str, Any]:
    """Loss and metrics of the model on tokenized texts with their label ids."""
    logits = logits_of(model.params, model.config, seqs, model.pad_token_id, batch_size=batch_size)
    return evaluate_logits(logits, labels, model.labels, class_weights)


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, names: Sequence[str],
                    class_weights: np.ndarray | None = None) -> dict[str, Any]:
    """Loss and `classification_metrics` of logits [n, K] against label ids [n]."""
    loss, _ = class_loss_forward(logits, labels, class_weights)
    return {"loss": loss, **classification_metrics(labels, logits.argmax(axis=1), names)}


def train_classifier(model: Classifier, train: Sequence[Example], val: Sequence[Example], out: str | Path, *,
                     tc: TrainConfig, trainable: str = "head", class_weights: str | None = None,
                     on_event: Callable[[dict], None] | None = None, settings: dict[str, Any] | None = None,
                     lora: LoraConfig | None = None) -> ClassifyResult:
    """Fine-tune `model` on train (evaluated on val every tc.eval_interval steps and at the end) with
    loop.train_step; writes OUT/best (the lowest validation loss) and OUT/latest, each a
    GPT2ForSequenceClassification folder. tc: a training.loop.TrainConfig (batch_size, grad_accum,
    max_iters, dropout, eval_interval, seed, optim, threads; block_size = max_tokens). lora: train a LoRA
    adapter and the head instead of `trainable` (lora.py); the folders hold the merged model. Ctrl-C or
    SIGTERM stops it between steps with OUT/latest saved (`interrupted`); there is no resume."""
    from ..threads import single_threaded_blas
    from ..training.loop import BEST, LATEST, sigterm_as_interrupt, train_step

    tokens = LabelledTokens(_tokens(model, train, "train"), _tokens(model, val, "val"), model.pad_token_id)
    weights = balanced_weights(tokens.train[1], len(model.labels)) if class_weights == "balanced" else None
    t, as_model = _task(model, tokens, tc, trainable, weights, lora, Path(out))
    emit = on_event or (lambda event: None)
    info = {"train": f"lora-{lora.rank}" if lora else trainable, "class_weights": class_weights, **(settings or {})}
    result = ClassifyResult(0, None, [])
    best = math.inf
    t.run.mkdir(parents=True, exist_ok=True)
    with single_threaded_blas() if t.dp.participants > 1 else nullcontext(), sigterm_as_interrupt():
        try:
            while t.state.step < tc.max_iters:
                loss, norm, lr = train_step(t)
                emit({"type": "step", "step": t.state.step, "loss": loss, "lr": lr, "grad_norm": norm})
                step = t.state.step
                if val and (step == tc.max_iters or (tc.eval_interval and step % tc.eval_interval == 0)):
                    now = as_model(t.state.params)
                    result.last_eval = {"step": step, **_validate(now, t.data, weights)}
                    improved = result.last_eval["loss"] < best
                    emit({"type": "eval", **result.last_eval, "best": improved})
                    if improved:
                        best = result.last_eval["loss"]
                        result.saved.append(_save_atomically(now, t.run / BEST, info))
        except KeyboardInterrupt:
            result.interrupted = True
    result.steps = t.state.step
    result.saved.append(_save_atomically(as_model(t.state.params), t.run / LATEST, info))
    return result


def _task(model: Classifier, tokens: LabelledTokens, tc: TrainConfig, trainable: str,
          weights: np.ndarray | None, lora: LoraConfig | None, out: Path
          ) -> tuple[Trainer, Callable[[Params], Classifier]]:
    """The Trainer of this training (the head alone on cached states, blocks, or a LoRA adapter), and how
    its parameters make a Classifier to evaluate and save (with LoRA: the merged model)."""
    names = trainable_names(model.config, trainable)
    if lora is not None:
        from .lora import LORA_STREAM, init_adapters, lora_classification_objective, merge

        adapters = init_adapters(model.config, lora, np.random.default_rng([tc.seed, LORA_STREAM]))
        t = _trainer(dataclasses.replace(model, params={**model.params, **adapters}), tokens, tc,
                     lora_classification_objective(model.config, lora, weights), out)
        return t, lambda params: dataclasses.replace(
            model, params={**merge(params, model.config, lora), SCORE: params[SCORE]})
    if names == {SCORE}:                          # the body is frozen: its states are computed once
        data = PooledStates(*(_states(model, tokens.split(s), tc.batch_size) for s in ("train", "val")))
        t = _trainer(model, data, tc, head_objective(weights), out)
    else:
        t = _trainer(model, tokens, tc, classification_objective(names, weights), out)
    return t, lambda params: dataclasses.replace(model, params=params)


def _validate(model: Classifier, data: LabelledTokens | PooledStates, weights: np.ndarray | None) -> dict[str, Any]:
    """Loss and metrics on the val split (from its cached states when the head trains alone)."""
    if isinstance(data, PooledStates):
        states, labels = data.val
        return evaluate_logits(states @ model.params[SCORE].T, labels, model.labels, weights)   # [n, K]
    return evaluate_tokens(model, *data.val, class_weights=weights)


def _states(model: Classifier, split: tuple[list[np.ndarray], np.ndarray], batch_size: int
            ) -> tuple[np.ndarray, np.ndarray]:
    seqs, labels = split
    if not seqs:
        return np.zeros((0, model.config.n_embd), np.float32), labels
    return pooled_states(model.params, model.config, seqs, model.pad_token_id, batch_size=batch_size), labels


def _trainer(model: Classifier, data: LabelledTokens | PooledStates, tc: TrainConfig, objective: Objective, out: Path
             ) -> "Trainer":
    """The training loop's Trainer for this task: writable copies of the weights, AdamW moments for the
    trained ones only, the batch rows split over tc.threads threads (0: all cores)."""
    from ..threads import thread_count
    from ..training.loop import Trainer
    from ..training.optim import AdamW, init_state
    from ..training.parallel import DataParallel
    from ..training.state import TrainState

    params = {k: np.array(v, dtype=np.float32) for k, v in model.params.items()}        # writable copies
    trained = objective.trainable_params(params)
    state = TrainState(params=params, optim=init_state(trained), rng=np.random.default_rng(tc.seed))
    dp = DataParallel(tc.threads or thread_count())
    opt = AdamW(trained, state.optim, tc.optim, threads=dp.threads, overlap=False)
    return Trainer(state, model.config, tc, data, out, objective, dp, opt)


def _save_atomically(model: Classifier, folder: Path, settings: dict[str, Any]) -> Path:
    """model.save into FOLDER.tmp, then renamed over FOLDER (atomic.py): a crash leaves the old or the new."""
    from ..atomic import write_folder_atomically

    return write_folder_atomically(folder, lambda tmp: model.save(tmp, settings=settings))


def _tokens(model: Classifier, examples: Sequence[Example], split: str) -> tuple[list[np.ndarray], np.ndarray]:
    if not examples:
        return [], np.zeros(0, np.int64)
    seqs, _ = model.encode([e.text for e in examples])
    return seqs, label_ids(examples, model.labels, split)


__all__ = ["Classifier", "ClassifyResult", "LabelledTokens", "PooledStates", "SCORE", "balanced_weights",
           "class_loss_backward", "class_loss_forward", "classification_batch", "classification_loss",
           "classification_metrics", "classification_objective", "confusion_matrix", "evaluate_logits",
           "evaluate_tokens", "head_backward", "head_forward", "head_objective", "hidden_backward", "hidden_forward",
           "label_ids", "label_names", "last_hidden", "load_classifier_folder", "logits_of", "new_classifier",
           "pad_right", "pooled_states", "split_examples", "train_classifier", "trainable_names",
           "with_pad_token"]
