"""`numgpt generate | next | perplexity | info` through cli.main(argv): output equal to the Python API
(itself tested against transformers), and one-line errors with no traceback for bad input."""

import io
import json

import numpy as np
import pytest

import numgpt
from numgpt.cli import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # see conftest: torch threads under load


@pytest.fixture(scope="module")
def model(hf_gpt2_vocab_ckpt):
    return str(hf_gpt2_vocab_ckpt.folder)


@pytest.fixture(scope="module")
def lm(model):
    return numgpt.load(model)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_the_same_text_as_the_api(capsys, model, lm):
    code, out, _ = run(capsys, "generate", "--model", model, "--greedy", "-n", "20", "Once upon a time")
    assert code == 0
    assert out == lm.generate("Once upon a time", max_new_tokens=20, do_sample=False) + "\n"
    code, out2, _ = run(capsys, "generate", "--model", model, "--greedy", "-n", "20", "--no-stream", "-q",
                        "Once upon a time")
    assert out2 == out


def test_generate_sampling_flags_seed_and_stop(capsys, model, lm):
    argv = ["generate", "-m", model, "-n", "30", "--temperature", "0.8", "--top-k", "50", "--top-p", "0.95",
            "--repetition-penalty", "1.1", "--seed", "4", "--stop", "e", "--stop", "\\n", "Hello"]
    code, out, _ = run(capsys, *argv)
    expected = lm.generate("Hello", max_new_tokens=30, temperature=0.8, top_k=50, top_p=0.95,
                           repetition_penalty=1.1, seed=4, stop=["e", "\n"])
    assert code == 0 and out == expected + "\n"
    assert run(capsys, *argv)[1] == out  # same seed, same text


def test_generate_json_samples_echo_file_and_stdin(capsys, model, lm, tmp_path, monkeypatch):
    code, out, _ = run(capsys, "generate", "-m", model, "-n", "8", "--seed", "1", "--num-samples", "2",
                       "--json", "Hi")
    rows = json.loads(out)
    ref = lm.completions("Hi", max_new_tokens=8, seed=1, num_return_sequences=2)
    assert [r["text"] for r in rows] == [c.text for c in ref]
    assert [r["token_ids"] for r in rows] == [c.token_ids for c in ref]
    code, out, _ = run(capsys, "generate", "-m", model, "-n", "8", "--seed", "1", "--num-samples", "2", "-q", "Hi")
    assert out.count("--- sample") == 2 and ref[1].text in out
    code, out, _ = run(capsys, "generate", "-m", model, "-n", "5", "--greedy", "--echo", "Hi")
    assert out == "Hi" + lm.generate("Hi", max_new_tokens=5, do_sample=False) + "\n"
    code, out, _ = run(capsys, "generate", "-m", model, "-n", "5", "--greedy", "--echo", "--no-stream", "Hi")
    assert out == "Hi" + lm.generate("Hi", max_new_tokens=5, do_sample=False) + "\n"
    code, out, _ = run(capsys, "generate", "-m", model, "-n", "8", "--seed", "1", "--num-samples", "2", "-q",
                       "--echo", "Hi")              # the prompt was written once more, before the first sample
    assert out == "".join(f"--- sample {i + 1} of 2 ---\nHi{c.text}\n" for i, c in enumerate(ref))
    code, out, err = run(capsys, "generate", "-m", model, "--echo", "--json", "Hi")    # --echo was ignored
    assert (code, out) == (2, "") and "--json gives each sample's new text and ids, without the prompt" in err
    (tmp_path / "p.txt").write_text("Hi\n", encoding="utf-8")
    code, from_file, _ = run(capsys, "generate", "-m", model, "-n", "5", "--greedy", "--file", str(tmp_path / "p.txt"))
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
    code, from_stdin, _ = run(capsys, "generate", "-m", model, "-n", "5", "--greedy")
    assert from_file == from_stdin == lm.generate("Hi", max_new_tokens=5, do_sample=False) + "\n"


