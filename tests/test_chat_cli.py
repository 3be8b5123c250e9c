"""`numgpt chat` (issue 22 item 5): piped conversations against transformers (the folder's chat_template through
apply_chat_template, GPT2LMHeadModel.generate greedy), the /commands, the saved JSONL read back by numgpt's
chat reader, a base model's one-line error and --transcript, the context rule, and a real Ctrl-C to a
`python -m numgpt chat` in the middle of a reply.

The model: a tiny random GPT-2 (transformers' init, scaled up so greedy paths are far from ties) grown by the
chat tokens; the rows of the 128 non-ASCII byte tokens are zero, so that their logit is 0 and greedy never
picks one (a random model would otherwise write broken UTF-8, whose U+FFFD text both sides would re-encode
in the next turn's prompt); the vocabulary has one token of 128 'a's, which a logit bias forces for replies
of a known size."""

import fcntl
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from references import reference

import numgpt
from numgpt import load_checkpoint, save_checkpoint, train_bpe
from numgpt.cli import main
from numgpt.cli.chat_commands import stop_on_interrupt
from numgpt.formats import load_tokenizer
from numgpt.posttrain.chat_format import add_chat_tokens, chat_template
from numgpt.posttrain.chat_session import ChatSession, ModelFormat
from numgpt.posttrain.chat_session import chat as chat_reply
from numgpt.posttrain.chatdata import read_conversations

