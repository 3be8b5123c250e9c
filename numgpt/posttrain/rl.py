"""RL on verifiable rewards (GRPO): `numgpt rl TASKS --init SFT_RUN --out RUN` on numgpt's one training loop.

Each step (nanochat's chat_rl and TRL's GRPOTrainer, written small):

    P prompts drawn at random from TASKS (synth.prompt_messages, rendered with the generation prompt)
    G answers sampled for each with numgpt's batched KV-cache decoding (generate.decode_steps: the prompt
        prefilled once, its cache rows repeated G times), until <|end|> or max_new_tokens
    each answer rewarded by synth.check (1 right, 0 not; + format_bonus when it ends with <|end|>)
    advantages normalised within each group; GRPO's loss and backward (grpo.py) on the sampled tokens

The batch of a step depends on the current weights, so the batch function (`PolicySamples`) reads the live
TrainState the loop advances (its params, updated in place, and its step), and draws from the rng the loop
passes it, which is the state's: the sampling is in the saved state and a resumed run continues bit for
bit. Every rank draws the same prompts and one sampling seed; each samples only the groups its rows hold
(over its threads, whole groups each), answer j of group g from its own generator (seed, g, j), one decode
batch per group: the bits of a group do not depend on how many ranks or threads share the batch, so P
ranks give the bits of P threads. The price: decoding G rows at a time is slower per token than one batch
of all P x G (measured at 3.5M parameters: 2000 against 5000 tokens per CPU-second; a batch of different
prompts is left-padded, which changes the rounding with its company).

With `updates` > 1 a sampled batch is trained on for that many optimizer steps (PPO's epochs); the
ratio then uses the sampling policy's logp, taken from the decode's own logits. Such a batch is also
written to RUN (rl_batch.*.npz), so a run interrupted between its updates resumes with it.

The reference model (the KL penalty, and the KL logged) is the frozen init model, kept in memory (numgpt's
models are small); its logp of the sampled tokens are computed once per sampled batch.

Evaluation (every eval_interval steps, `HeldOut`): pass@1 on held-out prompts (greedy, exact match per
family); the loop's "losses" are the error rates 1 - pass@1, so RUN/best is the best held-out pass@1; and
the masked loss of the tasks' reference answers (RUN/data, packed as SFT's), which says how far RL moves
the model from the replies it was fine-tuned on.

    setup = setup_rl("tasks.jsonl", "runs/rl", init="runs/sft", options={"max_iters": 50})
    setup.run.train()
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..backprop import forward_for_training
from ..config import GPTConfig
from ..errors import NumgptError
from ..generate import decode_steps, generate_ids
from ..ops import log_softmax_at
from ..params import Params
from ..sampling import GREEDY, GREEDY_BELOW, SamplingOptions
from ..threads import row_ranges, run_in_threads, thread_count
from ..training.comm import Communicator
from ..training.objective import Batch, Objective
from .grpo import GrpoLoss, group_advantages
from .synth import FAMILIES, REPLY_TOKENS, check

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer
    from ..training.data import Dataset
    from ..training.loop import Trainer
    from ..training.run import Run
    from ..training.state import TrainState

DEFAULTS = {"group": 8, "clip": 0.2, "kl": 0.02, "prompts_per_step": 8, "updates": 1, "max_new_tokens": REPLY_TOKENS,
            "temperature": 1.0, "format_bonus": 0.0}
SETTINGS_FILE = "rl.json"                   # RUN/rl.json: the RL settings, the tasks' hash, the reference model
EVAL_CHUNK = 32                             # held-out prompts decoded together (fixed chunks: rank-independent)
TRAIN_EVAL_TASKS = 128                      # training tasks whose pass@1 is measured at each evaluation (at most)


# ---- sampling a group and rewarding it -----------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """A task ready to sample: its prompt ids and the record synth.check scores a reply against."""

    prompt: list[int]
    record: Mapping = field(repr=False)


def render_tasks(tokenizer: "Tokenizer", tasks: Sequence[Mapping]) -> list[Task]:
    """Each task's prompt (the conversation before its last assistant turn) rendered with the generation prompt."""
    from .chat_format import render_chat
    from .synth import prompt_messages
    return [Task(render_chat(tokenizer, prompt_messages(t), add_generation_prompt=True), t) for t in tasks]


