"""numgpt serve, for real: a `numgpt serve` subprocess on a free loopback port, driven by the official
`openai` client (and plain httpx for what a client library would not send), checked against numgpt's
own CLI and LanguageModel."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from references import reference

import numgpt

openai = reference("openai")
httpx = reference("httpx")

KEY = "test-key-123"
NUMGPT = [sys.executable, "-m", "numgpt"]


class Server:
    """A `numgpt serve` subprocess on a free port (--port 0; the URL is read from its first line)."""

    def __init__(self, *args: str, key: str | None = KEY, env: dict | None = None):
        cmd = NUMGPT + ["serve", "--port", "0", *args] + (["--api-key", key] if key else [])
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env={**os.environ, **(env or {})})
        first = self.proc.stderr.readline()
        if "numgpt serve:" not in first:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {first}{self.proc.stderr.read()}")
        self.url = first.split(" on ")[1].split()[0]
        self.key = key
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0)
        self.http = httpx.Client(base_url=self.url, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"} if key else {})

    def stop(self, how: int = signal.SIGINT) -> int:
        self.http.close()
        self.proc.send_signal(how)
        return self.proc.wait(timeout=30)

    def healthy(self) -> bool:
        r = self.http.get("/health")
        return r.status_code == 200 and r.json()["status"] == "ok"

    def idle(self, timeout: float = 10) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            h = self.http.get("/health").json()
            if h["running"] == 0 and h["waiting"] == 0:
                return True
            time.sleep(0.05)
        return False


@pytest.fixture(scope="module")
def server():
    s = Server("--max-batch", "8", "--max-queue", "16")
    yield s
    assert s.stop() == 0
    assert any("POST /v1/completions 200" in line for line in s.log)
    assert not any("Traceback" in line for line in s.log), "".join(s.log)
    requests = [line for line in s.log if line[:2] == "20"]                # the request lines (timestamped)
    assert requests and not any("ROMEO" in line for line in requests), "a prompt was logged without --log-prompts"


@pytest.fixture(scope="module")
def builtin():
    return numgpt.load()


def cli(*args: str) -> str:
    out = subprocess.run(NUMGPT + list(args), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ---- the answers: against numgpt's CLI and facade -------------------------------------------------------

def test_greedy_text_equals_numgpt_generate_greedy(server):
    for prompt in ("ROMEO:", "First Citizen:\nWe are"):
        r = server.client.completions.create(model="numgpt", prompt=prompt, max_tokens=40, temperature=0)
        want = cli("generate", "--greedy", "--max-new-tokens", "40", prompt)
        assert r.choices[0].text == want.removesuffix("\n")
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 40


def test_echo_logprobs_equal_the_facade_and_sum_to_perplexity(server, builtin, tmp_path):
    text = "ROMEO: But soft, what light through yonder window breaks?"
    r = server.client.completions.create(model="numgpt", prompt=text, max_tokens=0, echo=True, logprobs=3)
    lp = r.choices[0].logprobs
    want = builtin.prompt_logprobs(text, top=3)
    assert r.choices[0].text == text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    np.testing.assert_allclose(lp.token_logprobs[1:], [w.logprob for w in want[1:]], atol=1e-5, rtol=0)
    for got, w in zip(lp.top_logprobs[1:], want[1:]):
        assert list(got) == [builtin.decode([t]) for t, _ in w.top]
        np.testing.assert_allclose(list(got.values()), [v for _, v in w.top], atol=1e-5, rtol=0)
    assert lp.tokens == [builtin.decode([t]) for t in builtin.encode(text)]
    assert lp.token_ids == builtin.encode(text)                               # numgpt's exact-id extension
    assert [[t for t, _ in top] for top in lp.top_logprobs_by_id[1:]] == [[t for t, _ in w.top] for w in want[1:]]
    assert [text[o:] .startswith(t) for o, t in zip(lp.text_offset, lp.tokens)] == [True] * len(lp.tokens)
    (tmp_path / "t.txt").write_text(text)
    ppl = json.loads(cli("perplexity", str(tmp_path / "t.txt"), "--json"))
    assert ppl["bos"] is False and ppl["tokens"] == len(lp.tokens) - 1
    assert -sum(lp.token_logprobs[1:]) == pytest.approx(ppl["nll"], abs=1e-4)


def test_top_logprobs_equal_numgpt_next(server):
    prompt = "KING HENRY:\nNow"
    r = server.client.completions.create(model="numgpt", prompt=prompt, max_tokens=1, temperature=0, logprobs=5)
    want = json.loads(cli("next", prompt, "--json", "--top", "5"))
    got = r.choices[0].logprobs.top_logprobs[0]
    rows = want if isinstance(want, list) else want["tokens"]
    assert list(got) == [w["token"] for w in rows]
    np.testing.assert_allclose([math.exp(v) for v in got.values()], [w["probability"] for w in rows],
                               rtol=1e-5, atol=1e-7)
    assert r.choices[0].text == rows[0]["token"]            # greedy took the most likely one


def test_stop_strings_cut_where_numgpt_generate_stop_does(server):
    for stop in ("\n\n", "the", ":\n"):
        r = server.client.completions.create(model="numgpt", prompt="ROMEO:", max_tokens=60, temperature=0.9,
                                             seed=7, stop=[stop])
        want = cli("generate", "--temperature", "0.9", "--seed", "7", "--max-new-tokens", "60", "--stop", stop,
                   "ROMEO:")
        assert r.choices[0].text == want.removesuffix("\n") and stop not in r.choices[0].text


def test_seeded_sample_equals_numgpt_generate_seed(server):
    r = server.client.completions.create(model="numgpt", prompt="JULIET:", max_tokens=30, temperature=0.8,
                                         seed=3, extra_body={"top_k": 40})     # top_k: a numgpt extension
    want = cli("generate", "--temperature", "0.8", "--top-k", "40", "--seed", "3", "--max-new-tokens", "30", "JULIET:")
    assert r.choices[0].text == want.removesuffix("\n")


def test_streamed_chunks_concatenate_to_the_text(server):
    kwargs = dict(model="numgpt", prompt="ROMEO:", max_tokens=48, temperature=1.0, seed=11)
    whole = server.client.completions.create(**kwargs).choices[0].text
    chunks = [c.choices[0].text for c in server.client.completions.create(stream=True, **kwargs) if c.choices]
    assert "".join(chunks) == whole and len(chunks) > 10


def test_n_samples_differ_and_reproduce(server):
    kwargs = dict(model="numgpt", prompt="First Citizen:", max_tokens=24, temperature=1.0, n=3, seed=5)
    a = [c.text for c in server.client.completions.create(**kwargs).choices]
    b = [c.text for c in server.client.completions.create(**kwargs).choices]
    assert a == b and len(set(a)) == 3
    unseeded = {server.client.completions.create(model="numgpt", prompt="First Citizen:", max_tokens=24,
                                                 n=2).choices[1].text for _ in range(2)}
    assert len(unseeded) == 2                                # no seed: fresh randomness each time


def test_best_of_returns_the_most_likely_candidate(server, builtin):
    r = server.client.completions.create(model="numgpt", prompt="ROMEO:", max_tokens=12, best_of=4, n=1,
                                         seed=2, logprobs=0)
    cands = server.client.completions.create(model="numgpt", prompt="ROMEO:", max_tokens=12, n=4, seed=2,
                                             logprobs=0).choices
    means = [np.mean(c.logprobs.token_logprobs) for c in cands]
    assert r.choices[0].text == cands[int(np.argmax(means))].text


def test_list_prompts_and_token_ids(server, builtin):
    ids = builtin.encode("ROMEO:")
    r = server.client.completions.create(model="numgpt", prompt=["ROMEO:", "JULIET:"], max_tokens=5, temperature=0)
    r2 = server.client.completions.create(model="numgpt", prompt=[ids, builtin.encode("JULIET:")], max_tokens=5,
                                          temperature=0)
    assert [c.text for c in r.choices] == [c.text for c in r2.choices]
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == builtin.generate("ROMEO:", max_new_tokens=5, do_sample=False)


def test_penalties_and_logit_bias(server, builtin):
    banned = builtin.encode("\n")[0]
    r = server.client.completions.create(model="numgpt", prompt="ROMEO:", max_tokens=20, temperature=0,
                                         logit_bias={str(banned): -100})
    assert "\n" not in r.choices[0].text
    want = builtin.generate("ROMEO:", max_new_tokens=20, do_sample=False, presence_penalty=1.5,
                            frequency_penalty=0.5)
    r = server.client.completions.create(model="numgpt", prompt="ROMEO:", max_tokens=20, temperature=0,
                                         presence_penalty=1.5, frequency_penalty=0.5)
    assert r.choices[0].text == want


def test_gpt2_vocabulary_streams_whole_characters(hf_gpt2_vocab_ckpt):
    """A random checkpoint with GPT-2's 50257 tokens emits many partial UTF-8 byte tokens: streamed chunks
    still concatenate to the text, which is the decode of all the tokens at once (a character split
    across chunks would show as U+FFFD in the stream where the whole decode has the character)."""
    lm = numgpt.load(hf_gpt2_vocab_ckpt.folder)
    s = Server("--model", str(hf_gpt2_vocab_ckpt.folder), "--log-prompts", key=None)
    try:
        kwargs = dict(model=str(hf_gpt2_vocab_ckpt.folder), prompt="Hello", max_tokens=80, temperature=1.0, seed=4)
        whole = s.client.completions.create(**kwargs).choices[0].text
        chunks = [c.choices[0].text for c in s.client.completions.create(stream=True, **kwargs) if c.choices]
        (want,) = lm.completions("Hello", max_new_tokens=80, temperature=1.0, seed=4)
        assert whole == "".join(chunks) == want.text == lm.decode(want.token_ids)
        assert any(len(ch.encode()) > 1 for ch in whole)      # the sample does hold multi-byte characters
        assert any("prompt='Hello'" in line for line in s.log)  # --log-prompts logs them
    finally:
        s.stop()


# ---- concurrency: byte-identical under load --------------------------------------------------------------

def test_concurrent_requests_give_the_text_each_gives_alone(server):
    requests = [dict(prompt=p, max_tokens=40, temperature=t, seed=s, stream=st)
                for p, t, s, st in [("ROMEO:", 1.0, 1, False), ("JULIET:", 0.7, 2, True), ("KING:", 1.2, 3, False),
                                    ("First Citizen:", 0.9, 4, True), ("ROMEO:", 1.0, 5, True),
                                    ("GLOUCESTER:", 0.8, 6, False), ("Nurse:", 1.0, 7, True), ("MENENIUS:", 1.1, 8, False)]]

    def run(req):
        if req["stream"]:
            body = {k: v for k, v in req.items() if k != "stream"}
            chunks = server.client.completions.create(model="numgpt", stream=True, **body)
            return "".join(c.choices[0].text for c in chunks if c.choices)
        body = {k: v for k, v in req.items() if k != "stream"}
        return server.client.completions.create(model="numgpt", **body).choices[0].text

    alone = [run(r) for r in requests]
    for concurrency in (4, 8):
        out = [None] * len(requests)
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, run(requests[i])))
                   for i in range(len(requests))]
        for batch in range(0, len(threads), concurrency):
            for t in threads[batch:batch + concurrency]:
                t.start()
            for t in threads[batch:batch + concurrency]:
                t.join()
        assert out == alone, concurrency
    steps = [line for line in server.http.get("/metrics").text.splitlines() if line.startswith("numgpt_decode_steps_total")]
    assert steps and float(steps[0].split()[-1]) > 0


# ---- chat ---------------------------------------------------------------------------------------------------

def test_chat_uses_the_documented_template(server, builtin):
    messages = [{"role": "system", "content": "You are Romeo."}, {"role": "user", "content": "Who are you?"}]
    r = server.client.chat.completions.create(model="numgpt", messages=messages, max_tokens=30, temperature=0)
    prompt = "You are Romeo.\n\nUser: Who are you?\nAssistant:"
    want = builtin.generate(prompt, max_new_tokens=30, do_sample=False, stop=["\nUser:"])
    assert r.choices[0].message.content == want.removeprefix(" ")
    assert r.choices[0].message.role == "assistant"
    card = server.client.models.list().data[0]
    assert card.id == "numgpt" and card.chat_template["user_turn"] == "User: {content}\n"
    assert card.chat_template["strip_leading_space"] is True    # a JSON boolean, as --chat-template takes it
    streamed = server.client.chat.completions.create(model="numgpt", messages=messages, max_tokens=30,
                                                     temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == r.choices[0].message.content


def test_chat_logprobs_shape(server, builtin):
    r = server.client.chat.completions.create(model="numgpt", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= 5 and len(content[0].top_logprobs) == 2
    assert content[0].top_logprobs[0].logprob == pytest.approx(content[0].logprob)
    assert bytes(content[0].bytes).decode() == content[0].token


def test_sigterm_stops_the_server_as_ctrl_c_does():
    # it died by the signal (status 143) without its closing line, where Ctrl-C ended with it and status 0
    s = Server(key=None)
    assert s.healthy()
    assert s.stop(signal.SIGTERM) == 0
    time.sleep(0.2)                                    # the log's reader thread takes the last lines
    assert s.log[-1].strip() == "numgpt serve: stopped" and not any("Traceback" in line for line in s.log)


def test_chat_template_none_says_so():
    s = Server("--chat-template", "none", key=None)
    try:
        r = s.http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]
        assert s.http.get("/v1/models").json()["data"][0]["chat_template"] is None
    finally:
        s.stop()


# ---- the other endpoints -------------------------------------------------------------------------------------

def test_tokenize_detokenize_metrics_models(server, builtin):
    text = "ROMEO: what light"
    r = server.http.post("/tokenize", json={"prompt": text}).json()
    assert r["tokens"] == builtin.encode(text) and r["count"] == len(r["tokens"]) and r["max_model_len"] == 128
    assert server.http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": text}
    from prometheus_client.parser import text_string_to_metric_families
    names = {f.name for f in text_string_to_metric_families(server.http.get("/metrics").text)}
    assert {"numgpt_requests", "numgpt_time_to_first_token_seconds", "numgpt_running_sequences",
            "numgpt_generated_tokens"} <= names
    schema = server.http.get("/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/tokenize"} <= set(schema["paths"])


# ---- bad requests: one clear error each, and the server goes on ----------------------------------------------

def error_of(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    return body["error"]


@pytest.mark.parametrize("body,status,param", [
    ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ({"prompt": "x", "temprature": 0.5}, 400, "temprature"),
    ({"prompt": 5}, 400, "prompt"),
    ({}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [[]]}, 400, "prompt"),
    ({"prompt": [1, 999999]}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": 129}, 400, "max_tokens"),
    ({"prompt": "ROMEO: " * 20, "max_tokens": 100}, 400, "max_tokens"),
    ({"prompt": "ROMEO: " * 60, "max_tokens": 1}, 400, "prompt"),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ({"prompt": "x", "stream": True, "best_of": 3}, 400, None),
])
def test_bad_fields_are_named(server, body, status, param):
    e = error_of(server.http.post("/v1/completions", json=body), status)
    assert e["param"] == param, e
    assert server.healthy()


@pytest.mark.parametrize("body,param,words", [
    ({"prompt": [-1, 5]}, "prompt", "prompt[0] is -1: token ids are >= 0"),
    ({"prompt": [1, "a"]}, "prompt", "prompt mixes strings, token ids and lists"),
    ({"prompt": [1.5, 2]}, "prompt", "prompt[0] is a fraction (1.5)"),
    ({"prompt": [True, False]}, "prompt", "prompt[0] is a boolean (True)"),
    ({"prompt": [[3, 4], [5, -6]]}, "prompt", "prompt[1][1] is -6"),
    ({"prompt": 5}, "prompt", "prompt must be a string, a list of strings, a list of token ids"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "stop takes at most 4 strings, got 5"),
    ({"prompt": "x", "logit_bias": {"10": 1000}}, "logit_bias", "logit_bias['10'] is 1000: a bias must be in [-100, 100]"),
    ({"prompt": "x", "suffix": "end"}, "suffix", "suffix is not supported"),
])
def test_bad_fields_say_what_is_wrong(server, body, param, words):
    """pydantic's union errors named the first member ("prompt.str: Input should be a valid string") for
    every bad prompt, and said nothing of stop's 4 or logit_bias's range (round 2)."""
    e = error_of(server.http.post("/v1/completions", json=body), 400)
    assert e["param"] == param and words in e["message"], e


def test_bodies_that_are_not_json_objects_say_so(server):
    e = error_of(server.http.post("/v1/completions"), 400)
    assert e["message"].startswith("the body must be a JSON object sent as Content-Type: application/json"), e
    e = error_of(server.http.post("/v1/completions", content=b'{"prompt": "x"}',
                                  headers={"Content-Type": "text/plain"}), 400)
    assert "not text/plain" in e["message"], e
    e = error_of(server.http.post("/v1/completions", json=[1]), 400)
    assert e["message"] == "the body must be a JSON object", e


def test_more_sequences_than_the_server_holds_is_a_400_the_client_does_not_retry(server):
    """The module's server holds 8 + 16 sequences: 25 prompts can never fit, so the openai client gets
    BadRequestError naming the limit at once (round 2: 429, retried twice, then RateLimitError)."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=2)
    with pytest.raises(openai.BadRequestError, match="--max-batch 8 \\+ --max-queue 16 = 24") as e:
        client.completions.create(model="numgpt", prompt=["a"] * 25, max_tokens=1)
    assert "25 sequences" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="26 sequences at once \\(n 13 × 2 prompts\\)"):
        client.completions.create(model="numgpt", prompt=["a", "b"], max_tokens=1, n=13)
    r = client.completions.create(model="numgpt", prompt=["a"] * 24, max_tokens=1, temperature=0)
    assert len(r.choices) == 24


