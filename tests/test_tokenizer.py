"""numgpt.tokenizer against references no one here wrote: tiktoken's gpt2 encoding and transformers'
GPT2TokenizerFast, both built from the official files (fixtures in conftest.py). Known ids, a varied
corpus, tinyshakespeare, every single token, special tokens, decoding, streaming, pathological inputs,
the fast paths against their plain twins, and loading/saving with its errors."""

import json
import random
import shutil
import weakref
from pathlib import Path

import pytest
import regex

import numgpt
from numgpt import NumgptError, Tokenizer
from numgpt.tokenizer.train import merge_pair
from numgpt.tokenizer.bpe import (ENDOFTEXT, GPT2_EOT_ID, GPT2_SHA256, GPT2_SPLIT_PATTERN, bytes_to_unicode,
                                  pretokenize, show_bytes)

GPT2_FILES = Path(numgpt.__file__).parent / "assets" / "gpt2"

# ---- known ids ------------------------------------------------------------------------------------------

KNOWN = {
    "PostgreSQL is great": [6307, 47701, 318, 1049],
    "Hello world": [15496, 995],
    "Mississippilessly": [17140, 747, 3974, 30608, 306],  # Miss|iss|ipp|iless|ly, as in the GPT-2-in-SQL article
}


@pytest.mark.parametrize("text", KNOWN)
def test_known_ids(gpt2_tok, tiktoken_gpt2, text):
    assert gpt2_tok.encode(text) == KNOWN[text] == tiktoken_gpt2.encode(text)
    assert gpt2_tok.decode(KNOWN[text]) == text


def test_attributes(gpt2_tok):
    assert gpt2_tok.vocab_size == 50257
    assert gpt2_tok.eot_id == GPT2_EOT_ID == 50256
    assert gpt2_tok.special_tokens == {ENDOFTEXT: 50256}
    assert gpt2_tok.id_to_token(995) == "Ġworld" and gpt2_tok.token_to_id("Ġworld") == 995
    assert gpt2_tok.token_bytes(995) == b" world"
    assert gpt2_tok.id_to_token(50256) == ENDOFTEXT
    assert show_bytes(b" world") == "' world'" and show_bytes(b"\xe4\xbd") == "b'\\xe4\\xbd'"


def test_bytes_to_unicode_is_gpt2s_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A" and table[0] == "Ā"


# ---- the same ids as the references ---------------------------------------------------------------------

def test_corpus_matches_tiktoken(gpt2_tok, tiktoken_gpt2, tokenizer_corpus):
    for name, text in tokenizer_corpus.items():
        ids = gpt2_tok.encode(text)
        assert ids == tiktoken_gpt2.encode_ordinary(text), name
        assert gpt2_tok.decode(ids) == text, name
    whole = "".join(tokenizer_corpus.values())
    assert gpt2_tok.encode(whole) == tiktoken_gpt2.encode_ordinary(whole)


def test_corpus_matches_transformers(gpt2_tok, hf_gpt2_tok, tokenizer_corpus):
    for name, text in tokenizer_corpus.items():
        assert gpt2_tok.encode(text) == hf_gpt2_tok.encode(text), name


def test_shakespeare_matches_both_references(gpt2_tok, tiktoken_gpt2, hf_gpt2_tok, shakespeare):
    ids = gpt2_tok.encode(shakespeare)
    assert ids == tiktoken_gpt2.encode_ordinary(shakespeare)
    assert ids == hf_gpt2_tok.encode(shakespeare)
    assert gpt2_tok.decode(ids) == shakespeare


