"""`numgpt prepare` and batches: token files decode back to the text, the split is by characters, the
tokenizer travels with the data, and batches are next-token windows drawn from the rng."""

import json

import numpy as np
import pytest

from numgpt import Tokenizer, train_bpe
from numgpt.cli import main
from numgpt.training.data import (get_batch, load_dataset, prepare, split_text, token_dtype,
                         tokenizer_fingerprint)
from numgpt.errors import NumgptError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. Ünïcödé ✓\n" * 20


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.gpt2()


def test_prepare_writes_token_files_that_decode_to_the_split_text(tmp_path, gpt2):
    meta = prepare([TEXT], tmp_path, gpt2, val_fraction=0.1)
    data = load_dataset(tmp_path)
    train_text, val_text = TEXT[:int(len(TEXT) * 0.9)], TEXT[int(len(TEXT) * 0.9):]
    assert gpt2.decode(data.train.tolist()) == train_text
    assert gpt2.decode(data.val.tolist()) == val_text
    assert data.train.dtype == np.dtype("<u2") and isinstance(data.train, np.memmap)
    assert meta["splits"]["train"] == {"file": "train.bin", "tokens": len(gpt2.encode(train_text)),
                                       "bytes": len(train_text.encode()), "chars": len(train_text)}
    assert meta["splits"]["val"]["chars"] == len(val_text)
    assert meta["vocab_size"] == 50257 and meta["eot_id"] == 50256
    on_disk = json.loads((tmp_path / "meta.json").read_text())
    assert on_disk == meta
    # the tokenizer is saved beside the data and is the same tokenizer
    assert tokenizer_fingerprint(Tokenizer.load(tmp_path / "tokenizer")) == meta["tokenizer_sha256"]
    assert data.bytes_per_token("val") == len(val_text.encode()) / len(data.val)


def test_split_is_by_characters_like_nanogpt():
    assert split_text("abcdefghij", 0.1) == ("abcdefghi", "j")
    assert split_text("abcdefghij", 0.25) == ("abcdefg", "hij")
    with pytest.raises(NumgptError):
        split_text("abc", 1.0)


def test_token_dtype_fits_the_vocabulary():
    assert token_dtype(256) == np.dtype("<u2")
    assert token_dtype(65536) == np.dtype("<u2")
    assert token_dtype(65537) == np.dtype("<u4")


class BigVocab:
    """A stand-in tokenizer with 70000 ids (more than uint16 holds): id = 66000 + byte value."""
    vocab_size, eot_id, special_tokens = 70000, None, {}

    def encode(self, text, allowed_special=()):
        return [66000 + b for b in text.encode()]

    def token_bytes(self, i):
        return bytes([i - 66000]) if i >= 66000 and i < 66256 else b""

    def save(self, folder):
        folder.mkdir(parents=True, exist_ok=True)


def test_large_vocabularies_use_uint32(tmp_path):
    meta = prepare(["hello world, hello numgpt"], tmp_path, BigVocab(), val_fraction=0.2)
    data = load_dataset(tmp_path)
    assert meta["dtype"] == "<u4" and data.train.dtype == np.dtype("<u4")
    assert bytes(int(i) - 66000 for i in data.train) == b"hello world, hello n"   # 80% of 25 chars


def test_several_files_are_joined_by_endoftext(tmp_path, gpt2):
    prepare(["one.", "two."], tmp_path, gpt2, val_fraction=0.0)
    ids = load_dataset(tmp_path).train.tolist()
    assert ids == gpt2.encode("one.") + [50256] + gpt2.encode("two.")


def test_byte_level_vocabulary_gives_the_bytes(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(TEXT, encoding="utf-8")
    assert main(["prepare", str(src), "--out", str(tmp_path / "d"), "--vocab-size", "256"]) == 0
    data = load_dataset(tmp_path / "d")
    assert data.vocab_size == 256
    train_text = TEXT[:int(len(TEXT) * 0.9)]
    assert bytes(data.train.astype(np.uint8)) == train_text.encode()         # ids are the UTF-8 bytes
    assert data.meta["splits"]["train"]["chars"] < data.meta["splits"]["train"]["bytes"]  # non-ASCII text


def test_prepare_with_a_tokenizer_folder(tmp_path):
    tok = train_bpe(TEXT, vocab_size=300)
    tok.save(tmp_path / "tok")
    src = tmp_path / "in.txt"
    src.write_text(TEXT, encoding="utf-8")
    assert main(["prepare", str(src), "-o", str(tmp_path / "d"), "--tokenizer", str(tmp_path / "tok")]) == 0
    data = load_dataset(tmp_path / "d")
    assert data.train.tolist() == tok.encode(TEXT[:int(len(TEXT) * 0.9)])
    assert data.meta["tokenizer_sha256"] == tokenizer_fingerprint(tok)


def test_get_batch_draws_next_token_windows_from_the_rng():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)                                   # targets are the next tokens
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)                      # consecutive windows
    x2, _ = get_batch(tokens, 8, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    starts = np.concatenate([get_batch(tokens[:20], 64, 16, np.random.default_rng(s))[0][:, 0] for s in range(5)])
    assert set(starts) == {0, 1, 2, 3}                                        # every window start, none past the end


def test_get_batch_refuses_a_split_shorter_than_a_window():
    """In the Python parameter's name; numgpt train says it as its flag (options.flag_message)."""
    from numgpt.cli.options import flag_message
    from numgpt.cli.train_commands import FLAG_NAMES
    with pytest.raises(NumgptError, match="use a smaller block_size or more text") as e:
        get_batch(np.arange(10, dtype=np.uint16), 2, 10, np.random.default_rng(0))
    assert flag_message(str(e.value), FLAG_NAMES).endswith("use a smaller --block-size or more text")


def test_damaged_or_missing_data_is_a_one_line_error(tmp_path, gpt2, capsys):
    with pytest.raises(NumgptError, match="numgpt prepare"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(NumgptError, match="not a prepared data folder"):
        load_dataset(tmp_path)
    prepare([TEXT], tmp_path / "d", gpt2)
    with open(tmp_path / "d" / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(NumgptError, match="prepare` again"):
        load_dataset(tmp_path / "d")
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numgpt: error: ") and err.count("\n") == 1