def test_streamed_chunks_before_the_usage_chunk_carry_usage_null(server):
    """OpenAI's shape with stream_options.include_usage: "usage": null on every chunk, then one chunk
    with no choices and the usage; without the option, no usage key at all."""
    for create, kwargs in [(server.client.completions.create, dict(prompt="ROMEO:")),
                           (server.client.chat.completions.create,
                            dict(messages=[{"role": "user", "content": "Hi"}]))]:
        chunks = list(create(model="numgpt", max_tokens=5, temperature=0, stream=True,
                             stream_options={"include_usage": True}, **kwargs))
        assert all("usage" in c.model_fields_set and c.usage is None for c in chunks[:-1])
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
        plain = list(create(model="numgpt", max_tokens=5, temperature=0, stream=True, **kwargs))
        assert not any("usage" in c.model_fields_set for c in plain)


def test_lm_eval_remote_tokenizer_endpoints(server, builtin):
    """What lm-evaluation-harness's RemoteTokenizer (TOKENIZER=remote, vLLM's API) calls: GET
    /tokenizer_info must hold eos_token, POST /tokenize takes add_special_tokens, and the chat template
    comes as Jinja that renders the transcript the server itself builds."""
    import jinja2              # installed with torch (the test extra); what lm-eval renders the template with
    info = server.http.get("/tokenizer_info").json()
    assert info["tokenizer_class"] == "GPT2Tokenizer" and "eos_token" in info
    assert info["model_max_length"] == builtin.config.n_positions
    text = "ROMEO: what light"
    for special in (False, True):           # GPT-2 adds no BOS/EOS: the same ids either way
        r = server.http.post("/tokenize", json={"prompt": text, "add_special_tokens": special,
                                                "return_token_strs": True}).json()
        assert r["tokens"] == builtin.encode(text) and r["token_strs"] == [builtin.decode([t]) for t in r["tokens"]]
    messages = [{"role": "system", "content": "You are Romeo."}, {"role": "user", "content": "Who are you?"},
                {"role": "assistant", "content": "A lover."}, {"role": "user", "content": "Whose?"}]
    rendered = jinja2.Environment().from_string(info["chat_template"]).render(messages=messages,
                                                                              add_generation_prompt=True)
    assert rendered == ("You are Romeo.\n\nUser: Who are you?\nAssistant: A lover.\nUser: Whose?\nAssistant:")
    usage = server.client.chat.completions.create(model="numgpt", messages=messages, max_tokens=1).usage
    assert usage.prompt_tokens == len(builtin.encode(rendered))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the overflow, on purpose
