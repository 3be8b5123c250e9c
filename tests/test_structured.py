"""Structured outputs (numgpt/structured): regex -> DFA against Python's `re`, the token automaton's fast
allowed sets against the obvious per-token loop, JSON schemas against the `jsonschema` library (hand-written
ones and ones hypothesis-jsonschema makes), and constrained generation end to end on small models: the text
always matches when the model ends it."""

import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from references import reference

import numgpt
from numgpt.errors import NumgptError
from numgpt.generate import GenerationOptions, generate_completions
from numgpt.sampling import RULES, SamplingOptions, process_logits
from numgpt.structured import build_constraint, check_structured, compile_regex, schema_to_regex
from numgpt.structured.regex import DEAD, compile_tree, parse
from numgpt.structured.schema import integer_range

jsonschema = reference("jsonschema")

pytestmark = pytest.mark.usefixtures("torch_one_thread")


_DISTANCES: dict[int, np.ndarray] = {}
_KEEP: list = []


def random_match(dfa, rng: np.random.Generator, end_p: float = 0.3, limit: int = 400) -> str:
    """A random text of the DFA's language: a walk over bytes that, half of the time and always after
    `limit` bytes, steps towards the nearest accepting state (so it ends), and stops in an accepting state
    with probability end_p."""
    dist = _DISTANCES.get(id(dfa))
    if dist is None:
        S = dfa.n_states
        dist = np.where(dfa.accepting, 0, S + 1)                          # bytes to the nearest accepting state
        while True:
            nxt = np.minimum(dist, np.where(dfa.table >= 0, dist[np.maximum(dfa.table, 0)] + 1, S + 1).min(axis=1))
            if (nxt == dist).all():
                break
            dist = nxt
        _DISTANCES[id(dfa)] = dist
        _KEEP.append(dfa)                                                 # so its id is not reused
    state, out = 0, bytearray()
    while True:
        moves = np.flatnonzero(dfa.table[state] >= 0)
        if dfa.accepting[state] and (rng.random() < end_p or len(out) > limit or not len(moves)):
            return out.decode("utf-8")
        if len(out) > limit or rng.random() < 0.5:
            moves = moves[dist[dfa.table[state, moves]] == dist[dfa.table[state, moves]].min()]
        b = int(rng.choice(moves))
        out.append(b)
        state = int(dfa.table[state, b])


# ---- regex -> DFA ------------------------------------------------------------------------------------

PATTERNS = [r"a|b+", r"(?:ab)*c?", r"[a-c]{2,4}x?", r"\d{3}-\d{4}", r"[^ab]+b", r"(cat|dog)s?( and (cat|dog))*",
            r"\w+@\w+\.(com|org)", r"-?(0|[1-9][0-9]*)(\.[0-9]+)?", r"[\[\]\\^-]+", r"x{3}y{0,2}z{2,}",
            r"(a|ab)(c|bcd)", r"\s?\S\D\W", r"[.]\.\*.", r"^(?P<year>\d{4})$", r"a{,3}"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_dfa_agrees_with_python_re(pattern):
    dfa = compile_regex(pattern)
    rng = np.random.default_rng(0)
    for _ in range(200):                                   # every text it makes, re accepts
        text = random_match(dfa, rng)
        assert re.fullmatch(pattern, text), (pattern, text)
    alphabet = list("abcdxyz019-_.@ *[]\\^\t") + ["cat", "dog", "com", " and "]
    for _ in range(2000):                                  # and on random ASCII texts they agree both ways
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 8))))
        assert dfa.matches(text) == bool(re.fullmatch(pattern, text)), (pattern, text)