torch = reference("torch")
transformers = reference("transformers")

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. 12 + 35 = 47; what comes after 9? 10.\n" * 20 + ("a" * 128 + " ") * 40)
LONG = "a" * 128                  # one token of this vocabulary
N = 16                            # --max-new-tokens of the reference runs
# <|end|> raised by 2.5 makes the first reply of CONVERSATION end at the end of turn after 5 tokens and the
# second run to N tokens (asserted below, so both ends are always covered); the top two logits of every greedy
# step of both replies are > 0.06 apart, far above float32 rounding between numgpt and torch (~1e-6 here)
END_BIAS = 2.5
SYSTEM = "Count."
CONVERSATION = ["what comes after 9?", "and after 12?"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(the chat model's folder, the base model's folder)."""
    root = tmp_path_factory.mktemp("chat_cli")
    base_tok = train_bpe(TEXT, vocab_size=300, special_tokens=["<|endoftext|>"])
    torch.manual_seed(5)                          # the seed of END_BIAS's margins
    eot = base_tok.eot_id
    config = transformers.GPT2Config(vocab_size=base_tok.vocab_size, n_positions=1024, n_embd=32, n_layer=2,
                                     n_head=4, initializer_range=0.2, bos_token_id=eot, eos_token_id=eot)
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "base")
    base_tok.save(root / "base")
    base_config, base_params = load_checkpoint(root / "base")
    config, params, tok = add_chat_tokens(base_config, base_params, load_tokenizer(root / "base", base_config))
    non_ascii = [i for i in range(256) if tok.token_bytes(i)[0] >= 128]
    wte = params["wte.weight"].copy()                                     # [V + 5, C]
    wte[non_ascii] = 0                                                    # never picked by greedy (docstring)
    save_checkpoint(root / "chat", config, {**params, "wte.weight": wte}, tokenizer=tok)
    save_checkpoint(root / "plain", base_config, {**base_params, "wte.weight": wte[:base_tok.vocab_size]},
                    tokenizer=base_tok)
    assert len(tok.encode(LONG)) == 1
    return root / "chat", root / "plain"


@pytest.fixture(scope="module")
def chat_folder(folders):
    return folders[0]


@pytest.fixture(scope="module")
def hf(chat_folder):
    """transformers' tokenizer (with the folder's chat_template) and model, on the chat folder."""
    return (transformers.AutoTokenizer.from_pretrained(chat_folder),
            transformers.GPT2LMHeadModel.from_pretrained(chat_folder).eval())


@pytest.fixture(scope="module")
def special(chat_folder):
    return numgpt.load(chat_folder).tokenizer.special_tokens


def reference_reply(hf, special, messages: list[dict], *, max_new_tokens: int = N) -> str:
    """transformers' greedy reply: apply_chat_template with the generation prompt, generate until <|end|> or
    <|endoftext|> (not part of the reply) with <|end|>'s bias, decoded."""
    tok, model = hf
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    ends = [special["<|end|>"], special["<|endoftext|>"]]
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=ends,
                             pad_token_id=ends[1], sequence_bias={(ends[0],): END_BIAS})
    new = out[0, len(ids):].tolist()
    new = new[:next((i for i, t in enumerate(new) if t in ends), len(new))]
    return tok.decode(new, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def reference_conversation(hf, special, lines: list[str], system: str | None = None) -> list[str]:
    """The replies to `lines`, each turn's prompt the whole conversation so far (as numgpt chat renders it)."""
    messages = [{"role": "system", "content": system}] if system else []
    replies = []
    for line in lines:
        messages.append({"role": "user", "content": line})
        replies.append(reference_reply(hf, special, messages))
        messages.append({"role": "assistant", "content": replies[-1]})
    return replies


def chat(capsys, monkeypatch, folder, lines: list[str], *flags: str) -> tuple[int, str, str]:
    """`numgpt chat` in this process with `lines` piped on stdin: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    capsys.readouterr()
    code = main(["chat", "--model", str(folder), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def greedy_flags(special) -> list[str]:
    return ["--temperature", "0", "-n", str(N), "--logit-bias", f"{special['<|end|>']}={END_BIAS}"]


def test_a_piped_greedy_conversation_is_transformers_greedy_continuation(capsys, monkeypatch, chat_folder, hf, special):
    """Two turns: each printed reply is transformers' greedy continuation of apply_chat_template over the whole
    conversation so far (the earlier reply included), cut at <|end|>; stdout has the replies alone."""
    code, out, err = chat(capsys, monkeypatch, chat_folder, CONVERSATION, "--system", SYSTEM, *greedy_flags(special))
    want = reference_conversation(hf, special, CONVERSATION, SYSTEM)
    assert code == 0 and out == "".join(r + "\n" for r in want), (out, want)
    tok = hf[0]
    lengths = [len(tok.encode(r)) for r in want]
    assert 0 < lengths[0] < N and lengths[1] == N        # one reply ended at <|end|>, one ran out of tokens
    assert all(r.isascii() for r in want)                # plain text: both sides re-encode the same reply
    assert "reply cut at 16 tokens" in err and err.count("\n") == 1


def test_reset_system_save_help_and_unknown_commands(capsys, monkeypatch, chat_folder, hf, special, tmp_path):
    """/system replaces the system message for the next reply, /reset forgets the turns (not the system
    message), /save appends one record per call that numgpt's chat JSONL reader accepts, /help and an unknown
    command answer on stderr, /quit ends the session (the line after it is never answered)."""
    saved = tmp_path / "chats.jsonl"
    lines = ["what comes after 9?", "/system Be kind.", "and after 12?", f"/save {saved}", "/reset all", "/reset",
             "hi", f"/save {saved}", "/system", "/help", "/bogus", "//slash", "/quit now", "/quit", "never answered"]
    code, out, err = chat(capsys, monkeypatch, chat_folder, lines, "--system", SYSTEM, *greedy_flags(special))
    first = reference_reply(hf, special, [{"role": "system", "content": SYSTEM},
                                          {"role": "user", "content": lines[0]}])
    kind = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": lines[0]},
            {"role": "assistant", "content": first}, {"role": "user", "content": lines[2]}]
    second = reference_reply(hf, special, kind)
    third = reference_reply(hf, special, [kind[0], {"role": "user", "content": "hi"}])   # "/reset all": nothing
    fourth = reference_reply(hf, special, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": third},
                                           {"role": "user", "content": "/slash"}])   # no system message now
    assert code == 0 and out == f"{first}\n{second}\n{third}\n{fourth}\n"
    records = read_conversations(saved)
    assert [r["messages"] for r in records] == [
        [*kind, {"role": "assistant", "content": second}],
        [kind[0], {"role": "user", "content": "hi"}, {"role": "assistant", "content": third}]]
    assert "/save FILE" in err and "/reset" in err                        # /help's list
    assert [line for line in err.splitlines() if "bogus" in line] == [
        "unknown command /bogus: the commands are /system, /reset, /save, /help, /quit (//TEXT sends /TEXT)"]
    assert [line for line in err.splitlines() if "takes nothing after it" in line] == [
        "/reset takes nothing after it: nothing done (// sends a message that starts with /)",
        "/quit takes nothing after it: nothing done (// sends a message that starts with /)"]


def test_save_refuses_a_conversation_without_a_reply_and_appends_after_a_line_without_newline(
        capsys, monkeypatch, chat_folder, special, tmp_path):
    saved = tmp_path / "chats.jsonl"
    code, out, err = chat(capsys, monkeypatch, chat_folder, [f"/save {saved}", "/save"], *greedy_flags(special))
    assert code == 0 and out == "" and not saved.exists()
    assert "not saved: nothing to save yet: the conversation has no reply" in err and "usage: /save FILE" in err
    record = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    saved.write_text(json.dumps(record))                                  # no newline at its end
    code, out, err = chat(capsys, monkeypatch, chat_folder, ["hi", f"/save {saved}"], *greedy_flags(special))
    assert code == 0 and [r["messages"][0]["content"] for r in read_conversations(saved)] == ["x", "hi"]
    code, out, err = chat(capsys, monkeypatch, chat_folder, ["hi", f"/save {tmp_path}"], *greedy_flags(special))
    assert code == 0 and f"not saved: {tmp_path}: Is a directory" in err


def test_a_base_model_is_a_one_line_error_offering_the_transcript(capsys, monkeypatch, folders):
    """Without a chat template: exit 2 and one line naming --transcript; with --transcript the reply is the
    greedy continuation of numgpt serve's transcript (LanguageModel.generate, the facade's own decode loop,
    ending at "\\nUser:"), without the space written after "Assistant:"."""
    serve_chat = pytest.importorskip("numgpt.serve.chat", reason="--transcript reuses numgpt serve's template")
    chat_dir, base = folders
    code, out, err = chat(capsys, monkeypatch, base, ["hello"])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"numgpt: error: {base} has no chat template") and "--transcript" in err
    code, out, err = chat(capsys, monkeypatch, base, ["hello", "more?"], "--transcript", "--temperature", "0",
                          "-n", "12")
    lm, template = numgpt.load(base), serve_chat.ChatTemplate()
    first = lm.generate(template.render([("user", "hello")]), do_sample=False, max_new_tokens=12, stop=list(template.stop))
    first = first[1:] if first.startswith(" ") else first
    second = lm.generate(template.render([("user", "hello"), ("assistant", first), ("user", "more?")]),
                         do_sample=False, max_new_tokens=12, stop=list(template.stop))
    second = second[1:] if second.startswith(" ") else second
    assert code == 0 and out == f"{first}\n{second}\n"
    spaces = lm.generate(template.render([("user", "hello")]), do_sample=False, max_new_tokens=12, logit_bias={32: 4})
    assert spaces == " " * 12                                # ' ' (id 32) raised: the model writes spaces alone
    code, out, err = chat(capsys, monkeypatch, base, ["hello"], "--transcript", "--temperature", "0", "-n", "12",
                          "--logit-bias", "32=4")
    assert code == 0 and out == " " * 11 + "\n"             # the one space after "Assistant:" is not the reply's
    code, out, err = chat(capsys, monkeypatch, chat_dir, [], "--transcript")
    assert code == 0 and "note: the model has its own chat template; --transcript puts the transcript" in err




def test_posttrain_chat_is_transformers_greedy_reply(chat_folder, hf, special, folders):
    """numgpt.posttrain.chat: transformers' greedy reply to the same messages (apply_chat_template, generate until
    <|end|>), for one user message as a str and for a conversation with a system message; the first reply's
    length is under N (it ended at <|end|>) and the second's is N (cut), so both ends are covered. A base model
    and a conversation not ending with the user's turn are one-line errors."""
    lm, bias = numgpt.load(chat_folder), {special["<|end|>"]: END_BIAS}
    alone = chat_reply(lm, CONVERSATION[0], do_sample=False, max_new_tokens=N, logit_bias=bias)
    assert alone == reference_reply(hf, special, [{"role": "user", "content": CONVERSATION[0]}])
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": CONVERSATION[0]}]
    first = chat_reply(lm, messages, do_sample=False, max_new_tokens=N, logit_bias=bias)
    assert first == reference_reply(hf, special, messages)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": CONVERSATION[1]}]
    second = chat_reply(lm, messages, do_sample=False, max_new_tokens=N, logit_bias=bias)
    assert second == reference_reply(hf, special, messages)
    assert len(lm.encode(first)) < N and len(lm.encode(second)) == N
    with pytest.raises(numgpt.NumgptError, match="has no chat template"):
        chat_reply(numgpt.load(folders[1]), "hello")
    with pytest.raises(numgpt.NumgptError, match="the last message must be the user's"):
        chat_reply(lm, messages[:3])

