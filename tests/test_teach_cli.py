"""`numgpt explain attention | sampling | kvcache | tokens` through cli.main(argv): the numbers printed
are the teaching views' (themselves tested against the model in test_teach.py), the pictures are
written, and bad input is one line on stderr with exit status 2."""

import json
import sys

import numpy as np
import pytest
from references import reference

import numgpt
from numgpt.cli import main
from numgpt.cli.tokenizer_commands import format_explanation
from numgpt.sampling import SamplingOptions, process_logits
from numgpt.teach import attention_weights, forward_macs

matplotlib = reference("matplotlib")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT = "ROMEO: I will not go"


@pytest.fixture(scope="module")
def lm():
    return numgpt.load()


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_attention_json_is_the_models_attention(capsys, lm):
    code, out, _ = run(capsys, "explain", "attention", TEXT, "--layer", "2", "--head", "1", "--json")
    data = json.loads(out)
    w = attention_weights(lm.params, lm.config, lm.encode(TEXT))[2, 1]
    assert code == 0 and data["heads"] == [1]
    np.testing.assert_array_equal(np.array(data["weights"][0], np.float32), w)
    np.testing.assert_allclose(np.array(data["weights"][0]).sum(-1), 1.0, atol=1e-6)


def test_attention_table_prints_the_matrix(capsys, lm):
    code, out, _ = run(capsys, "explain", "attention", "ROMEO: I will", "--layer", "1", "--head", "2")
    lines = out.splitlines()
    w = attention_weights(lm.params, lm.config, lm.encode("ROMEO: I will"))[1, 2]  # [T, T]
    assert code == 0 and lines[0].startswith("layer 1, head 2")
    rows = [line.split()[-4:] for line in lines[2:6]]
    for t, row in enumerate(rows):
        for s, cell in enumerate(row):
            assert cell == "." if s > t else float(cell) == round(100 * float(w[t, s]), 1)
    code, out, _ = run(capsys, "explain", "attention", "ROMEO: I will", "--layer", "0")   # every head
    assert code == 0 and sum(line.startswith("layer 0, head") for line in out.splitlines()) == lm.config.n_head


def test_sampling_json_kept_set_is_the_samplers(capsys, lm):
    argv = ["--temperature", "0.8", "--top-k", "12", "--top-p", "0.8", "--repetition-penalty", "1.3"]
    code, out, _ = run(capsys, "explain", "sampling", TEXT, *argv, "--json")
    data = json.loads(out)
    ids = lm.encode(TEXT)
    logits = numgpt.forward(lm.params, lm.config, np.array([ids]))
    options = SamplingOptions(temperature=0.8, top_k=12, top_p=0.8, repetition_penalty=1.3)
    kept = np.flatnonzero(np.isfinite(process_logits(logits, options, previous=[ids])[0]))
    assert code == 0 and data["stages"][-1]["kept_ids"] == kept.tolist()
    code, out, _ = run(capsys, "explain", "sampling", TEXT, *argv, "--top", "4")
    assert code == 0 and "top p" in out and "kept mass" in out
    kept_row = next(line for line in out.splitlines() if line.split()[:1] == ["kept"])
    assert kept_row.split()[1:] == ["1024", "1024", "1024", "12", str(kept.size)]


def test_sampling_min_p_and_logit_bias_are_the_samplers(capsys, lm):
    argv = ["--temperature", "0.9", "--min-p", "0.2", "--logit-bias", "321=-100", "--logit-bias", "44=4"]
    code, out, _ = run(capsys, "explain", "sampling", TEXT, *argv, "--json")
    data = json.loads(out)
    ids = lm.encode(TEXT)
    logits = numgpt.forward(lm.params, lm.config, np.array([ids]))
    options = SamplingOptions(temperature=0.9, min_p=0.2, logit_bias=((321, -100.0), (44, 4.0)))
    kept = np.flatnonzero(np.isfinite(process_logits(logits, options, previous=[ids])[0]))
    assert code == 0 and data["stages"][-1]["name"] == "min_p" and data["stages"][-1]["kept_ids"] == kept.tolist()
    assert data["stages"][1]["setting"] == [[321, -100.0], [44, 4.0]]
    code, out, _ = run(capsys, "explain", "sampling", TEXT, *argv)
    assert code == 0 and "min p" in out and "off: presence frequency penalty, repetition penalty, top k, top p" in out
    kept_row = next(line for line in out.splitlines() if line.split()[:1] == ["kept"])
    assert kept_row.split()[1:] == ["1024", "1024", "1024", str(kept.size)]


def test_kvcache_table_counts(capsys, lm):
    code, out, _ = run(capsys, "explain", "kvcache", "ROMEO: I will", "-n", "3", "--json")
    data = json.loads(out)
    P = len(lm.encode("ROMEO: I will"))
    assert code == 0 and [s["macs_cached"] for s in data["steps"]] == \
        [forward_macs(lm.config, P), forward_macs(lm.config, 1, P), forward_macs(lm.config, 1, P + 1)]
    code, out, _ = run(capsys, "explain", "kvcache", "ROMEO: I will", "-n", "3")
    total = next(line for line in out.splitlines() if line.startswith(" all")).split()
    assert code == 0 and total[1:4] == [str(P + 2), str(P + P + 1), f"{data['macs_cached']:,}"]
    assert "x the multiply-adds" in out


def test_tokens_prints_what_tokenize_explain_shows(capsys, lm):
    code, out, _ = run(capsys, "explain", "tokens", "ROMEO: Mississippi")
    assert code == 0 and out == format_explanation(lm.tokenizer.explain("ROMEO: Mississippi")) + "\n"
    code, out, _ = run(capsys, "explain", "tokens", "ROMEO:", "--json")
    assert code == 0 and json.loads(out)["ids"] == lm.encode("ROMEO:")


