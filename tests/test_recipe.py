"""numgpt.posttrain.recipe (`numgpt recipe chat`): every stage on a tiny model, stage-level and mid-training
resume to the same bits as an uninterrupted run, refusals; corpus.py's texts; evaluate.py's scores against
one-at-a-time generation and the checker."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from numgpt import NumgptError
from numgpt.formats import load_checkpoint, load_tokenizer
from numgpt.posttrain import corpus
from numgpt.posttrain.evaluate import chat_replies, scores
from numgpt.posttrain.recipe import STAGES, ChatRecipe, run_chat_recipe
from numgpt.posttrain.synth import check, synthesize

TINY = dict(packaged_texts=False, pretrain_tasks=300, sft_tasks=120, rl_tasks=20, eval_tasks=2, vocab_size=320,
            n_layer=1, n_head=2, n_embd=32, block_size=64, pretrain_iters=6, pretrain_batch=4, sft_iters=4,
            sft_batch=4, rl_iters=0, threads=1)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "words.txt"
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and then it ran to the red house by the sea".split()
    path.write_text(" ".join(rng.choice(words, 3000)), encoding="utf-8")
    return path


def tiny(text_file, **changes) -> ChatRecipe:
    return ChatRecipe(texts=(str(text_file),), **{**TINY, **changes})


def weights(folder):
    return load_checkpoint(folder)[1]


def interrupt_at(stage: str, step: int):
    """A recipe train function that stops `stage`'s training after `step` steps, as Ctrl-C would."""
    def train(run, label):
        def on_event(ev):
            if label == stage and ev["type"] == "step" and ev["step"] == step:
                raise KeyboardInterrupt
        return run.train(on_event=on_event)
    return train


@pytest.fixture(scope="module")
def finished(tmp_path_factory, text_file):
    out = tmp_path_factory.mktemp("recipe") / "chat"
    records = run_chat_recipe(tiny(text_file), out)
    return out, records


def test_every_stage_runs_and_records_its_figures(finished):
    out, records = finished
    assert list(records) == list(STAGES)
    for name in STAGES:
        assert json.loads((out / name / "done.json").read_text()) == records[name]
    assert records["pretrain"]["steps"] == 6 and records["sft"]["steps"] == 4
    config, params = load_checkpoint(out / "model")
    tok = load_tokenizer(out / "model", config)
    assert tok.vocab_size == 320 and tok.chat_template                       # the chat tokens and template
    assert all(len(t) == 1 for t in (tok.decode([i]) for i in tok.encode(" 478 + 356 = 834")) if t.strip().isdigit())
    ev = records["evaluate"]
    assert set(ev) == {"stage", "seconds", "base", "sft", "final"}
    assert set(ev["sft"]["exact_match"]) == {"add", "sub", "count", "reverse", "next", "convert", "identity"}


def test_a_second_run_skips_finished_stages(finished, text_file):
    out, records = finished
    said = []
    again = run_chat_recipe(tiny(text_file), out, say=said.append)
    assert again == records
    assert sum("skipped" in line for line in said) == len(STAGES)


def test_interrupted_stages_continue_to_the_bits_of_an_uninterrupted_run(tmp_path, finished, text_file):
    out = tmp_path / "chat"
    with pytest.raises(KeyboardInterrupt):
        run_chat_recipe(tiny(text_file), out, train=interrupt_at("pretrain", 3))
    assert (out / "pretrain" / "run" / "latest").exists() and not (out / "pretrain" / "done.json").exists()
    with pytest.raises(KeyboardInterrupt):
        run_chat_recipe(tiny(text_file), out, train=interrupt_at("sft", 2))
    run_chat_recipe(tiny(text_file), out, until="sft")
    reference = weights(finished[0] / "sft" / "run" / "latest")
    resumed = weights(out / "sft" / "run" / "latest")
    assert all(np.array_equal(reference[k], resumed[k]) for k in reference)


def test_a_folder_with_other_settings_or_other_files_is_refused(tmp_path, finished, text_file):
    with pytest.raises(NumgptError, match="other settings.*sft_iters"):
        run_chat_recipe(tiny(text_file, sft_iters=5), finished[0])
    # a setting of a stage not begun yet may change (block_size found too short once the tokenizer exists)
    early = tmp_path / "early"
    run_chat_recipe(tiny(text_file), early, until="tokenizer")
    run_chat_recipe(tiny(text_file, block_size=48, sft_iters=5), early, until="tokenizer")
    assert json.loads((early / "recipe.json").read_text())["block_size"] == 48
    with pytest.raises(NumgptError, match="other settings.*vocab_size"):
        run_chat_recipe(tiny(text_file, vocab_size=330), early, until="tokenizer")
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(NumgptError, match="not empty and holds no recipe run"):
        run_chat_recipe(tiny(text_file), tmp_path)
    assert (tmp_path / "x.txt").read_text() == "mine"


def test_batched_replies_equal_one_at_a_time_generation_and_scores_follow_the_checker(finished):
    from numgpt.generate import generate_ids
    from numgpt.posttrain.chat_format import render_chat
    from numgpt.sampling import SamplingOptions
    from numgpt.posttrain.synth import prompt_messages

    out = finished[0]
    config, params = load_checkpoint(out / "model")
    tok = load_tokenizer(out / "model", config)
    tasks = synthesize(6, rng=np.random.default_rng(3), split="heldout")
    replies, ended = chat_replies(params, config, tok, tasks, max_new_tokens=12)
    end = tok.encode("<|end|>", allowed_special="all")[0]
    for task, reply, done in zip(tasks, replies, ended):          # one prompt a call: no batching, no padding
        ids = render_chat(tok, prompt_messages(task), add_generation_prompt=True)
        one = generate_ids(params, config, [ids], max_new_tokens=12, sampling=SamplingOptions(temperature=0),
                           stop_ids=[end])[0]
        assert reply == tok.decode([t for t in one if t != end]) and done == (one[-1] == end)
    right = [t["messages"][-1]["content"] for t in tasks]
    got = scores(tasks, right[:3] + ["?"] * 3, [True, True, False, True, True, True])
    assert got["exact_match_all"] == 0.5 == np.mean([check(t, r) for t, r in zip(tasks, right[:3] + ["x"] * 3)])
    assert got["format_compliance"] == round(2 / 6, 4)   # the third did not end; the last three give no answer


