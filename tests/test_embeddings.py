"""Embeddings (numgpt/embeddings.py, LanguageModel.embed, POST /v1/embeddings): equal to transformers'
GPT2Model last_hidden_state pooled the same way, alone and in padded batches; the server's answers through
the official `openai` client against a real `numgpt serve`; bad inputs as one-line errors and OpenAI-shaped
400s."""

import base64
import concurrent.futures
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from references import reference
from test_serve import Server

import numgpt
from numgpt.embeddings import embed_batch, embed_one, plan_batches
from numgpt.errors import NumgptError
from numgpt.lm import BUILTIN_MODEL
from numgpt.serve.engine import Engine, ShuttingDown

torch = reference("torch")
transformers = reference("transformers")
openai = reference("openai")

# float32 throughout; numgpt and torch sum the same products in different orders (matmuls over C, the mean
# over T), so results differ in the last bits: ~4e-6 seen on hidden states of magnitude ~5
ATOL = 2e-5
TEXTS = ["ROMEO: But soft, what light through yonder window breaks?", "Hi", "To be, or not to be",
         "First Citizen:\nBefore we proceed any further, hear me speak."]


def hf_pooled(model, ids: list[int], pooling: str) -> np.ndarray:
    """transformers' reference: GPT2Model's last_hidden_state of the input alone (no padding), pooled."""
    with torch.no_grad():
        hidden = model(torch.tensor([ids])).last_hidden_state[0].numpy()   # [T, C]
    return hidden.mean(axis=0) if pooling == "mean" else hidden[-1]


@pytest.fixture(scope="module")
def builtin():
    return numgpt.load()


@pytest.fixture(scope="module")
def builtin_hf():
    return transformers.GPT2Model.from_pretrained(str(BUILTIN_MODEL)).eval()


# ---- LanguageModel.embed against transformers ---------------------------------------------------------

