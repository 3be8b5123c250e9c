"""numgpt rl (GRPO, issue 22 item 3): the loss and every gradient against torch autograd (float64), the
advantages against a hand computation, sampling reproducible and independent of the row split, resume
bit-exact, ranks against threads, a short run's logged figures, pass@1, and bad input. A tiny chat model
made here (a BPE vocabulary of the synthetic text with the chat tokens), synthetic tasks from synth."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from references import reference

from numgpt import save_checkpoint, train_bpe
from numgpt.cli import main
from numgpt.config import GPTConfig
from numgpt.formats import load_checkpoint, load_tokenizer
from numgpt.generate import generate_ids
from numgpt.params import init_params
from numgpt.posttrain.chat_format import add_chat_tokens, chat_template
from numgpt.posttrain.chatdata import write_conversations
from numgpt.posttrain.grpo import GrpoLoss, group_advantages, grpo_value
from numgpt.posttrain.rl import EVAL_CHUNK, PolicySamples, pass_at_1, render_tasks, reward, setup_rl
from numgpt.posttrain.synth import check, synthesize
from numgpt.sampling import GREEDY, SamplingOptions
from numgpt.threads import run_in_threads, single_threaded_blas
from numgpt.training.comm import ThreadGroup
from numgpt.training.state import new_state

torch = reference("torch")
transformers = reference("transformers")

CONTEXT = 64
FAST = ["--threads", "1", "--group", "4", "--prompts-per-step", "2", "--max-new-tokens", "6", "--eval-iters", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny chat model (random weights, the chat tokens in its vocabulary), 40 tasks and 8 held-out ones."""
    root = tmp_path_factory.mktemp("rl")
    write_conversations(root / "tasks.jsonl", synthesize(40, rng=np.random.default_rng(0), system_rate=0.0))
    write_conversations(root / "heldout.jsonl", synthesize(8, rng=np.random.default_rng(2), split="heldout",
                                                           system_rate=0.0))
    text = " ".join(m["content"] for t in synthesize(300, rng=np.random.default_rng(1)) for m in t["messages"])
    tok = train_bpe(text, vocab_size=300, special_tokens=["<|endoftext|>"])
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=CONTEXT, vocab_size=tok.vocab_size,
                       bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    params = init_params(config, np.random.default_rng(0))
    save_checkpoint(root / "base", config, params, tokenizer=tok)
    config, params, tok = add_chat_tokens(config, params, tok)
    save_checkpoint(root / "chat", config, params, tokenizer=tok)
    return root


def rl(world, out, *extra):
    return main(["rl", str(world / "tasks.jsonl"), "--init", str(world / "chat"), "--out", str(out), *FAST, *extra])