def test_a_constrained_text_cut_by_max_new_tokens_gets_a_note(capsys, model, tmp_path):
    # the README's example printed a string cut short, exit 0, nothing on stderr
    import jsonschema
    bounded = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {
        "type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]}
    unbounded = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    for schema, n, cut in ((bounded, 64, False), (unbounded, 10, True)):
        (tmp_path / "s.json").write_text(json.dumps(schema))
        code, out, err = run(capsys, "generate", "-m", model, "--json-schema", str(tmp_path / "s.json"), "-n", str(n),
                             "--seed", "1", "A person, as JSON:")
        try:
            jsonschema.validate(json.loads(out), schema)
            valid = True
        except (ValueError, jsonschema.ValidationError):
            valid = False
        assert code == 0 and valid is not cut
        assert ("note: the text reached --max-new-tokens before its JSON was complete" in err) is cut, err
    code, out, err = run(capsys, "generate", "-m", model, "--regex", "[a-z ]+;", "-n", "3", "--seed", "1", "x")
    assert err == "note: the text reached --max-new-tokens before it matched --regex: it does not; raise -n\n"


def test_next_table_and_json(capsys, model, lm):
    code, out, _ = run(capsys, "next", "-m", model, "--top", "5", "I wish you a happy New")
    best = lm.next_tokens("I wish you a happy New", top=5)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["rank", "id", "token", "probability"] and len(lines) == 6
    for line, t in zip(lines[1:], best):
        assert line.split()[:2] == ["%d" % (best.index(t) + 1), str(t.id)] and repr(t.token) in line
    code, out, _ = run(capsys, "next", "-m", model, "--top", "3", "--json", "Hello")
    rows = json.loads(out)
    assert [(r["id"], r["token"], r["probability"]) for r in rows] == [
        (t.id, t.token, t.probability) for t in lm.next_tokens("Hello", top=3)]


def test_perplexity_text_and_json(capsys, model, lm, tmp_path, monkeypatch):
    text = "The tower is 324 metres tall. Naïve café owners sell crêpes.\n" * 8  # > 256 tokens: strided
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    score = lm.score(text, stride=100)
    code, out, _ = run(capsys, "perplexity", "-m", model, "--stride", "100", str(path))
    assert code == 0 and f"{score.perplexity:.4f}" in out and f"{score.bits_per_byte:.4f}" in out
    assert "definitions" in out and str(score.n_tokens) in out
    code, out, _ = run(capsys, "perplexity", "-m", model, "--stride", "100", "--json", "--no-bos", str(path))
    got = json.loads(out)
    ref = lm.score(text, stride=100, bos=False)
    assert got["perplexity"] == pytest.approx(ref.perplexity, rel=1e-12) and got["bos"] is False
    assert got["tokens"] == ref.n_tokens and got["bytes"] == ref.n_bytes
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code, out, _ = run(capsys, "perplexity", "-m", model, "--stride", "100", "--json", "-")
    assert json.loads(out)["perplexity"] == pytest.approx(score.perplexity, rel=1e-12)


def test_stdin_that_is_not_utf8_is_refused_as_a_file_is(capsys, model, tmp_path, monkeypatch):
    # sys.stdin let the byte in as a surrogate: perplexity scored it, embed embedded it
    (tmp_path / "bad.txt").write_bytes(b"ab\xffcd")
    for argv in (["perplexity", "-m", model, "-"], ["embed", "-m", model, "--file", "-"],
                 ["generate", "-m", model, "-n", "2"], ["perplexity", "-m", model, str(tmp_path / "bad.txt")]):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ab\xffcd")))
        code, out, err = run(capsys, *argv)
        where = argv[-1] if argv[-1].endswith(".txt") else "stdin"
        assert (code, out, err) == (2, "", f"numgpt: error: {where}: not UTF-8 text (byte 0xff at offset 2); "
                                           "convert it to UTF-8\n"), argv


def test_info(capsys, model, lm):
    code, out, _ = run(capsys, "info", "-m", model)
    n = numgpt.params.count_params(lm.config)
    assert code == 0 and f"{n:,}" in out and "model.safetensors" in out and "50257 tokens" in out
    code, out, _ = run(capsys, "info", "-m", model, "--json")
    info = json.loads(out)
    assert info["n_params"] == n and info["config"]["n_positions"] == 256
    assert info["kind"]["kind"] == "language model"


def test_info_says_what_kind_of_model_a_folder_holds(capsys, tmp_path):
    """info names a chat model's end-of-turn token and a classifier's labels (what `numgpt chat` and `numgpt
    classify predict` need), from the tokenizer's chat template and config.json's architectures/id2label."""
    from numgpt.posttrain.chat_format import chat_template
    chat = numgpt.load("chat")
    code, out, _ = run(capsys, "info", "-m", "chat")
    end = chat_template(chat.tokenizer).end_id
    assert code == 0 and f"kind         a chat model: numgpt's chat template, a reply ends at <|end|> = {end}" in out
    folder = numgpt.save_checkpoint(tmp_path / "clf", *numgpt.load_checkpoint(numgpt.load().folder),
                                    tokenizer=numgpt.load().tokenizer)
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["GPT2ForSequenceClassification"], id2label={"0": "ham", "1": "spam", "2": "eggs"})
    (folder / "config.json").write_text(json.dumps(config))
    code, out, _ = run(capsys, "info", "-m", str(folder), "--json")
    assert code == 0 and json.loads(out)["kind"]["labels"] == ["ham", "spam", "eggs"]