def test_every_token_alone(gpt2_tok, tiktoken_gpt2):
    """The strongest true statement, checked against tiktoken: every token's bytes are tiktoken's; the
    49912 tokens that are whole UTF-8 encode back to exactly themselves; the other 344 are parts of
    multi-byte characters, which decode to U+FFFD and then encode as tiktoken does."""
    partial = 0
    for i in range(GPT2_EOT_ID):
        token = gpt2_tok.decode_bytes([i])
        assert token == gpt2_tok.token_bytes(i) == tiktoken_gpt2.decode_single_token_bytes(i)
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            partial += 1
            text = gpt2_tok.decode([i])
            assert "\ufffd" in text
            assert gpt2_tok.encode(text) == tiktoken_gpt2.encode_ordinary(text)
            continue
        assert gpt2_tok.encode(text) == [i], (i, text)
        assert tiktoken_gpt2.encode_ordinary(text) == [i], (i, text)
        assert _plain_bpe(gpt2_tok, text) == [i], (i, text)  # what lets `_trust_whole_tokens` skip BPE
    assert partial == 344
    assert gpt2_tok.encode(gpt2_tok.decode([GPT2_EOT_ID]), allowed_special="all") == [GPT2_EOT_ID]


def _plain_bpe(tok, piece):
    """The reference merge loop `_merge_steps` run to the end on one piece."""
    symbols = [tok._byte_ids[b] for b in piece.encode()]
    for _, _, symbols in tok._merge_steps(symbols):
        pass
    return symbols


def test_a_token_out_of_reach_of_its_own_text_is_not_trusted():
    """'abc' is a token (made by (ab, c)), but BPE on 'abc' merges (b, c) first and (a, bc) is no merge:
    the text 'abc' encodes to two tokens. Only `gpt2()` trusts whole tokens; a vocabulary loaded or built
    otherwise runs BPE on every piece."""
    vocab = {**{c: i for i, c in enumerate(bytes_to_unicode().values())}, "bc": 256, "ab": 257, "abc": 258}
    tok = Tokenizer(vocab, [("b", "c"), ("a", "b"), ("ab", "c")])
    assert tok.encode("abc") == _plain_bpe(tok, "abc") == [ord("a"), 256]
    assert tok.encode("ab") == [257]


def test_byte_ids_above_255_take_the_plain_byte_lookup():
    """Byte tokens need not have ids 0..255: then `_byte_symbols` cannot use bytes.translate."""
    shift = 1000
    vocab = {c: shift + i for i, c in enumerate(bytes_to_unicode().values())}
    vocab.update({"ab": 7, "Ġab": 8})
    tok = Tokenizer(vocab, [("a", "b"), ("Ġ", "ab")])
    assert tok._byte_table is None
    assert tok.encode("ab abc\n") == [7, 8, shift + ord("c"), shift + ord("\n")]


# ---- special tokens -------------------------------------------------------------------------------------

def test_special_token_refused_with_one_line(gpt2_tok, tiktoken_gpt2):
    text = "Hello world <|endoftext|> more"
    with pytest.raises(NumgptError) as e:
        gpt2_tok.encode(text)
    assert str(e.value) == (
        "text contains the special token '<|endoftext|>' at position 12; pass "
        "allowed_special={'<|endoftext|>'} to encode it as id 50256, "
        "or disallowed_special=() to encode it as plain text")
    with pytest.raises(ValueError):  # the reference refuses the same text
        tiktoken_gpt2.encode(text)


@pytest.mark.parametrize("text", ["a<|endoftext|>b", "<|endoftext|>", "x <|endoftext|><|endoftext|>\n y",
                                  " <|endoftext|> <|endoftext|", "<|endoftext|>'s"])
def test_special_token_options_match_tiktoken(gpt2_tok, tiktoken_gpt2, text):
    for allowed in ("all", {ENDOFTEXT}):
        assert gpt2_tok.encode(text, allowed_special=allowed) == tiktoken_gpt2.encode(text, allowed_special=allowed)
    assert gpt2_tok.encode(text, disallowed_special=()) == tiktoken_gpt2.encode(text, disallowed_special=())
    assert gpt2_tok.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2_tok.decode(gpt2_tok.encode(text, allowed_special="all")) == text