def relative_error(ours, ref):
    return float(np.linalg.norm((ours - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-300))


def events(run, kind):
    return [e for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if e["type"] == kind]


# ---- the loss against torch ---------------------------------------------------------------------------

def hf_double(config, params):
    """transformers' GPT-2 in float64 holding our params (Conv1D stores [in, out] as we do)."""
    hf_config = transformers.GPT2Config(**{k: v for k, v in config.to_hf_dict().items()
                                           if k not in ("architectures", "torch_dtype")}, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(hf_config).double()
    sd = model.state_dict()
    with torch.no_grad():
        for name, p in params.items():
            sd["transformer." + name].copy_(torch.from_numpy(p))
    return model.train()


def torch_grpo(logp, old, ref, adv, norm, *, clip, kl):
    """GRPO's per-token loss as TRL's GRPOTrainer writes it (clipped surrogate, k3), summed with norm / B."""
    ratio = torch.exp(logp - old)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv)
    k3 = torch.exp(ref - logp) - (ref - logp) - 1
    return ((-surrogate + kl * k3) * norm).sum() / logp.shape[0]


@pytest.mark.parametrize("on_policy", [False, True])
def test_grpo_loss_and_every_gradient_match_torch_in_float64(on_policy):
    """Off-policy (old logp far from the current: both clipped regions, and the unclipped ones, are hit)
    and on-policy (ratio 1: old is the current logp, held constant), through the whole model."""
    config = GPTConfig(vocab_size=37, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    rng = np.random.default_rng(4)
    params = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float64)
              for k, v in init_params(config, np.random.default_rng(0)).items()}
    B, T = 6, 12
    ids = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    mask = np.zeros((B, T), dtype=bool)
    for b in range(B):
        mask[b, 3:3 + 2 + b] = True                                   # answers of different lengths after a prompt
    norm = np.where(mask, 3 / mask[:3].sum(), 0.0)                    # 2 groups of 3: per token in the group
    norm[3:] = np.where(mask[3:], 3 / mask[3:].sum(), 0.0)
    adv = np.array([1.2, -0.3, -0.9, 0.0, 0.7, -0.7])
    model = hf_double(config, params)
    logits = model(torch.from_numpy(ids)).logits
    logp = torch.log_softmax(logits, -1).gather(-1, torch.from_numpy(targets)[..., None])[..., 0]   # [B, T]
    old = logp.detach().numpy() + rng.uniform(-0.6, 0.6, (B, T))       # ratios in about [0.55, 1.8]
    ref = logp.detach().numpy() + rng.normal(0, 0.3, (B, T))
    clip, kl = 0.2, 0.05
    t_old = logp.detach() if on_policy else torch.from_numpy(old)
    expected = torch_grpo(logp, t_old, torch.from_numpy(ref), torch.from_numpy(adv)[:, None], torch.from_numpy(norm),
                          clip=clip, kl=kl)
    expected.backward()
    if not on_policy:
        ratio = np.exp(logp.detach().numpy() - old)[mask]
        a = np.broadcast_to(adv[:, None], (B, T))[mask]
        assert ((a > 0) & (ratio > 1 + clip)).any() and ((a < 0) & (ratio < 1 - clip)).any()   # zero-gradient regions
        assert ((a > 0) & (ratio < 1 - clip)).any() and ((a < 0) & (ratio > 1 + clip)).any()   # the min's other side
    loss_fn = GrpoLoss(clip=clip, kl=kl, on_policy=on_policy)
    batch = (ids, targets, norm, adv, old, ref)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    loss = loss_fn(params, config, batch, grads)
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert grpo_value(loss_fn, params, config, batch) == pytest.approx(expected.item(), rel=1e-6)
    for name, p in model.named_parameters():
        if name == "lm_head.weight":
            continue                                                   # tied to wte
        assert relative_error(grads[name.removeprefix("transformer.")], p.grad.numpy()) < 1e-6, name


