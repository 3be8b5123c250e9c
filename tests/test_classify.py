"""Sequence classification (posttrain/classify.py): the head's forward and backward against torch autograd,
the saved folder against transformers' GPT2ForSequenceClassification, the metrics against scikit-learn,
the CLI end to end, and its bad inputs (one line each)."""

import io
import json

import numpy as np
import pytest
from references import reference

from numgpt.cli import main
from numgpt.config import GPTConfig
from numgpt.errors import NumgptError
from numgpt.formats import load_checkpoint, load_tokenizer
from numgpt.params import init_params
from numgpt.posttrain import classdata, classify
from numgpt.posttrain.classify import SCORE

torch = reference("torch")
transformers = reference("transformers")
sklearn_metrics = reference("sklearn.metrics")

CONFIG = GPTConfig(vocab_size=60, n_positions=16, n_embd=16, n_layer=3, n_head=2, bos_token_id=59, eos_token_id=59)
PAD = 59


def float64_classifier(k=3, seed=0):
    rng = np.random.default_rng(seed)
    params = {n: p.astype(np.float64) for n, p in init_params(CONFIG, rng).items()}
    for n in params:                     # non-trivial gains and biases, so their gradients are checked too
        if n.endswith("bias") or "ln" in n:
            params[n] = params[n] + 0.1 * rng.standard_normal(params[n].shape)
    params[SCORE] = 0.3 * rng.standard_normal((k, CONFIG.n_embd))
    return params


def right_padded(rng, lengths, pad=PAD):
    seqs = [rng.integers(0, PAD, n) for n in lengths]          # never the pad id
    return classify.pad_right(seqs, pad)


def torch_classifier(params, k, dtype):
    hf = transformers.GPT2Config(vocab_size=CONFIG.vocab_size, n_positions=CONFIG.n_positions, n_embd=CONFIG.n_embd,
                                 n_layer=CONFIG.n_layer, n_head=CONFIG.n_head, num_labels=k, pad_token_id=PAD,
                                 attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    model = transformers.GPT2ForSequenceClassification(hf).to(dtype).eval()
    with torch.no_grad():
        sd = model.state_dict()
        for name, p in params.items():
            key = name if name == SCORE else "transformer." + name
            sd[key].copy_(torch.from_numpy(np.asarray(p)))
    return model


@pytest.mark.parametrize("train", ["all", "last-1", "head"])
def test_loss_and_gradients_match_torch_autograd(train):
    """float64: numgpt's loss and every trained parameter's gradient (into the blocks and embeddings when
    they train) equal torch autograd through transformers' GPT2ForSequenceClassification, with class weights."""
    k, rng = 3, np.random.default_rng(1)
    params = float64_classifier(k)
    ids, last = right_padded(rng, [5, 9, 3, 7])
    labels = np.array([0, 2, 1, 2])
    weights = np.array([0.5, 2.0, 1.25])
    trained = classify.trainable_names(CONFIG, train)
    grads = {n: np.zeros_like(params[n]) for n in trained}
    if train == "head":                  # the head-alone path runs the float32 inference body
        params = {n: p.astype(np.float32) for n, p in params.items()}
        grads = {n: np.zeros_like(params[n]) for n in trained}
    loss = classify.classification_loss(params, CONFIG, (ids, last, labels), grads, class_weights=weights)

    model = torch_classifier(params, k, torch.float64)
    logits = model(torch.from_numpy(ids)).logits
    per_row = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels), reduction="none")
    ref = (torch.from_numpy(weights)[torch.from_numpy(labels)] * per_row).mean()
    ref.backward()
    ref_grads = dict(model.named_parameters())
    rel = 1e-6 if train != "head" else 1e-5          # head: the body ran in float32 (rounding ~1e-7 per op)
    assert loss == pytest.approx(ref.item(), rel=rel)
    for name in trained:
        ref_g = ref_grads[name if name == SCORE else "transformer." + name].grad.numpy()
        scale = np.abs(ref_g).max() + 1e-30
        assert np.abs(grads[name] - ref_g).max() / scale < rel, name
    assert set(grads) == set(trained)