def test_special_token_option_mistakes(gpt2_tok):
    with pytest.raises(NumgptError, match="not the string"):
        gpt2_tok.encode("x", allowed_special=ENDOFTEXT)  # a str, not a set: a classic slip
    with pytest.raises(NumgptError, match="not a special token"):
        gpt2_tok.encode("x", allowed_special={"<|im_start|>"})


def test_several_special_tokens_longest_first(tmp_path):
    """Specials that contain one another: the longest match wins, when allowed and when refused."""
    tok = Tokenizer.load(_copy_gpt2_as_hf(tmp_path, extra_specials={"<|end|>": 50257, "<|end|><|end|>": 50258}))
    assert tok.encode("a<|end|><|end|>b<|end|>", allowed_special="all") == [64, 50258, 65, 50257]
    with pytest.raises(NumgptError, match="'<|end|><|end|>' at position 1"):
        tok.encode("a<|end|><|end|>")
    assert tok.encode("a<|end|>", allowed_special={"<|end|>"}) == [64, 50257]
    with pytest.raises(NumgptError, match="<|endoftext|>"):  # allowing one still refuses the others
        tok.encode("<|end|><|endoftext|>", allowed_special={"<|end|>"})


# ---- decoding -------------------------------------------------------------------------------------------

def test_decode_invalid_utf8_is_replaced_not_raised(gpt2_tok):
    ids = gpt2_tok.encode("你好")
    assert len(ids) == 4  # each character is two tokens that split its UTF-8 bytes
    assert gpt2_tok.decode_bytes(ids[:1]) == "你".encode()[:2]
    assert gpt2_tok.decode(ids[:1]) == "\ufffd"
    assert gpt2_tok.decode(ids[1:]) == "\ufffd好"
    with pytest.raises(UnicodeDecodeError):  # only when asked for
        gpt2_tok.decode(ids[:1], errors="strict")


def test_decode_accepts_numpy_ids(gpt2_tok):
    np = pytest.importorskip("numpy")
    assert gpt2_tok.decode(np.array([15496, 995], dtype=np.int32)) == "Hello world"


@pytest.mark.parametrize("bad", [[50257], [-1], [10**9]])
def test_decode_unknown_id_is_a_numgpt_error(gpt2_tok, bad):
    with pytest.raises(NumgptError, match="not in the vocabulary"):
        gpt2_tok.decode(bad)
    with pytest.raises(NumgptError):
        gpt2_tok.stream_decoder().push(bad[0])


def test_stream_decoder_never_emits_half_a_character(gpt2_tok):
    ids = gpt2_tok.encode("你好 ok")  # [你: 2 tokens][好: 2 tokens][ ok]
    stream = gpt2_tok.stream_decoder()
    assert [stream.push(i) for i in ids] == ["", "你", "", "好", " ok"]
    assert stream.flush() == ""
    stream.push(ids[0])
    assert stream.flush() == "\ufffd"  # an unfinished character at the end is replaced
    assert stream.push(ids[2]) + stream.push(ids[3]) == "好"  # and the stream is usable again


def test_lone_surrogates_become_replacement_characters_like_tiktoken(gpt2_tok, tiktoken_gpt2):
    for text in ["a\ud800b", "\udfff", "x\ud83d\ude00y"]:
        assert gpt2_tok.encode(text) == tiktoken_gpt2.encode(text)


# ---- pathological inputs (tiktoken once went quadratic and overflowed its stack on these) ----------------

@pytest.mark.parametrize("make", [
    lambda rng: "a" * 1_000_000,
    lambda rng: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100_000)),
    lambda rng: "".join(rng.choice("0123456789") for _ in range(100_000)),
    lambda rng: "\n" * 300_000 + " " * 300_000 + "x",
    lambda rng: "!@" * 50_000,
], ids=["1M_a", "100kB_word", "100kB_number", "600k_whitespace", "100kB_punctuation"])
def test_pathological_inputs_finish_and_match(gpt2_tok, tiktoken_gpt2, make):
    text = make(random.Random(0))
    assert gpt2_tok.encode(text) == tiktoken_gpt2.encode_ordinary(text)