def sample_group(params: Params, config: GPTConfig, prompt: Sequence[int], rngs: Sequence[np.random.Generator], *,
                 sampling: SamplingOptions, max_new_tokens: int, end_id: int
                 ) -> tuple[list[list[int]], list[np.ndarray]]:
    """len(rngs) answers to one prompt in one decode batch (prefilled once): each answer's ids (ending with
    end_id when it stopped there) and the model's logp (temperature 1) of each of them, float64."""
    G = len(rngs)
    answers: list[list[int]] = [[] for _ in range(G)]
    logps: list[list[float]] = [[] for _ in range(G)]
    steps = decode_steps(params, config, [list(prompt)], max_new_tokens=max_new_tokens, sampling=sampling,
                         rngs=None if sampling.greedy else list(rngs), num_return_sequences=G)
    stopped = None
    while True:
        try:
            running, tokens, logits = steps.send(stopped)
        except StopIteration:
            break
        lp = log_softmax_at(logits, tokens)                           # [A, V] -> [A]
        for i, t, v in zip(running, tokens, lp):
            answers[i].append(int(t))
            logps[i].append(float(v))
        stopped = [i for i, t in zip(running, tokens) if int(t) == end_id]
    return answers, [np.asarray(v, dtype=np.float64) for v in logps]


def reward(task: Mapping, reply: str, ended: bool, *, format_bonus: float = 0.0) -> float:
    """1 when synth.check finds the right answer in the reply, else 0; plus format_bonus when it ended
    with <|end|> (rather than at max_new_tokens)."""
    return float(check(task, reply)) + (format_bonus if ended else 0.0)