def test_a_chat_model_over_the_transcript_still_ends_its_reply_at_its_end_of_turn(capsys, monkeypatch, chat_folder,
                                                                                   special):
    """--transcript on a chat model: the reply is generate's greedy continuation of the transcript cut at the
    model's <|end|> (not printed), as with its own template; it used to run on, printing <|end|>."""
    from numgpt.serve.chat import ChatTemplate
    lm, template, end = numgpt.load(chat_folder), ChatTemplate(), special["<|end|>"]
    prompt = lm.encode(template.render([("user", "hello")]))
    for bias in (1.0, 1.5, 2.0, 2.5, 3.0):          # the smallest <|end|> bias that ends a reply within N tokens
        ids = lm.generate_ids([prompt], do_sample=False, max_new_tokens=N, logit_bias={end: bias})[0][0]
        if end in ids[1:]:
            break
    assert end in ids[1:], "no bias made the reply end at <|end|>: the test would not test it"
    reply = lm.decode(ids[:ids.index(end)])
    code, out, err = chat(capsys, monkeypatch, chat_folder, ["hello"], "--transcript", "--temperature", "0",
                          "-n", str(N), "--logit-bias", f"{end}={bias}")
    assert code == 0 and "<|end|>" not in out
    assert out == (reply[1:] if reply.startswith(" ") else reply) + "\n"