@given(st.integers(0, 0x10FFFF), st.integers(0, 0x10FFFF), st.lists(st.integers(0, 0x10FFFF), max_size=30))
@settings(max_examples=60, deadline=None)
def test_a_range_of_characters_is_spelled_exactly_in_utf8(a, b, probes):
    lo, hi = min(a, b), max(a, b)
    lo = 0xE000 if 0xD800 <= lo <= 0xDFFF else lo          # surrogates are no characters
    hi = 0xD7FF if 0xD800 <= hi <= 0xDFFF else hi
    if lo > hi:
        return
    dfa = compile_regex(f"[\\U{lo:08x}-\\U{hi:08x}]")
    for cp in probes + [lo, hi, lo - 1, hi + 1]:
        if 0 <= cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF:
            assert dfa.matches(chr(cp)) == (lo <= cp <= hi), (lo, hi, cp)


@pytest.mark.parametrize("pattern, message", [
    ("a(", "missing ')'"), ("(?=a)", "lookaround"), (r"(a)\1", "backreferences"), ("a{3,2}", "maximum below"),
    ("[z-a]", "backwards"), (r"\bx", "word boundary"), ("a^b", "anchor"), ("*a", "nothing to repeat"),
    (r"\q", "unknown escape"), ("[^\\s\\S]", "no text satisfies"), ("a{5000}", "beyond"), ("(?i)a", "inline flags")])
def test_a_bad_regex_is_refused_in_one_line(pattern, message):
    with pytest.raises(NumgptError, match=re.escape(message)) as e:
        compile_regex(pattern)
    assert "\n" not in str(e.value)


def test_too_many_states_is_refused_in_one_line():
    with pytest.raises(NumgptError, match=r"too large: its automaton passes 50 states"):
        compile_regex(r"[a-z]{100}", max_states=50)


@pytest.mark.parametrize("pattern, message", [
    ("(?:(?:ab{1000}){1000}){1000}", "too large: spelled out, its repeats come to about 4,005,001,001 states"),
    ("(" * 101 + "a" + ")" * 101, "groups nested more than 100 deep"),
    ("(" * 5000 + "a" + ")" * 5000, "groups nested more than 100 deep"),
    ("a" * 200_001, "the regex is too large: 200,001 characters")])
def test_a_regex_that_would_take_the_memory_is_refused_before_building(pattern, message):
    """Nested bounded repeats multiply when spelled out, and deep nesting recursed past Python's limit: each
    is refused in one line, quickly, before the automaton is built."""
    with pytest.raises(NumgptError, match=re.escape(message)) as e:
        compile_regex(pattern)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_an_error_quotes_the_regex_as_written():
    with pytest.raises(NumgptError, match=re.escape("the regex '[^\\s\\S]'")):
        check_structured(regex=r"[^\s\S]")


# ---- the token automaton --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return numgpt.Tokenizer.gpt2()


def test_allowed_tokens_agree_with_the_obvious_loop(gpt2_tokenizer):
    """On GPT-2's 50,257 tokens (byte-level: some tokens are half a UTF-8 character)."""
    constraint = build_constraint(gpt2_tokenizer, regex=r'(é|日本)+[a-z ]{0,6}"?')
    automaton = constraint.automaton
    for state in range(min(automaton.dfa.n_states, 6)):
        ids, nxt = automaton.allowed(state)
        assert dict(zip(ids.tolist(), nxt.tolist())) == automaton.allowed_slow(state)
    first = set(automaton.allowed(0)[0].tolist())
    assert gpt2_tokenizer.encode("é")[0] in first and gpt2_tokenizer.encode("a")[0] not in first
    half = [t for t in first if len(gpt2_tokenizer.token_bytes(t)) == 1 and gpt2_tokenizer.token_bytes(t)[0] >= 0x80]
    assert half                                          # a lone first byte of é or 日 keeps the text valid
    assert gpt2_tokenizer.eot_id not in first            # the empty text does not match
    dense = build_constraint(gpt2_tokenizer, regex=r'[^"]*"|[\s\S]{3}').automaton   # states allowing most tokens
    for state in range(3):
        ids, nxt = dense.allowed(state)
        assert len(ids) > 40_000 or state > 0
        assert dict(zip(ids.tolist(), nxt.tolist())) == dense.allowed_slow(state)


