"""numgpt.posttrain.pairs: preference pairs read and refused line by line, written atomically, made from the
synthetic tasks (chosen passes the exact checker, rejected fails it, same split), rendered to ids equal to
transformers' apply_chat_template, and `numgpt data pairs|check` through the real dispatcher."""

import json
import re
from collections import Counter

import numpy as np
import pytest
from references import reference

from numgpt import Tokenizer
from numgpt.cli import main
from numgpt.errors import NumgptError
from numgpt.posttrain.pairs import near_number, near_word, read_pairs, render_pair, synthesize_pairs, write_pairs
from numgpt.posttrain.synth import FAMILIES, check, is_heldout

transformers = reference("transformers")

TEXT = ("What is 478 + 356? 478 + 356 = 834. Spell 'table' backwards: elbat. After Friday comes Saturday. "
        "I am numgpt, a small GPT-2 written from scratch in NumPy.\n") * 20


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    """A small vocabulary with the chat tokens and template, saved by `numgpt train-tokenizer --chat`."""
    folder = tmp_path_factory.mktemp("chat")
    (folder / "text.txt").write_text(TEXT, encoding="utf-8")
    assert main(["train-tokenizer", str(folder / "text.txt"), "--vocab-size", "300", "--chat", "-q",
                 "-o", str(folder / "tok")]) == 0
    return folder / "tok"


def pair(prompt="What is 2 + 2?", chosen="4", rejected="5", **extra):
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], **extra}


def test_pairs_round_trip_keeping_extra_keys(tmp_path):
    pairs = [pair(family="add", answer="4"), pair("Hi", "Hello", "Go away")]
    pairs[1]["prompt"].insert(0, {"role": "system", "content": "Be kind."})
    assert write_pairs(tmp_path / "p.jsonl", pairs) == 2
    (tmp_path / "p.jsonl").write_text((tmp_path / "p.jsonl").read_text() + "\n\n")     # blank lines are skipped
    assert read_pairs(tmp_path / "p.jsonl") == pairs


BAD = [
    ("not json", "{oops", ":1: invalid JSON"),
    ("not an object", "[1, 2]", ":1: expected a JSON object"),
    ("no prompt", json.dumps({k: v for k, v in pair().items() if k != "prompt"}), ':1: no "prompt" key'),
    ("no rejected", json.dumps({k: v for k, v in pair().items() if k != "rejected"}), ':1: no "rejected" key'),
    ("prompt a string", json.dumps({**pair(), "prompt": "What?"}), ':1: "prompt" is a string'),
    ("prompt ends with the assistant", json.dumps({**pair(), "prompt": pair()["prompt"] + pair()["chosen"]}),
     ':1: "prompt": the conversation must end with the user\'s message for the assistant to answer'),
    ("prompt with a bad role", json.dumps({**pair(), "prompt": [{"role": "bot", "content": "x"}]}),
     ":1: \"prompt\": messages[0]: unknown role 'bot'"),
    ("chosen a string", json.dumps({**pair(), "chosen": "4"}), ':1: "chosen" is a string; expected a list of one'),
    ("two rejected messages", json.dumps({**pair(), "rejected": pair()["rejected"] * 2}),
     ':1: "rejected" is a list of 2 messages'),
    ("chosen from the user", json.dumps({**pair(), "chosen": [{"role": "user", "content": "4"}]}),
     ":1: \"chosen\": an assistant message (the reply) is needed here, got role 'user'"),
    ("content a number", json.dumps({**pair(), "rejected": [{"role": "assistant", "content": 5}]}),
     ':1: "rejected": content must be a string, got a number'),
    ("chosen equals rejected", json.dumps(pair(rejected="4")), ':1: "chosen" and "rejected" are the same reply'),
    ("cut names the chosen", json.dumps(pair(cut="chosen")), ':1: "cut" must be "rejected"'),
]