def test_sampling_with_a_seed_draws_what_numgpt_generate_draws(capsys, monkeypatch, chat_folder, special):
    """--seed S: the first reply is `numgpt generate --seed S`'s sample on the rendered prompt (the same
    generator), cut at <|end|>; the same lines and seed give the same session."""
    flags = ["--seed", "7", "--top-k", "5", "-n", "12"]
    code, out, _ = chat(capsys, monkeypatch, chat_folder, CONVERSATION, *flags)
    lm = numgpt.load(chat_folder)
    ids = chat_template(lm.tokenizer).render([{"role": "user", "content": CONVERSATION[0]}], add_generation_prompt=True)
    sample = lm.completions(ids, seed=7, top_k=5, max_new_tokens=12)[0]
    end = special["<|end|>"]
    cut = sample.token_ids[:sample.token_ids.index(end)] if end in sample.token_ids else sample.token_ids
    assert code == 0 and out.startswith(lm.decode(cut) + "\n")
    assert chat(capsys, monkeypatch, chat_folder, CONVERSATION, *flags)[1] == out


def test_a_message_too_long_is_refused_and_the_oldest_turns_make_room(capsys, monkeypatch, chat_folder, hf, special):
    """A message longer than the context: one line, not added, the session goes on. A reply that needs room:
    the oldest exchange is dropped from what the model sees (a note), and the reply is the continuation of
    the conversation without it."""
    too_long = LONG * 1100                                                # 1100 tokens > 1024 positions
    biased = ["--logit-bias", f"{hf[0].convert_tokens_to_ids(hf[0].tokenize(LONG))[0]}=100", "--temperature", "0"]
    code, out, err = chat(capsys, monkeypatch, chat_folder, [too_long, "hi", "again", "and again"], *biased,
                          "-n", "600")
    # each reply is 600 x LONG; the room wanted is min(600, 1024 / 2) = 512 tokens: the second and third
    # messages each push the exchange before them out; the refused message's reply line is empty (piped: the
    # replies stay in step with the messages)
    assert code == 0 and out == "\n" + f"{LONG * 600}\n" * 3
    assert "not sent: that message does not fit the model's context: the prompt would be 1104 tokens of 1024" in err
    notes = [line for line in err.splitlines() if "outgrew" in line]
    assert notes == ["(the conversation outgrew the model's context of 1024 tokens: the oldest exchange dropped "
                     "from what it sees)"] * 2


