"""Supervised fine-tuning (SFT): the training loop of `numgpt train` with another Objective.

    loss = sum over the batch of mask * -log p(target)  /  sum over the batch of mask

The mask is 1 on the assistant's replies and their <|end|> (chat_format.render_for_training), 0 on the
system and user turns and the padding; train_on="all" puts it on every token. Normalised by the number of
weighted tokens in the whole batch (nanochat's and TRL's convention: every trained token counts the same,
whatever row it is in), per micro-batch. A batch with no weighted token has loss 0 and no gradient.

How it fits the data-parallel loop, which weights each slice's mean by its share of the rows: a batch is
(ids, targets, weights) with weights = mask * B / W (B rows, W weighted tokens of the WHOLE batch, which
every rank can count because every rank draws the same rows); each slice returns the mean over its rows
of each row's weighted sum (backprop.accumulate_weighted_grads), and the slices' row-weighted mean is
then sum(mask * nll) / W however the rows are split (the float32 rounding depends on the split as in
numgpt train: P ranks of 1 thread give the bits of 1 rank of P threads; tests/test_sft.py checks both).

Batches: B rows drawn at random (with replacement, like pre-training's windows) from the packed rows
(packing.py); evaluation draws its fixed batches the same way from the held-out conversations' rows.

    setup = setup_sft("chats.jsonl", "runs/sft", init="builtin", options={"max_iters": 200})
    result = setup.run.train()          # training.run.Run with SFT's Objective: numgpt train's loop

The rest of `numgpt sft` is here too: a model without the chat tokens gets them (chat_format.add_chat_tokens,
saved as RUN/init since training.run.setup_run starts from a folder), the chat JSONL is checked, split
and packed into RUN/data (packing.py) before anything trains, and a refusal leaves nothing behind. Under
MPI rank 0 alone packs and writes; the other ranks wait at a barrier, then all set up the run together.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from ..backprop import Workspace, accumulate_weighted_grads, weighted_loss_only
from ..config import GPTConfig
from ..errors import NumgptError
from ..params import Params
from ..training.comm import Communicator
from ..training.data import Dataset
from ..training.objective import Batch, Objective, with_frozen
from .packing import load_masks, resume_checkpoint

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer
    from ..training.run import Run
    from .lora import LoraConfig


@dataclass(frozen=True)
class PackedBatches:
    """The batch function of SFT: random rows of a split with their loss weights (see the module docstring)."""

    masks: Mapping[str, np.ndarray] = field(repr=False)      # split -> [R, L] uint8

    def __call__(self, data: Dataset, split: str, batch_size: int, block_size: int, rng: np.random.Generator,
                 rows: slice) -> Batch:
        mask = self.masks[split]                                       # [R, L]
        L = mask.shape[1]
        if block_size != L - 1:
            raise NumgptError(f"the SFT data was packed for block_size {L - 1}, not {block_size}; prepare it again "
                              f"with block_size {block_size}, or train with block_size {L - 1}")
        tokens = data.split(split).reshape(-1, L)                      # [R, L]
        pick = rng.integers(0, len(tokens), size=batch_size)           # [B] the whole batch, every rank alike
        weights = mask[pick, 1:].astype(np.float32)                    # [B, T] the mask of each target
        weights *= np.float32(batch_size / max(float(weights.sum()), 1.0))   # mask * B / W (W of the whole batch)
        chosen = tokens[pick[rows]].astype(np.int64)                   # [b, L] this rank's rows
        return chosen[:, :-1], chosen[:, 1:], weights[rows]            # ids, targets, weights [b, T]


def masked_loss(params: Params, config: GPTConfig, batch: Batch, grads: Params, *, scale: float = 1.0,
                dropout: float = 0.0, rng: np.random.Generator | None = None, workspace: Workspace | None = None,
                block_done: Callable[[int], None] | None = None) -> float:
    """SFT's loss function (objective.LossFn) of batch = (ids, targets, weights), [b, T] each."""
    ids, targets, weights = batch
    workspace = Workspace() if workspace is None else workspace
    return accumulate_weighted_grads(params, config, ids, targets, weights, with_frozen(params, grads, workspace),
                                     scale=scale, dropout=dropout, rng=rng, workspace=workspace,
                                     block_done=block_done)


def masked_value(params: Params, config: GPTConfig, batch: Batch, workspace: Workspace | None = None) -> float:
    """The masked loss of (ids, targets, weights) with no dropout and no gradients (evaluation)."""
    ids, targets, weights = batch
    return weighted_loss_only(params, config, ids, targets, weights, workspace=workspace)