def test_non_finite_logits_from_finite_weights_are_the_servers_error(builtin):
    """Weights that overflow to inf logits are the server's fault: 500 server_error with the model's
    message, not a 400 blaming the request (round 2's NaN case)."""
    from fastapi.testclient import TestClient
    from numgpt.serve import create_app

    params = dict(builtin.params)
    params["ln_f.weight"] = np.full_like(params["ln_f.weight"], 3e38)      # finite; ln_f's output overflows
    lm = numgpt.LanguageModel(config=builtin.config, params=params, tokenizer=builtin.tokenizer)
    with TestClient(create_app(lm)) as c:
        e = error_of(c.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 3}), 500)
        assert e["type"] == "server_error" and "non-finite logits" in e["message"], e


def test_context_error_has_openai_shape(server):
    e = error_of(server.http.post("/v1/completions", json={"prompt": "ROMEO: " * 60, "max_tokens": 100}), 400)
    assert e["code"] == "context_length_exceeded" and "128" in e["message"]
    with pytest.raises(openai.BadRequestError):
        server.client.completions.create(model="numgpt", prompt="ROMEO: " * 60, max_tokens=100)


def test_malformed_bodies(server):
    h = {"Content-Type": "application/json"}
    for body, why in ((b'{"prompt": "x",', ": Expecting property name enclosed in double quotes (at character 15)"),
                      (b'{"prompt": "\xff\xfe"}', ": byte 0xff at offset 12 is not UTF-8"),
                      ('{"input": "caf\xe9"}'.encode("latin-1"), ": byte 0xe9 at offset 14 is not UTF-8"),
                      (b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", ": it is nested too deeply to read")):
        e = error_of(server.http.post("/v1/completions", content=body, headers=h), 400)
        assert e["message"].startswith("the body is not valid JSON (UTF-8 text)") and why in e["message"], body
        assert e["code"] == "invalid_json"
    e = error_of(server.http.post("/v1/completions", content=b'{"prompt": "x", "temperature": NaN}', headers=h), 400)
    assert e["param"] == "temperature"
    error_of(server.http.post("/v1/completions", content=b"x" * (10 << 20), headers=h), 413)
    error_of(server.http.get("/v1/nothing"), 404)
    error_of(server.http.get("/v1/completions"), 405)
    assert server.healthy()


def test_api_key_on_every_route_but_health(server):
    bare = httpx.Client(base_url=server.url, timeout=30)
    assert bare.get("/health").status_code == 200
    for method, route in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/completions"),
                          ("POST", "/v1/chat/completions"), ("POST", "/tokenize"), ("GET", "/openapi.json")]:
        error_of(bare.request(method, route, json={"prompt": "x"}), 401)
        error_of(bare.request(method, route, json={"prompt": "x"}, headers={"Authorization": "Bearer wrong"}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_disconnect_mid_stream_frees_the_slot(server):
    with server.http.stream("POST", "/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 120,
                                                             "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 3:
                break
    assert server.idle(), server.http.get("/health").json()
    assert server.healthy()


def test_busy_server_answers_429(hf_gpt2_124m_ckpt):
    """One slot, no queue: while a long request (124M, 300 tokens: seconds) holds the slot, another gets
    429 at once, with the real counts; a request for more sequences than the server can ever hold gets a
    400 naming the limit (round 2: 429 "busy (1 running)" on an idle server, so clients retried in vain)."""
    s = Server("--model", str(hf_gpt2_124m_ckpt.folder), "--model-name", "m", "--max-batch", "1",
               "--max-queue", "0", key=None)
    try:
        e = error_of(s.http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 2}), 400)
        assert e["code"] == "too_many_sequences" and "--max-batch 1 + --max-queue 0 = 1" in e["message"], e
        with s.http.stream("POST", "/v1/completions", json={"prompt": "Hello", "max_tokens": 300, "stream": True,
                                                            "logit_bias": {"50256": -100}}) as r:
            assert r.status_code == 200, r.read()
            lines = r.iter_lines()     # held: a dropped line iterator closes the response, i.e. disconnects
            first = json.loads(next(lines).removeprefix("data: "))
            assert first["choices"][0]["finish_reason"] is None, first
            t0 = time.monotonic()
            e = error_of(s.http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}), 429)
            assert e["code"] == "server_busy" and time.monotonic() - t0 < 2
            assert e["type"] == "rate_limit_error" and "(1 running, 0 waiting)" in e["message"], e
        assert s.idle()
        assert s.http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    finally:
        s.stop()