def test_the_constraint_stage_masks_only_when_on(gpt2_tokenizer):
    assert RULES[0].name == "constraint" and not RULES[0].on(SamplingOptions())
    constraint = build_constraint(gpt2_tokenizer, regex="yes|no")
    logits = np.random.default_rng(0).normal(size=(2, 50257)).astype(np.float32)
    masked = process_logits(logits, SamplingOptions(constraint=constraint), generated=[[], [8505]])  # 8505 = "yes"
    allowed0 = np.flatnonzero(np.isfinite(masked[0]))
    assert {gpt2_tokenizer.decode([t]) for t in allowed0} >= {"yes", "no", "y", "n"}
    assert all("yes".startswith(gpt2_tokenizer.decode([t])) or "no".startswith(gpt2_tokenizer.decode([t]))
               for t in allowed0)
    assert np.flatnonzero(np.isfinite(masked[1])).tolist() == [gpt2_tokenizer.eot_id]
    np.testing.assert_array_equal(masked[0, allowed0], logits[0, allowed0])
    with pytest.raises(NumgptError, match="constraint must be"):
        SamplingOptions(constraint="yes|no")


# ---- constrained generation --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(hf_gpt2_vocab_ckpt):
    return numgpt.load(hf_gpt2_vocab_ckpt.folder)


@pytest.fixture(scope="module")
def builtin():
    return numgpt.load("builtin")


BOUNDED = [r"[a-z]{1,6}@[a-z]{2,5}\.(com|org)", r"\d{3}-\d{2,4}", r"(yes|no|maybe)!?", r"[ -~]{0,12}\.",
           r"(é|ü|日本|🙂){1,4}[A-Z]?"]
SETTINGS = [dict(do_sample=False), dict(temperature=1.0), dict(temperature=0.7, top_k=40),
            dict(temperature=1.3, top_p=0.9, repetition_penalty=1.2), dict(min_p=0.05, presence_penalty=1.0)]


@pytest.mark.parametrize("model", ["lm", "builtin"])
def test_generated_text_always_matches_the_regex(model, request):
    lm = request.getfixturevalue(model)
    rng = np.random.default_rng(1)
    for k, pattern in enumerate(BOUNDED):
        constraint = build_constraint(lm.tokenizer, regex=pattern, vocab_size=lm.config.vocab_size)
        for seed in range(3):
            prompt = lm.tokenizer.decode(rng.integers(0, 1000, size=int(rng.integers(1, 6))).tolist())
            sampling = SamplingOptions(constraint=constraint, **SETTINGS[(k + seed) % len(SETTINGS)])
            options = GenerationOptions(max_new_tokens=60, sampling=sampling, seed=seed, num_return_sequences=2)
            for c in generate_completions(lm.params, lm.config, lm.tokenizer, [prompt], options):
                assert c.finish_reason == "eos", (pattern, c)   # bounded: the model must end it
                assert re.fullmatch(pattern, c.text), (pattern, c.text)


def test_unbounded_regex_cut_by_max_tokens_is_a_prefix(lm):
    """With max_new_tokens the text may be cut ("length"), as OpenAI's API; it is then a valid prefix."""
    constraint = build_constraint(lm.tokenizer, regex=r"[a-z]+(,[a-z]+)*")
    options = GenerationOptions(max_new_tokens=5, sampling=SamplingOptions(constraint=constraint, do_sample=False))
    (c,) = generate_completions(lm.params, lm.config, lm.tokenizer, ["List:"], options)
    assert c.finish_reason in ("length", "eos") and len(c.token_ids) <= 5
    assert re.fullmatch(r"[a-z]+(,[a-z]+)*,?", c.text) or c.text == ""