def test_group_advantages_by_hand_and_an_equal_group_teaches_nothing():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])
    adv = group_advantages(rewards)
    s = math.sqrt(1 / 3)                                               # std of (1, 0, 0, 1) with Bessel's n - 1
    assert adv[0] == pytest.approx([0.5 / (s + 1e-4), -0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0.5 / (s + 1e-4)])
    assert np.all(adv[1] == 0)
    assert adv[2] == pytest.approx(np.array([-0.5, -0.5, -0.5, 1.5]) / (1.0 + 1e-4))   # std of (0, 0, 0, 2) is 1
    # without the KL term, a group of equal rewards gives no gradient at all
    config = GPTConfig(vocab_size=37, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    params = init_params(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 37, (4, 8))
    norm = np.ones((4, 8)) / 8
    batch = (ids, ids, norm, adv[1], np.zeros((4, 8)), np.zeros((4, 8)))
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    GrpoLoss(clip=0.2, kl=0.0)(params, config, batch, grads)
    assert all(not g.any() for g in grads.values())
    with pytest.raises(Exception, match="group of at least 2"):
        group_advantages(np.ones((3, 1)))


def test_the_reward_is_the_checker_plus_the_format_bonus():
    task = {"family": "add", "answer": "834", "messages": []}
    assert reward(task, "478 + 356 = 834", True) == 1.0 and reward(task, "It is 833.", True) == 0.0
    assert reward(task, "It is 834.", True, format_bonus=0.25) == 1.25
    assert reward(task, "It is 834", False, format_bonus=0.25) == 1.0        # cut at max_new_tokens: no bonus
    assert reward(task, "834 or 835", True) == 0.0                           # the last number is the answer


# ---- sampling ------------------------------------------------------------------------------------------------

def policy_samples(world, state, **kw):
    config, _ = load_checkpoint(world / "chat")
    tok = load_tokenizer(world / "chat", config)
    from numgpt.posttrain.synth import read_tasks
    template = chat_template(tok)
    tasks = render_tasks(tok, read_tasks(world / "tasks.jsonl"))
    return PolicySamples(state=state, config=config, tasks=tasks, ref=state.params, group=4,
                         sampling=SamplingOptions(temperature=1.0), max_new_tokens=6, end_id=template.end_id,
                         pad_id=template.start_id, decode=tok, **kw)


def test_sampling_is_reproducible_from_the_seed_and_the_same_whatever_the_row_split_or_threads(world):
    _, params = load_checkpoint(world / "chat")
    state = new_state(params, seed=0)
    samples = policy_samples(world, state)
    B, T = 12, 40                                                      # 3 groups of 4
    whole = samples(None, "train", B, T, np.random.default_rng(5), slice(0, B))
    again = samples(None, "train", B, T, np.random.default_rng(5), slice(0, B))
    for a, b in zip(whole, again):
        assert np.array_equal(a, b)
    ids, targets, norm, adv, old, ref = whole
    assert ids.shape == (B, T) and norm.shape == (B, T) and adv.shape == (B,)
    assert not np.array_equal(ids[0], ids[1])                          # 4 different answers to one prompt
    for g in range(3):
        assert norm[4 * g:4 * g + 4].sum() == pytest.approx(4)         # G / (tokens of the group) on each token
    assert np.array_equal(old != 0, norm > 0) and np.all(old <= 0)
    assert np.allclose(ref[norm > 0], old[norm > 0], atol=1e-4)       # the reference is the policy here
    other = samples(None, "train", B, T, np.random.default_rng(6), slice(0, B))
    assert not np.array_equal(other[0], ids)
    # rows split across ranks (a group cut in two: 0..5 and 5..12) give the same rows
    parts = [samples(None, "train", B, T, np.random.default_rng(5), rows) for rows in (slice(0, 5), slice(5, B))]
    for k in range(6):
        assert np.array_equal(np.concatenate([parts[0][k], parts[1][k]]), whole[k])
    threaded = policy_samples(world, state, threads=2)(None, "train", B, T, np.random.default_rng(5), slice(0, B))
    for a, b in zip(threaded, whole):                                  # groups over 2 threads: the same rows
        assert np.array_equal(a, b)


def test_pass_at_1_batched_is_one_prompt_at_a_time(world, monkeypatch):
    """Greedy exact match per family, in chunks, against each prompt decoded alone and checked by hand. The
    random model is never right, so the checker is swapped for a rule on the reply's length (both sides)."""
    from numgpt.posttrain import rl as rl_module
    check = lambda task, reply: len(reply) % 3 == 0                      # noqa: E731
    monkeypatch.setattr(rl_module, "check", check)
    config, params = load_checkpoint(world / "chat")
    tok = load_tokenizer(world / "chat", config)
    from numgpt.posttrain.synth import read_tasks
    tasks = read_tasks(world / "tasks.jsonl")
    end = chat_template(tok).end_id
    params = {k: v + np.float32(0.0) for k, v in params.items()}
    right: dict[str, list[bool]] = {}
    for task, t in zip(tasks, render_tasks(tok, tasks)):
        out = generate_ids(params, config, [t.prompt], max_new_tokens=5, sampling=GREEDY, stop_ids=(end,))[0]
        right.setdefault(task["family"], []).append(check(task, tok.decode([i for i in out if i != end])))
    assert len(tasks) > EVAL_CHUNK                                     # two chunks
    found = pass_at_1(params, config, tok, tasks, max_new_tokens=5)
    assert found == {f: np.mean(v) for f, v in right.items()}
    assert any(0 < v < 1 for v in found.values())


# ---- training ---------------------------------------------------------------------------------------------

def test_reward_rises_on_a_trivially_learnable_task(world, tmp_path):
    """'How many x's are in word?' answered with one token: the random model is right about once in 300
    answers; GRPO alone (kl 0) at a high learning rate, 30 steps of 4 prompts x 16 answers, has it say a
    likely count (about half right or more over the last 5 steps, for 3 task seeds tried)."""
    tasks = tmp_path / "count.jsonl"
    write_conversations(tasks, synthesize(40, rng=np.random.default_rng(0), families=("count",), system_rate=0.0))
    with single_threaded_blas():
        setup = setup_rl(tasks, tmp_path / "run", init=world / "chat", group=16, prompts_per_step=4, max_new_tokens=1,
                         kl=0.0, options={"max_iters": 30, "eval_interval": 0, "threads": 1, "eval_iters": 1,
                                          "optim": {"lr": 0.1, "min_lr": 0.1}})
        setup.run.train()
    steps = events(tmp_path / "run", "step")
    rewards = [e["reward"] for e in steps]
    assert len(rewards) == 30 and all(math.isfinite(r) and 0 <= r <= 1 for r in rewards)
    assert np.mean(rewards[:5]) < 0.1 and np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.3
    assert all(e["answer_tokens"] == 1 and e["sampled_tokens"] == 64 and e["kl"] >= 0 for e in steps)
    (final,) = events(tmp_path / "run", "eval")[-1:]
    assert final["step"] == 30 and 0 <= final["pass@1"] <= 1 and "pass@1/count" in final


def test_a_short_run_logs_its_figures_and_resumes_bit_exactly_after_ctrl_c(world, tmp_path, monkeypatch, capsys):
    common = ["--max-iters", "6", "--eval-interval", "3", "--seed", "7", "--eval-tasks", str(world / "heldout.jsonl")]
    with single_threaded_blas():
        assert rl(world, tmp_path / "straight", *common) == 0
        err = capsys.readouterr().err
        assert "2 prompts x 4 answers" in err and "held-out pass@1" in err
        from numgpt.cli import train_commands
        step = train_commands.TimeEstimate.step

        def ctrl_c_at_step_4(self, ev):                   # Ctrl-C lands in the loop after step 4's update
            if ev["step"] == 4:
                raise KeyboardInterrupt
            return step(self, ev)
        monkeypatch.setattr(train_commands.TimeEstimate, "step", ctrl_c_at_step_4)
        assert rl(world, tmp_path / "halves", *common) == 130
        monkeypatch.undo()
        assert json.loads((tmp_path / "halves" / "latest" / "trainstate.json").read_text())["step"] == 4
        capsys.readouterr()
        halves = str(tmp_path / "halves")
        assert main(["rl", str(world / "tasks.jsonl"), "--out", halves, "--resume", "--group", "8"]) == 2
        assert f"--group must stay 4 when resuming {halves}" in capsys.readouterr().err
        assert main(["rl", str(world / "heldout.jsonl"), "--out", str(tmp_path / "halves"), "--resume"]) == 2
        assert "is not the task file" in capsys.readouterr().err
        assert main(["rl", str(world / "tasks.jsonl"), "--out", str(tmp_path / "halves"), "--resume"]) == 0
    _, a = load_checkpoint(tmp_path / "straight" / "latest")
    _, b = load_checkpoint(tmp_path / "halves" / "latest")
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    figures = ("loss", "reward", "kl", "answer_tokens", "correct", "ended")
    straight, halves = events(tmp_path / "straight", "step"), events(tmp_path / "halves", "step")
    assert [[e[k] for k in figures] for e in straight] == [[e[k] for k in figures] for e in halves]
    assert all(math.isfinite(e[k]) for e in straight for k in figures + ("sample_tokens_per_s", "grad_seconds"))
    assert [e["step"] for e in events(tmp_path / "halves", "eval")] == [0, 3, 6]
    for e in events(tmp_path / "straight", "eval"):     # the loop's "losses" are error rates: RUN/best = best pass@1
        assert e["val_loss"] == 1 - e["pass@1"] and 0 <= e["train_loss"] <= 1
        assert e["ref_val_loss"] > 0 and e["ref_train_loss"] > 0 and math.isfinite(e["ref_val_loss"])
    assert events(tmp_path / "straight", "eval")[-1]["pass@1"] == events(tmp_path / "halves", "eval")[-1]["pass@1"]


def test_several_updates_per_batch_resume_between_them_with_the_kept_batch(world, tmp_path, monkeypatch):
    """--updates 2: steps 0-1 train on one sampled batch, 2-3 on the next...; a
    Ctrl-C after step 3 resumes on the batch sampled at step 2, kept in RUN."""
    common = ["--max-iters", "6", "--eval-interval", "0", "--updates", "2", "--lr", "1e-2"]
    with single_threaded_blas():
        assert rl(world, tmp_path / "straight", *common) == 0
        from numgpt.cli import train_commands
        step = train_commands.TimeEstimate.step

        def ctrl_c_at_step_3(self, ev):
            if ev["step"] == 3:
                raise KeyboardInterrupt
            return step(self, ev)
        monkeypatch.setattr(train_commands.TimeEstimate, "step", ctrl_c_at_step_3)
        assert rl(world, tmp_path / "halves", *common) == 130
        monkeypatch.undo()
        assert main(["rl", str(world / "tasks.jsonl"), "--out", str(tmp_path / "halves"), "--resume"]) == 0
    _, a = load_checkpoint(tmp_path / "straight" / "latest")
    _, b = load_checkpoint(tmp_path / "halves" / "latest")
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    steps = events(tmp_path / "straight", "step")
    assert ["sample_tokens_per_s" in e for e in steps] == [True, False] * 3   # sampled at steps 0, 2, 4
    assert steps[0]["reward"] == steps[1]["reward"]                   # the same batch's figures


def test_two_ranks_of_one_thread_train_the_weights_of_two_threads(world, tmp_path):
    """3 prompts x 4 answers: the ranks' rows 0-5 and 6-11 cut group 1 in two (each rank samples it)."""
    kw = dict(init=world / "chat", group=4, prompts_per_step=3, max_new_tokens=5,
              eval_tasks=world / "heldout.jsonl")
    opts = {"max_iters": 3, "eval_interval": 3, "eval_iters": 1, "optim": {"lr": 1e-2}}
    with single_threaded_blas():
        ref = setup_rl(world / "tasks.jsonl", tmp_path / "threads", options={**opts, "threads": 2}, **kw).run
        ref_result = ref.train()
        group = ThreadGroup(2)
        out = [None, None]

        def rank(r):
            comm = group.member(r)
            run = setup_rl(world / "tasks.jsonl", tmp_path / "ranks", options={**opts, "threads": 1}, comm=comm,
                           **kw).run
            out[r] = (run, run.train(comm=comm))
        run_in_threads(rank, 2)
    for run, result in out:
        for k, v in ref.state.params.items():
            assert np.array_equal(run.state.params[k], v), k
        assert result.last_eval["pass@1"] == ref_result.last_eval["pass@1"]
        for key in ("train_loss", "val_loss", "ref_train_loss", "ref_val_loss"):
            assert result.last_eval[key] == ref_result.last_eval[key], key
    assert [e["reward"] for e in events(tmp_path / "ranks", "step")] == \
        [e["reward"] for e in events(tmp_path / "threads", "step")]


def test_mpiexec_two_ranks_train_the_bits_of_two_threads(world, tmp_path):
    """Real `mpiexec -n 2 numgpt rl` (rank 0 writes RUN/data, the other waits), against --threads 2 in one
    process; 3 prompts x 4 answers, so group 1 is cut between the ranks."""
    import os
    import shutil
    import subprocess
    import sys
    reference("mpi4py").get_include
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}

    def run(*cmd):
        return subprocess.run([*cmd], capture_output=True, text=True, timeout=300, env=env)
    args = ["rl", world / "tasks.jsonl", "--init", world / "chat", "--group", 4, "--prompts-per-step", 3,
            "--max-new-tokens", 5, "--max-iters", 2, "--eval-interval", 2, "--eval-iters", 1, "--lr", 1e-2]
    numgpt = [sys.executable, "-m", "numgpt", *map(str, args)]
    threads = run(*numgpt, "--out", str(tmp_path / "threads"), "--threads", "2")
    assert threads.returncode == 0, threads.stderr
    ranks = run(mpiexec, "-n", "2", *numgpt, "--out", str(tmp_path / "ranks"), "--threads", "1")
    assert ranks.returncode == 0, ranks.stderr
    assert "on 2 ranks x 1 threads" in ranks.stderr
    for name in ("model.safetensors", "optimizer.safetensors"):
        saved = [(tmp_path / which / "latest" / name).read_bytes() for which in ("threads", "ranks")]
        assert saved[0] == saved[1], name