# ---- fast paths against their plain twins ---------------------------------------------------------------

def test_fast_merges_equal_the_plain_loop_and_gpt2s_original(gpt2_tok, tokenizer_corpus):
    """Both fast twins against `_merge_steps` (one merge at a time), and that against the loop of GPT-2's
    encoder.py (all occurrences of the best pair at once), on pieces of all lengths."""
    rng = random.Random(1)
    pieces = [p for text in tokenizer_corpus.values() for p in pretokenize(text) if len(p.encode()) <= 300]
    pieces += ["".join(rng.choice("ab ") for _ in range(rng.randrange(2, 300))) for _ in range(200)]
    for piece in pieces:
        symbols = [gpt2_tok._byte_ids[b] for b in piece.encode()]
        plain = symbols
        for _, _, plain in gpt2_tok._merge_steps(symbols):
            pass
        assert gpt2_tok._merge_lowest_first(list(symbols)) == plain, piece
        assert gpt2_tok._merge_by_rank_buckets(list(symbols)) == plain, piece
        assert gpt2_original_bpe(gpt2_tok, symbols) == plain, piece


def gpt2_original_bpe(tok, symbols):
    """openai/gpt-2 src/encoder.py's loop over ids: merge every occurrence of the lowest-rank pair."""
    while len(symbols) > 1:
        pair = min(zip(symbols, symbols[1:]), key=lambda p: tok._ranks.get(p, float("inf")))
        if pair not in tok._ranks:
            break
        symbols = merge_pair(symbols, pair, tok._merged[tok._ranks[pair]])
    return symbols


def test_buckets_let_a_lower_rank_go_first():
    """A merge list where a merge creates a pair ranked below itself ('abc' is spelled by two merges, the
    second ranked after ('abc', 'a')): one merge at a time, as tiktoken and Hugging Face do, the lower
    rank goes first; the bucketed twin must follow. GPT-2's all-occurrences loop differs here."""
    vocab = {**{c: i for i, c in enumerate(bytes_to_unicode().values())},
             "bc": 256, "ab": 257, "abc": 258, "abca": 259}
    merges = [("b", "c"), ("a", "b"), ("ab", "c"), ("abc", "a"), ("a", "bc")]
    tok = Tokenizer(vocab, merges)
    assert tok.encode("abcabc") == [259, 256]  # a bc a bc -> abc a bc -> abca bc
    assert gpt2_original_bpe(tok, list(b"abcabc")) == [258, 258]  # a bc a bc -> abc abc
    for text in ["abcabc", "abc" * 50, "abcab" * 30, "xabcabca" * 20]:
        symbols = [tok._byte_ids[b] for b in text.encode()]
        plain = symbols
        for _, _, plain in tok._merge_steps(symbols):
            pass
        assert tok._merge_by_rank_buckets(list(symbols)) == tok._merge_lowest_first(list(symbols)) == plain


def test_ascii_split_equals_regex_on_all_ascii_pairs_and_corpus(tokenizer_corpus):
    """pretokenize takes a stdlib-re pattern for ASCII text; it must cut exactly like the `regex` one
    (tinyshakespeare, all ASCII, is compared with tiktoken above)."""
    reference = regex.compile(GPT2_SPLIT_PATTERN)
    chars = [chr(c) for c in range(128)]
    pairs = "".join(a + b + a for a in chars for b in chars)  # every adjacent pair, both orders
    for text in [pairs, *(t for t in tokenizer_corpus.values() if t.isascii())]:
        assert pretokenize(text) == reference.findall(text)


def test_piece_cache_is_bounded_and_transparent(tmp_path, gpt2_tok, tokenizer_corpus):
    small = Tokenizer.load(GPT2_FILES, sha256=GPT2_SHA256)
    small._cache._size = 8  # noqa: SLF001 (our own cache; a tiny bound makes it clear often)
    for text in tokenizer_corpus.values():
        assert small.encode(text) == gpt2_tok.encode(text)
        assert len(small._cache) <= 8


