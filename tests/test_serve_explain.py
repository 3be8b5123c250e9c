"""The playground's endpoints (/v1/explain/*, numgpt/serve/explain_routes.py) on the built-in model, in
process (FastAPI's TestClient runs the app with its engine thread): each answer is numgpt.teach's view
of the same input, checked against the model and the sampler directly; errors are OpenAI's shape; the
page's files are open without the key, the endpoints are not."""

from pathlib import Path

import numpy as np
import pytest
from references import reference

import numgpt
from numgpt.sampling import SamplingOptions, process_logits
from numgpt.teach import STAGES, attention_weights, kvcache_counts, tokens_view

httpx = reference("httpx")
KEY = "explain-key"
TEXT = "ROMEO: I will not go to bed"


@pytest.fixture(scope="module")
def lm():
    return numgpt.load()


@pytest.fixture(scope="module")
def client(lm):
    from fastapi.testclient import TestClient
    from numgpt.serve import ServerSettings, create_app

    with TestClient(create_app(lm, ServerSettings(api_key=KEY)), headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def error_of(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "\n" not in body["error"]["message"]
    return body["error"]


def test_model_maps_every_token_id_to_its_text(client, lm):
    data = client.get("/v1/explain/model").json()
    assert data["config"]["n_layer"] == lm.config.n_layer and data["config"]["n_head"] == lm.config.n_head
    assert data["tokens"] == [lm.tokenizer.decode([i]) for i in range(lm.config.vocab_size)]


def test_attention_is_the_models(client, lm):
    ids = lm.encode(TEXT)
    w = attention_weights(lm.params, lm.config, ids)            # [L, H, T, T]
    data = client.post("/v1/explain/attention", json={"prompt": TEXT, "layer": 2, "head": 3}).json()
    assert data["ids"] == ids and data["heads"] == [3] and data["layer"] == 2
    got = np.array(data["weights"][0])
    assert np.array_equal(got.astype(np.float32), w[2, 3]) and np.allclose(got.sum(-1), 1, atol=1e-6)
    every = client.post("/v1/explain/attention", json={"prompt": ids, "layer": 0}).json()   # ids, all heads
    assert np.array_equal(np.array(every["weights"], np.float32), w[0])


@pytest.mark.parametrize("options, generated", [
    ({}, 0),
    ({"temperature": 0.8, "top_k": 12, "top_p": 0.9, "repetition_penalty": 1.3}, 0),
    ({"temperature": 1.2, "min_p": 0.1, "presence_penalty": 1.5, "frequency_penalty": 0.5,
      "logit_bias": {"321": -100, "44": 4.5}}, 4),
    ({"temperature": 0, "top_k": 3, "logit_bias": {"46": 10}}, 2),    # greedy: temperature..min-p are off
])
def test_sampling_kept_set_is_the_samplers(client, lm, options, generated):
    ids = lm.encode(TEXT)
    prompt, gen = ids[:len(ids) - generated], ids[len(ids) - generated:]
    data = client.post("/v1/explain/sampling", json={"prompt": prompt, "generated": gen, "top": 20, **options}).json()
    assert [s["name"] for s in data["stages"]] == list(STAGES) and data["generated"] == generated
    bias = tuple((int(k), float(v)) for k, v in options.get("logit_bias", {}).items())
    sampler = SamplingOptions(**{k: v for k, v in options.items() if k != "logit_bias"}, logit_bias=bias,
                              do_sample=options.get("temperature", 1.0) > 0)
    logits = numgpt.forward(lm.params, lm.config, np.array([ids]))
    processed = process_logits(logits, sampler, previous=[ids], generated=[gen])[0]
    kept = np.flatnonzero(np.isfinite(processed))
    final = data["stages"][-1]
    assert final["kept"] == kept.size and (final["kept_ids"] or list(range(lm.config.vocab_size))) == kept.tolist()
    p = np.exp(processed.astype(np.float64) - processed.max())
    p /= p.sum()
    for t in final["top"]:
        assert t["probability"] == pytest.approx(p[t["id"]], rel=1e-12, abs=1e-15)
    if options.get("temperature") == 0:
        assert [s["applied"] for s in data["stages"]][4:] == [False] * 4


def test_tokens_are_the_tokenizers_explain(client, lm):
    data = client.post("/v1/explain/tokens", json={"text": TEXT}).json()
    assert data == tokens_view(lm.tokenizer, TEXT).to_json() and data["ids"] == lm.encode(TEXT)


def test_kvcache_counts_of_a_real_generation(client, lm):
    r = client.post("/v1/completions", json={"prompt": TEXT, "max_tokens": 7, "temperature": 0}).json()
    usage = r["usage"]
    data = client.post("/v1/explain/kvcache", json={"prompt_tokens": usage["prompt_tokens"],
                                                    "completion_tokens": usage["completion_tokens"]}).json()
    P, N = usage["prompt_tokens"], usage["completion_tokens"]
    assert data == kvcache_counts(lm.config, P, N).to_json()
    assert data["computed"] == P + N - 1 and data["reused"] == sum(range(P, P + N - 1))
    assert data["computed_without_cache"] == sum(range(P, P + N))


def test_explain_runs_while_the_engine_generates(client):
    """The teaching views run in worker threads beside the engine's model thread (shared read-only weights)."""
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        gens = [pool.submit(client.post, "/v1/completions", json={"prompt": TEXT, "max_tokens": 20, "seed": s})
                for s in range(2)]
        views = [pool.submit(client.post, "/v1/explain/attention", json={"prompt": TEXT, "layer": 1}) for _ in range(3)]
        first = views[0].result().json()["weights"]
        assert all(v.result().json()["weights"] == first for v in views)
        assert all(g.result().status_code == 200 for g in gens)


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/explain/attention", {"prompt": "x", "layer": 4}, 400, "layer 4 is out of range"),
    ("/v1/explain/attention", {"prompt": "", "layer": 0}, 400, "the text is empty"),
    ("/v1/explain/attention", {"prompt": [5000]}, 400, "outside the model's vocabulary"),
    ("/v1/explain/attention", {"prompt": "x", "lyer": 1}, 400, "unrecognized request argument supplied: lyer"),
    ("/v1/explain/attention", {"prompt": "a " * 200}, 400, "context overflow"),
    ("/v1/explain/sampling", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/explain/sampling", {"prompt": "x", "logit_bias": {"5000": 1}}, 400, "'5000' is not a token id (0..1023)"),
    ("/v1/explain/sampling", {"prompt": "x", "logit_bias": {"a": 1}}, 400, "is not a token id"),
    ("/v1/explain/tokens", {"text": ""}, 400, "text"),
    ("/v1/explain/tokens", {"text": "abc " * 50_000}, 400, "at most 8192 characters"),       # round 2: 62 s
    ("/v1/explain/sampling", {"prompt": "x", "logit_bias": {"10": 101}}, 400, "must be in [-100, 100]"),
    ("/v1/explain/kvcache", {"prompt_tokens": 100, "completion_tokens": 40}, 400, "context overflow"),
    ("/v1/explain/kvcache", {"prompt_tokens": 0, "completion_tokens": 1}, 400, "prompt_tokens"),
])
def test_bad_requests_are_one_line_in_openais_shape(client, path, body, status, words):
    assert words in error_of(client.post(path, json=body), status)["message"]
    assert client.get("/health").json()["status"] == "ok"


def test_the_page_is_open_and_the_endpoints_are_not(client, lm):
    from fastapi.testclient import TestClient
    bare = TestClient(client.app)
    page = bare.get("/")
    assert page.status_code == 200 and 'data-key-required="true"' in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    for name, kind in [("playground.js", "text/javascript"), ("playground.css", "text/css")]:
        r = bare.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    error_of(bare.get("/static/secret.txt"), 401)              # only the page's own files are open
    error_of(client.get("/static/secret.txt"), 404)
    for path in ["/v1/explain/attention", "/v1/explain/sampling", "/v1/explain/tokens", "/v1/explain/kvcache"]:
        error_of(bare.post(path, json={}), 401)
    error_of(bare.get("/v1/explain/model"), 401)


def test_the_page_is_small_and_self_contained():
    static = Path(numgpt.__file__).parent / "serve" / "static"
    files = {p.name: p.read_text(encoding="utf-8") for p in static.iterdir()}
    assert set(files) == {"index.html", "playground.js", "playground.css"}
    assert sum(len(t.encode()) for t in files.values()) < 150_000
    for name, text in files.items():                            # no CDN, no other origin
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


def test_explain_routes_honour_the_request_timeout(lm):
    """--request-timeout ends a teaching view too (504, as /v1/completions); round 2: 200 KB ran 19 s and
    answered 200 under --request-timeout 3."""
    from fastapi.testclient import TestClient
    from numgpt.serve import ServerSettings, create_app

    with TestClient(create_app(lm, ServerSettings(request_timeout=1e-6))) as c:
        e = error_of(c.post("/v1/explain/tokens", json={"text": "ROMEO: what light " * 400}), 504)
        assert "--request-timeout" in e["message"] and e["code"] == "timeout"
        assert c.get("/health").json()["status"] == "ok"


def test_nan_weights_are_refused_when_the_app_is_made(lm):
    """Damaged weights stop the server at start, naming the tensor (round 2: it served them, then every
    completion was a 400 blaming the request and /v1/explain/attention a 500)."""
    from numgpt.serve import create_app

    params = dict(lm.params)
    params["h.1.attn.c_proj.weight"] = np.where(np.arange(params["h.1.attn.c_proj.weight"].size).reshape(
        params["h.1.attn.c_proj.weight"].shape) == 7, np.inf, params["h.1.attn.c_proj.weight"]).astype(np.float32)
    damaged = numgpt.LanguageModel(config=lm.config, params=params, tokenizer=lm.tokenizer)
    with pytest.raises(numgpt.NumgptError, match="h.1.attn.c_proj.weight has 1 NaN/inf"):
        create_app(damaged)


def test_request_schemas_offer_every_sampling_option():
    """The server's sampling fields are SamplingOptions' own names (completions.sampling_options passes
    them to SamplingOptions.from_mapping): an option added there and not here fails this test."""
    from dataclasses import fields

    from numgpt.serve import schemas
    from numgpt.serve.explain_routes import SamplingRequest

    names = {f.name for f in fields(SamplingOptions)} - {"do_sample", "constraint"}  # do_sample: temperature 0;
    # constraint: built from response_format or regex (structured outputs)
    assert names <= set(schemas.Sampling.model_fields) and names <= set(SamplingRequest.model_fields)