@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_embed_equals_transformers_on_a_random_checkpoint(hf_gpt2_vocab_ckpt, torch_one_thread, pooling):
    lm = numgpt.load(hf_gpt2_vocab_ckpt.folder)
    hf = hf_gpt2_vocab_ckpt.model.transformer                          # a GPT2Model: the LM's body
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 50257, n).tolist() for n in (1, 7, 40, 3, lm.config.n_positions)]
    want = np.stack([hf_pooled(hf, ids, pooling) for ids in inputs])   # [n, C]
    assert np.abs(want).max() > 0.5                                    # not a degenerate comparison
    np.testing.assert_allclose(lm.embed(inputs, pooling=pooling), want, atol=ATOL, rtol=0)    # padded batches
    for budget in (10**6, 50):                                         # one padded batch; several
        np.testing.assert_allclose(lm.embed(inputs, pooling=pooling, batch_tokens=budget), want, atol=ATOL, rtol=0)
    for ids, w in zip(inputs, want):
        np.testing.assert_allclose(lm.embed(ids, pooling=pooling), w, atol=ATOL, rtol=0)
        np.testing.assert_allclose(embed_one(lm.params, lm.config, ids, pooling), w, atol=ATOL, rtol=0)
    texts = lm.embed(TEXTS, pooling=pooling)                           # text: its GPT-2 tokens alone
    np.testing.assert_allclose(texts, [hf_pooled(hf, lm.encode(t), pooling) for t in TEXTS], atol=ATOL, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_embed_equals_transformers_on_the_builtin_model(builtin, builtin_hf, torch_one_thread, pooling):
    want = np.stack([hf_pooled(builtin_hf, builtin.encode(t), pooling) for t in TEXTS])
    got = builtin.embed(TEXTS, pooling=pooling)
    assert got.shape == (len(TEXTS), builtin.config.n_embd) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(builtin.embed(TEXTS[0], pooling=pooling), want[0], atol=ATOL, rtol=0)
    assert not np.allclose(got[0], got[1], atol=1e-2)                  # different texts, different vectors


def test_a_padded_row_equals_its_input_alone(builtin):
    """Left padding with the attention mask: a short input beside a long one gets its own vector."""
    short, long = builtin.encode("Hi"), builtin.encode(TEXTS[0])
    for pooling in ("mean", "last"):
        batch = embed_batch(builtin.params, builtin.config, [np.asarray(short), np.asarray(long)], pooling)
        np.testing.assert_allclose(batch[0], embed_one(builtin.params, builtin.config, short, pooling),
                                   atol=1e-5, rtol=0)


def test_plan_batches_covers_every_input_once_within_the_budget():
    lengths = [5, 300, 1, 17, 17, 2, 64, 1024, 3]
    for budget in (1, 64, 100, 2048):
        plan = plan_batches(lengths, budget)
        assert sorted(np.concatenate(plan).tolist()) == list(range(len(lengths)))
        for pick in plan:
            padded = len(pick) * max(lengths[i] for i in pick)
            assert padded <= budget or len(pick) == 1
    assert [p.tolist() for p in plan_batches([3, 1, 2], 6)] == [[1, 2], [0]]   # shortest first: 2*2, then 3


# ---- bad input ------------------------------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors(builtin):
    n = builtin.config.n_positions
    cases = [("", "input 0 is empty"), ([], "an empty list"), (["a", ""], "input 1 is empty"),
             ([[1], []], "input 1 is empty"), ([[0] * (n + 1)], f"input 0 has {n + 1} tokens, more than the model's "
                                                             f"context of n_positions={n}"),
             ([1, builtin.config.vocab_size], "token ids must be in"), (3.5, "inputs must be"),
             (["a", 7], "inputs mixes strings and single token ids"),
             ([[1, 2], 3], "inputs mixes lists of token ids and single token ids"),
             ([1.5], "inputs holds 1.5: token ids must be ints"), ([1, 2.5], "inputs holds 2.5")]
    for value, message in cases:
        with pytest.raises(NumgptError, match=message.replace("[", r"\[")) as e:
            builtin.embed(value)
        assert "\n" not in str(e.value)
    with pytest.raises(NumgptError, match="pooling must be one of 'mean', 'last', got 'max'"):
        builtin.embed("a", pooling="max")
    with pytest.raises(NumgptError, match="batch_tokens must be a whole number >= 1"):
        builtin.embed("a", batch_tokens=0)


def test_arrays_of_ids_are_inputs_as_lists_are(builtin):
    rows = [[5, 9, 30], [7, 7, 2]]
    np.testing.assert_array_equal(builtin.embed(np.asarray(rows)), builtin.embed(rows))      # [n, T]: n inputs
    np.testing.assert_array_equal(builtin.embed(np.asarray(rows[0])), builtin.embed(rows[0]))  # [T]: one


def test_truncate_keeps_the_first_n_positions_tokens(builtin):
    n = builtin.config.n_positions
    ids = (np.arange(n + 9) % 200).tolist()
    np.testing.assert_array_equal(builtin.embed(ids, truncate=True), builtin.embed(ids[:n]))


# ---- the engine runs the forwards ------------------------------------------------------------------------

def test_engine_call_runs_on_the_model_thread_and_reports_errors(builtin):
    engine = Engine(builtin.params, builtin.config, builtin.tokenizer, max_batch=2).start()
    try:
        assert engine.call(lambda: threading.current_thread().name).result(timeout=10) == "numgpt-model"
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0).result(timeout=10)
        assert engine.call(lambda: 42).result(timeout=10) == 42          # the engine went on
    finally:
        engine.stop()
    with pytest.raises(ShuttingDown, match="shutting down"):               # stopped: refused, not left waiting
        engine.call(lambda: 1)


# ---- POST /v1/embeddings through the openai client ------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    s = Server("--max-batch", "4")
    yield s
    assert s.stop() == 0
    assert any("POST /v1/embeddings 200" in line for line in s.log)
    assert not any("Traceback" in line for line in s.log), "".join(s.log)


