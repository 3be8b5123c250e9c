"""`numgpt tokenize` and `numgpt train-tokenizer` through the real dispatcher (numgpt.cli.main)."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import numgpt
from numgpt.cli import main

GPT2_FILES = Path(numgpt.__file__).parent / "assets" / "gpt2"


def run(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8"))))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err):
    assert code == 2
    assert err.startswith("numgpt: error: ") and err.count("\n") == 1, err
    return err


def test_ids_by_default(capsys):
    assert run(capsys, "tokenize", "Hello world") == (0, "15496 995\n", "")


def test_json_and_pieces(capsys):
    code, out, _ = run(capsys, "tokenize", "--json", "PostgreSQL is great")
    assert json.loads(out) == [6307, 47701, 318, 1049]
    code, out, _ = run(capsys, "tokenize", "--pieces", "Hello world 你")
    assert out.splitlines()[:2] == ["15496\t'Hello'", "995\t' world'"]
    assert "b'\\xe4\\xbd'" in out  # half a character is shown as bytes


def test_explain_mississippilessly(capsys):
    code, out, _ = run(capsys, "tokenize", "--explain", "Mississippilessly")
    assert code == 0
    assert "rank    15: 'i' + 's'" in out
    assert "-> 'Miss' 'iss' 'ipp' 'iless' 'ly'" in out
    assert "17140 747 3974 30608 306  (5 tokens)" in out


def test_file_and_stdin(capsys, tmp_path, monkeypatch):
    path = tmp_path / "in.txt"
    path.write_bytes("Hello world\r\n".encode())
    assert run(capsys, "tokenize", "--file", str(path))[1] == "15496 995 201 198\n"  # \r\n kept exactly
    assert run(capsys, "tokenize", stdin="Hello world", monkeypatch=monkeypatch)[1] == "15496 995\n"


def test_special_tokens_need_allow_special(capsys):
    err = one_line_error(*run(capsys, "tokenize", "a<|endoftext|>")[::2])
    assert "--allow-special" in err and "position 1" in err and "id 50256" in err
    assert "allowed_special" not in err                  # the CLI speaks flags, the Python API keywords
    assert run(capsys, "tokenize", "--allow-special", "a<|endoftext|>")[1] == "64 50256\n"


def test_input_mistakes_are_one_line(capsys, tmp_path):
    one_line_error(*run(capsys, "tokenize", "--file", str(tmp_path / "absent.txt"))[::2])
    one_line_error(*run(capsys, "tokenize", "--file", str(tmp_path))[::2])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in one_line_error(*run(capsys, "tokenize", "--file", str(bad))[::2])
    one_line_error(*run(capsys, "tokenize", "x", "--file", str(bad))[::2])


def test_broken_tokenizer_folder_is_one_line(capsys, tmp_path):
    one_line_error(*run(capsys, "tokenize", "--tokenizer", str(tmp_path), "x")[::2])
    shutil.copy(GPT2_FILES / "vocab.bpe", tmp_path / "merges.txt")
    (tmp_path / "vocab.json").write_text('{"a": 1,,}')
    err = one_line_error(*run(capsys, "tokenize", "--tokenizer", str(tmp_path), "x")[::2])
    assert "vocab.json: not valid JSON" in err


def test_train_then_tokenize_with_it(capsys, tmp_path, tokenizer_corpus):
    text = tmp_path / "input.txt"
    text.write_text("".join(v for k, v in tokenizer_corpus.items() if not k.startswith("long")), encoding="utf-8")
    out_dir = tmp_path / "tok"
    code, out, err = run(capsys, "train-tokenizer", str(text), "--vocab-size", "300", "-o", str(out_dir))
    assert code == 0 and out.startswith(f"{out_dir}: 300 tokens (256 bytes + 43 merged + 1 special)")
    assert {p.name for p in out_dir.iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    code, out, _ = run(capsys, "tokenize", "--tokenizer", str(out_dir), "--allow-special", "the<|endoftext|>")
    assert out.split()[-1] == "299"


def test_train_from_stdin_and_a_pipe_equals_the_file(capsys, tmp_path, monkeypatch, tokenizer_corpus):
    # '-' and <(...) were "no such file"; each now trains what the file trains
    import os
    import threading
    text = "".join(v for k, v in tokenizer_corpus.items() if not k.startswith("long"))
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8", newline="")
    run(capsys, "train-tokenizer", str(path), "--vocab-size", "300", "-o", str(tmp_path / "file"))
    code, out, _ = run(capsys, "train-tokenizer", "-", "--vocab-size", "300", "-o", str(tmp_path / "stdin"),
                       stdin=text, monkeypatch=monkeypatch)
    assert code == 0 and f"from {len(text.encode()):,} bytes" in out
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=(text,), kwargs={"encoding": "utf-8"})
    writer.start()
    assert run(capsys, "train-tokenizer", str(fifo), "--vocab-size", "300", "-o", str(tmp_path / "pipe_tok"))[0] == 0
    writer.join()
    for made in ("stdin", "pipe_tok"):
        assert (tmp_path / made / "merges.txt").read_bytes() == (tmp_path / "file" / "merges.txt").read_bytes()
    assert run(capsys, "tokenize", "--file", "-", stdin="Hello world", monkeypatch=monkeypatch)[1] == "15496 995\n"


def test_train_byte_level_and_specials(capsys, tmp_path):
    text = tmp_path / "input.txt"
    text.write_text("abc abc abc\n", encoding="utf-8")
    code, out, _ = run(capsys, "train-tokenizer", str(text), "--vocab-size", "256", "--no-special",
                       "-o", str(tmp_path / "bytes"))
    assert code == 0 and "256 tokens (256 bytes + 0 merged + 0 special)" in out
    assert run(capsys, "tokenize", "--tokenizer", str(tmp_path / "bytes"), "abc")[1] == "97 98 99\n"
    code, out, _ = run(capsys, "train-tokenizer", str(text), "--vocab-size", "300", "--special", "<a>",
                       "--special", "<b>", "--quiet", "-o", str(tmp_path / "two"))
    assert json.loads((tmp_path / "two" / "special_tokens_map.json").read_text())["additional_special_tokens"] == ["<a>", "<b>"]


def test_train_mistakes_are_one_line(capsys, tmp_path):
    text = tmp_path / "input.txt"
    text.write_text("abc", encoding="utf-8")
    err = one_line_error(*run(capsys, "train-tokenizer", str(text), "--vocab-size", "256", "-o", str(tmp_path / "o"))[::2])
    assert "at least 256 byte tokens + 1 special token(s) = 257" in err
    one_line_error(*run(capsys, "train-tokenizer", str(tmp_path / "absent"), "--vocab-size", "300",
                        "-o", str(tmp_path / "o"))[::2])


@pytest.mark.parametrize("command", ["tokenize", "train-tokenizer"])
def test_help_has_description_and_examples(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out and f"numgpt {command} " in out.split("examples:")[1]


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "numgpt", "tokenize", "Hello world"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == "15496 995\n"


TINY = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 3


@pytest.mark.parametrize("special", ["e", " ", "\n", "Ġ"])
def test_a_special_token_that_is_a_byte_token_is_refused(capsys, tmp_path, special):
    (tmp_path / "tiny.txt").write_text(TINY)
    err = one_line_error(*run(capsys, "train-tokenizer", str(tmp_path / "tiny.txt"), "--vocab-size", "300",
                              "--special", special, "-o", str(tmp_path / "tok"))[::2])
    assert "also a byte token" in err and not (tmp_path / "tok").exists()


def test_a_special_token_that_is_a_learned_merge_is_refused(tmp_path):
    from numgpt.tokenizer import train_bpe
    plain = train_bpe(TINY, vocab_size=300)
    # a merge spelled with the stand-in alphabet ('Ġs' is ' s'): the text never holds 'Ġ', so the special
    # string does not split the training text, the merge is learned, and the two would share one vocab.json key
    merged = next(plain.id_to_token(i) for i in range(256, 300) if plain.id_to_token(i).startswith("Ġ"))
    with pytest.raises(numgpt.NumgptError, match="also an ordinary token"):
        train_bpe(TINY, vocab_size=301, special_tokens=[merged])


def test_train_tokenizer_never_replaces_or_misreads_paths(capsys, tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text(TINY)
    out = tmp_path / "tok"
    assert run(capsys, "train-tokenizer", str(text), "--vocab-size", "300", "-q", "-o", str(out))[0] == 0
    before = (out / "vocab.json").read_bytes()
    err = one_line_error(*run(capsys, "train-tokenizer", str(text), "--vocab-size", "280", "-o", str(out))[::2])
    assert "--force" in err and (out / "vocab.json").read_bytes() == before          # nothing lost
    assert run(capsys, "train-tokenizer", str(text), "--vocab-size", "280", "-q", "--force", "-o", str(out))[0] == 0
    assert len(json.loads((out / "vocab.json").read_text())) == 280
    (tmp_path / "afile").write_text("x")
    assert "existing file" in one_line_error(*run(capsys, "train-tokenizer", str(text), "--vocab-size", "300",
                                                  "-o", str(tmp_path / "afile"))[::2])
    assert "not writable" in one_line_error(*run(capsys, "train-tokenizer", str(text), "--vocab-size", "300",
                                                 "-o", "/proc/numgpt-tok")[::2])
    assert "is a folder" in one_line_error(*run(capsys, "train-tokenizer", str(tmp_path), "--vocab-size", "300",
                                                "-o", str(tmp_path / "t2"))[::2])
    (tmp_path / "empty.txt").write_text("")
    assert "empty" in one_line_error(*run(capsys, "train-tokenizer", str(tmp_path / "empty.txt"),
                                          "--vocab-size", "300", "-o", str(tmp_path / "t3"))[::2])
    assert "--no-special" in one_line_error(*run(capsys, "train-tokenizer", str(text), "--vocab-size", "256",
                                                 "-o", str(tmp_path / "t4"))[::2])


def test_tokenizer_save_refuses_to_replace_a_vocabulary(tmp_path):
    from numgpt.tokenizer import train_bpe
    tok = train_bpe(TINY, vocab_size=300)
    tok.save(tmp_path)
    with pytest.raises(numgpt.NumgptError, match="already holds a tokenizer"):
        train_bpe(TINY, vocab_size=280).save(tmp_path)
    assert numgpt.Tokenizer.load(tmp_path).vocab_size == 300


def test_version_and_underscore_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"numgpt {numgpt.__version__}"
    with pytest.raises(SystemExit) as e:
        main(["generate", "--top_k", "5", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "(see `numgpt generate --help`)" in err and "--top_k -> --top-k" in err
    # argparse's own mistakes are one line too (it printed its usage first)
    for argv, said in ((["chat", "--max-new-tokens", "abc"], "argument --max-new-tokens/-n: invalid int value: 'abc'"),
                       (["sql", "next"], "the following arguments are required: --db, PROMPT"),
                       (["bogus"], "argument COMMAND: invalid choice: 'bogus'")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"numgpt: error: {said}") and err.count("\n") == 1, err


def test_train_tokenizer_quiet_prints_nothing(capsys, tmp_path):
    """-q: no progress, no summary, no note (newcomer round 2: it still printed the summary and note)."""
    text = tmp_path / "input.txt"
    text.write_text("abc abc abc\n", encoding="utf-8")
    code, out, err = run(capsys, "train-tokenizer", str(text), "--vocab-size", "400", "-q", "-o", str(tmp_path / "q"))
    assert (code, out, err) == (0, "", "")
    assert (tmp_path / "q" / "vocab.json").is_file()
    code, out, err = run(capsys, "train-tokenizer", str(text), "--vocab-size", "400", "-o", str(tmp_path / "loud"))
    assert "tokens (256 bytes +" in out and "note: fewer than --vocab-size 400" in err


def test_text_that_is_not_utf8_on_the_command_line_is_refused(tmp_path):
    """A byte that is not UTF-8 in argv is refused by name, as --file refuses such a file (it was read as
    U+FFFD silently); checked in a real process, where Python turns argv's bad bytes into surrogates."""
    # named as --help names them: a positional by its metavar (embed's said "--texts", an option it has not)
    for argv, name in ((["tokenize", b"caf\xff"], "TEXT"), (["next", b"caf\xff"], "PROMPT"),
                       (["generate", "-n", "2", b"caf\xff"], "PROMPT"), (["embed", b"caf\xff"], "TEXT"),
                       (["tokenize", "--model", b"\xfe", "x"], "--model")):
        done = subprocess.run([sys.executable, "-m", "numgpt", *argv], capture_output=True, cwd=tmp_path)
        err = done.stderr.decode()
        assert done.returncode == 2 and err.count("\n") == 1 and f"error: {name} is not UTF-8" in err, (argv, err)
        assert ("byte 0xff at character 3" in err) if argv[-1] == b"caf\xff" else "--model" in err, err


def test_tokenize_with_a_model_uses_that_models_vocabulary(capsys):
    lm = numgpt.load()
    code, out, _ = run(capsys, "tokenize", "--model", "builtin", "ROMEO: Mississippi")
    assert code == 0 and out.split() == [str(i) for i in lm.tokenizer.encode("ROMEO: Mississippi")]
    assert out != run(capsys, "tokenize", "ROMEO: Mississippi")[1]        # GPT-2's vocabulary by default
    with pytest.raises(SystemExit):                                       # one vocabulary at a time
        main(["tokenize", "--model", "builtin", "--tokenizer", str(GPT2_FILES), "x"])
    assert "not allowed with" in capsys.readouterr().err