def test_chatterbot_conversations_become_alternating_chats_and_fortunes_skip_the_listed_files():
    import yaml

    conversations = corpus.read_chatterbot()
    assert len(conversations) > 1500
    folder = corpus.chatterbot_folder()
    persona = yaml.safe_load((folder / "botprofile.yml").read_text(encoding="utf-8"))["conversations"]
    greetings = yaml.safe_load((folder / "greetings.yml").read_text(encoding="utf-8"))["conversations"]
    assert [str(u) for u in greetings[0]] in conversations
    assert not any([str(u) for u in c] in conversations for c in persona)    # chatterbot's persona left out
    chats = corpus.chatterbot_chats([["Hi", "Hello", "How are you?"], ["a", "b", "c", "d"]])
    assert [m["role"] for m in chats[0]["messages"]] == ["user", "assistant"]
    assert [m["role"] for m in chats[1]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert corpus.dialogue_text([["Hi", "Hello"]]) == "A: Hi\nB: Hello"
    from numgpt.posttrain.classdata import FORTUNES_DIR, read_fortunes

    text = corpus.fortunes_text()
    assert len(text) > 1_000_000
    assert read_fortunes(FORTUNES_DIR, ["computers"])[0].text in text
    assert read_fortunes(FORTUNES_DIR, ["ascii-art"])[0].text not in text    # pictures drawn with characters
    assert read_fortunes(FORTUNES_DIR, ["art"])[0].text not in text          # out too (corpus.py says why)


def test_question_answer_text_is_the_task_and_its_reference_reply():
    task = synthesize(1, rng=np.random.default_rng(0), families=["add"], system_rate=0.0)[0]
    q, a = task["messages"][0]["content"], task["messages"][1]["content"]
    assert corpus.question_answer(task) == f"Question: {q}\nAnswer: {a}"
    assert corpus.question_answer(task, answer=False) == f"Question: {q}\nAnswer:"


def test_cli_quick_run_and_its_errors(tmp_path, text_file):
    cmd = [sys.executable, "-m", "numgpt", "recipe", "chat", "--out", str(tmp_path / "r"), "--text", str(text_file),
           "--no-packaged-texts", "--until", "tokenizer", "--vocab-size", "300", "--pretrain-tasks", "50"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| tokenizer |" in done.stdout and "vocab_size" in done.stdout
    assert "stopped after tokenizer: no model yet" in done.stderr        # it named RUN/model, not made yet
    bad = subprocess.run(cmd[:-1] + ["60"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "other settings (--pretrain-tasks 50 there, 60 now)" in bad.stderr
    missing = subprocess.run(cmd[:7] + ["--text", str(tmp_path / "nope.txt")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr and missing.stderr.count("\n") == 1
    shape = subprocess.run(cmd[:7] + ["--n-head", "5", "--n-embd", "64"], capture_output=True, text=True)
    assert shape.returncode == 2 and shape.stderr == ("numgpt: error: --n-embd (64) must be divisible by --n-head "
                                                      "(5)\n"), shape.stderr     # the library's names, as flags
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    for text, said in (("latin1.txt", "not UTF-8 text (byte 0xe9 at offset 3)"), (".", "is a folder")):
        bad = subprocess.run(cmd[:7] + ["--text", str(tmp_path / text)], capture_output=True, text=True)
        assert bad.returncode == 2 and said in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.parametrize("changes, said", [
    (dict(n_head=5, n_embd=64), "n_embd (64) must be divisible by n_head (5)"),
    (dict(vocab_size=10), "vocab_size must be >="),
    (dict(rl_families=("add", "foo")), "rl_families: no family foo"),
    (dict(rl_iters=1, block_size=64), "block_size must hold a task's prompt and its reply's 112 tokens"),
    (dict(sft_lr=0.0), "sft_lr must be > 0"),
    (dict(rl_iters=1, rl_group=1), "rl_group must be >= 2")])
def test_settings_are_checked_before_any_stage(tmp_path, text_file, changes, said):
    # each was found only by the stage that used it, after the stages before it had run (and recipe.json
    # then refused the corrected setting)
    with pytest.raises(NumgptError, match=re.escape(said)):
        tiny(text_file, **changes)


def test_rl_context_is_checked_before_pretraining_and_the_fix_is_accepted(tmp_path, text_file):
    out = tmp_path / "r"
    with pytest.raises(NumgptError, match=r"block_size 113 is too short for RL: its longest prompt has \d+ "
                                          r"tokens and a reply up to 112; run again with block_size (\d+) or more"
                       ) as refused:
        run_chat_recipe(tiny(text_file, rl_iters=1, block_size=113), out)
    assert (out / "tokenizer" / "done.json").exists() and not any((out / "pretrain").iterdir())
    needed = int(re.search(r"block_size (\d+) or more", str(refused.value)).group(1))
    run_chat_recipe(tiny(text_file, rl_iters=1, block_size=needed), out, until="pretrain")
    assert (out / "pretrain" / "done.json").exists()