def test_frozen_blocks_are_not_touched_and_the_walk_stops_at_the_first_trained_block():
    params = float64_classifier()
    before = {n: p.copy() for n, p in params.items()}
    ids, last = right_padded(np.random.default_rng(2), [4, 6])
    grads = {n: np.zeros_like(params[n]) for n in classify.trainable_names(CONFIG, "last-2")}
    classify.classification_loss(params, CONFIG, (ids, last, np.array([0, 1])), grads)
    assert classify.first_trained_block(grads, CONFIG.n_layer) == 1
    assert all(np.array_equal(before[n], params[n]) for n in params)
    assert not any(n.startswith(("h.0.", "wte", "wpe")) for n in grads)
    assert all(np.abs(g).max() > 0 for g in grads.values())
    from numgpt.backprop import Workspace
    head_and_top = {n: g for n, g in grads.items() if not n.startswith("h.1.")}   # h.1 frozen, h.2 trained
    reached = classify.reached_grads(params, head_and_top, 1, Workspace())
    assert set(reached) == set(grads) and all(reached[n] is g for n, g in head_and_top.items())
    assert not np.any(reached["h.1.mlp.c_fc.weight"])                               # a zeroed scratch buffer


def test_padding_does_not_change_a_rows_logits():
    """Right padding with causal attention: a text's logits alone equal its logits in a padded batch."""
    params = {n: p.astype(np.float32) for n, p in float64_classifier().items()}
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, PAD, n) for n in (3, 11, 6)]
    batched = classify.logits_of(params, CONFIG, seqs, PAD, batch_size=3)
    alone = np.concatenate([classify.logits_of(params, CONFIG, [s], PAD) for s in seqs])
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def gpt2_vocab_model(tmp_path_factory):
    """A tiny random GPT-2 with GPT-2's vocabulary (so '<|endoftext|>' pads), saved by transformers."""
    torch.manual_seed(0)
    hf = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=16, n_layer=2, n_head=2,
                                 initializer_range=0.2)
    folder = tmp_path_factory.mktemp("base")
    transformers.GPT2LMHeadModel(hf).save_pretrained(folder)
    return folder


TEXTS = ["the cat sat on the mat", "buy now!!! limited offer", "hello", "a much longer text, which pads the others"]


def test_saved_folder_loads_in_transformers_with_the_same_logits(gpt2_vocab_model, tmp_path):
    config, params = load_checkpoint(gpt2_vocab_model)
    model = classify.new_classifier(config, params, load_tokenizer(gpt2_vocab_model, config), ["ham", "spam", "x"],
                                    rng=np.random.default_rng(0))
    assert model.pad_token_id == 50256
    model.save(tmp_path / "clf")
    ours = model.logits(TEXTS, batch_size=4)
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / "clf").eval()
    assert hf.config.id2label == {0: "ham", 1: "spam", 2: "x"} and hf.config.pad_token_id == 50256
    seqs, _ = model.encode(TEXTS)
    ids, _ = classify.pad_right(seqs, model.pad_token_id)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "clf")      # pads as numgpt does
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert tok.pad_token == "<|endoftext|>" and np.array_equal(batch["input_ids"].numpy(), ids)
    with torch.no_grad():
        np.testing.assert_allclose(hf(**batch).logits.numpy(), ours, rtol=1e-4, atol=1e-5)
    again = classify.load_classifier_folder(tmp_path / "clf")
    assert again.labels == ["ham", "spam", "x"] and again.pad_token_id == 50256
    np.testing.assert_array_equal(again.logits(TEXTS, batch_size=4), ours)


def test_a_transformers_classifier_loads_in_numgpt(gpt2_vocab_model, tmp_path):
    torch.manual_seed(1)
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(
        gpt2_vocab_model, num_labels=2, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1},
        pad_token_id=50256).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = classify.load_classifier_folder(tmp_path / "hf")
    seqs, _ = model.encode(TEXTS)
    ids, _ = classify.pad_right(seqs, 50256)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    assert model.labels == ["no", "yes"]
    np.testing.assert_allclose(model.logits(TEXTS), theirs, rtol=1e-4, atol=1e-5)