def sft_objective(data: Dataset, *, trainable: frozenset[str] | None = None) -> Objective:
    """The Objective of SFT on a folder packing.write_sft_folder made (opened by training.data.load_dataset)."""
    if "sft" not in data.meta:
        raise NumgptError(f"{data.folder}: not SFT data (no loss masks); give `numgpt sft` a chat JSONL file")
    return Objective(batch=PackedBatches(load_masks(data.folder, data.meta)), loss=masked_loss,
                     evaluate=masked_value, trainable=trainable)


def sft_block_size(folder: str | Path) -> int:
    """The block size a prepared SFT folder was packed for."""
    import json
    from ..training.data import META_FILE
    return int(json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))["sft"]["block_size"])


# ---- preparing: a model that knows the chat tokens, and the packed data -------------------------------------

VAL_FRACTION = 0.1          # held-out share of the conversations when no --val file is given


@dataclass
class ChatModel:
    """The model SFT starts from: its folder, and (when the chat tokens had to be added) the grown model."""

    folder: Path
    tokenizer: "Tokenizer"
    grown: tuple[GPTConfig, Params] | None = None     # config, params with the chat tokens added, to save
    added: tuple[int, ...] = ()                       # the ids of the tokens added (their rows the mean)


def chat_model(init: str | Path, cache_dir: str | Path) -> ChatModel:
    """The model of `init` (a folder, 'builtin', a cached hub name) with the chat tokens: as is when its
    tokenizer has numgpt's chat template, else grown by posttrain.add_chat_tokens (not yet saved)."""
    from ..formats import load_checkpoint, load_tokenizer, resolve_model
    from ..formats.hf import load_config
    from ..formats.peft import refuse_classifier_checkpoint
    from .chat_format import add_chat_tokens, chat_template

    folder = resolve_model(init, cache_dir=cache_dir)
    refuse_classifier_checkpoint(folder)
    config = load_config(folder)
    tok = load_tokenizer(folder, config)
    if chat_template(tok) is not None:
        return ChatModel(folder=folder, tokenizer=tok)
    config, params = load_checkpoint(folder)
    old = config.vocab_size
    config, params, tok = add_chat_tokens(config, params, tok)
    return ChatModel(folder=folder, tokenizer=tok, grown=(config, params), added=tuple(range(old, config.vocab_size)))


def held_out_split(items: list, val_fraction: float, seed: int, *, noun: str = "conversation") -> tuple[list, list]:
    """(train, val): a val_fraction of the items (conversations, pairs, tasks) held out, chosen by a seeded
    permutation, each split kept in file order. The one split of sft, dpo, reward and rl."""
    if not 0 < val_fraction < 1:
        raise NumgptError(f"val_fraction must be > 0 and < 1 (or pass val_file=), got {val_fraction}")
    n = len(items)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise NumgptError(f"{n} {noun}{'s' if n > 1 else ''} cannot be split into training and validation; "
                          f"add {noun}s or pass val_file=")
    held = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return [c for i, c in enumerate(items) if i not in held], [c for i, c in enumerate(items) if i in held]


def split_conversations(numbered: list[tuple[str, dict]], val_fraction: float, seed: int
                        ) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """held_out_split of (where, conversation) items."""
    return held_out_split(numbered, val_fraction, seed)


def prepare_sft(data_file: str | Path, out_dir: str | Path, tokenizer: "Tokenizer", *, block_size: int,
                train_on: str = "assistant", truncate: bool = True, val_fraction: float = VAL_FRACTION,
                val_file: str | Path | None = None, seed: int = 1337, context: int | None = None
                ) -> tuple[dict, dict[str, int]]:
    """Chat JSONL -> a packed SFT data folder at out_dir (packing.py); returns (meta, conversations cut per
    split). Every line is checked (chatdata.py) and rendered before anything is written. context: the
    model's n_positions, for the refusal of a conversation too long (truncate=False)."""
    from .chatdata import numbered_conversations
    from .packing import file_sha256, pack_rows, render_conversations, write_sft_folder

    named = lambda path: [(f"{path}:{n}", c) for n, c in numbered_conversations(path)]  # noqa: E731
    if val_file is not None:
        train_set, val_set = named(data_file), named(val_file)
    else:
        train_set, val_set = split_conversations(named(data_file), val_fraction, seed)
    pad = tokenizer.eot_id
    splits, cut, counts = {}, {}, {}
    for name, convs in (("train", train_set), ("val", val_set)):
        rendered = render_conversations(tokenizer, convs, block_size=block_size, train_on=train_on, truncate=truncate,
                                        context=context)
        splits[name] = pack_rows(rendered.items, block_size=block_size, pad_id=pad)
        cut[name], counts[name] = rendered.truncated, len(convs)
    info = {"train_on": train_on, "conversations": counts, "truncated": cut, "source": str(data_file),
            "source_sha256": file_sha256(data_file), "val_source": None if val_file is None else str(val_file)}
    return write_sft_folder(out_dir, tokenizer, splits, block_size=block_size, info=info), cut