@pytest.mark.parametrize("argv", [
    ["attention", TEXT, "--layer", "1", "--head", "2"],
    ["attention", TEXT, "--layer", "1"],
    ["sampling", TEXT, "--top-k", "5", "--top-p", "0.9"],
    ["kvcache", TEXT, "-n", "4"],
])
def test_pictures_are_written(capsys, tmp_path, argv):
    matplotlib.use  # skipped where matplotlib is missing (references.py)
    out = tmp_path / "picture"                                  # no suffix: .png added
    code, printed, _ = run(capsys, "explain", *argv, "-o", str(out))
    png = out.with_name("picture.png")
    assert code == 0 and f"wrote {png}" in printed
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and 5_000 < len(data) < 150_000


@pytest.mark.parametrize("argv, message", [
    (["attention", "x", "--layer", "4"], "layer 4 is out of range: the model has 4 layers (0..3)"),
    (["attention", "x", "--head", "9"], "head 9 is out of range: the model has 4 heads (0..3)"),
    (["attention", "x", "--head", "two"], "--head must be a head number (from 0) or all, got 'two'"),
    (["attention", ""], "the text is empty"),
    (["attention", "a " * 200], "context overflow: 201 tokens > the model's context of n_positions=128"),
    (["sampling", "x", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["sampling", "x", "--top", "0"], "--top must be >= 1"),
    (["sampling", "x", "--min-p", "2"], "--min-p must be in [0, 1]"),
    (["sampling", "x", "--logit-bias", "321"], "--logit-bias must be ID=BIAS"),
    (["sampling", "x", "--logit-bias", "5000=1"], "--logit-bias names token 5000"),
    (["sampling", "x", "--logit-bias", "5=101"], "a --logit-bias value must be in [-100, 100], got 101.0"),
    (["sampling", "x", "--greedy", "--temperature", "0.5"], "--greedy always takes the most likely token, so "
                                                           "--temperature has no effect"),
    (["kvcache", "ROMEO", "-n", "200"], "context overflow: 1 tokens + --max-new-tokens 200 = 201 > the model's "
                                        "context of n_positions=128; shorten the prompt or ask for fewer new tokens"),
    (["kvcache", "ROMEO", "-n", "0"], "--max-new-tokens must be >= 1"),
    (["tokens", ""], "the text is empty"),
    (["attention", "x", "-o", "attn.jpg"], "the pictures are PNG images"),
    (["attention", "x", "-o", ""], "-o '': give the image a name, such as attention.png"),      # it named '.'
    (["attention", "x", "-o", ".png"], "-o '.png': give the image a name"),                   # wrote .png.png
    (["attention", "x", "-o", "a.png", "--json"], "give one of them"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, "explain", *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("numgpt: error: ")
    assert message in err


def test_a_picture_replaces_a_picture_but_never_another_file(capsys, tmp_path):
    notes = tmp_path / "keep.png"
    notes.write_text("my notes, not a picture\n")
    code, _, err = run(capsys, "explain", "attention", "ROMEO:", "-o", str(notes))
    assert code == 2 and "the file exists and is not a PNG image" in err
    assert notes.read_text() == "my notes, not a picture\n"                    # classify evaluate -o drew over it
    picture = tmp_path / "a.png"
    for _ in range(2):                                                          # a picture is redrawn in place
        assert run(capsys, "explain", "attention", "ROMEO:", "-o", str(picture))[0] == 0
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_says_how_to_install_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib -> ImportError
    code, _, err = run(capsys, "explain", "attention", "x", "-o", str(tmp_path / "a.png"))
    assert code == 2 and err == 'numgpt: error: drawing a picture needs matplotlib: pip install "numgpt[plot]"\n'
    assert not (tmp_path / "a.png").exists()


def test_help_has_examples(capsys):
    for view in ("attention", "sampling", "kvcache", "tokens"):
        with pytest.raises(SystemExit):
            main(["explain", view, "--help"])
        assert f"numgpt explain {view} " in capsys.readouterr().out
    assert run(capsys, "explain")[1].count("numgpt explain") >= 4


def test_the_walkthroughs_pictures_exist_and_are_small():
    from pathlib import Path
    docs = Path(__file__).resolve().parent.parent / "docs"
    text = (docs / "walkthrough.md").read_text(encoding="utf-8")
    pictures = [line.split("](", 1)[1].split(")", 1)[0] for line in text.splitlines() if line.startswith("![")]
    assert {"attention_head.png", "attention_layer.png", "sampling_stages.png", "kvcache.png"} <= set(pictures)
    for name in pictures:
        data = (docs / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) < 150_000, name


def test_explain_sampling_greedy_names_the_token_greedy_decoding_takes(capsys):
    """--greedy (or --temperature 0) showed the same table as sampling at temperature 1: the sampling
    stages listed as "off" and no token named."""
    lm = numgpt.load()
    for flags in (["--greedy"], ["--temperature", "0"], ["--greedy", "--repetition-penalty", "1.3"]):
        code, out, _ = run(capsys, "explain", "sampling", TEXT, *flags)
        want = lm.generate(TEXT, max_new_tokens=1, do_sample=False,
                           repetition_penalty=1.3 if "--repetition-penalty" in flags else 1.0)
        token = lm.encode(want)[0]
        assert code == 0 and f"greedy: the next token is the likeliest, {want!r} (id {token}); temperature, top k, " \
                             "top p, min p do not apply" in out, out
        assert "off: " not in out or "temperature" not in out.split("off: ")[1].splitlines()[0]