def test_float_and_base64_are_the_same_float32_vectors(server, builtin):
    f = server.client.embeddings.create(model="numgpt", input=TEXTS[0], encoding_format="float")
    d = server.client.embeddings.create(model="numgpt", input=TEXTS[0])    # asks base64 and decodes it itself
    b = server.client.embeddings.create(model="numgpt", input=TEXTS[0], encoding_format="base64")  # the string
    assert f.object == "list" and f.model == "numgpt" and [e.index for e in f.data] == [0]
    vector = np.asarray(f.data[0].embedding, np.float32)
    np.testing.assert_array_equal(np.asarray(d.data[0].embedding, np.float32), vector)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(b.data[0].embedding), "<f4"), vector)
    np.testing.assert_allclose(vector, builtin.embed(TEXTS[0]), atol=1e-6, rtol=0)   # another process, same batches
    n = len(builtin.encode(TEXTS[0]))
    assert (f.usage.prompt_tokens, f.usage.total_tokens) == (n, n)


def test_list_and_token_id_inputs(server, builtin):
    r = server.client.embeddings.create(model="numgpt", input=TEXTS, encoding_format="float")
    assert [e.index for e in r.data] == list(range(len(TEXTS)))
    np.testing.assert_allclose([e.embedding for e in r.data], builtin.embed(TEXTS), atol=1e-6, rtol=0)
    assert r.usage.prompt_tokens == sum(len(builtin.encode(t)) for t in TEXTS)
    ids = builtin.encode(TEXTS[2])
    one = server.client.embeddings.create(model="numgpt", input=ids)
    np.testing.assert_allclose(one.data[0].embedding, r.data[2].embedding, atol=1e-6, rtol=0)
    lists = server.client.embeddings.create(model="numgpt", input=[ids, [7], ids[:2]])
    np.testing.assert_allclose([e.embedding for e in lists.data], builtin.embed([ids, [7], ids[:2]]), atol=1e-6, rtol=0)
    assert lists.usage.total_tokens == len(ids) + 1 + 2