def test_unconstrained_decoding_is_unchanged(lm):
    """No constraint: the stage is off and the sampler's output is the rules' output as before."""
    logits = np.random.default_rng(2).normal(size=(3, 50257)).astype(np.float32)
    o = SamplingOptions(temperature=0.8, top_k=50)
    assert o.constraint is None and not o.penalises_generated
    expected = logits
    for rule in RULES[1:]:
        if rule.on(o):
            expected = rule.apply(expected, o, None, None)
    np.testing.assert_array_equal(process_logits(logits, o), expected)


# ---- JSON schemas --------------------------------------------------------------------------------------

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 130},
    "email": {"type": "string", "pattern": r"^[a-z]+@[a-z]+\.(com|org)$"},
    "tags": {"type": "array", "items": {"enum": ["a", "b", 'c"d', None, 1.5]}, "minItems": 1, "maxItems": 3},
    "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 5},
                                                 "zip": {"type": "string", "pattern": r"\d{5}"}},
                "required": ["city"], "additionalProperties": False},
    "score": {"type": "number"}, "ok": {"type": "boolean"}, "nothing": {"type": "null"},
    "kind": {"anyOf": [{"const": "x"}, {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 3}]},
    "maybe": {"type": ["string", "null"], "maxLength": 2}},
    "required": ["name", "age", "tags", "address"], "additionalProperties": False}
HAND_WRITTEN = [PERSON,
                {"type": "array", "items": {"type": "integer", "minimum": -20, "maximum": 1005}, "maxItems": 4},
                {"type": "object", "properties": {"q": {"type": "string", "pattern": 'a"b\\\\c'}}, "required": ["q"]},
                {"enum": [{"a": [1, 2]}, "日本", True]},
                {"type": "object", "properties": {"x": {"type": "object"}, "y": {}}},
                {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"},
                                                  "c": {"type": "integer"}}},
                {"$defs": {"Address": {"properties": {"city": {"title": "City", "type": "string"},    # pydantic's
                                                      "zip": {"anyOf": [{"type": "string"}, {"type": "null"}],
                                                              "default": None, "title": "Zip"}},
                                       "required": ["city"], "title": "Address", "type": "object"}},
                 "properties": {"name": {"title": "Name", "type": "string"},
                                "home": {"$ref": "#/$defs/Address"},
                                "friends": {"items": {"$ref": "#/$defs/Address"}, "type": "array", "maxItems": 2}},
                 "required": ["name", "home", "friends"], "title": "Person", "type": "object"}]


@pytest.mark.parametrize("k", range(len(HAND_WRITTEN)))
def test_every_text_of_a_schema_is_valid_json_against_it(k):
    schema = HAND_WRITTEN[k]
    dfa = compile_tree(parse(schema_to_regex(schema)), what="the JSON schema")
    rng = np.random.default_rng(k)
    for _ in range(300):
        text = random_match(dfa, rng, end_p=0.5)
        jsonschema.validate(json.loads(text), schema)


