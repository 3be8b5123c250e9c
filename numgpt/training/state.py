"""Training checkpoints: a Hugging Face GPT-2 folder plus everything needed to resume exactly.

    RUN/latest/  (and RUN/best/)
        config.json, model.safetensors   the model, via formats/hf.py: loadable by `numgpt generate` and
                                         transformers' GPT2LMHeadModel.from_pretrained
        vocab.json, merges.txt, ...      the tokenizer the data was prepared with
        optimizer.safetensors            AdamW's moments, 'm.<param>' and 'v.<param>' (float32), of the
                                         trained parameters (all of them unless the run trains a subset)
        extra_params.safetensors         tensors beyond GPT-2's schema that the run trains (LoRA's
                                         adapters, posttrain/lora.py), if any
        trainstate.json                  step, optimizer step, the rng's bit_generator.state (JSON-able),
                                         tokens seen, best validation loss, the training config, and
                                         the names of the trained parameters when not all are (`trained`)

No pickle anywhere. Writing is atomic (atomic.py's replace_folder_atomically): everything goes
into a sibling temporary folder, each file is fsync'ed, then the old folder is renamed away, the new one
renamed into place and the old one deleted. A crash at any moment leaves either the new folder, or the
old one (under its name or, in the instant between the two renames, under NAME.old, which
`checkpoint_folder` falls back to).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import OLD_SUFFIX, TMP_SUFFIX, replace_folder_atomically
from ..formats.hf import load_checkpoint, save_checkpoint
from ..formats.safetensors import read_safetensors, write_safetensors
from ..config import GPTConfig
from ..errors import NumgptError
from .optim import AdamWState
from ..params import Params, param_shapes

STATE_FILE = "trainstate.json"
OPTIM_FILE = "optimizer.safetensors"
EXTRA_FILE = "extra_params.safetensors"
FORMAT = "numgpt-trainstate"
VERSION = 1


@dataclass
class TrainState:
    """Everything that changes during training. Plain data; the training loop updates it in place."""

    params: Params = field(repr=False)       # (not in repr: millions of numbers)
    optim: AdamWState = field(repr=False)
    rng: np.random.Generator        # draws the batches (and dropout masks): saved, so resume is exact
    step: int = 0                   # optimizer updates done
    tokens_seen: int = 0            # training tokens consumed (the data position of random windows)
    best_val_loss: float | None = None
    evaluated_step: int | None = None   # the step of the last finished evaluation (None: not recorded, older)


def new_state(params: Params, *, seed: int) -> TrainState:
    """A fresh state: writable float32 copies of params, zero moments, rng seeded with `seed`."""
    from .optim import init_state
    params = {k: np.array(v, dtype=np.float32) for k, v in params.items()}   # copies: never write a memmap
    return TrainState(params=params, optim=init_state(params), rng=np.random.default_rng(seed))


def save_train_checkpoint(folder: str | os.PathLike, config: GPTConfig, state: TrainState, *,
                          train_config: dict[str, Any], tokenizer_dir: str | os.PathLike | None = None,
                          ranks: int = 1) -> Path:
    """Write a resumable checkpoint into `folder` atomically (see the module docstring). A write that fails
    (a full disk) is a NumgptError naming the folder, whose old checkpoint is left as it was, and the partial
    copy is removed (it would hold the space the next save needs)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)              # the leftover of an interrupted save
    try:
        return _write_train_checkpoint(folder, tmp, config, state, train_config, tokenizer_dir, ranks)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise NumgptError(f"cannot save the checkpoint {folder}: {e.strerror or e}; {still_holds(folder)}") from None
    except BaseException:                              # a stop inside the save: no half-written NAME.tmp left
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def still_holds(folder: Path) -> str:
    """What a checkpoint folder holds after a save into it failed or was stopped, for the message."""
    step = checkpoint_step(folder)
    return (f"it still holds {'nothing' if step is None else f'step {step}'} (a save replaces it whole or not at "
            "all)")