def test_info_on_a_run_says_its_training_state(capsys, tmp_path):
    """info on a run (its best/) or a checkpoint says the step, the best validation loss, the last evaluation
    and the run's other checkpoint (after a Ctrl-C: whether best/ is still step 0)."""
    from numgpt.training.data import prepare
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 200, encoding="utf-8")
    prepare([text.read_text()], tmp_path / "d", numgpt.load().tokenizer)
    assert main(["train", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "16", "--block-size", "16", "--batch-size", "2", "--max-iters", "3",
                 "--eval-iters", "1"]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "info", "-m", str(tmp_path / "r"), "--json")
    training = json.loads(out)["training"]
    best = json.loads((tmp_path / "r" / "best" / "trainstate.json").read_text())["best_val_loss"]
    assert code == 0 and training["step"] == 3 and training["evaluated_step"] == 3
    assert training["best_val_loss"] == best and training["other"]["step"] == 3
    code, out, _ = run(capsys, "info", "-m", str(tmp_path / "r"))
    assert f"training     a training checkpoint at step 3, best val loss {best:.4f} (last evaluation at step 3); " \
           "the run's latest/ is at step 3" in out


@pytest.mark.parametrize("argv", [
    ["generate", "--temperature", "-1", "Hi"],
    ["generate", "--top-p", "0", "Hi"],
    ["generate", "--top-p", "1.5", "Hi"],
    ["generate", "--top-k", "-3", "Hi"],
    ["generate", "--repetition-penalty", "0", "Hi"],
    ["generate", "--max-new-tokens", "-1", "Hi"],
    ["generate", "--num-samples", "0", "Hi"],
    ["generate", "-n", "10", "word " * 300],  # prompt longer than the 256-position context
    ["generate", "-n", "200", "word " * 100],  # prompt + max_new_tokens longer than the context
    ["generate", "--file", "MISSING_FILE", "-n", "3"],
    ["next", "--top", "0", "Hi"],
    ["perplexity", "MISSING_FILE"],
    ["perplexity", "--stride", "256", "TEXT_FILE"],
])
def test_bad_input_is_one_line_error_without_traceback(capsys, model, tmp_path, argv):
    text_file = tmp_path / "t.txt"
    text_file.write_text("Some text to score.", encoding="utf-8")
    argv = [str(tmp_path / "missing.txt") if a == "MISSING_FILE" else str(text_file) if a == "TEXT_FILE" else a
            for a in argv]
    code, out, err = run(capsys, *argv[:1], "--model", model, *argv[1:])
    assert code == 2 and out == ""
    assert err.startswith("numgpt: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_missing_model_is_a_one_line_error(capsys, tmp_path):
    for argv in (["generate", "--model", str(tmp_path / "nope"), "Hi"], ["info", "--model", str(tmp_path)],
                 ["next", "--model", str(tmp_path / "nope"), "Hi"], ["perplexity", str(tmp_path / "none.txt")]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and err.startswith("numgpt: error: ") and err.count("\n") == 1


def test_context_overflow_message_names_the_fix(capsys, model):
    _, _, err = run(capsys, "generate", "--model", model, "-n", "200", "word " * 100)
    assert "--max-new-tokens" in err and "--sliding-window" in err and "256" in err
    code, out, _ = run(capsys, "generate", "--model", model, "-n", "200", "--greedy", "--sliding-window",
                       "--ignore-eos", "--json", "word " * 100)
    assert code == 0 and len(json.loads(out)[0]["token_ids"]) == 200


@pytest.mark.parametrize("command", ["generate", "next", "perplexity", "info"])
def test_help_has_a_description_and_examples(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out and f"numgpt {command} --model" in out


@pytest.mark.parametrize("command", ["generate", "next", "perplexity", "info", "train", "prepare", "plot",
                                     "tokenize"])
def test_help_text_has_no_unformatted_percent_signs(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "%%" not in capsys.readouterr().out                 # argparse prints a description's %% as is


@pytest.mark.parametrize("argv, words", [
    (["--greedy", "--temperature", "0.5"], ["--greedy", "--temperature", "no effect"]),
    (["--greedy", "--top-k", "5"], ["--greedy", "--top-k"]),
    (["--window-stride", "10"], ["--window-stride", "--sliding-window"]),
    (["--sliding-window", "--window-stride", "0"], ["--window-stride", ">= 1"]),
    (["--num-samples", "0"], ["--num-samples", ">= 1"]),
    (["--max-new-tokens", "-5"], ["--max-new-tokens must be >= 0"]),   # the flag, not the Python name
])
def test_contradictory_or_out_of_range_generate_flags_are_one_line(capsys, argv, words):
    code, out, err = run(capsys, "generate", *argv, "ROMEO:")        # refused before the model loads
    assert code == 2 and out == "" and err.count("\n") == 1
    assert all(w in err for w in words), err


def test_more_samples_than_memory_holds_are_refused_before_allocating(capsys):
    """200,000 samples of 100 tokens would need 154 GiB of keys and values: refused in one line, before the
    cache is made (np.zeros would reserve it lazily and the decode fault its way into the OOM killer)."""
    code, out, err = run(capsys, "generate", "--num-samples", "200000", "--max-new-tokens", "100", "--greedy",
                         "--no-stream", "ROMEO:")
    assert code == 2 and err.count("\n") == 1 and "200,000 sequences of 102 positions (their keys, values" in err \
        and "GiB" in err, err
    # a few tokens each: the cache was small, and the per-row state grew past 3 GiB before anyone stopped it
    code, out, err = run(capsys, "generate", "--num-samples", "1000000000", "-n", "5", "ROMEO:")
    assert code == 2 and err.count("\n") == 1 and "1,000,000,000 sequences of 7 positions" in err, err


def test_perplexity_prints_progress_lines_when_stderr_is_not_a_terminal():
    from numgpt.cli.progress import progress_reporter
    stream = io.StringIO()                                          # not a TTY
    update, close = progress_reporter(True, "window", "perplexity", stream=stream, every=0)
    for done in range(1, 5):
        update(done, 5)
    close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("numgpt perplexity: 1/5 windows (20%)") and len(lines) == 4
    quiet = io.StringIO()
    update, _ = progress_reporter(False, "window", "perplexity", stream=quiet, every=0)
    update(1, 5)
    assert quiet.getvalue() == ""


def test_cli_errors_for_damaged_models_are_one_line(capsys, tmp_path):
    import numpy as np
    lm = numgpt.load()
    params = dict(lm.params)
    params["wte.weight"] = np.full_like(params["wte.weight"], np.nan)
    numgpt.save_checkpoint(tmp_path / "nan", lm.config, params, tokenizer=lm.tokenizer)
    for command in (["generate", "x"], ["next", "x"], ["explain", "attention", "x"], ["explain", "sampling", "x"],
                    ["explain", "kvcache", "x"]):
        code, _, err = run(capsys, *command, "--model", str(tmp_path / "nan"))
        assert code == 2 and "wte.weight has" in err and "NaN/inf" in err and err.count("\n") == 1
    (tmp_path / "t.txt").write_text("ROMEO: I am here, and so are you.")
    code, _, err = run(capsys, "perplexity", str(tmp_path / "t.txt"), "--model", str(tmp_path / "nan"))
    assert code == 2 and "not finite" in err


def help_text(capsys, *command):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out


def test_decoding_flags_are_one_group_generated_from_the_options(capsys):
    from numgpt.cli.options import FIELDS, SAMPLING_FIELDS, flag_of
    generate, explain = help_text(capsys, "generate"), help_text(capsys, "explain", "sampling")
    for name in FIELDS:
        assert flag_of(name) in generate, name
    for name in set(SAMPLING_FIELDS) - {"presence_penalty", "frequency_penalty"}:
        assert flag_of(name) in explain, name                  # the same flags, from the same fields
    assert FIELDS["top_p"].metadata["help"][:40] in generate and FIELDS["top_p"].metadata["help"][:40] in explain
    assert "--min-p" in generate                               # newcomer report: generate had no --min-p


@pytest.mark.parametrize("command", [["generate"], ["explain", "sampling"]])
def test_greedy_with_a_sampling_flag_is_refused_by_every_command(capsys, command):
    seed = [("--seed", "3")] if command == ["generate"] else []      # --seed was taken and did nothing
    for flag, value in (("--temperature", "0.5"), ("--top-k", "5"), ("--min-p", "0.1"), *seed):
        code, out, err = run(capsys, *command, "--greedy", flag, value, "ROMEO:")
        assert code == 2 and out == "" and err == (f"numgpt: error: --greedy always takes the most likely token, "
                                                   f"so {flag} has no effect; drop one of them\n")


def test_generate_min_p_and_penalties_are_the_apis(capsys, model, lm):
    flags = ["--min-p", "0.2", "--presence-penalty", "1.5", "--logit-bias", "11=-100", "--seed", "3"]
    code, out, _ = run(capsys, "generate", "--model", model, "-n", "12", "--json", *flags, "Hello")
    want = lm.completions("Hello", max_new_tokens=12, min_p=0.2, presence_penalty=1.5, logit_bias={11: -100}, seed=3)
    assert code == 0 and json.loads(out)[0]["token_ids"] == want[0].token_ids and 11 not in want[0].token_ids


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory):
    """The built-in model cut to a 32-position context (the newcomer's runs/x8, trained with block size 32)."""
    import dataclasses
    builtin = numgpt.load()
    config = dataclasses.replace(builtin.config, n_positions=32)
    params = {**builtin.params, "wpe.weight": builtin.params["wpe.weight"][:32]}
    return str(numgpt.save_checkpoint(tmp_path_factory.mktemp("x8") / "x8", config, params, tokenizer=builtin.tokenizer))


def test_the_default_length_fits_a_short_context_and_a_typed_one_is_told_in_flags(capsys, short_context_model):
    code, out, err = run(capsys, "generate", "--model", short_context_model, "--json", "--ignore-eos", "--seed", "1",
                         "ROMEO:")
    prompt = numgpt.load(short_context_model).encode("ROMEO:")
    assert code == 0 and len(json.loads(out)[0]["token_ids"]) == 32 - len(prompt)   # 64 cut to what fits
    code, out, err = run(capsys, "generate", "--model", short_context_model, "-n", "64", "ROMEO:")
    assert code == 2 and err == (f"numgpt: error: context overflow: {len(prompt)} tokens + --max-new-tokens 64 = "
                                 f"{len(prompt) + 64} > the model's context of n_positions=32; lower --max-new-tokens "
                                 f"to {32 - len(prompt)} or pass --sliding-window\n")


def test_library_messages_name_python_parameters_and_the_cli_its_flags(capsys, short_context_model):
    lm = numgpt.load(short_context_model)
    with pytest.raises(numgpt.NumgptError) as e:
        lm.generate("a", max_new_tokens=10**9)
    assert "lower max_new_tokens to 31 or pass sliding_window=True" in str(e.value) and "--" not in str(e.value)
    code, _, err = run(capsys, "generate", "--model", short_context_model, "-n", str(10**9), "a")
    assert code == 2 and "lower --max-new-tokens to 31 or pass --sliding-window" in err
    assert "max_new_tokens" not in err and "sliding_window" not in err
    for argv, said in ((["--num-samples", "0"], "--num-samples must be >= 1"),
                       (["--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
                       (["--window-stride", "4"], "--window-stride applies only with --sliding-window; add it, "
                                                  "or drop --window-stride"),
                       (["--logit-bias", "5=101"], "a --logit-bias value must be in [-100, 100], got 101.0"),
                       (["--logit-bias", "x"], "--logit-bias must be ID=BIAS such as 321=-100, got 'x'"),
                       (["--stop", ""], "--stop must hold non-empty strings, got ''")):   # it showed ('',)
        code, _, err = run(capsys, "generate", *argv, "a")
        assert code == 2 and said in err, err


def test_flag_message_rewrites_only_option_names():
    from numgpt.cli.options import FLAG_ORDER, flag_message, flag_vocabulary
    words = flag_vocabulary(FLAG_ORDER)
    assert flag_message("stop must hold non-empty strings; the stop strings end it", words) == \
        "--stop must hold non-empty strings; the stop strings end it"
    assert flag_message("pass do_sample=False, stop_at_eos=False or sliding_window=True", words) == \
        "pass --greedy, --ignore-eos or --sliding-window"
    assert flag_message("temperature must be > 0; a temperature of 0 is greedy; top_k_x", words) == \
        "--temperature must be > 0; a temperature of 0 is greedy; top_k_x"
    assert flag_message("seed must be >= 0", {}) == "seed must be >= 0"      # a command without the group


def test_next_on_a_prompt_beyond_the_context_says_to_shorten_it(capsys):
    code, out, err = run(capsys, "next", "--json", "word " * 200)               # the built-in model: 128 positions
    assert code == 2 and out == "" and err.startswith("numgpt: error: context overflow: ")
    assert err.endswith("> the model's context of n_positions=128; shorten the prompt\n") and "window" not in err


def test_damaged_weights_are_one_line_on_stderr_and_no_numpy_warning(tmp_path):
    """Weights holding inf are named after the forward (check_finite_logits); NumPy's "invalid value
    encountered" warnings from that forward came first, two lines of source on stderr."""
    import shutil
    import subprocess
    import sys
    lm = numgpt.load()
    folder = tmp_path / "damaged"
    shutil.copytree(lm.folder, folder)
    params = {k: np.array(v) for k, v in lm.params.items()}
    params["h.1.mlp.c_fc.weight"][:4] = np.inf            # inf - inf in the products: NumPy's "invalid value"
    params["h.1.mlp.c_fc.weight"][4:8] = -np.inf
    numgpt.save_checkpoint(folder, lm.config, params)
    for argv in (["next", "--model", str(folder), "ROMEO:"], ["generate", "--model", str(folder), "-n", "3", "x"]):
        out = subprocess.run([sys.executable, "-m", "numgpt", *argv], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "weights are not finite: h.1.mlp.c_fc.weight" in out.stderr


@pytest.mark.parametrize("argv, said", [
    (["explain", "attention", "ROMEO", "--layer", "-1"], "--layer must be >= 0, got -1"),
    (["perplexity", "--stride", "128", "-"], "--stride must be between 1 and n_positions - 1 = 127, got 128"),
    (["sql", "export", "--db", "{tmp}/m.duckdb", "--product", "cube"], "--product must be 'auto' or 'wide' for DuckDB"),
])
def test_errors_name_the_flags_the_user_typed(argv, said, capsys, tmp_path, monkeypatch):
    """A library message names its Python parameter ('layer must be >= 0'); the CLI says the command's own
    flag, for every option of every command (cli.name_flags), not only those listed by hand."""
    monkeypatch.setattr("sys.stdin", io.StringIO("ROMEO: But soft, what light through yonder window breaks?"))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert f"numgpt: error: {said}" in capsys.readouterr().err


def test_ctrl_c_while_the_commands_load_is_one_line(capsys, monkeypatch):
    """Ctrl-C in the ~0.2 s in which main() imports the command modules (build_parser) is "numgpt: interrupted"
    and exit 130, as later; it was a traceback of the interrupted import."""
    import numgpt.cli

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(numgpt.cli, "build_parser", interrupted)
    assert run(capsys, "generate", "ROMEO:") == (130, "", "numgpt: interrupted\n")