def test_integer_ranges_are_exact():
    rng = np.random.default_rng(3)
    for _ in range(40):
        lo, hi = sorted(rng.integers(-2000, 2000, size=2).tolist())
        bounds = [(lo, hi), (lo, None), (None, hi)][int(rng.integers(0, 3))]
        dfa = compile_regex(integer_range(*bounds))
        for n in range(lo - 30, hi + 30, max(1, (hi - lo) // 200)):
            inside = (bounds[0] is None or n >= bounds[0]) and (bounds[1] is None or n <= bounds[1])
            assert dfa.matches(str(n)) == inside, (bounds, n)
        assert not dfa.matches("-0") and not dfa.matches("007")


@pytest.mark.parametrize("schema, keyword", [
    ({"type": "object", "properties": {"a": {"type": "string", "format": "email"}}}, "format"),
    ({"oneOf": [{"type": "string"}]}, "oneOf"), ({"$ref": "#/$defs/a"}, "$ref"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"), ({"type": "number", "minimum": 0.5}, "minimum"),
    ({"type": "object", "patternProperties": {}}, "patternProperties"), ({"not": {}}, "not"),
    ({"$defs": {"N": {"type": "array", "items": {"$ref": "#/$defs/N"}}}, "$ref": "#/$defs/N"}, "$ref"),
    ({"$ref": "https://example.com/s.json"}, "$ref")])
def test_unsupported_keywords_are_refused_by_name(schema, keyword, gpt2_tokenizer):
    with pytest.raises(NumgptError, match=re.escape(repr(keyword))) as e:
        build_constraint(gpt2_tokenizer, json_schema=schema)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("schema", [{"enum": []}, {"type": "integer", "minimum": 5, "maximum": 4},
                                    {"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]},
                                    {"type": "string", "minLength": 3, "maxLength": 2}])
def test_a_schema_no_text_satisfies_is_refused(schema, gpt2_tokenizer):
    with pytest.raises(NumgptError, match="no text satisfies"):
        build_constraint(gpt2_tokenizer, json_schema=schema)


def nested_arrays(depth: int, max_items: int | None) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema, **({} if max_items is None else {"maxItems": max_items})}
    return schema


@pytest.mark.parametrize("schema, message", [
    (nested_arrays(20, None), "the JSON schema is too large: at #/items/items"),     # its regex doubled a level
    (nested_arrays(300, 1), "nests objects, arrays and anyOf more than 32 deep"),
    ({"type": "integer", "minimum": 1e308}, "integer bounds are supported up to 1e30"),
    ({"type": "object", "additionalProperties": 5}, "additionalProperties at # must be true, false or a schema"),
    ({"const": float("inf")}, "const at # holds inf, which is not a JSON value"),
    ({"enum": [1, float("nan")]}, "enum at # holds nan")])
def test_a_schema_beyond_the_limits_is_refused_in_one_line(schema, message):
    with pytest.raises(NumgptError, match=re.escape(message)) as e:
        check_structured(json_schema=schema)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_nested_arrays_of_one_item_grow_linearly():
    """maxItems 1 writes the item once: 30 levels stay a small regex, and every match is valid."""
    schema = nested_arrays(30, 1)
    assert len(schema_to_regex(schema)) < 5_000
    dfa = check_structured(json_schema=schema)
    value = "[" * 30 + "7" + "]" * 30
    assert dfa.matches(value) and not dfa.matches("[" * 29 + "7" + "]" * 29)
    jsonschema.validate(json.loads(value), schema)


def test_a_ref_is_percent_decoded_as_a_uri_fragment():
    schema = {"$defs": {"a b": {"type": "integer"}}, "$ref": "#/$defs/a%20b"}
    assert check_structured(json_schema=schema).matches("12")


def test_a_schema_too_large_is_refused_in_one_line(gpt2_tokenizer):
    schema = {"type": "array", "items": {"type": "string", "maxLength": 50}, "maxItems": 50}
    with pytest.raises(NumgptError, match="the JSON schema is too large: its automaton passes 2000 states"):
        build_constraint(gpt2_tokenizer, json_schema=schema, max_states=2000)


def test_json_object_mode_makes_objects(gpt2_tokenizer):
    dfa = build_constraint(gpt2_tokenizer, json_object_mode=True).automaton.dfa
    rng = np.random.default_rng(4)
    for _ in range(200):
        assert isinstance(json.loads(random_match(dfa, rng, end_p=0.5)), dict)


# Schemas of the supported subset made by a hypothesis strategy written here (anyOf, enums of containers,
# patterns and lengths that the meta-schema test below does not draw).
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=4),
                         st.floats(allow_nan=False, allow_infinity=False, width=32))
SMALL = st.integers(0, 6)
SCALAR_SCHEMAS = st.one_of(
    st.fixed_dictionaries({"type": st.just("string")}, optional={"minLength": SMALL, "maxLength": SMALL}),
    st.fixed_dictionaries({"type": st.just("string"),
                           "pattern": st.sampled_from(["^[a-c]+$", "x", r"\\d\\d", '"', "^(ab|cd)*$", r"\\\\"])}),
    st.fixed_dictionaries({"type": st.just("integer")},
                          optional={"minimum": st.integers(-500, 500), "maximum": st.integers(-500, 500),
                                    "exclusiveMinimum": st.integers(-500, 500)}),
    st.fixed_dictionaries({"type": st.sampled_from(["number", "boolean", "null", ["null", "boolean"]])}),
    st.fixed_dictionaries({"enum": st.lists(JSON_SCALARS | st.lists(JSON_SCALARS, max_size=2), max_size=4)}),
    st.fixed_dictionaries({"const": JSON_SCALARS}))


def _containers(inner):
    arrays = st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                                   optional={"minItems": st.integers(0, 3), "maxItems": st.integers(0, 4)})
    objects = st.dictionaries(st.sampled_from(["a", "b", "c", "ab", 'q"']), inner, max_size=4).flatmap(
        lambda props: st.fixed_dictionaries({
            "type": st.just("object"), "properties": st.just(props),
            "required": st.lists(st.sampled_from(sorted(props)), unique=True) if props else st.just([])},
            optional={"additionalProperties": st.just(False)}))
    any_of = st.lists(inner, min_size=1, max_size=3).map(lambda options: {"anyOf": options})
    return st.one_of(arrays, objects, any_of)


