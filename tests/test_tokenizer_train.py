"""numgpt.tokenizer.train: the incremental trainer against a plain recount-everything twin, the tie-break rule,
special tokens and vocabulary sizes, files, and the saved folder against transformers' GPT2TokenizerFast."""

import random
from collections import Counter

import pytest

from numgpt import NumgptError, Tokenizer, train_bpe
from numgpt.tokenizer import train as bpe_train
from numgpt.tokenizer.train import count_words, learn_merges, merge_pair
from numgpt.tokenizer import ENDOFTEXT


def plain_merges(word_counts, wanted, min_frequency, split_digits=False):
    """The obvious BPE trainer: recount every pair of every word before each merge; same rules."""
    words = {tuple(w.encode()): c for w, c in word_counts.items()}
    token_bytes = [bytes([b]) for b in range(256)]
    merges, done = [], set()
    while len(token_bytes) < 256 + wanted:
        counts = Counter()
        for word, c in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += c
        candidates = [(-c, token_bytes[a], token_bytes[b], (a, b)) for (a, b), c in counts.items()
                      if (a, b) not in done
                      and not (split_digits and any(ch in b"0123456789" for ch in token_bytes[a] + token_bytes[b]))]
        if not candidates or -min(candidates)[0] < min_frequency:
            break
        _, left, right, pair = min(candidates)
        new_id = token_bytes.index(left + right) if left + right in token_bytes else len(token_bytes)
        if new_id == len(token_bytes):
            token_bytes.append(left + right)
        merges.append((pair, new_id))
        done.add(pair)
        words = {tuple(merge_pair(list(w), pair, new_id)): c for w, c in words.items()}
    return token_bytes, merges


@pytest.fixture(scope="module")
def varied_text(tokenizer_corpus):
    """~40 kB that needs no shared data: the test corpus' short snippets, then random sentences of their
    words (so that pair counts spread out)."""
    short = "".join(v for k, v in tokenizer_corpus.items() if not k.startswith("long"))
    words = short.split(" ")
    rng = random.Random(0)
    return short + " ".join(rng.choice(words) for _ in range(4000))


def test_incremental_trainer_equals_the_plain_one(varied_text):
    word_counts = count_words([varied_text])
    for wanted, min_frequency in [(250, 2), (60, 1)]:
        token_bytes, merges = learn_merges(word_counts, wanted, min_frequency)
        assert (token_bytes, merges) == plain_merges(word_counts, wanted, min_frequency)
        assert len(token_bytes) == 256 + wanted


def test_tie_break_highest_count_then_smallest_byte_pair():
    # 'cd' occurs twice, every other pair once: it wins; then the ties go to the smallest bytes: ' ' < 'a'.
    tok = train_bpe(["cd cd ab"], vocab_size=258, min_frequency=1)
    assert tok.id_to_token(256) == "cd"
    assert tok.id_to_token(257) == "Ġa"  # (' ', 'a') < (' ', 'cd') < ('a', 'b') as byte strings
    same = train_bpe(["ab", "yz", "ba"], vocab_size=257, min_frequency=1)
    assert same.id_to_token(256) == "ab"


def test_deterministic(tmp_path, tokenizer_corpus):
    text = "".join(tokenizer_corpus.values())
    for name in ("a", "b"):
        train_bpe([text], vocab_size=400, special_tokens=[ENDOFTEXT]).save(tmp_path / name)
    for file in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_vocab_size_counts_bytes_merges_and_specials(varied_text):
    tok = train_bpe(varied_text, vocab_size=400, special_tokens=[ENDOFTEXT, "<|pad|>"])
    assert tok.vocab_size == 400
    assert tok.special_tokens == {ENDOFTEXT: 398, "<|pad|>": 399} and tok.eot_id == 398
    assert tok.encode("<|pad|>x<|endoftext|>", allowed_special="all") == [399, ord("x"), 398]


def test_vocab_size_256_is_pure_bytes(tmp_path):
    tok = train_bpe(["hello hello hello world"], vocab_size=256)
    assert tok.vocab_size == 256 and tok.special_tokens == {} and tok.eot_id is None
    text = "hello, wörld\n"
    assert tok.encode(text) == list(text.encode()) and tok.decode(tok.encode(text)) == text


def test_too_small_vocab_size_is_refused():
    with pytest.raises(NumgptError, match="at least 256 byte tokens \\+ 1 special token\\(s\\) = 257"):
        train_bpe(["x"], vocab_size=256, special_tokens=[ENDOFTEXT])
    with pytest.raises(NumgptError, match="too small"):
        train_bpe(["x"], vocab_size=100)
    with pytest.raises(NumgptError, match="distinct"):
        train_bpe(["x"], vocab_size=300, special_tokens=["<a>", "<a>"])