# ---- a real Ctrl-C ------------------------------------------------------------------------------------

def test_ctrl_c_stops_a_reply_not_the_session(chat_folder, tmp_path):
    """SIGINT while a reply streams: the reply stops, what was printed stays as the assistant's turn (saved
    with weight 0), the next line is answered, and the end of input exits 0.

    No timing: the reply (600 tokens of 128 bytes) is longer than the pipe's buffer, and the test reads one
    byte of it before the signal and nothing more, so the child is still writing that reply (blocked on the
    full pipe, or generating) when SIGINT arrives."""
    saved = tmp_path / "chats.jsonl"
    lm = numgpt.load(chat_folder)
    flags = ["--temperature", "0", "-n", "600", "--logit-bias", f"{lm.tokenizer.encode(LONG)[0]}=100"]
    proc = subprocess.Popen([sys.executable, "-m", "numgpt", "chat", "--model", str(chat_folder), *flags],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        capacity = fcntl.fcntl(proc.stdout.fileno(), fcntl.F_GETPIPE_SZ) if hasattr(fcntl, "F_GETPIPE_SZ") else 65536
        assert 600 * len(LONG) > capacity + 1
        proc.stdin.write(b"hi\n")
        proc.stdin.flush()
        first = os.read(proc.stdout.fileno(), 1)                          # the reply has begun
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(f"again\n/save {saved}\n".encode(), timeout=600)   # a hang guard
    finally:
        proc.kill() if proc.poll() is None else None
    err = err.decode()
    assert proc.returncode == 0, err
    stopped, answered = (first + out).decode().split("\n")[:2]
    assert 0 < len(stopped) < 600 * len(LONG) and set(stopped) == {"a"}   # cut short, and printed whole
    assert answered == LONG * 600
    assert "(reply stopped; what was printed stays in the conversation)" in err and "Traceback" not in err
    (record,) = read_conversations(saved)
    assert record["messages"][1] == {"role": "assistant", "content": stopped, "weight": 0}
    assert record["messages"][3] == {"role": "assistant", "content": answered}


def test_ctrl_c_at_the_prompt_ends_the_session_with_130(chat_folder):
    lm = numgpt.load(chat_folder)
    flags = ["--temperature", "0", "-n", "2", "--logit-bias", f"{lm.tokenizer.encode(LONG)[0]}=100"]
    proc = subprocess.Popen([sys.executable, "-m", "numgpt", "chat", "--model", str(chat_folder), *flags],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"hi\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == (LONG * 2 + "\n").encode()       # answered: back at the prompt
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 130 and err.decode().endswith("numgpt: interrupted\n")


def test_the_first_sigint_asks_the_reply_to_stop_the_second_ends_the_session():
    """stop_on_interrupt: one SIGINT turns stop_requested() true, a second raises KeyboardInterrupt; the
    handler before it is back afterwards."""
    before = signal.getsignal(signal.SIGINT)
    with stop_on_interrupt() as stop_requested:
        assert not stop_requested()
        signal.raise_signal(signal.SIGINT)
        assert stop_requested()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_the_session_api_keeps_a_stopped_reply_and_every_turn(chat_folder, hf, special):
    """ChatSession without the CLI: a reply stopped after its third piece keeps the text handed out (weight 0
    in the record), the next reply sees it (transformers' greedy continuation of that conversation), and a
    reply closed early by its reader is kept the same way."""
    lm = numgpt.load(chat_folder)
    options = numgpt.GenerationOptions.from_mapping({"max_new_tokens": N, "do_sample": False,
                                                     "logit_bias": {special["<|end|>"]: END_BIAS}})
    session = ChatSession(lm, ModelFormat(chat_template(lm.tokenizer)), options=options)
    reply, pieces = session.ask("hi"), []
    for piece in reply.stream(cancel=lambda: len(pieces) == 3):
        pieces.append(piece)
    assert reply.finish_reason == "cancelled" and reply.text == "".join(pieces) and len(pieces) == 3
    with pytest.raises(numgpt.NumgptError, match="streamed already"):
        next(reply.stream())
    second = "".join(session.ask("and then?").stream())
    want = reference_reply(hf, special, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply.text},
                                         {"role": "user", "content": "and then?"}])
    assert second == want
    stream = session.ask("bye").stream()
    kept = next(stream) + next(stream)
    stream.close()
    assert session.record()["messages"] == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": reply.text, "weight": 0},
        {"role": "user", "content": "and then?"}, {"role": "assistant", "content": second},
        {"role": "user", "content": "bye"}, {"role": "assistant", "content": kept, "weight": 0}]
    with pytest.raises(numgpt.NumgptError, match="one sample without a sliding window"):
        ChatSession(lm, session.format, options=numgpt.GenerationOptions(num_return_sequences=2))


