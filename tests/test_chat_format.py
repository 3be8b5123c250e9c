"""numgpt's chat format (posttrain/chat_format.py) against transformers: the ids of apply_chat_template
(both ways of treating special-token strings in a content), its assistant-token mask as the SFT loss mask,
a model grown by the chat tokens loading in transformers with the same logits, and every bad input."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numgpt import NumgptError, Tokenizer, forward, load_checkpoint, save_checkpoint, train_bpe
from numgpt.cli import main
from numgpt.formats import load_tokenizer
from numgpt.formats.hub import builtin_model_folder
from numgpt.tokenizer.bpe import bytes_to_unicode
from numgpt.posttrain.chat_format import (CHAT_TEMPLATE, CHAT_TOKENS, add_chat_tokens, chat_template,
                                          load_chat_template, render_chat, render_for_training, with_chat_tokens)

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

# The tag-like text gives the vocabulary merges such as ' <|' and '|>', so that how a special-token string in
# a content is cut from its neighbours changes the ids (with bytes alone, every way of cutting agrees).
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. 12 + 35 = 47; what comes after 9? 10. Tags: <|a|> <|b|>!<|c|>\n") * 20
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    """A small vocabulary made by `numgpt train-tokenizer --chat`: the chat tokens and template."""
    folder = tmp_path_factory.mktemp("chat")
    (folder / "text.txt").write_text(TEXT, encoding="utf-8")
    assert main(["train-tokenizer", str(folder / "text.txt"), "--vocab-size", "300", "--chat", "-q",
                 "-o", str(folder / "tok")]) == 0
    return folder / "tok"


@pytest.fixture(scope="module")
def tok(chat_folder):
    return Tokenizer.load(chat_folder)


@pytest.fixture(scope="module")
def hf_tok(chat_folder):
    return transformers.AutoTokenizer.from_pretrained(chat_folder)


def test_train_tokenizer_chat_writes_the_tokens_and_the_template(chat_folder, tok, hf_tok):
    special = tok.special_tokens
    assert list(special) == list(CHAT_TOKENS) and sorted(special.values()) == list(range(295, 300))
    assert json.loads((chat_folder / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    assert set(CHAT_TOKENS) <= set(hf_tok.all_special_tokens)            # transformers knows them as special
    assert [hf_tok.convert_tokens_to_ids(t) for t in CHAT_TOKENS] == [special[t] for t in CHAT_TOKENS]


def test_the_format_spelled_out(tok):
    s = tok.special_tokens
    messages = [{"role": "system", "content": "Add."}, {"role": "user", "content": "2 + 3"},
                {"role": "assistant", "content": "5"}]
    ids, mask = render_for_training(tok, messages)
    assert ids == [s["<|endoftext|>"], s["<|system|>"], *tok.encode("Add."), s["<|end|>"],
                   s["<|user|>"], *tok.encode("2 + 3"), s["<|end|>"],
                   s["<|assistant|>"], *tok.encode("5"), s["<|end|>"]]
    assert mask == [0] * (len(ids) - 2) + [1, 1]                          # the answer and its <|end|>
    prompt = render_chat(tok, messages[:2], add_generation_prompt=True)
    assert prompt == ids[:-2] and prompt + chat_template(tok).render_reply("5") == ids


# ---- against transformers' apply_chat_template ---------------------------------------------------------

# All of Unicode but surrogates (which cannot reach Rust) and the two private-use characters transformers'
# sanitize_control_tokens uses as markers (it deletes them from messages); plus special-token strings
# and pieces of them, so that contents often hold one.
plain = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\U000f0000\U000f0001"),
                max_size=12)
content = st.lists(st.one_of(plain, st.sampled_from([*CHAT_TOKENS, "<|", "|>", "<|end", " <|user|>\n"])),
                   max_size=5).map("".join)


@st.composite
def conversations(draw):
    """(messages, add_generation_prompt): optional system, then user/assistant alternating."""
    messages = [{"role": "system", "content": draw(content)}] if draw(st.booleans()) else []
    for i in range(draw(st.integers(1, 5))):
        messages.append({"role": ("user", "assistant")[i % 2], "content": draw(content)})
    prompt = messages[-1]["role"] == "user" and draw(st.booleans())
    return messages, prompt


@SETTINGS
@given(conversations())
def test_ids_equal_transformers_apply_chat_template(tok, hf_tok, conversation):
    messages, prompt = conversation
    # default: special strings in a content are text -- transformers' sanitize_control_tokens=True
    ours = render_chat(tok, messages, add_generation_prompt=prompt)
    assert ours == hf_tok.apply_chat_template(messages, add_generation_prompt=prompt, return_dict=False,
                                              sanitize_control_tokens=True)
    # allow_special: they are special tokens -- transformers' default
    ours_special = render_chat(tok, messages, add_generation_prompt=prompt, allow_special=True)
    assert ours_special == hf_tok.apply_chat_template(messages, add_generation_prompt=prompt, return_dict=False)
    assert tok.decode(ours_special) == hf_tok.apply_chat_template(messages, add_generation_prompt=prompt,
                                                                  tokenize=False)


@SETTINGS
@given(conversations(), st.lists(st.booleans(), min_size=5, max_size=5))
def test_training_mask_equals_transformers_assistant_masks(tok, hf_tok, conversation, weights):
    messages, _ = conversation
    if not any(m["role"] == "assistant" for m in messages):
        messages = [*messages, {"role": "assistant", "content": "ok"}]
    messages = [{**m, "weight": int(w)} if m["role"] == "assistant" else m for m, w in zip(messages, weights * 2)]
    ids, mask = render_for_training(tok, messages, allow_special=True)
    ref = hf_tok.apply_chat_template(messages, return_assistant_tokens_mask=True)
    assert ids == ref["input_ids"] and mask == ref["assistant_masks"]
    # a reply appended to the generation prompt is the conversation with that reply
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    template = chat_template(tok)
    assert (template.render(messages[:last], add_generation_prompt=True)
            + template.render_reply(messages[last]["content"]) == template.render(messages[:last + 1]))


BAD = [
    ([{"role": "tool", "content": "x"}], "messages[0]: unknown role 'tool'"),
    ([{"role": "assistant", "content": "hi"}], "messages[0]: role 'assistant' where 'user' belongs"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     "messages[1]: role 'user' where 'assistant' belongs"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
     "messages[1]: role 'system' where 'assistant' belongs"),
    ([{"role": "user", "content": ["a"]}], "messages[0]: content must be a string, got list"),
]


@pytest.mark.parametrize("messages, message", BAD)
def test_bad_conversations_are_refused_here_and_by_the_template(tok, hf_tok, messages, message):
    with pytest.raises(NumgptError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        render_chat(tok, messages)
    assert "\n" not in str(e.value)
    with pytest.raises(Exception, match="unknown role|out of order|must be a string"):
        hf_tok.apply_chat_template(messages, tokenize=False)


def test_bad_prompts_and_training_conversations(tok, hf_tok):
    turn = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(NumgptError, match="the conversation must end with the user's message for the assistant to answer"):
        render_chat(tok, turn, add_generation_prompt=True)
    with pytest.raises(Exception, match="add_generation_prompt needs the last message to be from the user"):
        hf_tok.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    with pytest.raises(NumgptError, match="no assistant message: nothing to learn"):
        render_for_training(tok, turn[:1])
    with pytest.raises(NumgptError, match=r"messages\[1\]: weight must be 0 or 1"):
        render_for_training(tok, [turn[0], {**turn[1], "weight": 0.5}])
    with pytest.raises(NumgptError, match="a conversation is a non-empty list of messages"):
        render_chat(tok, [])
    with pytest.raises(NumgptError, match=r"messages\[0\]: unknown role \['user'\]"):
        render_chat(tok, [{"role": ["user"], "content": "a"}])
    with pytest.raises(NumgptError, match=r"messages\[1\]: a message is an object with role and content, got str"):
        render_chat(tok, [turn[0], "b"])


# ---- templates in folders ------------------------------------------------------------------------------

def test_a_folder_without_a_template_has_none_and_another_template_is_refused(tmp_path, tok):
    base = train_bpe(TEXT, vocab_size=280, special_tokens=["<|endoftext|>"])
    base.save(tmp_path / "base")
    assert load_chat_template(tmp_path / "base") is None
    with pytest.raises(NumgptError, match="has no chat template"):
        render_chat(base, [{"role": "user", "content": "x"}])
    other = tok.with_special_tokens([], chat_template="{{ messages }}")
    other.save(tmp_path / "other")
    with pytest.raises(NumgptError, match="chat_template is not numgpt's chat format"):
        load_chat_template(tmp_path / "other")
    with pytest.raises(NumgptError, match="already has a chat_template that is not numgpt's"):
        with_chat_tokens(other)
    (tmp_path / "other" / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")   # read first,
    assert load_chat_template(tmp_path / "other") is not None                                 # as transformers does
    other.save(tmp_path / "other", overwrite=True)            # a save replaces that file's template as well
    assert not (tmp_path / "other" / "chat_template.jinja").exists()
    with pytest.raises(NumgptError, match="chat_template is not numgpt's chat format"):
        load_chat_template(tmp_path / "other")
    missing = base.with_special_tokens([], chat_template=CHAT_TEMPLATE)      # the template without the tokens
    with pytest.raises(NumgptError, match="uses '<|system|>', which is not a special token"):
        chat_template(missing)


def test_a_vocabulary_holding_a_chat_string_as_an_ordinary_token_is_refused(tmp_path, capsys):
    """BPE never learns '<|end|>' whole (GPT-2's pattern cuts it into pieces), but a vocab.json may hold it."""
    vocab = {c: b for b, c in bytes_to_unicode().items()} | {"<|end|>": 256}
    with pytest.raises(NumgptError, match=r"'<\|end\|>' is an ordinary token of this vocabulary \(id 256\)"):
        with_chat_tokens(Tokenizer(vocab, []))
    assert main(["train-tokenizer", "x.txt", "--vocab-size", "300", "--chat", "--no-special",
                 "-o", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err == "numgpt: error: --no-special and --chat contradict each other; give one\n"


# ---- adding the chat tokens to a model ------------------------------------------------------------------

def test_gpt2_vocabulary_gets_new_ids_after_its_own(tmp_path):
    tok = with_chat_tokens(Tokenizer.gpt2())
    assert tok.special_tokens == {"<|endoftext|>": 50256, "<|system|>": 50257, "<|user|>": 50258,
                                  "<|assistant|>": 50259, "<|end|>": 50260}
    assert tok.encode("Hello world") == [15496, 995]
    tok.save(tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "system", "content": "Reply in <|user|>-free text."},
                {"role": "user", "content": "Say <|end|> and  <|assistant|>\n twice!<|endoftext|>"}]
    for allow_special, sanitize in ((False, True), (True, False)):
        assert (render_chat(tok, messages, add_generation_prompt=True, allow_special=allow_special)
                == hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False,
                                              sanitize_control_tokens=sanitize))


def test_a_model_grown_by_the_chat_tokens_loads_in_transformers_with_the_same_logits(tmp_path):
    base_tok = train_bpe(TEXT, vocab_size=280, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=base_tok.vocab_size, n_positions=64, n_embd=32, n_layer=2,
                                        n_head=4, initializer_range=0.2)
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    model.save_pretrained(tmp_path / "base")
    base_tok.save(tmp_path / "base")
    config, params = load_checkpoint(tmp_path / "base")
    before = {k: np.array(v) for k, v in params.items()}
    chat_config, chat_params, tok = add_chat_tokens(config, params, load_tokenizer(tmp_path / "base", config))
    assert all(np.array_equal(before[k], params[k]) for k in params)                    # inputs untouched
    V = base_tok.vocab_size
    assert chat_config.vocab_size == tok.vocab_size == V + 4 and chat_params["wte.weight"].shape == (V + 4, 32)
    save_checkpoint(tmp_path / "chat", chat_config, chat_params, tokenizer=tok)

    # transformers' own resizing: old rows kept, new rows the mean plus noise of 1e-9 x the covariance
    model.resize_token_embeddings(V + 4)
    ref_wte = model.transformer.wte.weight.detach().numpy()
    np.testing.assert_array_equal(chat_params["wte.weight"][:V], ref_wte[:V])
    spread = np.sqrt(1e-9) * ref_wte[:V].std(axis=0).max()          # the noise's scale, ~3e-5 of the rows'
    np.testing.assert_allclose(chat_params["wte.weight"][V:], ref_wte[V:], atol=6 * spread, rtol=0)

    hf_chat = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "chat").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "chat")
    messages = [{"role": "user", "content": "what comes after 9?"}, {"role": "assistant", "content": "10"}]
    ids = render_chat(load_chat_template(tmp_path / "chat").tokenizer, messages)
    assert ids == hf_tok.apply_chat_template(messages, return_dict=False) and max(ids) == V + 3
    with torch.inference_mode():
        ref = hf_chat(torch.tensor([ids])).logits.numpy()
    # float32 sums in different orders on a 2-layer model: ~1e-6; a wrong row would be off by > 1e-2
    np.testing.assert_allclose(forward(chat_params, chat_config, np.array([ids]), all_logits=True), ref,
                               atol=1e-5, rtol=0)


def test_the_builtin_model_gains_endoftext_and_the_chat_tokens():
    folder = builtin_model_folder()
    config, params = load_checkpoint(folder)
    tok = load_tokenizer(folder, config)
    assert tok.eot_id is None and config.vocab_size == 1024
    chat_config, chat_params, chat_tok = add_chat_tokens(config, params, tok)
    assert chat_tok.special_tokens == {t: 1024 + i for i, t in enumerate(CHAT_TOKENS)}
    assert (chat_config.vocab_size, chat_config.bos_token_id, chat_config.eos_token_id) == (1029, 1024, 1024)
    mean = params["wte.weight"].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(chat_params["wte.weight"][1024:], np.tile(mean, (5, 1)), rtol=0, atol=1e-7)
    again = add_chat_tokens(chat_config, chat_params, chat_tok)          # already there: nothing changes
    assert again[0] == chat_config and again[1]["wte.weight"].shape == (1029, config.n_embd)
    with pytest.raises(NumgptError, match="the tokenizer has 1029 tokens but the model's vocab_size is 1024"):
        add_chat_tokens(config, params, chat_tok)
