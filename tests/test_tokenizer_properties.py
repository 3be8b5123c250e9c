"""Property tests (hypothesis) of the tokenizer: round trips on arbitrary text and bytes, the streaming
decoder against decode(), ids against tiktoken on generated text, and the fast paths (ASCII split, safe
cuts of the trainer's file reader) against the plain definitions."""

import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numgpt.tokenizer.train import safe_cut
from numgpt.tokenizer.bpe import GPT2_SPLIT_PATTERN, bytes_to_unicode, pretokenize

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GPT2_SPLIT = regex.compile(GPT2_SPLIT_PATTERN)
BYTE_SYMBOLS = bytes_to_unicode()

# Text that stresses pre-tokenization: whitespace runs, apostrophes, letters, digits, punctuation,
# multi-byte characters, next to one another.
tricky_text = st.text(alphabet=st.sampled_from(list(" \t\n\r\x0b\x0c\x85\xa0\u3000'’sStdlmrev0129aZ!?.-_é你😀\u0301")))
any_text = st.text()  # all of Unicode but surrogates (hypothesis' default)


@SETTINGS
@given(st.one_of(any_text, tricky_text))
def test_decode_encode_round_trip(gpt2_tok, text):
    assert gpt2_tok.decode(gpt2_tok.encode(text, disallowed_special=())) == text


@SETTINGS
@given(st.one_of(any_text, tricky_text))
def test_ids_match_tiktoken(gpt2_tok, tiktoken_gpt2, text):
    assert gpt2_tok.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


@SETTINGS
@given(st.binary())
def test_bytes_derived_text_round_trips_to_its_bytes(gpt2_tok, data):
    text = data.decode("utf-8", errors="replace")
    assert gpt2_tok.decode_bytes(gpt2_tok.encode_ordinary(text)) == text.encode("utf-8")


@SETTINGS
@given(st.binary())
def test_byte_tokens_decode_to_exactly_their_bytes(gpt2_tok, data):
    ids = [gpt2_tok.token_to_id(BYTE_SYMBOLS[b]) for b in data]
    assert gpt2_tok.decode_bytes(ids) == data
    assert _streamed(gpt2_tok, ids) == gpt2_tok.decode(ids) == data.decode("utf-8", errors="replace")


@SETTINGS
@given(st.one_of(any_text, tricky_text))
def test_stream_decoder_concatenates_to_decode(gpt2_tok, text):
    ids = gpt2_tok.encode_ordinary(text)
    assert _streamed(gpt2_tok, ids) == gpt2_tok.decode(ids) == text


@SETTINGS
@given(st.lists(st.integers(min_value=0, max_value=50256), max_size=40))
def test_stream_decoder_on_any_ids(gpt2_tok, ids):
    """Random ids cut multi-byte characters anywhere (and leave some unfinished): still the same text."""
    assert _streamed(gpt2_tok, ids) == gpt2_tok.decode(ids)


def _streamed(tok, ids):
    stream = tok.stream_decoder()
    return "".join(stream.push(i) for i in ids) + stream.flush()


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_split_equals_the_regex_pattern(text):
    assert pretokenize(text) == GPT2_SPLIT.findall(text)


@settings(max_examples=500, deadline=None)
@given(tricky_text)
def test_safe_cut_keeps_the_pieces(text):
    cut = safe_cut(text)
    assert pretokenize(text[:cut]) + pretokenize(text[cut:]) == pretokenize(text)