# ---- a run of SFT, as `numgpt sft` sets it up ---------------------------------------------------------------

DATA_SUBDIR, INIT_SUBDIR = "data", "init"      # RUN/data: the packed conversations; RUN/init: the grown model
SFT_BLOCK_SIZE = 256                           # rows of at most this many tokens (or the model's context)


@dataclass
class SftSetup:
    """What setup_sft did: the run ready to train (None with prepare_only), the packed data's meta, the
    conversations cut per split, and whether the chat tokens were added to the model."""

    run: "Run | None"                          # its objective SFT's; None with prepare_only
    meta: dict | None = None                   # None when DATA was an already prepared folder (or on resume)
    truncated: dict[str, int] = field(default_factory=dict)
    added_chat_tokens: bool = False


def setup_sft(data: str | Path, run_dir: str | Path, *, init: str | Path | None = None, resume: bool = False,
              options: Mapping | None = None, block_size: int | None = None, train_on: str | None = None,
              truncate: bool = True, val_fraction: float = VAL_FRACTION, val_file: str | Path | None = None,
              seed: int = 1337, cache_dir: str | Path | None = None, default_threads: int = 0,
              prepare_only: bool = False, comm: Communicator | None = None, ranks_here: int = 1,
              lora: "LoraConfig | None" = None) -> SftSetup:
    """`numgpt sft DATA --init MODEL --out RUN`, up to the first step (then `.run.train()`).

    data: chat JSONL (packed into RUN/data, or into run_dir itself with prepare_only), or a folder packed
    before; init: the model (a chat-token-less one is grown into RUN/init); resume: continue RUN/latest
    (data, if a file, must be the one the run was packed from); options: TrainConfig fields as setup_run's;
    train_on, truncate, val_file, val_fraction: how to pack (train_on None: "assistant"); with data already
    packed (a folder, or on resume) a train_on or val_file other than the folder's is refused;
    block_size: the rows' length - 1 (default min(SFT_BLOCK_SIZE, the model's context)); comm, ranks_here:
    as setup_run's (every rank calls setup_sft; rank 0 alone packs and writes, the others wait for it at a
    barrier, so a rank 0 refusal must end the job: the CLI aborts it); lora: train a LoRA adapter instead
    of the weights (posttrain.lora.with_lora; a resumed LoRA run continues its own), and when the chat
    tokens were just added, their wte rows too (PEFT's trainable_token_indices): frozen, those rows would
    stay equal and the model could not tell the roles apart. A refusal before training leaves nothing
    this made (run_dir itself goes when it did not exist)."""
    from ..formats import hf_cache_dir, save_checkpoint
    from ..training.comm import SingleProcess
    from ..training.lock import check_not_locked
    from ..training.loop import LATEST
    from .lora import lora_adapter_size, with_lora

    run, given = Path(run_dir), Path(data)
    cache_dir = hf_cache_dir({}) if cache_dir is None else cache_dir
    comm = SingleProcess() if comm is None else comm
    ranks = {"comm": comm, "ranks_here": ranks_here, "default_threads": default_threads, "cache_dir": cache_dir}
    if resume:
        check_packed_as(run / DATA_SUBDIR, train_on, val_file)
        resumed = _resume_run(given, run, options, resume_checkpoint(resume), adapter_size=lora_adapter_size(lora),
                              **ranks)
        return SftSetup(run=with_lora(resumed, lora, resumed=True))
    if init is None:
        raise NumgptError("init=MODEL is required: the model to fine-tune (builtin, gpt2, a model folder or run)")
    if prepare_only:
        from .packing import check_prepare_only
        check_prepare_only(Path(data), run)
    if (run / LATEST).exists() and not prepare_only:
        from .packing import existing_run_error, is_sft_folder
        raise existing_run_error(run, ours=not (run / DATA_SUBDIR).exists() or is_sft_folder(run / DATA_SUBDIR))
    if comm.rank == 0:
        check_not_locked(run)
    model = chat_model(init, cache_dir)
    if lora is not None and model.added:
        lora = dataclasses.replace(lora, tokens=model.added)       # the new chat tokens' rows train too
    existed, made = run.exists(), []
    try:
        setup = SftSetup(run=None, added_chat_tokens=model.grown is not None)
        data_dir = given if given.is_dir() else run if prepare_only else run / DATA_SUBDIR
        init_dir = run / INIT_SUBDIR if model.grown is not None else model.folder
        if comm.rank == 0:                               # rank 0 alone writes; the others read it after
            data_dir, setup.meta, setup.truncated = _packed_data(
                given, run, model, made, block_size=block_size, train_on=train_on, truncate=truncate,
                val_fraction=val_fraction, val_file=val_file, seed=seed, prepare_only=prepare_only)
            if model.grown is not None and not prepare_only:
                made.append(init_dir)
                save_checkpoint(init_dir, *model.grown, tokenizer=model.tokenizer)
        comm.barrier()
        if not prepare_only:
            setup.run = _new_run(run, init_dir, data_dir, options, adapter_size=lora_adapter_size(lora), **ranks)
            setup.run = with_lora(setup.run, lora, resumed=False)    # the adapter trained instead (lora=)
        return setup
    except BaseException:
        if comm.rank > 0:
            raise
        if not existed:
            shutil.rmtree(run, ignore_errors=True)
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _packed_data(given: Path, run: Path, model: ChatModel, made: list, *, block_size: int | None, prepare_only: bool,
                 **prepare) -> tuple[Path, dict | None, dict[str, int]]:
    """(folder, meta, cut): `given` itself when it is a packed folder, else `given` packed into RUN/data
    (into RUN with prepare_only)."""
    from ..formats.hf import load_config
    from ..training.data import check_replaceable
    from .packing import is_sft_folder

    if given.is_dir():
        if not is_sft_folder(given):
            raise NumgptError(f"{given}: a folder, but not one packed with prepare_only=True; pass chat JSONL")
        check_packed_as(given, prepare["train_on"], prepare["val_file"])
        if block_size is not None and block_size != sft_block_size(given):
            raise NumgptError(f"{given} was packed for block_size {sft_block_size(given)}; pack it again for "
                              f"{block_size}")
        return given, None, {}
    context = (model.grown[0] if model.grown else load_config(model.folder)).n_positions
    block_size = min(SFT_BLOCK_SIZE, context) if block_size is None else block_size
    if not 0 < block_size <= context:                # before packing: rows the model cannot read
        raise NumgptError(f"block_size must be in 1..{context} (the model's context, n_positions), got {block_size}")
    out = run if prepare_only else run / DATA_SUBDIR
    check_replaceable(out)
    if not prepare_only:
        made.append(out)
    meta, cut = prepare_sft(given, out, model.tokenizer, block_size=block_size, context=context,
                            **{**prepare, "train_on": prepare["train_on"] or "assistant"})
    return out, meta, cut