def test_embeddings_beside_running_completions(server, builtin):
    """Embeddings go through the engine's model thread while it decodes: both answer, the vectors unchanged."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = [pool.submit(server.client.completions.create, model="numgpt", prompt="ROMEO:", max_tokens=30,
                             temperature=0) for _ in range(2)]
        vectors = [pool.submit(server.client.embeddings.create, model="numgpt", input=TEXTS, encoding_format="float")
                   for _ in range(3)]
        for v in vectors:
            np.testing.assert_allclose([e.embedding for e in v.result().data], builtin.embed(TEXTS), atol=1e-6, rtol=0)
        assert {t.result().usage.completion_tokens for t in texts} == {30}


def test_bad_requests_are_openai_shaped_errors(server, builtin):
    n = builtin.config.n_positions
    cases = [({"input": ""}, 400, "input", "input is empty"), ({"input": []}, 400, "input", "input is an empty list"),
             ({"input": ["a", ""]}, 400, "input", "input[1] is empty"), ({"input": [[3], []]}, 400, "input", "input[1] is empty"),
             ({"input": "a", "dimensions": 8}, 400, "dimensions", "dimensions is not supported"),
             ({"input": "a", "model": "gpt-4"}, 404, "model", "the model 'gpt-4' does not exist here"),
             ({"input": [[0] * (n + 1)]}, 400, "input", f"input[0] has {n + 1} tokens, beyond this model's maximum "
                                                     f"context length of {n} tokens"),
             ({"input": [builtin.config.vocab_size]}, 400, "input", "is outside the vocabulary"),
             ({"input": ["a"] * 2049}, 400, "input", "more than 2048 per request"),
             ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format", "encoding_format"),
             ({"input": [1, "a"]}, 400, "input", "input mixes strings"), ({"inputs": "a"}, 400, None, "")]
    for body, status, param, message in cases:
        r = server.http.post("/v1/embeddings", json=body)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and message in error["message"], (body, error)
        assert param is None or error["param"] == param
    with pytest.raises(openai.BadRequestError, match="dimensions is not supported"):
        server.client.embeddings.create(model="numgpt", input="a", dimensions=8)
    assert server.healthy()


def test_embedding_pooling_last_serves_the_last_tokens_state(builtin):
    s = Server("--embedding-pooling", "last", key=None)
    try:
        r = s.client.embeddings.create(model="numgpt", input=TEXTS[:2], encoding_format="float")
        np.testing.assert_allclose([e.embedding for e in r.data], builtin.embed(TEXTS[:2], pooling="last"),
                                   atol=1e-6, rtol=0)
    finally:
        assert s.stop() == 0


# ---- numgpt embed ----------------------------------------------------------------------------------------

def test_numgpt_embed_prints_one_json_line_per_text(builtin, tmp_path):
    out = subprocess.run([sys.executable, "-m", "numgpt", "embed", "--pooling", "last", *TEXTS[:2]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and [r["tokens"] for r in rows] == [len(builtin.encode(t)) for t in TEXTS[:2]]
    np.testing.assert_allclose([r["embedding"] for r in rows], builtin.embed(TEXTS[:2], pooling="last"), atol=1e-6, rtol=0)
    piped = subprocess.run([sys.executable, "-m", "numgpt", "embed", "--pooling", "last"], capture_output=True,
                           text=True, timeout=120, input="\n".join(TEXTS[:2]) + "\n")    # it said "no texts"
    assert piped.returncode == 0 and piped.stdout == out.stdout, piped.stderr
    dash = subprocess.run([sys.executable, "-m", "numgpt", "embed", "--pooling", "last", "-"], capture_output=True,
                          text=True, timeout=120, input="\n".join(TEXTS[:2]) + "\n")    # it embedded the text "-"
    assert dash.returncode == 0 and dash.stdout == out.stdout, dash.stderr
    (tmp_path / "lines.txt").write_text("a\n\nb\n", encoding="utf-8")
    bad = subprocess.run([sys.executable, "-m", "numgpt", "embed", "--file", str(tmp_path / "lines.txt")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("line 2 is empty: every line is a text to embed")
    assert "Traceback" not in bad.stderr and bad.stdout == ""
    long = subprocess.run([sys.executable, "-m", "numgpt", "embed", "Hi", "word " * 400], capture_output=True,
                          text=True, timeout=120)
    assert long.returncode == 2 and long.stderr.count("\n") == 1 and "error: TEXT 2 has" in long.stderr
    assert long.stderr.strip().endswith("pass --truncate to keep its first tokens"), long.stderr
    (tmp_path / "long.txt").write_text("Hi\n" + "word " * 400 + "\n", encoding="utf-8")   # it said "input 1"
    long = subprocess.run([sys.executable, "-m", "numgpt", "embed", "--file", str(tmp_path / "long.txt")],
                          capture_output=True, text=True, timeout=120)
    assert long.returncode == 2 and f"error: {tmp_path / 'long.txt'}: line 2 has 402 tokens" in long.stderr


def test_request_timeout_ends_an_embeddings_request_and_the_server_goes_on(builtin):
    """A request far longer than --request-timeout (200 inputs of 100 tokens through the built-in model) is
    a 504; the batches not yet run are dropped, and the next request is answered."""
    s = Server("--request-timeout", "0.01", key=None)
    try:
        r = s.http.post("/v1/embeddings", json={"input": [[t % 500 for t in range(i, i + 100)] for i in range(200)]})
        assert r.status_code == 504 and "time limit" in r.json()["error"]["message"], r.text
        assert s.http.post("/v1/embeddings", json={"input": [1]}).status_code in (200, 504)
        assert s.healthy()
    finally:
        assert s.stop() == 0