SCHEMAS = st.recursive(SCALAR_SCHEMAS, _containers, max_leaves=6)


@given(SCHEMAS, st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_schemas_hypothesis_makes_give_only_valid_json(schema, seed):
    jsonschema.Draft202012Validator.check_schema(schema)
    try:
        dfa = compile_tree(parse(schema_to_regex(schema)), what="the JSON schema")
    except NumgptError as e:
        assert "no text satisfies" in str(e), (schema, e)        # e.g. an empty enum, maxLength < minLength
        with pytest.raises(jsonschema.ValidationError):           # null, for one, is not valid either
            jsonschema.validate(None, schema)
        return
    rng = np.random.default_rng(seed)
    for _ in range(20):
        text = random_match(dfa, rng, end_p=0.5)
        jsonschema.validate(json.loads(text), schema)


# Schemas made by hypothesis-jsonschema itself: its from_schema draws instances of META, a JSON Schema
# whose instances are schemas of the supported subset, two levels deep (it resolves no recursive $ref).
# Then (1) texts of the compiled language are valid against the drawn schema, and (2) instances that
# hypothesis-jsonschema draws from the drawn schema, written as the compiled language writes JSON
# (properties in schema order, no spaces), are in the language: nothing valid is refused.
def _meta_leaf() -> dict:
    small = {"type": "integer", "minimum": 0, "maximum": 6}
    bound = {"type": "integer", "minimum": -300, "maximum": 300}
    closed = {"additionalProperties": False}
    return {"anyOf": [
        {"type": "object", "properties": {"type": {"const": "string"}, "maxLength": small}, "required": ["type"],
         **closed},
        {"type": "object", "properties": {"type": {"const": "integer"}, "minimum": bound, "maximum": bound},
         "required": ["type"], **closed},
        {"type": "object", "properties": {"type": {"enum": ["number", "boolean", "null"]}}, "required": ["type"],
         **closed},
        {"type": "object", "properties": {"enum": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
            "anyOf": [{"type": "integer", "minimum": -99, "maximum": 99}, {"type": "boolean"},
                      {"type": "string", "pattern": "^[a-z]{0,4}$"}]}}}, "required": ["enum"], **closed}]}