def check_packed_as(folder: Path, train_on: str | None, val_file: str | Path | None) -> None:
    """Refuse packing options that a packed folder (or a resumed run's RUN/data) contradicts: they would
    be silently ignored."""
    import json
    from .packing import is_sft_folder

    if not is_sft_folder(folder):
        return                                      # (on resume: _resume_run says there is no run)
    saved = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["sft"]
    if train_on is not None and train_on != saved["train_on"]:
        raise NumgptError(f"{folder} was packed with train_on={saved['train_on']!r}; the mask cannot change now: "
                          f"pack the JSONL again (a new run) for train_on={train_on!r}")
    if val_file is not None:
        raise NumgptError(f"{folder} is already packed with its validation split; val_file applies when packing JSONL")


def _new_run(run: Path, init: Path, data_dir: Path, options: Mapping | None, **ranks) -> "Run":
    """setup_run from the model folder (RUN/init when the chat tokens were added) with SFT's Objective."""
    from ..training.run import setup_run

    setup = setup_run(data_dir, run, options={**(options or {}), "block_size": sft_block_size(data_dir)}, init=init,
                      **ranks)
    setup.objective = sft_objective(setup.data)
    return setup


def _resume_run(given: Path, run: Path, options: Mapping | None, checkpoint: str, **ranks) -> "Run":
    """setup_run of RUN/checkpoint (latest or best) on RUN/data, refusing another data file than the run's."""
    import json
    from ..training.run import setup_run
    from .packing import check_same_source, is_sft_folder

    data_dir = run / DATA_SUBDIR
    if not is_sft_folder(data_dir):
        why = f"its {data_dir} is another command's data" if data_dir.exists() else f"no {data_dir}"
        raise NumgptError(f"{run} holds no SFT run to resume ({why}); start one with init=MODEL")
    if given.is_file():
        saved = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))["sft"]
        check_same_source(given, run, saved.get("source"), saved.get("source_sha256"))
    setup = setup_run(data_dir, run, options=options, resume_from=checkpoint, **ranks)
    setup.objective = sft_objective(setup.data)
    return setup
