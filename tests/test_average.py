"""`numgpt average` (numgpt.posttrain.average): the weighted mean of models, checked against the mean of the
state dicts transformers loads, and its refusals."""

import subprocess
import sys

import numpy as np
import pytest

from numgpt.cli import main
from numgpt.formats import load_checkpoint, save_checkpoint
from numgpt.posttrain.average import average_params, mixing_weights
from numgpt.tokenizer import Tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2, initializer_range=0.2)


def hf_model(folder, seed, **more):
    """A random transformers GPT2LMHeadModel (GPT-2's vocabulary, so GPT-2's tokenizer applies), saved."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**SHAPE, **more})).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("average")
    return root, [hf_model(root / name, seed) for name, seed in (("a", 10), ("b", 11), ("c", 12))]


def test_average_is_the_weighted_mean_of_the_state_dicts_transformers_loads(models, tmp_path, capsys):
    root, (a, b, c) = models
    out = tmp_path / "soup"
    assert main(["average", str(root / "a"), str(root / "b"), str(root / "c"), "--weights", "3,1,0.5",
                 "--out", str(out)]) == 0
    assert "averaged 3 models" in capsys.readouterr().err
    got = transformers.GPT2LMHeadModel.from_pretrained(out).eval().state_dict()
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    names = [*dict(a.named_parameters()), "lm_head.weight"]               # lm_head is tied to wte
    assert len(names) == 4 + 12 * 2 + 1
    for name in names:
        mean = (3 * sa[name].double() + sb[name].double() + 0.5 * sc[name].double()) / 4.5
        np.testing.assert_allclose(got[name].double().numpy(), mean.numpy(), rtol=2.0**-23, atol=0, err_msg=name)
    ids = torch.tensor([[464, 3290, 318, 257, 922]])                      # the folder runs in transformers
    with torch.no_grad():
        logits = transformers.GPT2LMHeadModel.from_pretrained(out).eval()(ids).logits
    assert torch.isfinite(logits).all()


def test_equal_weights_by_default_and_a_zero_weight_leaves_the_other_model_bit_for_bit(models, tmp_path):
    root, _ = models
    config, pa = load_checkpoint(root / "a")
    _, pb = load_checkpoint(root / "b")
    assert main(["average", str(root / "a"), str(root / "b"), "--out", str(tmp_path / "ab")]) == 0
    _, pab = load_checkpoint(tmp_path / "ab")
    for name in pa:
        np.testing.assert_allclose(pab[name], (pa[name].astype(np.float64) + pb[name]) / 2, rtol=2.0**-23, atol=0)
    assert main(["average", str(root / "a"), str(root / "b"), "--weights", "1,0", "--out", str(tmp_path / "a1")]) == 0
    _, pa1 = load_checkpoint(tmp_path / "a1")
    assert all(np.array_equal(pa[name], pa1[name]) for name in pa)
    mean = average_params([pa, pb, pb], config, [2, 1, 1])          # the library: the same arithmetic
    assert all(np.array_equal(mean[name], pab[name]) for name in pa)
    np.testing.assert_array_equal(mixing_weights(None, 4), [0.25] * 4)
    np.testing.assert_array_equal(mixing_weights([2, 0, 2], 3), [0.5, 0, 0.5])
    np.testing.assert_array_equal(mixing_weights([1e308, 1e308], 2), [0.5, 0.5])   # no overflow in the sum


def test_average_refuses_in_one_line_and_writes_nothing(models, tmp_path, capsys, monkeypatch):
    root, _ = models
    hf_model(tmp_path / "deeper", 13, n_layer=3)
    config, params = load_checkpoint(root / "a", mmap=False)
    templated = Tokenizer.gpt2().with_special_tokens([], chat_template="{{ messages[0]['content'] }}")
    save_checkpoint(tmp_path / "templated", config, params, tokenizer=templated)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    a, b = str(root / "a"), str(root / "b")
    cases = {
        "at least two models": [a],
        "not the shape of": [a, str(tmp_path / "deeper")],
        "another chat template": [a, str(tmp_path / "templated")],
        "one weight per model": [a, b, "--weights", "1,2,3"],
        "not a number": [a, b, "--weights", "1,x"],
        "finite, >= 0": [a, b, "--weights", "1,nan"],
        "not all 0": [a, b, "--weights", "0,0"],
        "no such folder": [a, str(tmp_path / "nowhere")],
        "the same model as": [a, b, str(root / "a" / ".." / "a")],
    }
    for expected, argv in cases.items():
        capsys.readouterr()
        assert main(["average", *argv, "--out", str(tmp_path / "out")]) == 2, expected
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert not (tmp_path / "out").exists()
    assert main(["average", a, b, "--out", str(tmp_path / "full")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep"
    for out in (a, str(root), str(root / "a" / "soup")):          # an input, a folder holding one, inside one
        assert main(["average", a, b, "--out", out, "--force"]) == 2
        assert "overlaps the model" in capsys.readouterr().err
    assert load_checkpoint(root / "a")[1]["wte.weight"].shape == (50257, 16)
    assert not (root / "a" / "soup").exists()
    run = tmp_path / "run"                                          # a training run: --force deleted all of it
    for part in ("latest", "best", "data"):
        (run / part).mkdir(parents=True)
    (run / "log.jsonl").write_text("{}\n")
    assert main(["average", a, b, "--out", str(run), "--force"]) == 2
    assert "holds a training run (latest, best, data, log.jsonl)" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["best", "data", "latest", "log.jsonl"]

    import numgpt.training.memory as memory
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 20)
    assert main(["average", a, b, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GiB is free" in err, err
    assert not (tmp_path / "out").exists()


def test_an_interrupted_write_leaves_the_old_folder_and_no_leftover(models, tmp_path):
    """The average is written through atomic.write_folder_atomically: a write that fails part-way (here a
    KeyboardInterrupt after the weights) keeps the folder as it was and removes FOLDER.tmp."""
    from numgpt.atomic import TMP_SUFFIX, write_folder_atomically

    root, _ = models
    out = tmp_path / "soup"
    assert main(["average", str(root / "a"), str(root / "b"), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(tmp):
        config, params = load_checkpoint(root / "c")
        save_checkpoint(tmp, config, params)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_folder_atomically(out, interrupted)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not out.with_name(out.name + TMP_SUFFIX).exists()


def test_weights_that_start_with_a_minus_are_the_value_of_weights_as_typed_in_a_shell(models, tmp_path, capsys):
    """`numgpt average A B --weights -1,2` (two words, as a new user typed it): argparse alone took -1,2 for an
    option and said `--weights: expected one argument`; it is now --weights's value and meets the weights'
    own check, as `--weights=-1,2` always did. An option after --weights is still no value."""
    root, _ = models
    a, b = str(root / "a"), str(root / "b")
    refused = "numgpt: error: --weights must be finite, >= 0 and not all 0, got -1.0, 2.0\n"
    shell = subprocess.run([sys.executable, "-m", "numgpt", "average", a, b, "--weights", "-1,2", "--out",
                            str(tmp_path / "out")], capture_output=True, text=True)
    assert (shell.returncode, shell.stderr) == (2, refused)
    for weights, message in ((["--weights=-1,2"], refused),
                             (["--weights", "-x,2"], "numgpt: error: --weights: '-x' is not a number; give one number "
                                                     "per model, separated by commas (2,1,1)\n")):
        assert main(["average", a, b, *weights, "--out", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err == message
    assert not (tmp_path / "out").exists()
    assert main(["average", a, b, "--weights", "-0,1", "--out", str(tmp_path / "b")]) == 0    # -0 is a weight of 0
    assert "averaged 2 models" in capsys.readouterr().err
    _, pb = load_checkpoint(root / "b")
    _, got = load_checkpoint(tmp_path / "b")
    assert all(np.array_equal(pb[name], got[name]) for name in pb)                       # b bit for bit
    with pytest.raises(SystemExit):
        main(["average", a, b, "--weights", "--out", str(tmp_path / "c")])
    assert "argument --weights: expected one argument" in capsys.readouterr().err