def _meta_level(inner: dict) -> dict:
    names = {"type": "string", "pattern": "^[a-d]{1,2}$"}
    return {"anyOf": [
        inner,
        {"type": "object", "properties": {"type": {"const": "array"}, "items": inner,
                                          "maxItems": {"type": "integer", "minimum": 0, "maximum": 3}},
         "required": ["type", "items"], "additionalProperties": False},
        {"type": "object", "properties": {"type": {"const": "object"}, "additionalProperties": {"const": False},
                                          "properties": {"type": "object", "maxProperties": 3,
                                                         "propertyNames": names, "additionalProperties": inner}},
         "required": ["type", "properties", "additionalProperties"], "additionalProperties": False}]}


META = _meta_level(_meta_level(_meta_leaf()))


def _with_required(schema):
    """Every object schema's properties all required (so an instance's keys are known), recursively."""
    if isinstance(schema, dict):
        schema = {k: _with_required(v) for k, v in schema.items()}
        if schema.get("type") == "object":
            schema["required"] = list(schema["properties"])
    elif isinstance(schema, list):
        schema = [_with_required(v) for v in schema]
    return schema


def _written(value, schema) -> str:
    """value written as the compiled language writes JSON: an object's properties in the schema's order."""
    if isinstance(value, dict):
        props = schema["properties"]
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _written(value[k], props[k]) for k in props) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_written(v, schema.get("items", {})) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def test_schemas_hypothesis_jsonschema_makes_give_valid_json_and_accept_valid_json():
    from_schema = reference("hypothesis_jsonschema").from_schema

    @given(from_schema(META).map(_with_required), st.data())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def check(schema, data):
        jsonschema.Draft202012Validator.check_schema(schema)
        try:
            dfa = compile_tree(parse(schema_to_regex(schema)), what="the JSON schema")
        except NumgptError as e:
            assert "no text satisfies" in str(e), (schema, e)
            return
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        for _ in range(10):
            jsonschema.validate(json.loads(random_match(dfa, rng, end_p=0.5)), schema)
        for _ in range(5):
            value = data.draw(from_schema(schema))
            text = _written(value, schema)
            state = 0
            for byte in text.encode():
                state = int(dfa.table[state, byte]) if state >= 0 else -1
            assert state >= 0 and dfa.accepting[state], (schema, text)

    check()


BOUNDED_SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 99},
                                      "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2},
                                      "ok": {"type": "boolean"}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string", "pattern": r"^[A-Z]\d$"}},
                                "required": ["id"]}, "minItems": 1, "maxItems": 3}]


@pytest.mark.parametrize("k", range(len(BOUNDED_SCHEMAS)))
def test_a_model_following_a_schema_writes_valid_json(k, lm):
    schema = BOUNDED_SCHEMAS[k]
    constraint = build_constraint(lm.tokenizer, json_schema=schema)
    for seed, extra in enumerate(SETTINGS[:3]):
        options = GenerationOptions(max_new_tokens=120, seed=seed, num_return_sequences=2,
                                    sampling=SamplingOptions(constraint=constraint, **extra))
        for c in generate_completions(lm.params, lm.config, lm.tokenizer, ["JSON:"], options):
            assert c.finish_reason == "eos", c
            jsonschema.validate(json.loads(c.text), schema)


# ---- the LanguageModel API and the command line ----------------------------------------------------------