def _write_train_checkpoint(folder: Path, tmp: Path, config: GPTConfig, state: TrainState,
                            train_config: dict[str, Any], tokenizer_dir: str | os.PathLike | None, ranks: int) -> Path:
    schema = param_shapes(config)
    save_checkpoint(tmp, config, {k: v for k, v in state.params.items() if k in schema})
    extra = {k: v for k, v in state.params.items() if k not in schema}
    if extra:
        write_safetensors(tmp / EXTRA_FILE, extra, metadata={"format": FORMAT})
    if tokenizer_dir is not None:
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
    moments = {f"m.{k}": v for k, v in state.optim.m.items()} | {f"v.{k}": v for k, v in state.optim.v.items()}
    write_safetensors(tmp / OPTIM_FILE, moments, metadata={"format": FORMAT})
    info = {"format": FORMAT, "version": VERSION, "step": state.step, "optim_step": state.optim.step,
            "tokens_seen": state.tokens_seen, "best_val_loss": state.best_val_loss,
            "evaluated_step": state.evaluated_step, "rng": state.rng.bit_generator.state, "train_config": train_config,
            "ranks": ranks}                    # (MPI ranks: ranks x threads is what a bit-exact resume keeps)
    if set(state.optim.m) != set(state.params):
        info["trained"] = list(state.optim.m)                 # the moments kept: the trained parameters
    (tmp / STATE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return replace_folder_atomically(tmp, folder)


def checkpoint_info(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A training checkpoint folder's trainstate.json as a dict, unchecked (for messages and `info`); None
    if it has none that reads."""
    try:
        info = json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def checkpoint_step(folder: str | os.PathLike, key: str = "step") -> int | None:
    """The step a training checkpoint folder holds (or another step it records: "evaluated_step", its last
    finished evaluation), from its trainstate.json; None if it has none."""
    step = (checkpoint_info(folder) or {}).get(key)
    return step if isinstance(step, int) else None


def checkpoint_folder(folder: str | os.PathLike) -> Path:
    """The folder to resume from: `folder`, or NAME.old if a save was cut off between its two renames."""
    folder = Path(folder)
    if (folder / STATE_FILE).is_file():
        return folder
    old = folder.with_name(folder.name + OLD_SUFFIX)
    if (old / STATE_FILE).is_file():
        return old
    raise NumgptError(f"{folder}: no training checkpoint to resume ({STATE_FILE} missing); "
                      "start without resume_from=, or pass the run_dir of an earlier run")


def load_train_checkpoint(folder: str | os.PathLike) -> tuple[GPTConfig, TrainState, dict[str, Any]]:
    """(model config, state, saved train_config dict) of a checkpoint written by save_train_checkpoint.
    A damaged checkpoint is a NumgptError saying so, never a half-loaded state."""
    folder = checkpoint_folder(folder)
    info = _read_state_json(folder / STATE_FILE)
    config, params = load_checkpoint(folder)
    if (folder / EXTRA_FILE).is_file():
        params = {**params, **read_safetensors(folder / EXTRA_FILE)[0]}
    params = {k: np.array(v, dtype=np.float32) for k, v in params.items()}   # writable copies
    moments, _ = read_safetensors(folder / OPTIM_FILE) if (folder / OPTIM_FILE).is_file() else ({}, {})
    trained = _trained_names(folder, info, params)
    missing = [k for k in trained if f"m.{k}" not in moments or f"v.{k}" not in moments]
    if missing:
        raise NumgptError(f"{folder / OPTIM_FILE}: missing or incomplete (no moments for {missing[0]}); "
                          "the checkpoint is damaged")
    for k in trained:
        p = params[k]
        if moments[f"m.{k}"].shape != p.shape or moments[f"v.{k}"].shape != p.shape:
            raise NumgptError(f"{folder / OPTIM_FILE}: moments of {k} have the wrong shape; the checkpoint is damaged")
    optim = AdamWState(m={k: np.array(moments[f"m.{k}"]) for k in trained},
                       v={k: np.array(moments[f"v.{k}"]) for k in trained}, step=info["optim_step"])
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = info["rng"]
    except (TypeError, ValueError, KeyError) as e:
        raise NumgptError(f"{folder / STATE_FILE}: bad rng state ({e}); the checkpoint is damaged") from None
    best, evaluated = info["best_val_loss"], info.get("evaluated_step")
    if evaluated is not None and not isinstance(evaluated, int):
        raise NumgptError(f"{folder / STATE_FILE}: bad evaluated_step {evaluated!r}; the checkpoint is damaged")
    state = TrainState(params=params, optim=optim, rng=rng, step=info["step"], tokens_seen=info["tokens_seen"],
                       best_val_loss=None if best is None else float(best), evaluated_step=evaluated)
    return config, state, info["train_config"]


def _trained_names(folder: Path, info: dict[str, Any], params: Params) -> list[str]:
    """The parameters the checkpoint keeps moments of: trainstate.json's `trained`, or all of them."""
    trained = info.get("trained")
    if trained is None:
        return list(params)
    if not (isinstance(trained, list) and all(isinstance(k, str) and k in params for k in trained)):
        raise NumgptError(f"{folder / STATE_FILE}: 'trained' names no parameter of the model; the checkpoint is damaged")
    return trained


def _read_state_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        ok = (isinstance(info, dict) and info.get("format") == FORMAT and
              all(isinstance(info.get(k), int) for k in ("step", "optim_step", "tokens_seen")) and
              isinstance(info.get("rng"), dict) and isinstance(info.get("train_config"), dict))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise NumgptError(f"{path}: corrupt or not a numgpt training state; the checkpoint is damaged")
    if info.get("version", 0) > VERSION:
        raise NumgptError(f"{path}: format version {info['version']} is newer than this numgpt reads; upgrade numgpt")
    best = info.get("best_val_loss")
    if best is not None and not (isinstance(best, (int, float)) and math.isfinite(best)):
        raise NumgptError(f"{path}: bad best_val_loss {best!r}; the checkpoint is damaged")
    return info