def test_special_token_strings_in_training_text_are_never_merged():
    tok = train_bpe(["hi<|endoftext|>" * 50], vocab_size=300, special_tokens=[ENDOFTEXT], min_frequency=1)
    learned = [tok.token_bytes(i) for i in range(256, tok.vocab_size - 1)]
    assert learned == [b"hi"]  # nothing of '<|endoftext|>' was available to merge
    assert tok.encode("<|endoftext|>", disallowed_special=()) == list(b"<|endoftext|>")


def test_stops_early_when_pairs_run_out():
    tok = train_bpe(["abab"], vocab_size=1000, special_tokens=[ENDOFTEXT])
    assert tok.vocab_size == 256 + 1 + 1  # only 'ab' occurs twice; specials still come last
    assert tok.special_tokens == {ENDOFTEXT: 257}


def test_progress_callback_reports_every_new_token():
    calls = []
    tok = train_bpe(["the cat and the hat and the bat"] * 3, vocab_size=270, progress=lambda *a: calls.append(a))
    assert calls == [(i, 14) for i in range(1, tok.vocab_size - 256 + 1)] and len(calls) > 5


def test_files_and_texts_train_the_same(tmp_path, varied_text, monkeypatch):
    text = varied_text
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    from_text = train_bpe(text, vocab_size=400)
    monkeypatch.setattr(bpe_train, "READ_CHARS", 777)  # many blocks, each cut at a safe place
    from_file = train_bpe(files=[path], vocab_size=400)
    assert [from_file.token_bytes(i) for i in range(400)] == [from_text.token_bytes(i) for i in range(400)]


def test_bad_files(tmp_path):
    with pytest.raises(NumgptError, match="no such file"):
        train_bpe(files=[tmp_path / "absent.txt"], vocab_size=300)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(NumgptError, match="latin1.txt: not UTF-8"):
        train_bpe(files=[latin1], vocab_size=300)


def test_saved_folder_loads_in_transformers_and_encodes_identically(tmp_path, shakespeare, tokenizer_corpus):
    """The 4096-token vocabulary of the task, trained on tinyshakespeare, in Hugging Face's layout."""
    transformers = pytest.importorskip("transformers")
    tok = train_bpe(shakespeare, vocab_size=4096, special_tokens=[ENDOFTEXT, "<|pad|>"])
    assert tok.vocab_size == 4096
    tok.save(tmp_path)
    hf = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert len(hf) == 4096 and hf.eos_token == ENDOFTEXT
    rng = random.Random(0)
    samples = [*tokenizer_corpus.values(), shakespeare[:200_000], "a<|pad|>b<|endoftext|>c",
               "".join(rng.choice(shakespeare[:5000]) for _ in range(3000))]
    for text in samples:
        ids = tok.encode(text, allowed_special="all")
        assert hf.encode(text) == ids == again.encode(text, allowed_special="all")
        assert tok.decode(ids) == text


def test_split_digits_learns_no_merge_with_a_digit_and_transformers_encodes_the_same(tmp_path, varied_text):
    """split_digits: every digit its own token; the merges are otherwise the plain trainer's on the text
    with the digit pairs never chosen; transformers' GPT2TokenizerFast applies them identically."""
    transformers = pytest.importorskip("transformers")
    numbers = " ".join(f"{a} + {b} = {a + b}." for a, b in zip(range(100, 4000, 37), range(900, 50, -3)))
    text = varied_text + numbers
    plain = train_bpe([text], vocab_size=600, min_frequency=2)
    assert any(any(c.isdigit() for c in plain.id_to_token(i)) and len(plain.id_to_token(i)) > 1
               for i in range(256, 600))          # the plain trainer does merge digits on this text
    tok = train_bpe([text], vocab_size=600, min_frequency=2, split_digits=True)
    assert tok.vocab_size == 600
    spelled = [tok.decode([i]) for i in range(256, 600)]
    assert not any(any(c.isdigit() for c in s) for s in spelled)
    word_counts = count_words([text])
    assert learn_merges(word_counts, 344, 2, split_digits=True) == plain_merges(word_counts, 344, 2, True)
    ids = tok.encode(" 478 + 356 = 834")
    assert [tok.decode([i]) for i in ids if tok.decode([i]).strip().isdigit()] == list("478356834")
    tok.save(tmp_path)
    hf = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)
    for sample in (numbers[:3000], varied_text[:3000], "In 1984 the 3,210 apples cost $12.50"):
        assert hf.encode(sample) == tok.encode(sample)
