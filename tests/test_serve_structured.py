"""Structured outputs in the server: OpenAI's response_format (text, json_object, json_schema) and numgpt's
`regex` extension in /v1/completions and /v1/chat/completions, driven by the official openai client
against a real `numgpt serve` on a free loopback port; bad input is an OpenAI-shaped 400 naming the
parameter."""

import json
import re

import pytest
from references import reference
from test_serve import Server

jsonschema = reference("jsonschema")
openai = reference("openai")

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "likes": {"type": "array", "items": {"enum": ["tea", "war", "love"]},
                                                     "minItems": 1, "maxItems": 2}},
          "required": ["name", "age", "likes"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def model(s: Server) -> str:
    """The served model's id (a folder's path for --model FOLDER)."""
    return s.client.models.list().data[0].id


@pytest.fixture(scope="module")
def server(hf_gpt2_vocab_ckpt):
    """GPT-2's vocabulary (a small random model: its <|endoftext|> ends the JSON) and the transcript template."""
    s = Server("--model", str(hf_gpt2_vocab_ckpt.folder), "--max-batch", "4")
    yield s
    assert s.stop() == 0
    assert not any("Traceback" in line for line in s.log), "".join(s.log)


@pytest.fixture(scope="module")
def builtin_server():
    """The built-in model: no <|endoftext|>; the text ends where the schema admits nothing more."""
    s = Server("--max-batch", "2")
    yield s
    assert s.stop() == 0


def test_chat_with_a_json_schema_gives_valid_json(server):
    for seed in range(3):
        r = server.client.chat.completions.create(
            model=model(server), messages=[{"role": "user", "content": "Describe a person."}], response_format=FORMAT,
            max_tokens=150, seed=seed, n=2)
        for choice in r.choices:
            assert choice.finish_reason == "stop", choice
            jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_completions_take_response_format_and_regex_and_stream(server, builtin_server):
    for s in (server, builtin_server):
        r = s.client.completions.create(model=model(s), prompt="ROMEO:", max_tokens=100, seed=1,
                                        extra_body={"response_format": FORMAT})
        jsonschema.validate(json.loads(r.choices[0].text), PERSON)
        r = s.client.completions.create(model=model(s), prompt="Date:", max_tokens=20, temperature=0.8, seed=2,
                                        extra_body={"regex": r"\d{4}-[01]\d-[0-3]\d"})
        assert re.fullmatch(r"\d{4}-[01]\d-[0-3]\d", r.choices[0].text) and r.choices[0].finish_reason == "stop"
        chunks = s.client.completions.create(model=model(s), prompt="ROMEO:", max_tokens=100, seed=1, stream=True,
                                             extra_body={"response_format": FORMAT})
        streamed = "".join(c.choices[0].text for c in chunks if c.choices)
        jsonschema.validate(json.loads(streamed), PERSON)
    r = server.client.completions.create(model=model(server), prompt="x", max_tokens=5, seed=0,
                                         extra_body={"response_format": {"type": "text"}})
    assert r.choices[0].finish_reason in ("length", "stop")


def test_json_object_mode(server):
    r = server.client.chat.completions.create(model=model(server), messages=[{"role": "user", "content": "JSON please"}],
                                              response_format={"type": "json_object"}, max_tokens=200, seed=4,
                                              temperature=0.3)
    choice = r.choices[0]
    assert choice.finish_reason == "length" or isinstance(json.loads(choice.message.content), dict)
    assert choice.message.content.startswith("{")


@pytest.mark.parametrize("extra, param, message", [
    ({"regex": "(a"}, "regex", "missing ')'"),
    ({"regex": "[^\\s\\S]"}, "regex", "no text satisfies"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string",
                                                                                        "format": "date"}}}},
     "response_format", "keyword 'format'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": []}}}},
     "response_format", "no text satisfies"),
    ({"regex": "a", "response_format": {"type": "json_object"}}, "regex", "give one"),
    # the field's path as the request spells it (pydantic's location has the member's tag in it too)
    ({"response_format": {"type": "json_schema"}}, "response_format", "response_format.json_schema: Field required"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format",
     "response_format.json_schema.name: Field required"),
    ({"response_format": {"type": "json_object", "schema": {}}}, "response_format",
     "unrecognized request argument supplied: response_format.schema"),
    ({"regex": 5}, "regex", "regex"),
    ({"regex": "[0-9]{4}", "stop": ["-"]}, "stop", "stop strings cannot be combined with a regex or a JSON schema"),
    ({"response_format": {"type": "json_object"}, "stop": "}"}, "stop", "stop strings cannot be combined"),                       # a wrong type is a 400 as well, as OpenAI's
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {
            "type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {
                "type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "array",
                    "items": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}}}}}}}}}}}}}}}},
     "response_format", "the JSON schema is too large")])
def test_bad_structured_requests_are_openai_400s(server, extra, param, message):
    with pytest.raises(openai.BadRequestError) as e:
        server.client.completions.create(model=model(server), prompt="x", max_tokens=5, extra_body=extra)
    error = e.value.body
    assert e.value.status_code == 400 and error["param"] == param and message in error["message"], error


def test_a_malformed_response_format_is_refused(server):
    r = server.http.post("/v1/completions", json={"prompt": "x", "response_format": {"type": "yaml"}})
    assert r.status_code == 400 and "response_format" in json.dumps(r.json()["error"])


def test_a_speculating_server_refuses_a_constraint_by_name():
    """`numgpt serve --speculative ngram` cannot follow a schema or regex exactly: a 400 naming it."""
    import numgpt
    from fastapi.testclient import TestClient
    from numgpt.serve import create_app
    from numgpt.serve.settings import ServerSettings

    lm = numgpt.load()
    with TestClient(create_app(lm, ServerSettings(speculative="ngram"))) as c:
        for extra, param in [({"regex": "a+"}, "regex"), ({"response_format": {"type": "json_object"}},
                                                         "response_format")]:
            r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, **extra})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.json()
            assert "--speculative" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3}).status_code == 200