def test_a_vocabulary_without_endoftext_gets_it_as_the_pad_token():
    from numgpt.formats.hub import builtin_model_folder
    folder = builtin_model_folder()
    config, params = load_checkpoint(folder)
    tok = load_tokenizer(folder, config)
    assert tok.eot_id is None
    config2, params2, tok2, pad = classify.with_pad_token(config, params, tok)
    assert pad == config.vocab_size == 1024 and config2.vocab_size == 1025 and tok2.eot_id == 1024
    np.testing.assert_allclose(params2["wte.weight"][-1], params["wte.weight"].mean(axis=0), rtol=1e-5, atol=1e-7)
    assert params["wte.weight"].shape[0] == 1024          # the input is not modified
    assert pad not in tok2.encode_ordinary("<|endoftext|> is plain text here")


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    y_pred[y_pred == 3] = 2                                # label 3 never predicted: its precision is 0
    m = classify.classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(y_true, y_pred, average="macro", zero_division=0))
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3], zero_division=0)
    np.testing.assert_allclose([x["precision"] for x in m["per_label"]], p)
    np.testing.assert_allclose([x["recall"] for x in m["per_label"]], r)
    np.testing.assert_allclose([x["f1"] for x in m["per_label"]], f)
    assert [x["support"] for x in m["per_label"]] == list(s)
    np.testing.assert_array_equal(m["confusion"], sklearn_metrics.confusion_matrix(y_true, y_pred, labels=[0, 1, 2, 3]))
    # a label of the model that the data never mentions (neither truth nor prediction) is left out of macro-F1,
    # as scikit-learn leaves it out: one right "a" among four labels was 0.3333
    y_true, y_pred = np.array([0, 0, 1]), np.array([0, 1, 1])
    m = classify.classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert classify.classification_metrics(np.array([0]), np.array([0]), ["a", "b", "c"])["macro_f1"] == 1.0


def test_balanced_class_weights_are_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(classify.balanced_weights(labels, 3),
                               compute_class_weight("balanced", classes=np.arange(3), y=labels))


def test_trainable_sets():
    assert classify.trainable_names(CONFIG, "head") == {SCORE}
    last = classify.trainable_names(CONFIG, "last-1")
    assert last == {SCORE, "ln_f.weight", "ln_f.bias"} | {n for n in init_params(CONFIG, np.random.default_rng(0))
                                                          if n.startswith("h.2.")}
    assert classify.trainable_names(CONFIG, "last-2-blocks") > last
    for bad in ("last-0", "last-4", "some", "last-x"):
        with pytest.raises(NumgptError, match="--train"):
            classify.trainable_names(CONFIG, bad)


# ---- files -----------------------------------------------------------------------------------------------

def test_whole_number_labels_are_ordered_by_value():
    """Class ids 0 .. 10 keep their order (head output i is class i, as a transformers user reads id2label with
    argmax); sorted as text, label 10 was output 2. Mixed labels sort by name."""
    ex = [classdata.Example("t", str(k), "x") for k in (10, 2, 0, 1, -1)]
    assert classdata.label_names(ex) == ["-1", "0", "1", "2", "10"]
    assert classdata.label_names(ex + [classdata.Example("t", "b", "x")]) == ["-1", "0", "1", "10", "2", "b"]

def test_csv_and_jsonl_read_the_same_records(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"hello, world",pos\n"two\nlines",neg\n', encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"text": "hello, world", "label": "pos"}\n\n{"text": "two\\nlines", '
                                      '"label": "neg"}\n', encoding="utf-8")
    a = classdata.read_labelled(tmp_path / "d.csv")
    b = classdata.read_labelled(tmp_path / "d.jsonl")
    assert [(e.text, e.label) for e in a] == [(e.text, e.label) for e in b] == [("hello, world", "pos"),
                                                                                 ("two\nlines", "neg")]
    assert classdata.label_names(a) == ["neg", "pos"]
    odd = 'two\u2028lines\x0bhere'                       # separators splitlines() would cut at
    (tmp_path / "o.jsonl").write_text(json.dumps({"text": odd, "label": 1}, ensure_ascii=False) + "\r\n",
                                      encoding="utf-8")
    (tmp_path / "o.csv").write_text(f'label,text\r\n1,"{odd}"\r\n', encoding="utf-8")
    for name in ("o.jsonl", "o.csv"):
        assert [(e.text, e.label) for e in classdata.read_labelled(tmp_path / name)] == [(odd, "1")]