# ---- a reward model instead of the checker -----------------------------------------------------------------

def reward_model_folder(folder, model):
    """A reward model (one-output classifier with the chat template) over `model`'s body, random head."""
    from numgpt.posttrain.classify import new_classifier
    config, params = load_checkpoint(model)
    tok = load_tokenizer(model, config)
    new_classifier(config, params, tok, ["reward"], rng=np.random.default_rng(3)).save(folder)
    return folder


def test_a_reward_model_scores_the_answers_and_one_for_another_tokenizer_is_refused(world, tmp_path, capsys):
    from numgpt.posttrain.reward import load_reward_model
    from numgpt.posttrain.synth import prompt_messages, read_tasks
    rm_folder = reward_model_folder(tmp_path / "rm", world / "chat")
    rm = load_reward_model(rm_folder)
    setup = setup_rl(world / "tasks.jsonl", tmp_path / "run", init=world / "chat", group=4, prompts_per_step=2,
                     max_new_tokens=6, reward_model=rm_folder, options={"threads": 1})
    samples = setup.run.objective.batch
    B, T = 8, setup.run.tc.block_size
    ids, targets, norm, adv, old, ref = samples(None, "train", B, T, np.random.default_rng(0), slice(0, B))
    tok = load_tokenizer(world / "chat", setup.run.config)
    end = chat_template(tok).end_id
    picks = np.random.default_rng(0)
    picks.integers(2**63)
    chosen = picks.integers(0, len(samples.tasks), size=2)
    train_records = [t.record for t in samples.tasks]
    for g in range(2):                                # the advantages are the reward model's scores, normalised
        task = train_records[int(chosen[g])]
        replies = [tok.decode([int(i) for i in targets[b][norm[b] > 0] if i != end]) for b in range(4 * g, 4 * g + 4)]
        scores = rm.score([[*prompt_messages(task), {"role": "assistant", "content": r}] for r in replies])
        assert np.allclose(adv[4 * g:4 * g + 4], group_advantages(scores[None].astype(np.float64))[0])
        assert np.ptp(scores) > 0
    assert json.loads((tmp_path / "run" / "rl.json").read_text())["reward_model"] == str(rm_folder)
    # a reward model made for another vocabulary
    other = train_bpe(" ".join(m["content"] for t in read_tasks(world / "tasks.jsonl") for m in t["messages"]),
                      vocab_size=280, special_tokens=["<|endoftext|>"])
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, n_positions=CONTEXT, vocab_size=other.vocab_size)
    config, params, other = add_chat_tokens(config, init_params(config, np.random.default_rng(0)), other)
    save_checkpoint(tmp_path / "other", config, params, tokenizer=other)
    foreign = reward_model_folder(tmp_path / "foreign", tmp_path / "other")
    assert rl(world, tmp_path / "refused", "--reward-model", str(foreign)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"numgpt: error: --reward-model {foreign}: a reward model for another tokenizer")
    assert "\n" not in err and not (tmp_path / "refused").exists()