@pytest.mark.parametrize("line,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_each_bad_record_is_one_error_naming_the_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(NumgptError) as e:
        read_pairs(path)
    assert str(e.value).startswith(f"{path}{message}"), str(e.value)
    assert "\n" not in str(e.value)


def test_an_empty_file_and_a_later_bad_line_are_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n \n")
    with pytest.raises(NumgptError, match="no preference pairs"):
        read_pairs(tmp_path / "empty.jsonl")
    (tmp_path / "third.jsonl").write_text(json.dumps(pair()) + "\n\n" + json.dumps(pair(rejected="4")) + "\n")
    with pytest.raises(NumgptError, match=r"third.jsonl:3: .chosen. and .rejected. are the same"):
        read_pairs(tmp_path / "third.jsonl")


def test_write_pairs_refuses_a_bad_pair_and_writes_nothing(tmp_path):
    with pytest.raises(NumgptError, match=r"pairs\[1\]: .chosen. and .rejected. are the same"):
        write_pairs(tmp_path / "p.jsonl", [pair(), pair(rejected="4")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_synthetic_pairs_chosen_right_rejected_wrong_in_the_split(split):
    pairs = synthesize_pairs(700, rng=np.random.default_rng(3), split=split)
    assert {p["family"] for p in pairs} == set(FAMILIES)
    for p in pairs:
        assert check(p, p["chosen"][0]["content"]), p
        assert not check(p, p["rejected"][0]["content"]), p
        assert p["split"] == split and p["prompt"][-1]["role"] == "user"
        family, q, a = p["template"].split(":")
        assert (int(q[1:]) in FAMILIES[family].templates("questions", split)
                and int(a[1:]) in FAMILIES[family].templates("answers", split))
    flaws = {p["flaw"] for p in pairs}
    assert flaws == {"number", "word", "name", "format"}
    rate = np.mean([p["flaw"] == "format" for p in pairs])
    assert 0.05 < rate < 0.15                                   # FORMAT_RATE 0.1 over 700 draws
    # a near miss keeps the reply's template: the same text up to the answer (numbers and words)
    for p in pairs:
        if p["flaw"] in ("number", "word") and p["family"] in ("add", "sub"):
            chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
            assert chosen.rsplit(" ", 1)[0] == rejected.rsplit(" ", 1)[0] or " " not in chosen


def test_synthetic_pairs_are_deterministic_and_keep_the_operand_split():
    one = synthesize_pairs(50, rng=np.random.default_rng(7), split="heldout")
    assert one == synthesize_pairs(50, rng=np.random.default_rng(7), split="heldout")
    assert one != synthesize_pairs(50, rng=np.random.default_rng(8), split="heldout")
    words = [p for p in one if p["family"] == "reverse"]
    assert words and all(is_heldout(f"word:{p['answer'][::-1]}") for p in words)
    assert synthesize_pairs(10, rng=np.random.default_rng(0), format_rate=1.0)[0]["flaw"] == "format"
    with pytest.raises(NumgptError, match="format_rate must be between 0 and 1"):
        synthesize_pairs(10, rng=np.random.default_rng(0), format_rate=1.5)
    with pytest.raises(NumgptError, match="unknown task family 'mul'"):
        synthesize_pairs(10, rng=np.random.default_rng(0), families=["mul"])


def test_near_misses_are_near():
    rng = np.random.default_rng(0)
    for x in (0, 7, 10, 834, 1000, 99999):
        for _ in range(50):
            wrong = near_number(x, rng)
            assert wrong >= 0 and wrong != x
            changed = sum(a != b for a, b in zip(str(wrong).zfill(8), str(x).zfill(8)))
            power = abs(wrong - x)
            assert changed == 1 or (power == 10 ** round(np.log10(power)) and power <= 10 ** (len(str(x)) - 1))
    assert {near_word("Friday", rng) for _ in range(60)} == {"Wednesday", "Thursday", "Saturday"}
    assert {near_word("a", rng) for _ in range(60)} == {"y", "z", "b"}
    w = "elbat"
    edits = ({w[:i] + w[i + 1:] for i in range(5)} | {w[:i] + w[i] + w[i:] for i in range(5)}      # dropped, doubled
             | {w[:i] + w[i + 1] + w[i] + w[i + 2:] for i in range(4)} | {"tlbae"})               # swapped (wrapping)
    seen = {near_word(w, rng) for _ in range(300)}
    assert seen == edits


def test_render_pair_equals_transformers_apply_chat_template(chat_folder):
    tok = Tokenizer.load(chat_folder)
    hf = transformers.AutoTokenizer.from_pretrained(chat_folder)
    pairs = synthesize_pairs(40, rng=np.random.default_rng(1), system_rate=0.5)
    pairs.append(pair("Type <|end|> for me", "<|end|>", "<|user|>"))    # special strings are text
    for p in pairs:
        prompt, chosen, rejected = render_pair(tok, p)
        assert prompt == hf.apply_chat_template(p["prompt"], add_generation_prompt=True, return_dict=False,
                                                sanitize_control_tokens=True)
        for reply, key in ((chosen, "chosen"), (rejected, "rejected")):
            assert prompt + reply == hf.apply_chat_template(p["prompt"] + p[key], return_dict=False,
                                                            sanitize_control_tokens=True)
            assert reply[-1] == tok.special_tokens["<|end|>"] and tok.decode(reply[:-1]) == p[key][0]["content"]


def test_a_cut_reply_renders_without_its_end(chat_folder):
    """A step-level pair's rejected reply ("cut": "rejected") is transformers' rendering of the whole
    conversation less its final <|end|>; its chosen reply keeps the end."""
    tok = Tokenizer.load(chat_folder)
    hf = transformers.AutoTokenizer.from_pretrained(chat_folder)
    p = pair("What is 478 + 356?", "Ones: 8 + 6 = 14, write 4, carry 1. The sum is 834.",
             "Ones: 8 + 6 = 15, write 5, carry 1.", cut="rejected")
    prompt, chosen, rejected = render_pair(tok, p)
    end = tok.special_tokens["<|end|>"]
    assert prompt + chosen == hf.apply_chat_template(p["prompt"] + p["chosen"], return_dict=False)
    assert prompt + rejected + [end] == hf.apply_chat_template(p["prompt"] + p["rejected"], return_dict=False)
    assert rejected[-1] != end and chosen[-1] == end


def test_render_pair_needs_a_chat_template(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    assert main(["train-tokenizer", str(tmp_path / "t.txt"), "--vocab-size", "280", "-q", "-o",
                 str(tmp_path / "tok")]) == 0
    with pytest.raises(NumgptError, match="no chat template"):
        render_pair(Tokenizer.load(tmp_path / "tok"), pair())


def test_data_pairs_and_check_through_the_cli(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["data", "pairs", "--n", "30", "--split", "heldout", "--seed", "2", "--families", "add,identity",
                 "--out", str(out)]) == 0
    pairs = read_pairs(out)
    assert pairs == synthesize_pairs(30, rng=np.random.default_rng(2), families=["add", "identity"], split="heldout")
    assert "wrote 30 heldout preference pairs" in capsys.readouterr().out
    assert main(["data", "check", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "30 preference pairs" in printed and "add 15, identity 15" in printed and "0 rejected replies do too" in printed
    assert main(["data", "pairs", "--n", "3", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "pairs", "--n", "3", "--families", "add,add,sub", "--out", str(tmp_path / "t.jsonl")]) == 2
    assert "--families: add named twice" in capsys.readouterr().err            # it was 2 add for 1 sub
    for flags, said in ((["--group", "4"], "--group is for the answers --from-model MODEL samples"),
                        (["--temperature", "0.5"], "--temperature is for the answers --from-model MODEL samples"),
                        (["--from-model", "chat", "--format-rate", "0"], "--format-rate shapes synthetic rejected")):
        assert main(["data", "pairs", "--n", "3", *flags, "--out", str(tmp_path / "t.jsonl")]) == 2
        assert said in capsys.readouterr().err                                  # each was ignored
    # the chat model answers who it is right every time: no pair, and no empty file that check and dpo refuse
    assert main(["data", "pairs", "--from-model", "chat", "--families", "identity", "--n", "2",
                 "--out", str(tmp_path / "e.jsonl")]) == 2
    assert "none of the 2 tasks gave a pair" in capsys.readouterr().err and not (tmp_path / "e.jsonl").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pair(family="add", answer="5")) + "\n")          # its chosen "4" is not the answer
    assert main(["data", "check", str(bad)]) == 2
    assert "bad.jsonl:1 (chosen): the reference reply does not give the answer '5'" in capsys.readouterr().err


def test_sampled_pairs_are_the_models_own_right_and_wrong_answers():
    """The built-in chat model answers 16 sums 6 times each: every pair's chosen answer is the first sample
    the checker accepts whose working is the reference's step for step, and its rejected the first the
    checker refuses (ended with <|end|>), redone here from the same seeds with rl.sample_group; the same
    seed gives the same pairs."""
    import numgpt
    from numgpt.posttrain.chat_format import chat_template
    from numgpt.posttrain.pairs import sampled_pairs
    from numgpt.posttrain.rl import render_tasks, sample_group
    from numgpt.posttrain.synth import prompt_messages, synthesize
    from numgpt.sampling import SamplingOptions

    lm = numgpt.load("chat")
    tasks = synthesize(16, rng=np.random.default_rng(3), families=["add", "sub"])
    pairs = sampled_pairs(lm.params, lm.config, lm.tokenizer, tasks, group=6, seed=5)
    assert pairs == sampled_pairs(lm.params, lm.config, lm.tokenizer, tasks, group=6, seed=5)
    end = chat_template(lm.tokenizer).end_id
    expected = []
    for k, task in enumerate(render_tasks(lm.tokenizer, tasks)):
        answers, _ = sample_group(lm.params, lm.config, task.prompt, [np.random.default_rng([5, k, i]) for i in range(6)],
                                  sampling=SamplingOptions(temperature=1.0), max_new_tokens=112, end_id=end)
        texts = [(lm.tokenizer.decode([t for t in a if t != end]), bool(a) and a[-1] == end) for a in answers]
        worked = re.fullmatch(r"(.*write \d(?:, (?:carry|borrow) 1)?\.) .*", task.record["messages"][-1]["content"])
        right = [t for t, _ in texts if check(task.record, t) and t.startswith(worked[1])]   # the steps right too
        wrong = [t for t, ended in texts if ended and not check(task.record, t)]
        if right and wrong:
            expected.append((prompt_messages(task.record), right[0], wrong[0], task.record["answer"]))
    assert 0 < len(expected) < len(tasks)          # the model is right on some sums and not on others
    assert [(p["prompt"], p["chosen"][0]["content"], p["rejected"][0]["content"], p["answer"]) for p in pairs] == expected
    for pair in pairs:
        assert pair["flaw"] == "sampled" and check(pair, pair["chosen"][0]["content"])
        assert not check(pair, pair["rejected"][0]["content"])


def test_cut_after_slip_keeps_the_first_differing_sentence_or_token():
    from numgpt.posttrain.pairs import cut_after_slip

    ref = "Ones: 8 + 6 = 14, write 4, carry 1. Tens: 7 + 5 + 1 = 13, write 3, carry 1. The sum is 134."
    slip = "Ones: 8 + 6 = 14, write 4, carry 1. Tens: 7 + 5 + 1 = 14, write 4, carry 1. The sum is 144."
    assert cut_after_slip(ref, slip) == "Ones: 8 + 6 = 14, write 4, carry 1. Tens: 7 + 5 + 1 = 14, write 4, carry 1."
    first = "Ones: 8 + 6 = 15, write 5, carry 1. Tens: 7 + 5 + 1 = 13, write 3, carry 1. The sum is 135."
    assert cut_after_slip(ref, first) == "Ones: 8 + 6 = 15, write 5, carry 1."
    last = "Ones: 8 + 6 = 14, write 4, carry 1. Tens: 7 + 5 + 1 = 13, write 3, carry 1. The sum is 124."
    assert cut_after_slip(ref, last) == last                     # the slip is the last sentence: nothing to cut
    longer = ref + " Hundreds: 0 + 0 = 0, write 0. The sum is 134."
    assert cut_after_slip(ref, longer) == ref + " Hundreds: 0 + 0 = 0, write 0."   # past the reference's end
    assert cut_after_slip(ref, ref) == ref
    # "token": up to the first digit or word that differs
    assert cut_after_slip(ref, slip, "token") == "Ones: 8 + 6 = 14, write 4, carry 1. Tens: 7 + 5 + 1 = 14"
    assert cut_after_slip(ref, first, "token") == "Ones: 8 + 6 = 15"
    assert cut_after_slip(ref, last, "token") == ref[:-4] + "12"
    assert cut_after_slip(ref, ref[:-1] + " and done.", "token") == ref[:-1] + " and"   # a word, with its space
    assert cut_after_slip(ref, ref.replace("write 3", "wrote 3"), "token") == ref[:ref.index("write 3")] + "wrote"
    assert cut_after_slip(ref, ref, "token") == ref and cut_after_slip(ref, ref[:20], "token") == ref[:20]


def test_nearest_right_is_the_right_reply_with_the_longest_common_beginning():
    from numgpt.posttrain.pairs import nearest_right

    rights = ["Count: 2", "The letter 'r' appears in 'river' this many times: 2", "There are 2."]
    assert nearest_right("The letter 'r' appears in 'river' this many times: 3", rights) == rights[1]
    assert nearest_right("There are 3.", rights) == rights[2]
    assert nearest_right("3", rights) == rights[0]                  # nothing shared: the first (the reference)
    assert nearest_right("Th", ["The answer", "There"]) == "The answer"   # a tie: the first


def test_nearest_chosen_pairs_cut_against_the_right_reply_worded_like_the_wrong_one(tmp_path, capsys):
    """chosen="nearest": the chosen reply is whichever of the reference and the model's right samples (redone
    here from the same seeds) shares the longest beginning with the wrong answer, and the rejected reply is
    the wrong answer cut against it; on these 18 tasks some pairs choose a right sample over the reference."""
    import os

    import numgpt
    from numgpt.posttrain.chat_format import chat_template
    from numgpt.posttrain.pairs import cut_after_slip, sampled_pairs
    from numgpt.posttrain.rl import render_tasks, sample_group
    from numgpt.posttrain.synth import synthesize
    from numgpt.sampling import SamplingOptions

    lm = numgpt.load("chat")
    tasks = synthesize(18, rng=np.random.default_rng(8), families=["count", "convert", "next"])
    pairs = iter(sampled_pairs(lm.params, lm.config, lm.tokenizer, tasks, group=6, seed=3, step_level="token",
                               chosen="nearest"))
    end, paired, from_samples = chat_template(lm.tokenizer).end_id, 0, 0
    for k, task in enumerate(render_tasks(lm.tokenizer, tasks)):
        answers, _ = sample_group(lm.params, lm.config, task.prompt, [np.random.default_rng([3, k, i]) for i in range(6)],
                                  sampling=SamplingOptions(temperature=1.0), max_new_tokens=112, end_id=end)
        texts = [(lm.tokenizer.decode([t for t in a if t != end]), bool(a) and a[-1] == end) for a in answers]
        wrong = [t for t, ended in texts if ended and t.strip() and not check(task.record, t)]
        if not wrong:
            continue
        reference = task.record["messages"][-1]["content"]
        rights = [reference] + [t for t, _ in texts if check(task.record, t)]
        shared = [len(os.path.commonprefix([wrong[0], r])) for r in rights]
        expected = rights[shared.index(max(shared))]
        p, paired = next(pairs), paired + 1
        assert p["chosen"][0]["content"] == expected
        assert p["rejected"][0]["content"] == cut_after_slip(expected, wrong[0], "token")
        from_samples += expected != reference
    assert next(pairs, None) is None and paired > 0 and from_samples > 0
    assert main(["data", "pairs", "--from-model", "chat", "--chosen", "nearest", "--n", "2",
                 "-o", str(tmp_path / "n.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--chosen nearest picks the right reply step-level pairs cut against, so it needs --step-level" in err
    with pytest.raises(NumgptError, match="chosen must be one of reference, nearest"):
        sampled_pairs(lm.params, lm.config, lm.tokenizer, tasks, step_level="token", chosen="closest")
    with pytest.raises(NumgptError, match="chosen='nearest' picks the right reply step-level pairs cut against"):
        sampled_pairs(lm.params, lm.config, lm.tokenizer, tasks, chosen="nearest")


def test_the_reward_model_refuses_step_level_pairs(tmp_path, capsys):
    """A cut reply has no <|end|> for a reward model to read: reward train refuses the file by line."""
    from numgpt.posttrain.pairs import whole_reply_pairs

    path = tmp_path / "steps.jsonl"
    write_pairs(path, [pair(family="add", answer="4"), pair("What is 3 + 3?", "6", "7", cut="rejected")])
    with pytest.raises(NumgptError, match=r'steps.jsonl:2: a step-level pair \("cut"\), which is for DPO'):
        whole_reply_pairs(path)
    assert main(["reward", "train", str(path), "--init", "chat", "--out", str(tmp_path / "rm")]) == 2
    err = capsys.readouterr().err
    assert "steps.jsonl:2: a step-level pair" in err and "Traceback" not in err
    assert not (tmp_path / "rm").exists()


def test_step_level_pairs_cut_the_wrong_answer_after_its_slip():
    """Step-level pairs from the built-in chat model's answers to 16 sums: chosen is the task's reference
    reply; rejected is the first wrong answer (redone here from the same seeds) cut after its first sentence
    that is not the reference's, marked "cut" exactly when it was shortened; every task with a wrong
    answer gives a pair."""
    import numgpt
    from numgpt.posttrain.chat_format import chat_template
    from numgpt.posttrain.pairs import sampled_pairs
    from numgpt.posttrain.rl import render_tasks, sample_group
    from numgpt.sampling import SamplingOptions
    from numgpt.posttrain.synth import synthesize

    lm = numgpt.load("chat")
    tasks = synthesize(16, rng=np.random.default_rng(4), families=["add", "sub"])
    pairs = iter(sampled_pairs(lm.params, lm.config, lm.tokenizer, tasks, group=6, seed=2, step_level="sentence"))
    end = chat_template(lm.tokenizer).end_id
    paired = cut = 0
    for k, task in enumerate(render_tasks(lm.tokenizer, tasks)):
        answers, _ = sample_group(lm.params, lm.config, task.prompt, [np.random.default_rng([2, k, i]) for i in range(6)],
                                  sampling=SamplingOptions(temperature=1.0), max_new_tokens=112, end_id=end)
        wrong = [lm.tokenizer.decode(a[:-1]) for a in answers if a and a[-1] == end
                 and not check(task.record, lm.tokenizer.decode(a[:-1]))]
        if not wrong:
            continue
        p, reference = next(pairs), task.record["messages"][-1]["content"]
        rejected, paired = p["rejected"][0]["content"], paired + 1
        assert p["chosen"][0]["content"] == reference and wrong[0].startswith(rejected)
        ours, theirs = rejected.split(". "), reference.split(". ")
        assert ours[:-1] == theirs[:len(ours) - 1]                 # the steps before the slip are the reference's
        assert len(ours) > len(theirs) or ours[-1] != theirs[len(ours) - 1]         # and the last one is not
        assert (p.get("cut") == "rejected") == (rejected != wrong[0])
        assert rejected == wrong[0] or wrong[0][len(rejected):].startswith(" ")       # cut where a sentence ends
        cut += rejected != wrong[0]
    assert next(pairs, None) is None and paired > 0 and cut > 0


def test_data_pairs_from_a_model_through_the_cli(tmp_path, capsys):
    out = tmp_path / "sampled.jsonl"
    assert main(["data", "pairs", "--from-model", "chat", "--families", "sub", "--n", "6", "--group", "4",
                 "-o", str(out)]) == 0
    said = capsys.readouterr().out
    pairs = read_pairs(out)
    assert f"wrote {len(pairs)} train preference pairs from chat's answers" in said and len(pairs) <= 6
    assert all(p["family"] == "sub" and p["flaw"] == "sampled" for p in pairs)
    assert main(["data", "pairs", "--from-model", "chat", "--n", "2", "--group", "1", "-o", str(tmp_path / "g.jsonl")]) == 2
    assert "group must be >= 2" in capsys.readouterr().err
    assert main(["data", "pairs", "--step-level", "--n", "2", "-o", str(tmp_path / "s.jsonl")]) == 2
    assert "--step-level cuts a model's wrong answers, so it needs --from-model MODEL" in capsys.readouterr().err
    assert main(["data", "pairs", "--from-model", "builtin", "--n", "2", "-o", str(tmp_path / "b.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "chat" in err and "Traceback" not in err


def test_greedy_rejected_pairs_reject_the_greedy_mistake():
    """rejected="greedy": where the built-in chat model's greedy reply (redone here one task at a time with
    rl.sample_group; sampled_pairs decodes them in batches) is wrong and ended, it is the rejected reply
    ("flaw": "greedy"); elsewhere the pair is the one rejected="sampled" makes from the same samples. Both
    kinds occur on these 24 sums."""
    import numgpt
    from numgpt.posttrain.chat_format import chat_template
    from numgpt.posttrain.pairs import sampled_pairs
    from numgpt.posttrain.rl import render_tasks, sample_group
    from numgpt.posttrain.synth import synthesize
    from numgpt.sampling import SamplingOptions

    lm = numgpt.load("chat")
    tasks = synthesize(24, rng=np.random.default_rng(6), families=["add", "sub"])
    end, mistakes = chat_template(lm.tokenizer).end_id, {}
    for task in render_tasks(lm.tokenizer, tasks):
        (ids,), _ = sample_group(lm.params, lm.config, task.prompt, [None], sampling=SamplingOptions(do_sample=False),
                                 max_new_tokens=112, end_id=end)
        text = lm.tokenizer.decode([t for t in ids if t != end])
        if ids and ids[-1] == end and text.strip() and not check(task.record, text):
            mistakes[prompt_key(task.record)] = text
    for step_level in (None, "sentence", "token"):
        kw = dict(group=6, seed=5, step_level=step_level)
        plain = {prompt_key(p): p for p in sampled_pairs(lm.params, lm.config, lm.tokenizer, tasks, **kw)}
        pairs = sampled_pairs(lm.params, lm.config, lm.tokenizer, tasks, rejected="greedy", **kw)
        flaws = Counter(p["flaw"] for p in pairs)
        assert flaws["greedy"] > 0 and flaws["sampled"] > 0, flaws
        for p in pairs:
            key, rejected = prompt_key(p), p["rejected"][0]["content"]
            if p["flaw"] == "greedy":
                assert mistakes[key].startswith(rejected) and not check(p, mistakes[key])
                assert (rejected == mistakes[key]) == ("cut" not in p)
            else:
                assert key not in mistakes and p == plain[key]
    with pytest.raises(NumgptError, match="rejected must be one of sampled, greedy"):
        sampled_pairs(lm.params, lm.config, lm.tokenizer, tasks, rejected="worst")


def prompt_key(record: dict) -> str:
    """A pair's or a task's user turn, to match one with the other."""
    messages = record["prompt"] if "prompt" in record else record["messages"][:-1]
    return json.dumps(messages)


def test_an_output_in_a_folder_that_does_not_exist_is_refused_before_the_work(tmp_path, capsys):
    """-o under a missing folder: refused at once, naming the folder (it said "no such file: new/p.jsonl.tmp"
    after the work; a picture's -o made a stray folder tree instead)."""
    for argv in (["data", "pairs", "--n", "4", "--out", str(tmp_path / "new" / "p.jsonl")],
                 ["data", "synth", "--n", "3", "-o", str(tmp_path / "new" / "c.jsonl")],
                 ["explain", "attention", "ROMEO", "-o", str(tmp_path / "new" / "a.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"no such folder {tmp_path / 'new'}; create it first" in err, (argv, err)
    assert not (tmp_path / "new").exists()
    file = tmp_path / "file"
    file.write_text("x")
    assert main(["data", "synth", "--n", "3", "-o", str(file / "c.jsonl")]) == 2       # under a file: refused too
    assert "is a file" in capsys.readouterr().err