def test_fortunes_reader(tmp_path, capsys):
    (tmp_path / "food").write_text("Eat.\n%\n\nDrink,\nbe merry.\n%\n%\n", encoding="utf-8")
    (tmp_path / "food.dat").write_bytes(b"\0\1")
    (tmp_path / "law").write_text("Sue.\n", encoding="utf-8")          # one fortune: no '%' line, but indexed
    (tmp_path / "law.dat").write_bytes(b"\0\1")
    (tmp_path / "notes").write_text("not a fortune file\n", encoding="utf-8")   # neither: not a category
    records = classdata.read_fortunes(tmp_path)
    assert [(e.text, e.label) for e in records] == [("Eat.", "food"), ("Drink,\nbe merry.", "food"), ("Sue.", "law")]
    with pytest.raises(NumgptError, match="no category 'lw'"):
        classdata.read_fortunes(tmp_path, ["lw"])
    assert main(["data", "fortunes", "--folder", str(tmp_path), "--categories", "law,food",
                 "-o", str(tmp_path / "f.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert lines[0] == {"text": "Sue.", "label": "law"} and len(lines) == 3
    assert main(["data", "fortunes", "--folder", str(tmp_path), "-o", str(tmp_path / "a.jsonl"), "--test",
                 str(tmp_path / "b.jsonl"), "--test-fraction", "0.34"]) == 0
    train, test = ([json.loads(x)["text"] for x in (tmp_path / n).read_text().splitlines()]
                   for n in ("a.jsonl", "b.jsonl"))
    assert len(test) == 1 and sorted(train + test) == sorted(e.text for e in records)
    assert main(["data", "fortunes", "--folder", str(tmp_path), "-o", str(tmp_path / "a.jsonl")]) == 2   # no --force
    # the same file twice lost the training set, and a category named twice doubled it (and leaked the test set)
    assert main(["data", "fortunes", "--folder", str(tmp_path), "-o", str(tmp_path / "s.jsonl"), "--test",
                 str(tmp_path / "." / "s.jsonl")]) == 2 and not (tmp_path / "s.jsonl").exists()
    assert main(["data", "fortunes", "--folder", str(tmp_path), "--categories", "food,law,food",
                 "-o", str(tmp_path / "d.jsonl")]) == 2 and not (tmp_path / "d.jsonl").exists()
    for flag, value in (("--seed", "3"), ("--test-fraction", "0.5")):         # without --test they did nothing
        assert main(["data", "fortunes", "--folder", str(tmp_path), flag, value, "-o", str(tmp_path / "d.jsonl")]) == 2
        assert f"{flag} is for the --test draw" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes").write_text("a file\n", encoding="utf-8")
    with pytest.raises(NumgptError, match="no fortune files"):
        classdata.read_fortunes(tmp_path / "other")


BAD_INPUTS = [
    ("nolabel.csv", "text,category\nhi,a\nho,b\n", "nolabel.csv:2: no 'label' field (it has: text, category); "
     "name the column with --label-field"),
    ("one.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', "every record has the label 'x'"),
    ("empty.csv", "text,label\nhi,a\n ,b\n", "empty.csv:3: 'text' is empty"),
    ("data.txt", "hi\tb\n", "data.txt: not a .csv or .jsonl file"),
    ("broken.jsonl", '{"text": "a", "label": "x"}\n{"text": \n', "broken.jsonl:2: not JSON"),
    ("short.csv", "text,label\nhi,a\nonly text\n", "short.csv:3: the 'label' field is empty (a CSV row with too "
     "few values, or null)"),
    ("null.jsonl", '{"text": "a", "label": "x"}\n{"text": null, "label": "y"}\n', "null.jsonl:2: the 'text' field "
     "is empty"),
]


def test_force_does_not_write_a_classifier_into_another_commands_run(tmp_path, capsys, gpt2_vocab_model):
    """--force replaces a classify run's best/ and latest/; an SFT run's folder would be left half one, half
    the other (its data/, init/, train_config.json stayed): refused, and nothing is touched."""
    data = tmp_path / "d.csv"
    data.write_text("text,label\nhi,a\nho,b\n", encoding="utf-8")
    other = tmp_path / "sft_run"
    for name in ("data", "init", "latest"):
        (other / name).mkdir(parents=True)
    (other / "train_config.json").write_text("{}")
    assert main(["classify", "train", str(data), "--init", str(gpt2_vocab_model), "--out", str(other), "--force"]) == 2
    assert "holds another command's training run (data, init, train_config.json)" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["data", "init", "latest", "train_config.json"]


def test_bad_numbers_are_one_line_before_anything_runs(tmp_path, capsys, gpt2_vocab_model):
    data = tmp_path / "d.csv"
    data.write_text("text,label\nhi,a\nho,b\n", encoding="utf-8")
    for flags, message in ((["--epochs", "inf"], "--epochs must be a number > 0"), (["--seed", "-1"], "--seed must "
                           "be a whole number >= 0, got -1"), (["--max-iters", "-1"], "--max-iters must be >= 1"),
                          (["--epochs", "2", "--max-iters", "3"], "give --epochs or --max-iters, not both")):
        assert main(["classify", "train", str(data), "--init", str(gpt2_vocab_model), "--out", str(tmp_path / "run"),
                     *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("name, content, message", BAD_INPUTS)
def test_bad_data_is_one_line(tmp_path, capsys, name, content, message, gpt2_vocab_model):
    (tmp_path / name).write_text(content, encoding="utf-8")
    assert main(["classify", "train", str(tmp_path / name), "--init", str(gpt2_vocab_model),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_label_as_the_text_is_refused(tmp_path, capsys, gpt2_vocab_model):
    """--text-field label --label-field label trained a model that reads its answer: accuracy 1.0."""
    (tmp_path / "d.csv").write_text("text,label\nhi,a\nho,b\n", encoding="utf-8")
    assert main(["classify", "train", str(tmp_path / "d.csv"), "--init", str(gpt2_vocab_model), "--text-field",
                 "label", "--out", str(tmp_path / "run")]) == 2
    assert "the text field and the label field are both 'label'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_model_without_a_head_is_refused_in_one_line(tmp_path, capsys, gpt2_vocab_model):
    (tmp_path / "d.csv").write_text("text,label\nhi,a\nho,b\n", encoding="utf-8")
    for argv in (["evaluate", str(tmp_path / "d.csv")], ["predict", "hello"]):
        assert main(["classify", *argv, "--model", str(gpt2_vocab_model)]) == 2
        err = capsys.readouterr().err
        assert "no classification head (score.weight)" in err and err.count("\n") == 1


# ---- the commands end to end --------------------------------------------------------------------------------

def test_train_evaluate_predict(tmp_path, capsys, monkeypatch, gpt2_vocab_model):
    """A tiny model learns texts about cats from texts about stocks; evaluate's report equals the metrics
    of predict's labels; the run is a transformers classifier; the confusion PNG is written."""
    rng = np.random.default_rng(0)
    cats = ["cat", "kitten", "meow", "purr", "whiskers"]
    money = ["stock", "market", "price", "bank", "profit"]
    rows = [{"text": " ".join(rng.choice(words, 4)), "label": label}
            for _ in range(40) for words, label in ((cats, "pets"), (money, "money"))]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["classify", "train", str(data), "--init", str(gpt2_vocab_model), "--out", str(tmp_path / "run"),
                 "--train", "all", "--max-iters", "40", "--lr", "3e-3", "--batch-size", "8", "--threads", "1",
                 "--class-weights", "balanced"]) == 0
    out = capsys.readouterr().out
    assert "done: step 40" in out
    assert (tmp_path / "run" / "best" / "config.json").is_file() and (tmp_path / "run" / "latest").is_dir()
    assert main(["next", "--model", str(tmp_path / "run" / "latest"), "cat"]) == 2     # a head, not a language model
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a language model" in err, err
    assert main(["classify", "evaluate", str(data), "--model", str(tmp_path / "run"), "--json",
                 "-o", str(tmp_path / "cm.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] >= 0.9 and report["labels"] == ["money", "pets"]
    assert (tmp_path / "cm.png").stat().st_size > 1000
    assert main(["classify", "evaluate", str(data), "--model", str(tmp_path / "run"), "--json",
                 "-o", str(tmp_path / "cm")]) == 0                            # .png added, and said so
    assert capsys.readouterr().err.strip().endswith(f"wrote {tmp_path / 'cm.png'}")
    assert main(["classify", "evaluate", str(data), "--model", str(tmp_path / "run"), "-o", str(tmp_path / "cm.txt")]) == 2
    assert "the pictures are PNG images; pass a name ending in .png" in capsys.readouterr().err
    texts = [r["text"] for r in rows]
    assert main(["classify", "predict", *texts, "--model", str(tmp_path / "run")]) == 0
    predicted = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    truth = [r["label"] for r in rows]
    assert report["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(predicted, truth)]))
    assert report["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(truth, predicted, average="macro"))
    assert main(["classify", "evaluate", str(data), "--model", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert f"accuracy {report['accuracy']:.4f}" in text and "confusion matrix" in text
    # --json, the texts from stdin (-), and a text with a tab and a newline kept on one line of the TSV
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(t + "\n" for t in texts)))
    assert main(["classify", "predict", "-", "--model", str(tmp_path / "run"), "--json"]) == 0
    rows_out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows_out] == texts and [r["label"] for r in rows_out] == predicted
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows_out)
    odd = texts[0] + "\tand\nmore"
    assert main(["classify", "predict", odd, "--model", str(tmp_path / "run")]) == 0
    line, = capsys.readouterr().out.splitlines()
    assert line.split("\t")[2] == texts[0] + "\\tand\\nmore"
    assert main(["classify", "predict", "word " * 300, "--model", str(tmp_path / "run")]) == 0   # cut: said so
    assert "note: 1 of the 1 texts are longer than" in capsys.readouterr().err


def test_ctrl_c_saves_latest_at_the_last_whole_step(gpt2_vocab_model, tmp_path):
    from numgpt.training.loop import TrainConfig
    config, params = load_checkpoint(gpt2_vocab_model)
    model = classify.new_classifier(config, params, load_tokenizer(gpt2_vocab_model, config), ["a", "b"],
                                    rng=np.random.default_rng(0))
    train = [classdata.Example(t, "ab"[i % 2]) for i, t in enumerate(TEXTS * 2)]

    def stop_at_two(event):
        if event["type"] == "step" and event["step"] == 2:
            raise KeyboardInterrupt
    result = classify.train_classifier(model, train, [], tmp_path / "run", tc=TrainConfig(batch_size=2, max_iters=9,
                                       threads=1), trainable="last-1", on_event=stop_at_two)
    assert result.interrupted and result.steps == 2 and result.saved == [tmp_path / "run" / "latest"]
    saved = classify.load_classifier_folder(tmp_path / "run" / "latest")
    assert not np.array_equal(saved.params[SCORE], model.params[SCORE])            # it trained, and saved that
    np.testing.assert_array_equal(saved.params["h.0.attn.c_attn.weight"], model.params["h.0.attn.c_attn.weight"])


def test_two_threads_give_the_one_thread_loss_and_gradients():
    """The weighted loss is a mean over rows, so the rows split over threads give the whole batch's loss
    and gradient (float32 sums in another order: 1e-5)."""
    from numgpt.training.parallel import DataParallel, flat_zeros_like
    params = {n: p.astype(np.float32) for n, p in float64_classifier().items()}
    ids, last = right_padded(np.random.default_rng(4), [5, 2, 8, 4, 6])
    batch = (ids, last, np.array([0, 1, 2, 2, 0]))
    objective = classify.classification_objective(classify.trainable_names(CONFIG, "last-1"), np.array([1.0, 3, 0.5]))
    results = []
    for threads in (1, 2):
        _, grads = flat_zeros_like(objective.trainable_params(params))
        loss = DataParallel(threads).forward_backward(objective.loss, params, CONFIG, batch, grads)
        results.append((loss, grads))
    (loss1, g1), (loss2, g2) = results
    assert loss2 == pytest.approx(loss1, rel=1e-6)
    for name in g1:
        np.testing.assert_allclose(g2[name], g1[name], rtol=1e-4, atol=1e-6 * np.abs(g1[name]).max())


def test_unknown_labels_and_empty_texts_are_one_line(tmp_path, capsys, gpt2_vocab_model):
    config, params = load_checkpoint(gpt2_vocab_model)
    classify.new_classifier(config, params, load_tokenizer(gpt2_vocab_model, config), ["a", "b"],
                            rng=np.random.default_rng(0)).save(tmp_path / "clf")
    (tmp_path / "d.csv").write_text("text,label\nhi,a\nho,c\n", encoding="utf-8")
    cases = [(["evaluate", str(tmp_path / "d.csv")], "d.csv:3: label 'c' is not one of the model's (a, b)"),
             (["predict", "fine", ""], "the text '' has no tokens")]
    for argv, message in cases:
        assert main(["classify", *argv, "--model", str(tmp_path / "clf")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    (tmp_path / "ab.csv").write_text("text,label\nhi,a\nho,b\nhu,a\n", encoding="utf-8")
    assert main(["classify", "train", str(tmp_path / "ab.csv"), "--init", str(gpt2_vocab_model),
                 "--out", str(tmp_path / "r"), "--val-fraction", "1.5"]) == 2
    assert "--val-fraction must be in [0, 1), got 1.5" in capsys.readouterr().err


def test_training_continues_from_a_classifier_of_the_same_labels(tmp_path, capsys, gpt2_vocab_model):
    config, params = load_checkpoint(gpt2_vocab_model)
    first = classify.new_classifier(config, params, load_tokenizer(gpt2_vocab_model, config), ["a", "b"],
                                    rng=np.random.default_rng(0))
    first.save(tmp_path / "clf")
    (tmp_path / "ab.csv").write_text("text,label\nhi,a\nho,b\nhu,a\nha,b\n", encoding="utf-8")
    (tmp_path / "abc.csv").write_text("text,label\nhi,a\nho,b\nhu,c\n", encoding="utf-8")
    common = ["--init", str(tmp_path / "clf"), "--max-iters", "1", "--threads", "1", "--val-fraction", "0"]
    assert main(["classify", "train", str(tmp_path / "ab.csv"), "--out", str(tmp_path / "r1"), *common]) == 0
    after = classify.load_classifier_folder(tmp_path / "r1" / "latest")
    assert after.labels == ["a", "b"]
    assert np.abs(after.params[SCORE] - first.params[SCORE]).max() < 0.01     # one small step from the old head
    assert main(["classify", "train", str(tmp_path / "abc.csv"), "--out", str(tmp_path / "r2"), *common]) == 2
    assert "classifies a, b but the data's labels are a, b, c" in capsys.readouterr().err


def test_the_head_alone_on_cached_states_makes_the_updates_of_the_whole_forward(gpt2_vocab_model, tmp_path):
    """--train head computes the frozen body's states once (PooledStates); its steps draw the same texts and
    give the same head as running the body every step (float32: the states come from other batches)."""
    from numgpt.training.loop import TrainConfig, train_step
    config, params = load_checkpoint(gpt2_vocab_model)
    model = classify.new_classifier(config, params, load_tokenizer(gpt2_vocab_model, config), ["a", "b", "c"],
                                    rng=np.random.default_rng(0))
    seqs, _ = model.encode(TEXTS * 3)
    tokens = classify.LabelledTokens((seqs, np.arange(12) % 3), ([], np.zeros(0, int)), model.pad_token_id)
    states = classify.PooledStates(classify._states(model, tokens.train, 4), (np.zeros((0, 16)), np.zeros(0, int)))
    tc = TrainConfig(batch_size=5, max_iters=3, threads=1)
    weights = np.array([1.0, 2.0, 0.5])
    heads = []
    for data, objective in ((tokens, classify.classification_objective({SCORE}, weights)),
                            (states, classify.head_objective(weights))):
        t = classify._trainer(model, data, tc, objective, tmp_path)
        losses = [train_step(t)[0] for _ in range(3)]
        heads.append((losses, t.state.params[SCORE]))
    np.testing.assert_allclose(heads[1][0], heads[0][0], rtol=1e-5)
    np.testing.assert_allclose(heads[1][1], heads[0][1], rtol=1e-4, atol=1e-6)
    assert not np.allclose(heads[0][1], model.params[SCORE])


def test_the_builtin_model_grown_by_a_pad_token_loads_in_transformers(tmp_path):
    from numgpt.formats.hub import builtin_model_folder
    folder = builtin_model_folder()
    config, params = load_checkpoint(folder)
    model = classify.new_classifier(config, params, load_tokenizer(folder, config), ["x", "y"],
                                    rng=np.random.default_rng(0), max_tokens=32)
    model.save(tmp_path / "clf")
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / "clf").eval()
    seqs, cut = model.encode(["ROMEO: what light", "JULIET: ay me", "x" * 100])
    assert cut == 1 and len(seqs[2]) == 32
    ids, _ = classify.pad_right(seqs, model.pad_token_id)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(model.logits(["ROMEO: what light", "JULIET: ay me", "x" * 100]), theirs,
                               rtol=1e-4, atol=1e-5)
    assert classify.load_classifier_folder(tmp_path / "clf").max_tokens == 32


def test_a_damaged_classifier_folder_is_one_line(gpt2_vocab_model, tmp_path):
    config, params = load_checkpoint(gpt2_vocab_model)
    classify.new_classifier(config, params, load_tokenizer(gpt2_vocab_model, config), ["a", "b"],
                            rng=np.random.default_rng(0)).save(tmp_path / "clf")
    path = tmp_path / "clf" / "config.json"
    good = json.loads(path.read_text())
    cases = (({"0": "a", "1": "b", "2": "c"}, r"score.weight is \[2, 16\], expected float32 \[3, 16\]"),
             ({"0": "a", "2": "b"}, "id2label must map '0'..'K-1' to label names"))
    for id2label, message in cases:
        path.write_text(json.dumps({**good, "id2label": id2label}))
        with pytest.raises(NumgptError, match=message):
            classify.load_classifier_folder(tmp_path / "clf")


@pytest.mark.parametrize("targets", ["c_attn", "c_attn,wte"])
def test_train_a_lora_adapter_and_the_head(tmp_path, capsys, gpt2_vocab_model, targets):
    """classify train --lora-rank: the adapter and the head train (the base frozen); RUN/latest is the merged
    classifier, which transformers loads with numgpt's logits; the unadapted tensors are the base's (wte
    too, unless it is a target)."""
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"{w} {i},{w[0]}\n" for i in range(6)
                                                             for w in ("apple", "zebra")), encoding="utf-8")
    assert main(["classify", "train", str(tmp_path / "d.csv"), "--init", str(gpt2_vocab_model), "--out",
                 str(tmp_path / "run"), "--lora-rank", "2", "--lora-targets", targets, "--max-iters", "3",
                 "--threads", "1", "--eval-interval", "2"]) == 0
    assert "a rank-2 LoRA adapter and the head" in capsys.readouterr().err
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()          # evaluated on the merged model
    config, base = load_checkpoint(gpt2_vocab_model)
    model = classify.load_classifier_folder(tmp_path / "run" / "latest")
    assert np.array_equal(model.params["wte.weight"], base["wte.weight"]) == ("wte" not in targets)
    assert np.array_equal(model.params["h.0.mlp.c_fc.weight"], base["h.0.mlp.c_fc.weight"])
    assert not np.array_equal(model.params["h.0.attn.c_attn.weight"], base["h.0.attn.c_attn.weight"])
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / "run" / "latest").eval()
    seqs, _ = model.encode(TEXTS)
    ids, _ = classify.pad_right(seqs, model.pad_token_id)
    with torch.no_grad():
        np.testing.assert_allclose(model.logits(TEXTS), hf(torch.from_numpy(ids)).logits.numpy(), rtol=1e-4, atol=1e-5)
    assert main(["classify", "train", str(tmp_path / "d.csv"), "--init", str(gpt2_vocab_model), "--out",
                 str(tmp_path / "r2"), "--lora-rank", "2", "--train", "all"]) == 2
    assert "--lora-rank trains an adapter and the head" in capsys.readouterr().err


def test_the_confusion_matrix_heads_its_columns_with_whole_labels():
    from numgpt.cli.classify_commands import format_metrics
    m = {"accuracy": 0.5, "macro_f1": 0.5, "loss": 1.0, "confusion": np.array([[3, 1], [2, 4]]),
         "per_label": [{"label": x, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4} for x in
                       ("computers", "art")]}
    lines = format_metrics(m, ["computers", "art"], 10, 0).splitlines()
    head = lines.index("confusion matrix (rows: true label, columns: predicted)")
    assert lines[head + 1].split() == ["computers", "art"]                     # "computer" before
    assert lines[head + 2].split() == ["computers", "3", "1"] and lines[head + 3].split() == ["art", "2", "4"]