# ---- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--group", "1"], "--group must be a whole number >= 2"),
    (["--kl", "-0.1"], "--kl must be a finite number >= 0"),
    (["--kl", "nan"], "--kl must be a finite number >= 0"),
    (["--clip", "0"], "--clip must be a finite number > 0"),
    (["--prompts-per-step", "0"], "--prompts-per-step must be a whole number >= 1"),
    (["--temperature", "0"], "--temperature must be >= 1e-05 for RL, got 0.0: greedy answers"),   # ran, learned 0
])
def test_bad_settings_are_one_line_errors_and_leave_nothing(world, tmp_path, capsys, flags, words):
    assert rl(world, tmp_path / "run", *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("numgpt: error: ") and words in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_other_refusals_leave_nothing(world, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    task = synthesize(1, rng=np.random.default_rng(0), families=("add",), system_rate=0.0)[0]
    write_conversations(bad, [{**task, "answer": "not a number"}])
    assert main(["rl", str(bad), "--init", str(world / "chat"), "--out", str(tmp_path / "a"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}:1: the reference reply does not give the answer" in err and "\n" not in err
    assert main(["rl", str(world / "tasks.jsonl"), "--init", str(world / "base"), "--out", str(tmp_path / "b"),
                 *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no chat tokens" in err and "numgpt sft" in err and "\n" not in err
    assert rl(world, tmp_path / "c", "--max-new-tokens", "60") == 2
    err = capsys.readouterr().err.strip()
    assert "--max-new-tokens" in err and "context of 64" in err and "\n" not in err
    assert not any((tmp_path / name).exists() for name in "abc")
    with pytest.raises(Exception, match="group must be a whole number >= 2"):
        setup_rl(world / "tasks.jsonl", tmp_path / "d", init=world / "chat", group=1)
    with pytest.raises(Exception, match="grad_accum must be 1"):
        setup_rl(world / "tasks.jsonl", tmp_path / "d", init=world / "chat", max_new_tokens=6,
                 options={"grad_accum": 2})
    assert not (tmp_path / "d").exists()
