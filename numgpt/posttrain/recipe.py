"""`numgpt recipe chat`: the built-in chat model, from nothing, in stages that each resume where they stopped.

    data        the texts (corpus.py) and the generated conversations and tasks      OUT/data/
    tokenizer   byte-level BPE with the chat tokens, every digit its own token       OUT/tokenizer/
    pretrain    a GPT-2 from scratch on the texts (next-token prediction)            OUT/pretrain/
    sft         supervised fine-tuning on conversations (loss on the replies)        OUT/sft/
    rl          GRPO on the exact-answer tasks (the checker is the reward)           OUT/rl/
    evaluate    exact match per task family for each stage's model, format
                compliance, bits per byte of the pre-training text                   OUT/evaluate/

Each stage writes OUT/<stage>/done.json (its figures and seconds) when it is complete, and a stage that
has one is skipped: running the same command again after Ctrl-C, a kill or a crash continues from the
first unfinished stage, and a training stage from its own RUN/latest (numgpt train's bit-exact resume).
The last trained model is OUT/model (float32; dev/ship_chat_model.py makes the float16 copy that ships).

Every choice of the recipe is a field of ChatRecipe (a plain dataclass written to OUT/recipe.json); a run
with other fields than the folder's is refused, so a resumed run is the run it started as.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import NumgptError

STAGES = ("data", "tokenizer", "pretrain", "sft", "rl", "evaluate")
DONE = "done.json"
MODEL = "model"                        # OUT/model: the recipe's result


def about(text: str, stage: str = "data") -> dict[str, str]:
    """A ChatRecipe field's description: what `numgpt recipe chat --help` says of its flag, and the first
    stage that uses it (a field may change on a resume until that stage has begun)."""
    return {"help": text, "stage": stage}


@dataclass(frozen=True)
class ChatRecipe:
    """The whole recipe's settings (the defaults made the shipped model: dev/ship_chat_model.py)."""

    texts: tuple[str, ...] = field(default=(), metadata=about(
        "extra UTF-8 files people wrote (tinyshakespeare)"))
    packaged_texts: bool = field(default=True, metadata=about("also Debian's fortunes and chatterbot-corpus (corpus.py)"))
    seed: int = field(default=0, metadata=about("seeds the data, the model's initialisation and every stage"))
    threads: int = field(default=0, metadata=about("threads of every training stage; 0 = all cores", stage="pretrain"))
    # data
    pretrain_tasks: int = field(default=20_000, metadata=about(
        "synthetic tasks written as text into the pre-training corpus"))
    sft_tasks: int = field(default=24_000, metadata=about(
        "synthetic task conversations for SFT (with chatterbot's small talk)"))
    rl_tasks: int = field(default=4_000, metadata=about("synthetic tasks RL draws its prompts from"))
    eval_tasks: int = field(default=35, metadata=about(
        "held-out tasks per family (7 families: 245 at 35), for every evaluation"))
    # tokenizer and model
    vocab_size: int = field(default=2048, metadata=about("the BPE tokenizer's vocabulary, special tokens included", stage="tokenizer"))
    n_layer: int = field(default=6, metadata=about("transformer blocks", stage="pretrain"))
    n_head: int = field(default=6, metadata=about("attention heads per block", stage="pretrain"))
    n_embd: int = field(default=192, metadata=about("the model's width (channels)", stage="pretrain"))
    block_size: int = field(default=256, metadata=about("the context in tokens (n_positions); RL's prompts and "
                                                        "answers must fit in it", stage="pretrain"))
    # pre-training
    pretrain_iters: int = field(default=2000, metadata=about("pre-training steps", stage="pretrain"))
    pretrain_batch: int = field(default=16, metadata=about("sequences per pre-training step", stage="pretrain"))
    pretrain_lr: float = field(default=2e-3, metadata=about("pre-training's peak learning rate", stage="pretrain"))
    # SFT
    sft_iters: int = field(default=1000, metadata=about("SFT steps", stage="sft"))
    sft_batch: int = field(default=16, metadata=about("rows of conversations per SFT step", stage="sft"))
    sft_lr: float = field(default=6e-4, metadata=about("SFT's peak learning rate", stage="sft"))
    # RL (GRPO)
    rl_iters: int = field(default=100, metadata=about("RL (GRPO) steps", stage="rl"))
    rl_group: int = field(default=8, metadata=about("answers sampled per prompt", stage="rl"))
    rl_prompts: int = field(default=8, metadata=about("prompts per RL step", stage="rl"))
    rl_lr: float = field(default=3e-5, metadata=about("RL's learning rate", stage="rl"))
    rl_kl: float = field(default=0.05, metadata=about("RL's KL penalty to the SFT model", stage="rl"))
    # the worked sums, where a reply is right or wrong by its arithmetic, not its phrasing. RL on the other
    # families too (100 steps at 2e-5) lost 18 points of count on held-out phrasings and gained nothing on add
    # (BENCHMARKS.md); reverse and identity give GRPO nothing to learn (every group all wrong or all right)
    rl_families: tuple[str, ...] = field(default=("add", "sub"), metadata=about("task families RL trains on"))

    def __post_init__(self) -> None:
        """Every setting checked before any stage runs (a mistake found by a late stage would have cost the
        stages before it): sizes, the model's shape, the families, RL's room in the context."""
        from .chat_format import CHAT_TOKENS
        from .synth import FAMILIES, REPLY_TOKENS

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float):                   # the learning rates > 0, the KL weight >= 0
                rule, ok = ("> 0", value > 0) if f.name.endswith("_lr") else (">= 0", value >= 0)
            elif isinstance(value, int) and not isinstance(value, bool):   # counts; 0 steps skips a stage
                least = 0 if f.name in ("threads", "seed") or f.name.endswith("_iters") else 1
                rule, ok = f">= {least}", value >= least
            else:
                continue
            if not (ok and np.isfinite(value)):
                raise NumgptError(f"{f.name} must be {rule}, got {value}")    # (the CLI says its flag)
        if self.n_embd % self.n_head:
            raise NumgptError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.vocab_size < 256 + len(CHAT_TOKENS):
            raise NumgptError(f"vocab_size must be >= {256 + len(CHAT_TOKENS)} (256 bytes and the "
                              f"{len(CHAT_TOKENS)} chat tokens), got {self.vocab_size}")
        unknown = [f for f in self.rl_families if f not in FAMILIES]
        if unknown or not self.rl_families:
            raise NumgptError(f"rl_families: {'no family given' if not unknown else 'no family ' + unknown[0]}; "
                              f"the families are {', '.join(FAMILIES)}")
        if self.rl_group < 2:
            raise NumgptError(f"rl_group must be >= 2 (GRPO compares a prompt's answers), got {self.rl_group}")
        if self.rl_iters > 0 and self.block_size <= REPLY_TOKENS:     # the prompts' length is known once the tokenizer is (rl_fits)
            raise NumgptError(f"block_size must hold a task's prompt and its reply's {REPLY_TOKENS} tokens, got "
                              f"{self.block_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Stage:
    """One stage's place and record: OUT/<name>/ and its done.json once complete."""

    name: str
    folder: Path

    @property
    def done(self) -> dict | None:
        path = self.folder / DONE
        return json.loads(path.read_text()) if path.exists() else None

    def finish(self, figures: Mapping[str, Any], seconds: float) -> dict:
        record = {"stage": self.name, "seconds": round(seconds, 1), **figures}
        tmp = self.folder / (DONE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(self.folder / DONE)
        return record


Say = Callable[[str], None]
# (run, label) -> TrainResult: how a training stage is driven (the CLI draws progress; the default is silent)
TrainFn = Callable[[Any, str], Any]


def check_recipe_folder(out: Path, recipe: ChatRecipe) -> None:
    """A new folder gets recipe.json; an existing one must hold the same recipe (or none and be empty)."""
    saved = out / "recipe.json"
    if saved.exists():
        before = json.loads(saved.read_text())
        mine = json.loads(json.dumps(recipe.to_dict()))
        changed = sorted(k for k in set(before) | set(mine) if before.get(k) != mine.get(k))
        stage_of = {f.name: f.metadata["stage"] for f in dataclasses.fields(ChatRecipe)}
        fixed = [k for k in changed if _begun(out / stage_of.get(k, "data"))]
        if fixed:
            said = ", ".join(f"{k} {_shown(before.get(k))} there, {_shown(mine.get(k))} now"
                             for k in fixed[:3])
            raise NumgptError(f"{out} holds a recipe run with other settings ({said}), used by stages that have "
                              "begun; continue it with the same settings, or pass another out folder")
        if changed:                       # settings of stages not begun yet: the run takes the new ones
            saved.write_text(json.dumps(recipe.to_dict(), indent=1) + "\n")
        return
    if out.exists() and any(out.iterdir()):
        raise NumgptError(f"{out} is not empty and holds no recipe run; pass a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(recipe.to_dict(), indent=1) + "\n")


def _begun(folder: Path) -> bool:
    """A stage has begun once its folder holds anything (run_chat_recipe makes it empty just before)."""
    return folder.is_dir() and any(folder.iterdir())


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def run_chat_recipe(recipe: ChatRecipe, out: str | Path, *, say: Say = lambda s: None,
                    train: TrainFn | None = None, until: str | None = None) -> dict[str, dict]:
    """Every stage of the recipe into `out` (skipping the finished ones), up to and including `until`;
    returns each stage's done.json. A training stage that is interrupted stops the recipe (KeyboardInterrupt
    after its checkpoint is saved): the same call continues it."""
    out = Path(out)
    if until is not None and until not in STAGES:
        raise NumgptError(f"until must be one of {', '.join(STAGES)}, got {until!r}")
    check_recipe_folder(out, recipe)
    train = train or (lambda run, label: run.train())
    bodies = {"data": _data, "tokenizer": _tokenizer, "pretrain": _pretrain, "sft": _sft, "rl": _rl,
              "evaluate": _evaluate}
    records = {}
    for name in STAGES:
        stage = Stage(name, out / name)
        if stage.done is None:
            stage.folder.mkdir(parents=True, exist_ok=True)
            say(f"== {name}")
            start = time.perf_counter()
            figures = bodies[name](recipe, out, stage, say, train)
            records[name] = stage.finish(figures, time.perf_counter() - start)
            say(f"== {name} done in {records[name]['seconds']:.0f} s: "
                + ", ".join(f"{k} {v}" for k, v in figures.items() if not isinstance(v, (dict, list))))
        else:
            records[name] = stage.done
            say(f"== {name}: done before ({records[name]['seconds']:.0f} s), skipped")
        if name == until:
            break
    return records


# ---- data -------------------------------------------------------------------------------------------------

def _data(recipe: ChatRecipe, out: Path, stage: Stage, say: Say, train: TrainFn) -> dict:
    """The pre-training texts and the generated conversations (deterministic given the seed)."""
    from .chatdata import write_conversations
    from .corpus import chatterbot_chats, dialogue_text, fortunes_text, read_chatterbot, tasks_text
    from .synth import FAMILIES, synthesize

    rng = np.random.default_rng(recipe.seed)
    texts = [(Path(p).name, Path(p).read_text(encoding="utf-8")) for p in recipe.texts]
    conversations = read_chatterbot() if recipe.packaged_texts else []
    if recipe.packaged_texts:
        texts += [("fortunes", fortunes_text()), ("chatterbot", dialogue_text(conversations))]
    texts.append(("tasks", tasks_text(synthesize(recipe.pretrain_tasks, rng=rng, system_rate=0.0))))
    for name, text in texts:
        (stage.folder / f"pretrain_{name}.txt").write_text(text, encoding="utf-8")
    sft = synthesize(recipe.sft_tasks, rng=rng, turns=2) + chatterbot_chats(conversations)
    sft = [sft[i] for i in rng.permutation(len(sft))]
    write_conversations(stage.folder / "sft.jsonl", sft)
    write_conversations(stage.folder / "rl_tasks.jsonl", synthesize(recipe.rl_tasks, rng=rng,
                                                                     families=recipe.rl_families))
    heldout = synthesize(recipe.eval_tasks * len(FAMILIES), rng=rng, split="heldout", system_rate=0.0)
    write_conversations(stage.folder / "heldout.jsonl", heldout)
    shots = synthesize(len(FAMILIES), rng=rng, system_rate=0.0)   # the base model's few-shot examples
    write_conversations(stage.folder / "shots.jsonl", shots)
    chars = sum(len(t) for _, t in texts)
    return {"pretrain_characters": chars, "sft_conversations": len(sft), "rl_tasks": recipe.rl_tasks,
            "heldout_tasks": len(heldout)}


def pretrain_files(out: Path) -> list[Path]:
    return sorted((out / "data").glob("pretrain_*.txt"))


# ---- tokenizer ------------------------------------------------------------------------------------------

def _tokenizer(recipe: ChatRecipe, out: Path, stage: Stage, say: Say, train: TrainFn) -> dict:
    from ..tokenizer.train import train_bpe
    from .chat_format import CHAT_TOKENS, with_chat_tokens

    tok = train_bpe(files=pretrain_files(out), vocab_size=recipe.vocab_size, special_tokens=CHAT_TOKENS,
                    split_digits=True)
    tok = with_chat_tokens(tok)
    tok.save(stage.folder / "tok", overwrite=True)
    return {"vocab_size": tok.vocab_size}


def rl_fits(recipe: ChatRecipe, out: Path) -> None:
    """RL's longest prompt and its reply's REPLY_TOKENS must fit in block_size: checked with the recipe's
    tokenizer before pre-training begins (block_size may still change then), not when RL starts."""
    from ..tokenizer import Tokenizer
    from .rl import longest_prompt
    from .synth import REPLY_TOKENS, read_tasks

    longest = longest_prompt(Tokenizer.load(tokenizer_folder(out)), read_tasks(out / "data" / "rl_tasks.jsonl"))
    if longest + REPLY_TOKENS > recipe.block_size:
        raise NumgptError(f"block_size {recipe.block_size} is too short for RL: its longest prompt has {longest} "
                          f"tokens and a reply up to {REPLY_TOKENS}; run again with block_size "
                          f"{longest + REPLY_TOKENS} or more (pre-training has not begun, so it may change)")


def tokenizer_folder(out: Path) -> Path:
    return out / "tokenizer" / "tok"


# ---- pre-training ---------------------------------------------------------------------------------------

def _pretrain(recipe: ChatRecipe, out: Path, stage: Stage, say: Say, train: TrainFn) -> dict:
    from ..tokenizer import Tokenizer
    from ..training.data import prepare
    from ..training.run import setup_run

    data, run_dir = stage.folder / "data", stage.folder / "run"
    if recipe.rl_iters > 0:
        rl_fits(recipe, out)
    if not (data / "meta.json").exists():
        files = pretrain_files(out)
        prepare([f.read_text(encoding="utf-8") for f in files], data, Tokenizer.load(tokenizer_folder(out)),
                tokenizer_source=str(tokenizer_folder(out)), sources=[str(f) for f in files])
    options = {"max_iters": recipe.pretrain_iters, "batch_size": recipe.pretrain_batch,
               "block_size": recipe.block_size, "eval_interval": max(1, recipe.pretrain_iters // 5),
               "eval_iters": 10, "seed": recipe.seed, "threads": recipe.threads,
               "optim": {"lr": recipe.pretrain_lr, "min_lr": recipe.pretrain_lr / 10,
                         "warmup_iters": min(200, recipe.pretrain_iters // 10)}}
    shape = {"n_layer": recipe.n_layer, "n_head": recipe.n_head, "n_embd": recipe.n_embd}
    resume = (run_dir / "latest").exists()
    run = setup_run(data, run_dir, options=None if resume else options, shape=None if resume else shape,
                    resume_from="latest" if resume else None)
    result = _trained(train(run, "pretrain"), run_dir)
    return {"val_loss": round(float(result.last_eval["val_loss"]), 4),
            "val_bits_per_byte": round(float(result.last_eval["val_bpb"]), 4), "steps": run.state.step}


def _trained(result, run_dir: Path):
    """A stage's TrainResult; an interrupted one stops the recipe (its latest checkpoint is saved)."""
    if result.interrupted:
        from ..training.loop import stop_exception
        stop = stop_exception(result.signal)           # Terminated for SIGTERM, as numgpt train tells them apart
        stop.args = (f"saved {run_dir / 'latest'}",)
        raise stop
    return result


# ---- SFT ------------------------------------------------------------------------------------------------

def _sft(recipe: ChatRecipe, out: Path, stage: Stage, say: Say, train: TrainFn) -> dict:
    from .sft import setup_sft

    run_dir = stage.folder / "run"
    options = {"max_iters": recipe.sft_iters, "batch_size": recipe.sft_batch, "eval_interval":
               max(1, recipe.sft_iters // 4), "eval_iters": 10, "seed": recipe.seed, "threads": recipe.threads,
               "optim": {"lr": recipe.sft_lr, "min_lr": recipe.sft_lr / 10,
                         "warmup_iters": min(50, recipe.sft_iters // 10)}}
    resume = (run_dir / "latest").exists()
    setup = setup_sft(out / "data" / "sft.jsonl", run_dir, init=None if resume else out / "pretrain" / "run" / "latest",
                      resume=resume, options=None if resume else options, seed=recipe.seed,
                      block_size=recipe.block_size)
    result = _trained(train(setup.run, "sft"), run_dir)
    return {"val_loss": round(float(result.last_eval["val_loss"]), 4), "steps": setup.run.state.step}


# ---- RL -------------------------------------------------------------------------------------------------

def _rl(recipe: ChatRecipe, out: Path, stage: Stage, say: Say, train: TrainFn) -> dict:
    """GRPO from the SFT model on the hardest families' tasks; OUT/model is its result (or SFT's when
    rl_iters is 0)."""
    last = out / "sft" / "run" / "latest"
    if recipe.rl_iters > 0:
        from .rl import setup_rl

        run_dir = stage.folder / "run"
        options = {"max_iters": recipe.rl_iters, "eval_interval": max(1, recipe.rl_iters // 3),
                   "seed": recipe.seed, "threads": recipe.threads,
                   "optim": {"lr": recipe.rl_lr, "min_lr": recipe.rl_lr, "warmup_iters": 0}}
        resume = (run_dir / "latest").exists()
        setup = setup_rl(out / "data" / "rl_tasks.jsonl", run_dir, init=None if resume else last,
                         resume=resume, options=None if resume else options, group=recipe.rl_group,
                         prompts_per_step=recipe.rl_prompts, kl=recipe.rl_kl, seed=recipe.seed,
                         eval_tasks=None if resume else out / "data" / "heldout.jsonl")
        _trained(train(setup.run, "rl"), run_dir)
        last = run_dir / "latest"
    shutil.rmtree(out / MODEL, ignore_errors=True)
    shutil.copytree(last, out / MODEL)
    return {"model": str(out / MODEL), "from": str(last)}


# ---- evaluation -----------------------------------------------------------------------------------------

def _evaluate(recipe: ChatRecipe, out: Path, stage: Stage, say: Say, train: TrainFn) -> dict:
    """Exact match per family (base few-shot, SFT, final), format compliance, bits per byte of the
    pre-training validation text; written to OUT/evaluate/done.json and printed."""
    from ..formats import load_checkpoint, load_tokenizer
    from .chatdata import read_conversations
    from .evaluate import bits_per_byte, chat_scores, few_shot_scores

    heldout = read_conversations(out / "data" / "heldout.jsonl")
    shots = read_conversations(out / "data" / "shots.jsonl")
    val_text = validation_text(out)
    figures: dict[str, Any] = {}
    for name, folder in (("base", out / "pretrain" / "run" / "latest"), ("sft", out / "sft" / "run" / "latest"),
                         ("final", out / MODEL)):
        config, params = load_checkpoint(folder)
        tok = load_tokenizer(folder, config)
        scores = few_shot_scores(params, config, tok, heldout, shots) if name == "base" else \
            chat_scores(params, config, tok, heldout)
        scores["bits_per_byte"] = round(bits_per_byte(params, config, tok, val_text), 4)
        say(f"{name}: " + json.dumps(scores))
        figures[name] = scores
    return figures


def validation_text(out: Path, chars: int = 60_000) -> str:
    """The first `chars` characters of the pre-training validation split (what `prepare` held out), with
    the document separators as blank lines (scoring reads text, not special tokens)."""
    from ..tokenizer import ENDOFTEXT, Tokenizer
    from ..training.data import VAL_FRACTION, join_documents, split_text

    texts = [f.read_text(encoding="utf-8") for f in pretrain_files(out)]
    _, val = split_text(join_documents(texts, Tokenizer.load(tokenizer_folder(out))), VAL_FRACTION)
    return val[:chars].replace(ENDOFTEXT, "\n\n")