def test_a_discarded_tokenizer_is_freed_at_once():
    """No reference cycle through the piece cache: dropping the last reference frees the Tokenizer
    without waiting for the cyclic garbage collector (whose pass would land inside a later call)."""
    tok = Tokenizer.gpt2()
    tok.encode("Hello world")
    alive = weakref.ref(tok)
    del tok
    assert alive() is None


# ---- explain --------------------------------------------------------------------------------------------

def test_explain_mississippilessly(gpt2_tok):
    (trace,) = gpt2_tok.explain("Mississippilessly")
    assert trace.ids == tuple(KNOWN["Mississippilessly"])
    assert [b"".join(s.pair) for s in trace.steps][:4] == [b"is", b"is", b"es", b"ly"]  # one merge per step
    assert trace.steps[-1].tokens == (b"Miss", b"iss", b"ipp", b"iless", b"ly")
    ranks = [s.rank for s in trace.steps]
    assert ranks == sorted(ranks) and ranks[0] == 15  # 'i s' is GPT-2's merge 15
    assert trace.start == tuple(bytes([b]) for b in b"Mississippilessly")


def test_explain_agrees_with_encode(gpt2_tok, tokenizer_corpus):
    text = tokenizer_corpus["prose"] + tokenizer_corpus["emoji"] + "<|endoftext|>" + tokenizer_corpus["code_c"]
    traces = gpt2_tok.explain(text, allowed_special="all")
    assert [i for t in traces for i in t.ids] == gpt2_tok.encode(text, allowed_special="all")
    for trace in traces:
        tokens = trace.steps[-1].tokens if trace.steps else trace.start
        assert b"".join(tokens) == trace.piece.encode() == gpt2_tok.decode_bytes(trace.ids)
    with pytest.raises(NumgptError, match="special token"):
        gpt2_tok.explain(text)


# ---- loading and saving ---------------------------------------------------------------------------------

def _copy_gpt2_as_hf(folder, extra_specials=None):
    """GPT-2's files under the Hugging Face names, with extra special tokens in tokenizer_config.json."""
    shutil.copy(GPT2_FILES / "encoder.json", folder / "vocab.json")
    shutil.copy(GPT2_FILES / "vocab.bpe", folder / "merges.txt")
    if extra_specials:
        added = {str(i): {"content": s, "special": True} for s, i in extra_specials.items()}
        (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))
    return folder


def test_load_openai_and_hf_folders(tmp_path, gpt2_tok, tokenizer_corpus):
    openai = tmp_path / "openai"
    shutil.copytree(GPT2_FILES, openai)
    hf = _copy_gpt2_as_hf(tmp_path)
    text = "".join(tokenizer_corpus.values())
    for folder in (openai, hf):
        tok = Tokenizer.load(folder)
        assert tok.vocab_size == 50257 and tok.eot_id == 50256
        assert tok.encode(text) == gpt2_tok.encode(text)


def test_save_then_transformers_and_numgpt_load_it(tmp_path, gpt2_tok, tokenizer_corpus):
    transformers = pytest.importorskip("transformers")
    gpt2_tok.save(tmp_path)
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == json.loads(
        (GPT2_FILES / "encoder.json").read_text(encoding="utf-8"))
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8") == (GPT2_FILES / "vocab.bpe").read_text(encoding="utf-8")
    hf = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)
    assert len(hf) == 50257 and hf.eos_token == ENDOFTEXT
    again = Tokenizer.load(tmp_path)
    assert again.special_tokens == gpt2_tok.special_tokens
    for text in [*tokenizer_corpus.values(), "a<|endoftext|>b"]:
        ids = gpt2_tok.encode(text, allowed_special="all")
        assert ids == hf.encode(text) == again.encode(text, allowed_special="all")