def group_rows(prompt: Sequence[int], answers: Sequence[Sequence[int]], *, length: int, pad_id: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of prompt + answer padded to `length` tokens, and the mask of each row's answer tokens as
    targets (position t predicts token t + 1). -> [G, length] int64, [G, length - 1] bool"""
    rows = np.full((len(answers), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(answers), length - 1), dtype=bool)
    p = len(prompt)
    for i, a in enumerate(answers):
        rows[i, :p + len(a)] = list(prompt) + list(a)
        mask[i, p - 1:p - 1 + len(a)] = True
    return rows, mask


def reference_logps(ref: Params, config: GPTConfig, rows: np.ndarray) -> np.ndarray:
    """The reference model's logp of every next token of rows [G, L]: [G, L - 1] float64."""
    ids, targets = rows[:, :-1], rows[:, 1:]
    logits, _ = forward_for_training(ref, config, ids)                 # [G * T, V]
    return log_softmax_at(logits, targets.reshape(-1)).reshape(targets.shape)


# ---- the batch function: one step's samples ---------------------------------------------------------------

@dataclass
class Sampled:
    """One rank's sampled groups as batch arrays (rows first), and its figures for the step's log."""

    batch: tuple[np.ndarray, ...]
    step: int                                  # the step it was sampled at
    figures: dict[str, float]                  # sums over this rank's rows (see PolicySamples.report)


@dataclass
class PolicySamples:
    """The batch function (objective.BatchFn) of RL: the rows `rows` of a batch of P groups of G answers
    sampled from the live weights (state.params), as GrpoLoss reads them. See the module docstring."""

    state: "TrainState"                        # the loop's: params updated in place, step
    config: GPTConfig
    tasks: list[Task]
    ref: Params | None                         # the frozen reference model (None: the sampling policy, KL 0)
    group: int
    sampling: SamplingOptions
    max_new_tokens: int
    end_id: int
    pad_id: int
    decode: "Tokenizer"
    updates: int = 1
    format_bonus: float = 0.0
    run: Path | None = None                    # where a batch trained for several updates is kept
    threads: int = 1                           # groups sampled at once (the rank's training threads)
    reward_model: Any = None                   # reward.RewardModel scoring the answers instead of synth.check
    _last: Sampled | None = None
    _sampled_at: float = 0.0

    def __call__(self, data: "Dataset", split: str, batch_size: int, block_size: int, rng: np.random.Generator,
                 rows: slice) -> Batch:
        step = self.state.step
        if step % self.updates != 0:           # a later update on the batch sampled at step - step % updates
            kept = self._kept(step - step % self.updates, rows).batch
            self._sampled_at = time.perf_counter()
            return kept
        G = self.group
        seed = int(rng.integers(2**63))                                # every rank draws the same two things
        picks = rng.integers(0, len(self.tasks), size=batch_size // G)  # [P] the prompts of the whole batch
        t0 = time.perf_counter()
        groups = range(rows.start // G, -(-rows.stop // G))            # the groups this rank's rows touch
        parts: list = [None] * len(groups)
        shares = row_ranges(len(groups), self.threads)                 # whole groups per thread: the same bits

        def sample(k: int) -> None:
            for i in range(shares[k].start, shares[k].stop):
                g = groups[i]
                parts[i] = self._group(self.tasks[int(picks[g])], np.random.SeedSequence([seed, g]), block_size + 1)
        run_in_threads(sample, len(shares))
        local = slice(rows.start - groups.start * G, rows.stop - groups.start * G)
        batch = tuple(np.concatenate([p[k] for p in parts])[local] for k in range(6))
        figures = _sum_figures([p[6] for p in parts], local, sample_seconds=time.perf_counter() - t0)
        self._last = Sampled(batch, step, figures)
        if self.updates > 1 and self.run is not None:
            self._save(rows)
        self._sampled_at = time.perf_counter()
        return batch

    def _group(self, task: Task, seeds: np.random.SeedSequence, length: int) -> tuple:
        """One group's batch arrays (ids, targets, norm, adv, old, ref) and its per-answer figures."""
        G = self.group
        rngs = [np.random.default_rng(s) for s in seeds.spawn(G)]
        answers, logps = sample_group(self.state.params, self.config, task.prompt, rngs, sampling=self.sampling,
                                      max_new_tokens=self.max_new_tokens, end_id=self.end_id)
        ended = [bool(a) and a[-1] == self.end_id for a in answers]
        replies = [self.decode.decode(a[:-1] if e else a) for a, e in zip(answers, ended)]
        rewards = self._rewards(task.record, replies, ended)          # [G]
        adv = group_advantages(rewards[None])[0]                       # [G]
        rows, mask = group_rows(task.prompt, answers, length=length, pad_id=self.pad_id)
        n_tokens = int(mask.sum())
        norm = np.where(mask, G / n_tokens, 0.0)                      # [G, T] per token within the group
        old = np.zeros(mask.shape)
        for i, lp in enumerate(logps):
            old[i][mask[i]] = lp
        ref = old.copy()                                              # no reference: the sampling policy, KL 0
        if self.ref is not None:
            used = len(task.prompt) + max(len(a) for a in answers)    # the group's rows past this are padding
            ref[:, :used - 1] = reference_logps(self.ref, self.config, rows[:, :used])
        ref = np.where(mask, ref, 0.0)
        d = ref - old
        k3 = np.where(mask, np.exp(d) - d - 1.0, 0.0).sum(axis=1)     # [G] per answer, summed over its tokens
        correct = np.array([check(task.record, r) for r in replies], dtype=np.float64)
        lengths = mask.sum(axis=1).astype(np.float64)
        per_answer = np.stack([rewards, correct, lengths, k3, np.array(ended, dtype=np.float64)], axis=1)   # [G, 5]
        return rows[:, :-1], rows[:, 1:], norm, adv, old, ref, per_answer

    def _rewards(self, task: Mapping, replies: list[str], ended: list[bool]) -> np.ndarray:
        """[G] float64: synth.check's 1 or 0 (+ format_bonus), or the reward model's score (+ format_bonus)
        of the prompt's conversation with each reply."""
        if self.reward_model is None:
            return np.array([reward(task, r, e, format_bonus=self.format_bonus) for r, e in zip(replies, ended)])
        from .synth import prompt_messages
        prompt = prompt_messages(task)
        scores = self.reward_model.score([[*prompt, {"role": "assistant", "content": r}] for r in replies])
        return scores.astype(np.float64) + self.format_bonus * np.array(ended, dtype=np.float64)

    def report(self, comm: Communicator) -> dict[str, float]:
        """The step's figures summed over the ranks: mean reward, accuracy, answer length, KL to the
        reference (mean k3 per sampled token, under the sampling policy), share of answers that ended with
        <|end|>, the gradient phase's seconds (batch ready to update done); on a sampling step also the
        sampled tokens, and the sampling phase's seconds (decode, rewards, the reference's logp) and tokens/s."""
        f = self._last.figures if self._last is not None else {}
        keys = ("answers", "reward", "correct", "tokens", "kl", "ended", "sample_seconds", "grad_seconds")
        sampled = self._last is not None and self._last.step == self.state.step - 1
        grad = time.perf_counter() - self._sampled_at
        v = np.array([f.get(k, 0.0) for k in keys[:6]] + [f.get("sample_seconds", 0.0) if sampled else 0.0, grad])
        comm.allreduce_sum(v)
        s = dict(zip(keys, v.tolist()))
        n, ranks = max(s["answers"], 1.0), comm.size
        out = {"reward": s["reward"] / n, "correct": s["correct"] / n, "answer_tokens": s["tokens"] / n,
               "kl": s["kl"] / max(s["tokens"], 1.0), "ended": s["ended"] / n,
               "grad_seconds": s["grad_seconds"] / ranks}
        if sampled:
            out.update(sampled_tokens=int(s["tokens"]), sample_seconds=s["sample_seconds"] / ranks,
                       sample_tokens_per_s=s["tokens"] / max(s["sample_seconds"] / ranks, 1e-9))
        return out

    def _file(self, rows: slice) -> Path:
        return self.run / f"rl_batch.{rows.start}-{rows.stop}.npz"

    def _save(self, rows: slice) -> None:
        from ..atomic import write_bytes_atomically
        buf = io.BytesIO()
        last = self._last
        np.savez(buf, *last.batch, step=last.step, figures=json.dumps(last.figures))
        write_bytes_atomically(self._file(rows), buf.getvalue())

    def _kept(self, step: int, rows: slice) -> Sampled:
        """The batch sampled at `step`: in memory, or (after a resume) the one saved in RUN."""
        if self._last is not None and self._last.step == step:
            return self._last
        path = None if self.run is None else self._file(rows)
        if path is None or not path.is_file():
            raise NumgptError(f"cannot resume at step {self.state.step} between the updates of the batch sampled "
                              f"at step {step}: it was not kept ({path}); resume from a checkpoint at a multiple of "
                              f"updates ({self.updates})")
        with np.load(path) as z:
            if int(z["step"]) != step:
                raise NumgptError(f"{path} holds the batch of step {int(z['step'])}, not of step {step}: resume "
                                  f"from a checkpoint at a multiple of updates ({self.updates})")
            self._last = Sampled(tuple(z[f"arr_{k}"] for k in range(6)), step, json.loads(str(z["figures"])))
        return self._last


def _sum_figures(per_group: list[np.ndarray], local: slice, *, sample_seconds: float) -> dict[str, float]:
    """Sums over this rank's answers (rows `local` of the groups sampled) of each figure of PolicySamples.report."""
    a = np.concatenate(per_group)[local]                              # [b, 5]
    return {"answers": float(len(a)), "reward": float(a[:, 0].sum()), "correct": float(a[:, 1].sum()),
            "tokens": float(a[:, 2].sum()), "kl": float(a[:, 3].sum()), "ended": float(a[:, 4].sum()),
            "sample_seconds": sample_seconds}


# ---- pass@1 on held-out prompts ----------------------------------------------------------------------------

def correct_counts(params: Params, config: GPTConfig, tokenizer: "Tokenizer", tasks: Sequence[Task], *,
                   max_new_tokens: int, chunks: Sequence[int] | None = None) -> np.ndarray:
    """[families, 2]: (right answers, tasks) per family of synth.FAMILIES, greedy, in fixed chunks of
    EVAL_CHUNK prompts decoded together (only the chunks listed, default all)."""
    end_id = _end_id(tokenizer)
    counts = np.zeros((len(FAMILIES), 2))
    n_chunks = -(-len(tasks) // EVAL_CHUNK)
    for k in range(n_chunks) if chunks is None else chunks:
        part = tasks[k * EVAL_CHUNK:(k + 1) * EVAL_CHUNK]
        outs = generate_ids(params, config, [t.prompt for t in part], max_new_tokens=max_new_tokens, sampling=GREEDY,
                            stop_ids=(end_id,))
        for t, out in zip(part, outs):
            reply = tokenizer.decode(out[:-1] if out and out[-1] == end_id else out)
            row = list(FAMILIES).index(t.record["family"])
            counts[row] += (float(check(t.record, reply)), 1.0)
    return counts


def pass_at_1(params: Params, config: GPTConfig, tokenizer: "Tokenizer", tasks: Sequence[Mapping], *,
              max_new_tokens: int) -> dict[str, float]:
    """Greedy exact match per task family (synth.check on the reply up to <|end|>): family -> share right,
    for the families present. Tasks as synth.read_tasks returns them; the prompts decoded in batches."""
    counts = correct_counts(params, config, tokenizer, render_tasks(tokenizer, tasks), max_new_tokens=max_new_tokens)
    return {name: c / n for name, (c, n) in zip(FAMILIES, counts) if n > 0}


@dataclass
class HeldOut:
    """The estimate function (objective.EstimateFn) of RL. The loop's "losses" are error rates, 1 - pass@1
    (greedy exact match), on the held-out tasks ("val") and on the first training tasks ("train"), so RUN/best
    is the checkpoint of the best held-out pass@1 (the loop keeps the lowest "val"; its val_bpb and val_bpc
    of an error rate mean nothing). Beside them: pass@1 overall and per family, and the masked loss of the
    tasks' reference answers (RUN/data, SFT's objective) on both splits, ref_train_loss and ref_val_loss: how
    far RL moves the model from the replies it was fine-tuned on. Each rank decodes its share of the chunks."""

    held: list[Task]
    train: list[Task]                          # the first training tasks, as many as held (TRAIN_EVAL_TASKS at most)
    tokenizer: "Tokenizer"
    max_new_tokens: int
    gold: Objective                            # SFT's objective on RUN/data

    def __call__(self, t: "Trainer") -> dict[str, Any]:
        from ..training.loop import estimate_loss
        ref = estimate_loss(dataclasses.replace(t, objective=self.gold))
        held, train = (self.counts(t, tasks) for tasks in (self.held, self.train))
        out = {"train": 1.0 - _share(train.sum(axis=0)), "val": 1.0 - _share(held.sum(axis=0)),
               "pass@1": _share(held.sum(axis=0)), "ref_train_loss": ref["train"], "ref_val_loss": ref["val"]}
        out.update({f"pass@1/{name}": _share(c) for name, c in zip(FAMILIES, held) if c[1] > 0})
        return out

    def counts(self, t: "Trainer", tasks: list[Task]) -> np.ndarray:
        """correct_counts of `tasks`, this rank's chunks, summed over the ranks: [families, 2]."""
        comm = t.dp.comm
        n_chunks = -(-len(tasks) // EVAL_CHUNK)
        counts = correct_counts(t.state.params, t.config, self.tokenizer, tasks, max_new_tokens=self.max_new_tokens,
                                chunks=range(comm.rank, n_chunks, comm.size))
        flat = counts.reshape(-1)
        comm.allreduce_sum(flat)
        return flat.reshape(counts.shape)


def _share(counts: np.ndarray) -> float:
    """right / tasks of a (right, tasks) pair (0 for no tasks)."""
    return float(counts[0] / max(counts[1], 1.0))


# ---- setup: `numgpt rl` up to the first step ----------------------------------------------------------------

DATA_SUBDIR = "data"


@dataclass
class RlSetup:
    """What setup_rl made: the run ready to train, the settings it trains with, and the task counts."""

    run: "Run"
    settings: dict[str, Any]
    tasks: int = 0                             # training prompts
    eval_tasks: int = 0                        # held-out prompts (pass@1)


def check_settings(s: Mapping[str, Any]) -> None:
    """Refuse RL settings that cannot train, one line each, naming the Python parameter."""
    group = s["group"]
    if not isinstance(group, int) or isinstance(group, bool) or group < 2:
        raise NumgptError(f"group must be a whole number >= 2 (advantages are normalised within a group of "
                          f"answers to one prompt), got {group!r}")
    kl = s["kl"]
    if not isinstance(kl, (int, float)) or isinstance(kl, bool) or not math.isfinite(kl) or kl < 0:
        raise NumgptError(f"kl must be a finite number >= 0 (the KL penalty's coefficient; 0 = off), got {kl!r}")
    clip = s["clip"]
    if not isinstance(clip, (int, float)) or isinstance(clip, bool) or not math.isfinite(clip) or clip <= 0:
        raise NumgptError(f"clip must be a finite number > 0 (PPO's ratio clip, 0.2 is usual), got {clip!r}")
    for name in ("prompts_per_step", "updates", "max_new_tokens"):
        v = s[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise NumgptError(f"{name} must be a whole number >= 1, got {v!r}")
    bonus = s["format_bonus"]
    if not isinstance(bonus, (int, float)) or not math.isfinite(bonus):
        raise NumgptError(f"format_bonus must be a finite number, got {bonus!r}")
    if sampling_options(s).greedy:          # every answer of a group the same: all advantages 0
        raise NumgptError(f"temperature must be >= {GREEDY_BELOW} for RL, got {s['temperature']!r}: greedy answers "
                          "to one prompt are all the same, so a group has nothing to compare (1.0 is usual)")


def setup_rl(tasks_path: str | Path, run_dir: str | Path, *, init: str | Path | None = None,
             options: Mapping | None = None, group: int | None = None, clip: float | None = None,
             kl: float | None = None, prompts_per_step: int | None = None, updates: int | None = None,
             max_new_tokens: int | None = None, temperature: float | None = None, decoding: Mapping | None = None,
             format_bonus: float | None = None, reward_model: str | Path | None = None, resume: bool = False,
             eval_tasks: str | Path | None = None,
             val_fraction: float = 0.1, seed: int = 1337, cache_dir: str | Path | None = None,
             comm: Communicator | None = None, ranks_here: int = 1, default_threads: int = 0) -> RlSetup:
    """`numgpt rl TASKS --init MODEL --out RUN`, up to the first step (then `.run.train()`).

    tasks_path: synthetic tasks (`numgpt data synth`), read with synth.read_tasks; init: a model with the
    chat tokens (an SFT run); group (G), clip, kl (beta), prompts_per_step (P), updates (optimizer steps per
    sampled batch), max_new_tokens, temperature and decoding (other SamplingOptions fields: top_k, top_p...),
    format_bonus: the RL settings, DEFAULTS when None; reward_model: a `numgpt reward train` model scoring
    the answers instead of synth.check (its tokenizer must be the policy's); on resume the run's own
    settings (RUN/rl.json), and a value given that differs is refused. eval_tasks: held-out tasks for
    pass@1, else val_fraction of TASKS held out by a permutation seeded with `seed` (the prompts and the
    samples come from the run's rng: options' seed). options: TrainConfig fields as setup_run's (batch_size
    = P * G and block_size = the longest prompt + max_new_tokens - 1 are set here; grad_accum stays 1).
    comm, ranks_here, default_threads: as setup_run's (rank 0 writes RUN/data and RUN/rl.json, the others
    wait at a barrier). A refusal before training leaves nothing this made."""
    from ..formats import hf_cache_dir
    from ..training.comm import SingleProcess
    from ..training.lock import check_not_locked
    from ..training.loop import LATEST

    comm = SingleProcess() if comm is None else comm
    cache_dir = hf_cache_dir({}) if cache_dir is None else cache_dir
    run = Path(run_dir)
    given = {"group": group, "clip": clip, "kl": kl, "prompts_per_step": prompts_per_step, "updates": updates,
             "max_new_tokens": max_new_tokens, "temperature": temperature, "format_bonus": format_bonus,
             "reward_model": None if reward_model is None else str(reward_model)}
    given = {k: v for k, v in given.items() if v is not None}
    if decoding:
        given["decoding"] = dict(decoding)
    _refuse_grad_accum(options or {})
    if resume:
        if init is not None:
            raise NumgptError("resume=True continues the run in run_dir with its own model: drop init=")
        return _resume(Path(tasks_path), run, given, options, comm=comm, ranks_here=ranks_here, cache_dir=cache_dir)
    if init is None:
        raise NumgptError("init= is required: the model to train, with the chat tokens (an SFT run)")
    if (run / LATEST).exists():
        raise NumgptError(f"{run} already holds a training run; continue it with resume=True, or pass another run_dir")
    settings = {**DEFAULTS, "decoding": {}, "reward_model": None, **given}
    check_settings(settings)
    sampling_options(settings)
    if comm.rank == 0:
        check_not_locked(run)
    existed = run.exists()
    try:
        return _new(Path(tasks_path), run, init, settings, options, eval_tasks=eval_tasks, val_fraction=val_fraction,
                    seed=seed, cache_dir=cache_dir, comm=comm, ranks_here=ranks_here, default_threads=default_threads)
    except BaseException:
        if comm.rank == 0 and not existed:
            shutil.rmtree(run, ignore_errors=True)
        elif comm.rank == 0:
            shutil.rmtree(run / DATA_SUBDIR, ignore_errors=True)
            (run / SETTINGS_FILE).unlink(missing_ok=True)
        raise


def sampling_options(settings: Mapping[str, Any]) -> SamplingOptions:
    """The SamplingOptions of the answers: temperature and the other decoding fields of the settings."""
    return SamplingOptions.from_mapping({**settings.get("decoding", {}), "temperature": settings["temperature"]})


def split_tasks(path: Path, eval_tasks: str | Path | None, val_fraction: float, seed: int
                ) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(train, held out) tasks as (where, task) pairs, each checked by synth.read_tasks' rules: eval_tasks'
    file, or val_fraction of TASKS by sft.split_conversations (the split RUN/data is packed with)."""
    from .sft import split_conversations
    from .synth import read_tasks

    named = lambda p: [(f"{p}:{i}", t) for i, t in enumerate(read_tasks(p), 1)]   # noqa: E731
    if eval_tasks is not None:
        return named(path), named(eval_tasks)
    return split_conversations(named(path), val_fraction, seed)


def _chat_model(init: str | Path, cache_dir: str | Path) -> tuple[Path, "Tokenizer"]:
    """The init model's folder and tokenizer; refused when it has no chat tokens (SFT comes first)."""
    from .sft import chat_model
    model = chat_model(init, cache_dir)
    if model.grown is not None:
        raise NumgptError(f"{init} has no chat tokens (<|user|>, <|assistant|>, <|end|>): RL starts from a chat "
                          f"model; run `numgpt sft CHATS --init {init} --out RUN` first and pass --init RUN")
    return model.folder, model.tokenizer


def _new(path: Path, run: Path, init: str | Path, settings: dict, options: Mapping | None, *, eval_tasks,
         val_fraction: float, seed: int, cache_dir, comm: Communicator, ranks_here: int, default_threads: int
         ) -> RlSetup:
    from ..formats.hf import load_config
    from .packing import file_sha256
    from .sft import prepare_sft

    folder, tok = _chat_model(init, cache_dir)
    config = load_config(folder)
    train, held = split_tasks(path, eval_tasks, val_fraction, seed)
    block_size = _block_size(config, tok, [t for _, t in train + held], settings["max_new_tokens"])
    rm = _reward_model(settings["reward_model"], tok)
    settings = {**settings, "tasks": str(path), "tasks_sha256": file_sha256(path), "init_folder": str(folder),
                "eval_tasks": None if eval_tasks is None else str(eval_tasks), "val_fraction": val_fraction,
                "seed": seed}
    if comm.rank == 0:
        from ..atomic import write_bytes_atomically
        from ..training.data import check_replaceable
        check_replaceable(run / DATA_SUBDIR)
        prepare_sft(path, run / DATA_SUBDIR, tok, block_size=block_size, val_fraction=val_fraction,
                    val_file=eval_tasks, seed=seed)
        write_bytes_atomically(run / SETTINGS_FILE, (json.dumps(settings, indent=2) + "\n").encode())
    comm.barrier()
    from ..training.run import setup_run
    P, G = settings["prompts_per_step"], settings["group"]
    opts = {"eval_iters": 2, **(options or {}), "batch_size": P * G, "block_size": block_size}
    setup = setup_run(run / DATA_SUBDIR, run, options=opts, init=folder, cache_dir=cache_dir, comm=comm,
                      ranks_here=ranks_here, default_threads=default_threads)
    return _with_objective(setup, settings, tok, train, held, rm)


def _resume(path: Path, run: Path, given: dict, options: Mapping | None, *, comm: Communicator, ranks_here: int,
            cache_dir) -> RlSetup:
    from ..formats import load_tokenizer
    from ..training.loop import LATEST
    from ..training.run import setup_run
    from .packing import file_sha256

    if not (run / SETTINGS_FILE).is_file():
        raise NumgptError(f"{run} holds no RL run to resume (no {SETTINGS_FILE}); start one with init=")
    settings = json.loads((run / SETTINGS_FILE).read_text(encoding="utf-8"))
    for name, value in given.items():
        if value != settings.get(name):
            raise NumgptError(f"{name} must stay {settings.get(name)!r} when resuming {run} (a run keeps its RL "
                              f"settings); start a new run to train with {value!r}")
    if file_sha256(path) != settings["tasks_sha256"]:
        raise NumgptError(f"{path} is not the task file {run} trains on ({settings['tasks']}); resume with that "
                          "file, or start a new run")
    setup = setup_run(run / DATA_SUBDIR, run, options=options, resume_from=LATEST, cache_dir=cache_dir, comm=comm,
                      ranks_here=ranks_here)
    tok = load_tokenizer(run / LATEST, setup.config)
    train, held = split_tasks(path, settings["eval_tasks"], settings["val_fraction"], settings["seed"])
    return _with_objective(setup, settings, tok, train, held, _reward_model(settings.get("reward_model"), tok))


def _refuse_grad_accum(options: Mapping) -> None:
    if options.get("grad_accum", 1) != 1:
        raise NumgptError("grad_accum must be 1 for RL: a step's batch is prompts_per_step x group sampled answers "
                          "(raise prompts_per_step for a bigger one)")


def longest_prompt(tok: "Tokenizer", tasks: Sequence[Mapping]) -> int:
    """The tokens of the longest task prompt as RL renders it (with the generation prompt)."""
    return max(len(t.prompt) for t in render_tasks(tok, tasks))


def _block_size(config: GPTConfig, tok: "Tokenizer", tasks: Sequence[Mapping], max_new_tokens: int) -> int:
    """The rows' length - 1: the longest prompt + max_new_tokens - 1, which must fit in the context."""
    longest = longest_prompt(tok, tasks)
    if longest + max_new_tokens > config.n_positions:
        room = config.n_positions - longest
        fix = (f"lower max_new_tokens to {room} or shorten the tasks" if room >= 1 else
               "train on shorter tasks, or start from a model with a longer context (the recipe's --block-size)")
        raise NumgptError(f"the longest prompt has {longest} tokens; with max_new_tokens {max_new_tokens} it passes "
                          f"the model's context of {config.n_positions}: {fix}")
    return longest + max_new_tokens - 1


def _with_objective(setup: "Run", settings: Mapping, tok: "Tokenizer", train: list, held: list, rm: Any) -> RlSetup:
    """The run with RL's Objective: PolicySamples, GrpoLoss, the step report and the held-out estimate."""
    from ..formats import load_checkpoint
    from .chat_format import chat_template
    from .sft import sft_objective

    template = chat_template(tok)
    _, ref = load_checkpoint(settings["init_folder"])
    samples = PolicySamples(state=setup.state, config=setup.config, tasks=render_tasks(tok, [t for _, t in train]),
                            ref=ref, group=settings["group"], sampling=sampling_options(settings),
                            max_new_tokens=settings["max_new_tokens"], end_id=template.end_id,
                            pad_id=template.start_id, decode=tok, updates=settings["updates"],
                            format_bonus=settings["format_bonus"], run=setup.folder,
                            threads=setup.tc.threads or thread_count(), reward_model=rm)
    held_tasks = render_tasks(tok, [t for _, t in held])
    train_tasks = samples.tasks[:min(len(held_tasks), TRAIN_EVAL_TASKS)]
    estimate = HeldOut(held_tasks, train_tasks, tok, settings["max_new_tokens"], sft_objective(setup.data))
    loss = GrpoLoss(clip=settings["clip"], kl=settings["kl"], on_policy=settings["updates"] == 1)
    setup.objective = Objective(batch=samples, loss=loss, report=samples.report, estimate=estimate)
    return RlSetup(run=setup, settings=dict(settings), tasks=len(train), eval_tasks=len(held))


def _reward_model(folder: str | None, tok: "Tokenizer") -> Any:
    """The reward model of `folder` (None: none), refused in one line when its tokenizer is not the policy's."""
    if folder is None:
        return None
    from .reward import check_same_tokenizer, load_reward_model
    rm = load_reward_model(folder)
    check_same_tokenizer(rm.tokenizer, tok, f"reward_model {folder}")
    return rm


def _end_id(tokenizer: "Tokenizer") -> int:
    from .chat_format import chat_template
    template = chat_template(tokenizer)
    if template is None:
        raise NumgptError("this tokenizer has no chat template: pass_at_1 needs a chat model (run numgpt sft first)")
    return template.end_id