def test_the_language_model_takes_regex_json_schema_and_json_object(lm):
    for seed in range(3):
        assert re.fullmatch(r"\d{2}:\d{2}", lm.generate("Time: ", regex=r"\d{2}:\d{2}", seed=seed))
    schema = BOUNDED_SCHEMAS[0]
    texts = lm.generate_batch(["A:", "B:"], json_schema=schema, max_new_tokens=120, seed=1, num_return_sequences=2)
    for text in sum(texts, []):
        jsonschema.validate(json.loads(text), schema)
    (c,) = lm.completions("C:", json_object=True, max_new_tokens=150, seed=0, temperature=0.5)
    assert c.finish_reason == "length" or isinstance(json.loads(c.text), dict)
    assert "".join(lm.stream("Time: ", regex=r"\d{2}:\d{2}", seed=0)) == lm.generate("Time: ", regex=r"\d{2}:\d{2}",
                                                                                     seed=0)
    with pytest.raises(NumgptError, match="missing '\\)'"):
        lm.generate("x", regex="(a")
    with pytest.raises(NumgptError, match="exactly one of regex, json_schema, json_object"):
        lm.generate("x", regex="a", json_object=True)
    with pytest.raises(NumgptError, match="speculative decoding cannot be combined with a constraint"):
        lm.generate("x", regex="a+", speculative="ngram")
    assert lm.generate("x", regex=None, json_schema=None, json_object=False, max_new_tokens=3, seed=0) == \
        lm.generate("x", max_new_tokens=3, seed=0)                          # None / False: not given
    with pytest.raises(NumgptError, match="json_object must be True or False, got 'yes'"):
        lm.generate("x", json_object="yes")
    with pytest.raises(NumgptError, match="give constraint= or regex=, not both"):
        lm.generate("x", constraint=lm.constraint(regex="b"), regex="a")
    with pytest.raises(NumgptError, match="stop strings cannot be combined with a regex or a JSON schema"):
        lm.generate("x", regex="[0-9]{6}", stop=["3"])                  # it cut "12" + "3..." to "12", a 'stop'


def test_a_match_made_by_the_last_allowed_token_ends_as_eos(lm):
    """Six digits are whole after the sixth, and nothing can follow: the text ends there as "eos" even when
    that token is the last max_new_tokens allows (it was reported as "length", which tells a client the
    text may be cut); one token fewer is cut short, "length"."""
    n = len(lm.completions("Code:", regex="[0-9]{6}", max_new_tokens=10, seed=1)[0].token_ids)
    assert n >= 2                                           # GPT-2's tokens hold at most 3 digits
    (short,) = lm.completions("Code:", regex="[0-9]{6}", max_new_tokens=n - 1, seed=1)
    assert short.finish_reason == "length" and not re.fullmatch("[0-9]{6}", short.text)
    (c,) = lm.completions("Code:", regex="[0-9]{6}", max_new_tokens=n, seed=1)
    assert c.finish_reason == "eos" and re.fullmatch("[0-9]{6}", c.text)


def test_ignore_eos_ends_where_nothing_can_follow(lm):
    """Without the end token the text ends where it is whole and nothing can extend it."""
    (c,) = lm.completions("x", regex=r"(ab|cd){2}", stop_at_eos=False, seed=0)
    assert c.finish_reason == "eos" and re.fullmatch(r"(ab|cd){2}", c.text)


def test_generate_flags(capsys, tmp_path, hf_gpt2_vocab_ckpt):
    from numgpt.cli import main
    model = str(hf_gpt2_vocab_ckpt.folder)
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(BOUNDED_SCHEMAS[1]))
    assert main(["generate", "--model", model, "--json-schema", str(schema_file), "--seed", "2", "-q", "Items:"]) == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), BOUNDED_SCHEMAS[1])
    assert main(["generate", "--model", model, "--regex", r"(yes|no)\.", "--json", "--num-samples", "2", "x"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert all(re.fullmatch(r"(yes|no)\.", c["text"]) and c["finish_reason"] == "eos" for c in out)
    (tmp_path / "bad.json").write_text('{"type": "string", "format": "date"}')
    for argv, message in [(["--regex", "a{2"], None), (["--regex", "a{3,1}"], "maximum below its minimum"),
                          (["--json-schema", str(tmp_path / "bad.json")], "keyword 'format'"),
                          (["--json-schema", str(tmp_path / "none.json")], "cannot read --json-schema"),
                          (["--regex", "a", "--speculative", "ngram"], "--speculative cannot be combined with --regex")]:
        code = main(["generate", "--model", model, *argv, "x"])
        err = capsys.readouterr().err
        if message is None:                 # 'a{2' is the literal text "a{2", as in Python's re
            assert code == 0
            continue
        assert code != 0 and message in err and err.count("\n") == 1, (argv, err)