def test_special_tokens_from_hf_config_files(tmp_path):
    folder = _copy_gpt2_as_hf(tmp_path, extra_specials={"<|im_start|>": 50257})
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<pad>"}}))
    (folder / "added_tokens.json").write_text(json.dumps({"<|im_end|>": 50258}))
    tok = Tokenizer.load(folder)
    assert tok.special_tokens == {ENDOFTEXT: 50256, "<|im_start|>": 50257, "<|im_end|>": 50258, "<pad>": 50259}
    assert tok.vocab_size == 50260
    assert tok.encode("<|im_start|>hi<pad>", allowed_special="all") == [50257, 5303, 50259]


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_builtin_sha256_mismatch_is_refused(tmp_path):
    folder = tmp_path / "gpt2"
    shutil.copytree(GPT2_FILES, folder)
    with open(folder / "vocab.bpe", "a", encoding="utf-8") as f:
        f.write("a b\n")
    with pytest.raises(NumgptError) as e:
        Tokenizer.load(folder, sha256=GPT2_SHA256)
    assert "vocab.bpe: sha256 is" in _one_line(e) and GPT2_SHA256["vocab.bpe"] in str(e.value)


@pytest.mark.parametrize("damage, expected", [
    (lambda f: (f / "vocab.json").write_text("{not json"), "vocab.json: not valid JSON"),
    (lambda f: (f / "vocab.json").write_text("[1, 2]"), "vocab.json: expected a JSON object"),
    (lambda f: (f / "vocab.json").write_bytes(b"\xff\xfe{}"), "vocab.json: not UTF-8"),
    (lambda f: (f / "merges.txt").unlink(), "merges.txt: missing"),
    (lambda f: (f / "vocab.json").unlink(), "vocab.json: missing"),
    (lambda f: _append(f / "merges.txt", "Ġt zzzqqq\n"), "merges.txt: merge 50001 (Ġt zzzqqq) needs the token 'zzzqqq'"),
    (lambda f: _append(f / "merges.txt", "one two three\n"), "merges.txt: line 50002: expected two tokens"),
    (lambda f: _edit_vocab(f, lambda v: v.pop("Ā")), "vocab.json: no token for byte 0x00"),
    (lambda f: _edit_vocab(f, lambda v: v.update(extra=0)), "share id 0"),
    (lambda f: _edit_vocab(f, lambda v: v.update(extra="7")), "ids must be integers"),
    (lambda f: (f / "tokenizer_config.json").write_text("{,}"), "tokenizer_config.json: not valid JSON"),
    # an empty or cut-short merges.txt spelled every text in single bytes without a word
    (lambda f: (f / "merges.txt").write_text("#version: 0.2\n"), "50,000 of the 50,257 tokens"),
    (lambda f: (f / "merges.txt").write_text(""), "made by none of its 0 merges"),
    (lambda f: _keep_lines(f / "merges.txt", 40_000), "10,001 of the 50,257 tokens"),
    (lambda f: _keep_lines(f / "merges.txt", 40_000), "none of its 39,999 merges"),
])
def test_broken_vocabulary_files_give_one_line_errors(tmp_path, damage, expected):
    folder = _copy_gpt2_as_hf(tmp_path)
    damage(folder)
    with pytest.raises(NumgptError) as e:
        Tokenizer.load(folder)
    assert expected in _one_line(e)
    assert str(folder) in str(e.value)  # names the file (or the folder)


def test_not_a_tokenizer_folder(tmp_path):
    with pytest.raises(NumgptError, match="not a tokenizer folder"):
        Tokenizer.load(tmp_path)
    with pytest.raises(NumgptError, match="no such tokenizer folder"):
        Tokenizer.load(tmp_path / "absent")


def _keep_lines(path, n):
    lines = path.read_text(encoding="utf-8").split("\n")
    path.write_text("\n".join(lines[:n]), encoding="utf-8")


def _append(path, text):
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _edit_vocab(folder, edit):
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    edit(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