def test_request_timeout_ends_the_request():
    s = Server("--request-timeout", "0.01", key=None)
    try:
        e = error_of(s.http.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 120}), 504)
        assert "time limit" in e["message"]
    finally:
        s.stop()


def test_schema_fuzz_finds_no_server_error(server, tmp_path):
    """schemathesis generates requests from /openapi.json (valid and not): no 5xx, the server healthy."""
    out = subprocess.run([str(Path(sys.executable).parent / "schemathesis"), "run", server.url + "/openapi.json",
                          "-H", f"Authorization: Bearer {KEY}", "--checks", "not_a_server_error",
                          "--max-examples", "20", "--max-time", "60", "--seed", "1", "-w", "1",
                          "--phases", "examples,coverage,fuzzing", "--request-timeout", "30"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert server.healthy()


# ---- the command -----------------------------------------------------------------------------------------------

def test_cli_errors_are_one_line(tmp_path, builtin):
    """Each bad start is one line and rc 2, before any port is served (--port 0: a test never assumes a
    port is free; round 2's `--model MISSING` bound 8000 first and failed beside a running server)."""
    params = dict(builtin.params)
    params["wte.weight"] = np.full_like(params["wte.weight"], np.nan)
    numgpt.save_checkpoint(tmp_path / "nan", builtin.config, params, tokenizer=builtin.tokenizer)
    (tmp_path / "latin1.json").write_bytes('{"user_turn": "Caf\xe9: {content}"}'.encode("latin-1"))
    for args, words in [(["--port", "70000"], "--port"), (["--max-batch", "0"], "--max-batch"),
                        (["--max-batch", "10000000"], "GiB this machine has available"),   # refused, not allocated
                        (["--chat-template", str(tmp_path / "none.json")], "no such file"),
                        (["--chat-template", "{bad"], "not valid JSON"),
                        (["--chat-template", '{"stop": 5}'], "stop must be a string or a list of strings"),
                        (["--chat-template", '{"user_turn": 5}'], "user_turn must be a string, got a number"),
                        (["--chat-template", '{"stop": [1, 2]}'], "stop must be a string or a list of strings"),
                        (["--chat-template", '{"stop": [""]}'], "a stop string is empty"),
                        (["--chat-template", '{"strip_leading_space": "yes"}'], "must be true or false"),
                        (["--chat-template", "[]"], "not a JSON object (got an array"),
                        (["--chat-template", "null"], "not a JSON object (got null)"),
                        (["--chat-template", str(tmp_path)], "is a folder"),
                        (["--chat-template", str(tmp_path / "latin1.json")], "latin1.json is not UTF-8 text (byte 0xe9"),
                        (["--chat-template", '{"user_turn": "no placeholder"}'], "user_turn has no {content}"),
                        (["--api-key", ""], "--api-key is empty"),
                        (["--model", str(tmp_path / "nan")], "wte.weight has"),
                        (["--model", str(tmp_path / "missing")], "missing")]:
        out = subprocess.run(NUMGPT + ["serve", "--port", "0", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, \
            (args, out.stderr)


def test_port_in_use_is_one_line(server):
    port = server.url.rsplit(":", 1)[1]
    out = subprocess.run(NUMGPT + ["serve", "--port", port], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "another --port" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_warns_beyond_loopback_without_key():
    s = Server("--host", "0.0.0.0", key=None)
    try:
        time.sleep(0.2)
        assert any("no API key" in line for line in s.log)
        assert s.healthy()
    finally:
        s.stop()


def test_ctrl_c_ends_running_and_waiting_requests_with_a_response_each(hf_gpt2_124m_ckpt):
    """Ctrl-C with requests in flight: the running one and those waiting for its slot end at once with
    finish_reason "cancelled" (a stream with its last chunk and [DONE]); each client gets its response,
    and the server stops without a traceback. A 124M model, so that the stream is still running. (uvicorn alone waited 5 s for them, then cut them off with a
    bare 500 and a CancelledError's traceback on the console.)"""
    s = Server("--model", str(hf_gpt2_124m_ckpt.folder), "--model-name", "numgpt", "--max-batch", "1", "--max-queue", "16",
               key=None)
    body = {"model": "numgpt", "prompt": "ROMEO:", "max_tokens": 400, "temperature": 0}   # 124M: seconds
    results, lines = [None] * 8, []

    def post(i):
        with httpx.Client(base_url=s.url, timeout=60) as c:
            results[i] = c.post("/v1/completions", json=body)
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c, \
                c.stream("POST", "/v1/completions", json={**body, "stream": True}) as stream:
            chunks = stream.iter_lines()
            while len([x for x in lines if x.startswith("data: {")]) < 3:   # the stream holds the slot
                lines.append(next(chunks))
            threads = [threading.Thread(target=post, args=(i,)) for i in range(len(results))]
            for t in threads:
                t.start()
            end = time.monotonic() + 30
            while time.monotonic() < end and s.http.get("/health").json()["waiting"] < len(results):
                time.sleep(0.01)
            s.proc.send_signal(signal.SIGINT)
            lines.extend(chunks)
        for t in threads:
            t.join(60)
        assert s.proc.wait(timeout=30) == 0
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert [x for x in lines if x][-1] == "data: [DONE]" and events[-1]["choices"][0]["finish_reason"] == "cancelled"
    assert all(r is not None and r.status_code == 200 for r in results), [r and r.text for r in results]
    reasons = [r.json()["choices"][0]["finish_reason"] for r in results]
    assert reasons == ["cancelled"] * len(results)       # all were waiting behind the stream
    assert not any("Traceback" in line or "Error" in line for line in s.log), "".join(s.log)