def test_a_save_that_fails_midway_leaves_the_file_as_it_was(chat_folder, monkeypatch, tmp_path):
    """A write that fails after half the line (a full disk) is cut off again: the file keeps its records."""
    import errno

    from numgpt.posttrain import chat_session
    lm = numgpt.load(chat_folder)
    session = ChatSession(lm, ModelFormat(chat_template(lm.tokenizer)),
                          options=numgpt.GenerationOptions.from_mapping({"max_new_tokens": 2, "do_sample": False}))
    "".join(session.ask("hi").stream())
    saved = tmp_path / "chats.jsonl"
    session.save(saved)
    before = saved.read_bytes()

    def half_then_full(fd, data):
        os.write(fd, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(chat_session, "_write_all", half_then_full)
    with pytest.raises(OSError, match="No space"):
        session.save(saved)
    assert saved.read_bytes() == before and len(read_conversations(saved)) == 1


def test_bad_inputs_are_one_line_errors(capsys, monkeypatch, chat_folder, tmp_path):
    """The default model (the built-in base model until the chat model ships) without --transcript; a chat
    template numgpt does not render; stdin that is not UTF-8; --transcript without the serve extra."""
    from numgpt.cli.chat_commands import DEFAULT_CHAT_MODEL
    if DEFAULT_CHAT_MODEL == "builtin":
        monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
        assert main(["chat"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("numgpt: error: builtin has no chat template") and err.count("\n") == 1
    other = tmp_path / "other"
    other.mkdir()
    for f in chat_folder.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    code, out, err = chat(capsys, monkeypatch, other, ["hi"])
    assert code == 2 and err == (f"numgpt: error: the chat template of {other} cannot be used: the tokenizer's "
                                 "chat_template is not numgpt's chat format, which is the only one numgpt renders "
                                 "(it does not run Jinja); chat over the plain transcript with --transcript\n")
    code, out, err = chat(capsys, monkeypatch, other, ["hi"], "--transcript", "-n", "3", "--temperature", "0")
    assert code == 0 and out.count("\n") == 1 and "note" not in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hi \xff\n"), encoding="utf-8"))
    assert main(["chat", "--model", str(chat_folder)]) == 2
    assert capsys.readouterr().err == "numgpt: error: stdin is not UTF-8 text (byte 0xff); numgpt chat reads UTF-8\n"
    # decoded with surrogateescape (as Python reads stdin in the C locale), the bad byte reached /save: a traceback
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9\n/save x.jsonl\n"), encoding="utf-8",
                                                       errors="surrogateescape"))
    monkeypatch.chdir(tmp_path)
    assert main(["chat", "--model", str(chat_folder)]) == 2
    assert capsys.readouterr().err == "numgpt: error: stdin is not UTF-8 text (byte 0xe9); numgpt chat reads UTF-8\n"
    assert not (tmp_path / "x.jsonl").exists()
    for n in ("0", "-1"):                         # empty replies; -1 was told generate's ">= 0"
        code, out, err = chat(capsys, monkeypatch, chat_folder, ["hi"], "--max-new-tokens", n)
        assert code == 2 and err == ("numgpt: error: --max-new-tokens must be >= 1 in a chat (each reply's most "
                                     f"tokens), got {n}\n")
    monkeypatch.setitem(sys.modules, "numgpt.serve.chat", None)           # as if the serve extra were missing
    code, out, err = chat(capsys, monkeypatch, chat_folder, ["hi"], "--transcript")
    assert code == 2 and err.count("\n") == 1 and "pip install 'numgpt[serve]'" in err


def test_on_a_terminal_a_banner_a_prompt_and_ctrl_d(chat_folder):
    """stdin and stdout a terminal (a pty): the banner and the "> " prompt, the reply after the typed line,
    a command's answer, and Ctrl-D ending the session with exit 0."""
    import pty
    import select

    lm = numgpt.load(chat_folder)
    flags = ["--temperature", "0", "-n", "2", "--logit-bias", f"{lm.tokenizer.encode(LONG)[0]}=100"]
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "numgpt", "chat", "--model", str(chat_folder), *flags],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)

    def until(marker: bytes) -> bytes:
        """What the terminal shows up to and including `marker` (which must come)."""
        seen = b""
        while marker not in seen:
            select.select([master], [], [], 600)                          # a hang guard only
            chunk = os.read(master, 4096)
            assert chunk, seen
            seen += chunk
        return seen
    try:
        banner = until(b"> ")
        assert b"numgpt chat with " in banner and b"/help for commands" in banner
        os.write(master, b"hi\r")
        assert (LONG * 2).encode() in until(b"> ")                          # the reply, then the prompt again
        os.write(master, b"/bogus\r")
        assert b"unknown command /bogus" in until(b"> ")
        os.write(master, b"\x04")                                           # Ctrl-D at an empty prompt
        assert proc.wait(timeout=600) == 0
    finally:
        proc.kill() if proc.poll() is None else None
        os.close(master)


def test_a_system_message_too_long_for_the_context_is_refused_as_itself(capsys, monkeypatch, chat_folder, special,
                                                                          tmp_path):
    """--system that leaves no room in the context: exit 2, one line naming the system message (it used to
    start, then refuse every message as too long); /system the same: "not set", the session goes on with
    the old one. /save expands ~."""
    n_positions = numgpt.load(chat_folder).config.n_positions
    long = "a " * n_positions
    code, out, err = chat(capsys, monkeypatch, chat_folder, ["hi"], "--system", long)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("numgpt: error: the system message does not fit the model's context")
    monkeypatch.setenv("HOME", str(tmp_path))
    code, out, err = chat(capsys, monkeypatch, chat_folder, ["/system " + long, "hi\r", "/save ~/chats.jsonl\r"],
                          "--system", SYSTEM, *greedy_flags(special))
    assert code == 0 and "not set: the system message does not fit the model's context" in err
    saved = json.loads((tmp_path / "chats.jsonl").read_text())         # CRLF input: the \r is not the message's
    assert saved["messages"][:2] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
