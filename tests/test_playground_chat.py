"""The playground's Chat tab (issue 22, item 5): POST /v1/explain/chat (numgpt/serve/chat_explain.py) and the
tab itself in a real browser.

The endpoint, in process (FastAPI's TestClient), on a chat model -- the built-in model grown by the chat tokens
(the reference) and a perturbed copy of it (the policy) -- and on the built-in base model: the reply's
probabilities against transformers' GPT2LMHeadModel (float64) on the same saved folders, its SFT mask against
posttrain's render_for_training and transformers' assistant mask, DPO's implicit reward against the sums of
both models' log-probabilities (and posttrain.dpo.implicit_reward), a reward model's score against
transformers' GPT2ForSequenceClassification; errors in OpenAI's shape, bad serve flags in one line.

The tab: `numgpt serve --reference ... --dpo-beta ... --reward-model ...` on a free loopback port, headless
Chromium (Debian's, never `playwright install`, launched as tests/test_playground.py does): a message sent,
the streamed reply drawn as tokens whose colours, marks and rewards are the endpoint's numbers. Its screenshot is checked and,
with NUMGPT_PLAYGROUND_SCREENSHOTS=docs, written to docs/playground-chat.png (the README's picture).
"""

import functools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from references import reference

import numgpt
from numgpt.cli import main
from numgpt.posttrain.chat_format import add_chat_tokens, chat_template, render_for_training
from numgpt.posttrain.dpo import implicit_reward

torch = reference("torch")
transformers = reference("transformers")
serve = pytest.importorskip("numgpt.serve", reason="the serve extra is not installed")
from numgpt.cli.serve_commands import reward_model  # noqa: E402 -- after the serve extra's check
from numgpt.serve import ModelChatTemplate, Reference, RewardModel, ServerSettings, create_app  # noqa: E402

BETA = 0.25
MESSAGES = [{"role": "system", "content": "You count."}, {"role": "user", "content": "1, 2,"},
            {"role": "assistant", "content": "3"}, {"role": "user", "content": "and then?"},
            {"role": "assistant", "content": "4, 5, 6"}]
CHROMIUM = "/usr/bin/chromium"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- the models --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base():
    return numgpt.load()


@pytest.fixture(scope="module")
def folders(base, tmp_path_factory):
    """(reference, policy): the built-in model grown by the chat tokens, and that model with every weight
    moved by a little deterministic noise (a stand-in for a tuned policy: its log-probabilities differ)."""
    root = tmp_path_factory.mktemp("chat")
    config, params, tok = add_chat_tokens(base.config, base.params, base.tokenizer)
    ref = numgpt.save_checkpoint(root / "reference", config, params, tokenizer=tok)
    rng = np.random.default_rng(0)
    moved = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in params.items()}
    return ref, numgpt.save_checkpoint(root / "policy", config, moved, tokenizer=tok)


@pytest.fixture(scope="module")
def rm_folder(folders):
    """A reward model for the chat vocabulary: transformers' GPT2ForSequenceClassification(num_labels=1) over the
    reference's body, its score head drawn by torch's seeded init, saved with the chat tokenizer (what
    posttrain.reward.load_reward_model reads, as it reads `numgpt reward train`'s RUN/model)."""
    torch.manual_seed(0)
    model = transformers.GPT2ForSequenceClassification.from_pretrained(folders[0], num_labels=1)
    tokenizer = numgpt.load(folders[0]).tokenizer
    model.config.pad_token_id = tokenizer.eot_id
    out = folders[0].parent / "rm"
    model.save_pretrained(out)
    tokenizer.save(out)
    return out


@pytest.fixture(scope="module")
def policy(folders):
    return numgpt.load(folders[1])


class RecordingRewardModel:
    """A reward model that remembers what it scored and answers a fixed function of it (the route only
    carries the conversation to it; posttrain.reward's own scoring is tested beside that module)."""

    def __init__(self):
        self.seen = []

    def __call__(self, conversation) -> float:
        self.seen.append(conversation)
        return 0.5 * len(conversation[-1]["content"]) - 1.0


@pytest.fixture(scope="module")
def rm():
    return RecordingRewardModel()


@pytest.fixture(scope="module")
def reference_lm(folders):
    return numgpt.load(folders[0])


@pytest.fixture(scope="module")
def client(policy, reference_lm, rm):
    from fastapi.testclient import TestClient
    template = ModelChatTemplate.of(chat_template(policy.tokenizer), policy.tokenizer)
    settings = ServerSettings(chat_template=template, reward_model=RewardModel("toy-rm", rm),
                              reference=Reference(reference_lm, BETA, "the reference"))
    with TestClient(create_app(policy, settings)) as c:
        yield c


@pytest.fixture(scope="module")
def base_client(base):
    from fastapi.testclient import TestClient
    with TestClient(create_app(base, ServerSettings())) as c:
        yield c


@functools.lru_cache(maxsize=None)
def hf_model(folder):
    """transformers' GPT2LMHeadModel of a saved folder, in float64 (loaded once per folder)."""
    return transformers.GPT2LMHeadModel.from_pretrained(folder).double().eval()


def hf_logprobs(folder, ids: list[int]) -> np.ndarray:
    """ln p(ids[t] | ids[:t]) for t = 1.. by transformers' GPT2LMHeadModel in float64. -> [T - 1]"""
    with torch.no_grad():
        logits = hf_model(folder)(torch.tensor([ids])).logits[0]              # [T, V]
    logp = torch.log_softmax(logits, dim=-1)
    return logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


def prompt_length(tokenizer, messages) -> int:
    return len(chat_template(tokenizer).render(messages[:-1], add_generation_prompt=True))


def error_of(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "\n" not in body["error"]["message"]
    return body["error"]


# ---- the endpoint -----------------------------------------------------------------------------------

# numgpt's forward is float32 (as GPT-2's weights): its log-probabilities carry float32 rounding, about
# 1e-6 relative on logits of a few units; 2e-5 absolute leaves room for that and nothing more
ATOL = 2e-5


def test_chat_model_reply_probabilities_are_transformers(client, policy, folders, torch_one_thread):
    view = client.post("/v1/explain/chat", json={"messages": MESSAGES}).json()
    ids, _ = render_for_training(policy.tokenizer, MESSAGES)
    start = prompt_length(policy.tokenizer, MESSAGES)
    assert view["template"] == "model's own" and view["prompt_tokens"] == start
    assert view["ids"] == ids[start:] == chat_template(policy.tokenizer).render_reply("4, 5, 6")
    assert view["tokens"][-1] == "<|end|>" and "".join(view["tokens"][:-1]) == "4, 5, 6"
    want = hf_logprobs(folders[1], ids)[start - 1:]
    assert np.allclose(view["logprobs"], want, rtol=0, atol=ATOL), np.abs(np.array(view["logprobs"]) - want).max()
    assert np.allclose(view["probabilities"], np.exp(view["logprobs"]), rtol=1e-12, atol=0)


def test_the_mask_is_sfts_and_transformers_assistant_mask(client, policy, folders, torch_one_thread):
    view = client.post("/v1/explain/chat", json={"messages": MESSAGES[:3]}).json()
    ids, mask = render_for_training(policy.tokenizer, MESSAGES[:3])
    start = prompt_length(policy.tokenizer, MESSAGES[:3])
    hf = transformers.AutoTokenizer.from_pretrained(folders[1]).apply_chat_template(
        MESSAGES[:3], return_assistant_tokens_mask=True, return_dict=True)
    assert hf["input_ids"] == ids
    assert view["trained"] == [bool(m) for m in mask[start:]] == [bool(m) for m in hf["assistant_masks"][start:]]
    assert view["trained"] == [True, True] and view["trained_note"] is None     # "3" and <|end|>: learning to stop


def test_implicit_dpo_reward_is_beta_times_the_log_ratio(client, policy, reference_lm, folders, torch_one_thread):
    view = client.post("/v1/explain/chat", json={"messages": MESSAGES}).json()
    ids, _ = render_for_training(policy.tokenizer, MESSAGES)
    start = prompt_length(policy.tokenizer, MESSAGES)
    pi = hf_logprobs(folders[1], ids)[start - 1:].sum()
    pi_ref = hf_logprobs(folders[0], ids)[start - 1:].sum()
    (dpo,) = [r for r in view["rewards"] if r["kind"] == "implicit DPO"]
    assert dpo["beta"] == BETA and dpo["name"] == "the reference"
    assert dpo["policy_logprob"] == pytest.approx(pi, abs=len(view["ids"]) * ATOL)
    assert dpo["reference_logprob"] == pytest.approx(pi_ref, abs=len(view["ids"]) * ATOL)
    assert dpo["value"] == pytest.approx(BETA * (pi - pi_ref), abs=2 * BETA * len(view["ids"]) * ATOL)
    assert abs(dpo["value"]) > 0.01                                   # the two models do differ
    assert dpo["policy_logprob"] == pytest.approx(sum(view["logprobs"]), rel=1e-12)
    # and posttrain.dpo's own implicit reward (what `numgpt dpo` logs), on numgpt's forward: float32 alike
    assert dpo["value"] == pytest.approx(implicit_reward(policy.params, reference_lm.params, policy.config,
                                                         ids[:start], ids[start:], BETA), abs=1e-5)


def test_the_reward_model_scores_the_conversation_with_its_reply(client, rm):
    developer = [{"role": "developer", "content": "You count."}, *MESSAGES[1:]]
    view = client.post("/v1/explain/chat", json={"messages": developer}).json()
    (scored,) = [r for r in view["rewards"] if r["kind"] == "reward model"]
    assert rm.seen[-1] == MESSAGES                                    # developer is the system, as chat renders it
    assert scored == {"kind": "reward model", "name": "toy-rm", "value": 0.5 * len("4, 5, 6") - 1.0}
    assert view["reward_note"] is None


def test_a_real_reward_model_through_the_clis_loader_is_transformers_score(policy, rm_folder, torch_one_thread):
    """--reward-model's RewardModel (serve_commands.reward_model: posttrain.reward's model and score) on the
    route: the reward is GPT2ForSequenceClassification's logit at the reply's last token, in float64."""
    from fastapi.testclient import TestClient
    template = ModelChatTemplate.of(chat_template(policy.tokenizer), policy.tokenizer)
    judge = reward_model(str(rm_folder), policy.tokenizer)
    with TestClient(create_app(policy, ServerSettings(chat_template=template, reward_model=judge))) as c:
        view = c.post("/v1/explain/chat", json={"messages": MESSAGES}).json()
    ids, _ = render_for_training(policy.tokenizer, MESSAGES)
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(rm_folder).double().eval()
    with torch.no_grad():
        want = hf(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0, 0].item()
    assert view["rewards"] == [{"kind": "reward model", "name": str(rm_folder), "value": pytest.approx(want, abs=ATOL)}]


def test_base_model_transcript_has_no_mask_and_says_why(base_client, base, torch_one_thread):
    messages = [{"role": "user", "content": "Who is there?"}, {"role": "assistant", "content": "Romeo, my lord."}]
    view = base_client.post("/v1/explain/chat", json={"messages": messages}).json()
    assert view["template"] == "transcript" and view["trained"] is None and view["rewards"] == []
    assert "no SFT mask" in view["trained_note"] and "--reward-model" in view["reward_note"]
    assert base.decode(view["ids"]) == " Romeo, my lord.\n"          # the rest of the turn after "Assistant:"
    # the prompt is what /v1/chat/completions conditions the reply on
    usage = base_client.post("/v1/chat/completions", json={"messages": messages[:1], "max_tokens": 1}).json()["usage"]
    assert view["prompt_tokens"] == usage["prompt_tokens"]
    prompt = serve.ChatTemplate().render([("user", "Who is there?")])
    ids = base.encode(prompt) + view["ids"]
    want = hf_logprobs(numgpt.lm.builtin_model_folder(), ids)[view["prompt_tokens"] - 1:]
    assert np.allclose(view["logprobs"], want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("messages, status, says", [
    ([{"role": "user", "content": "hi"}], 400, "end the conversation with the assistant's reply"),
    ([{"role": "assistant", "content": "hi"}, {"role": "assistant", "content": "hi"}], 400, "roles out of order"),
    ([{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "y"}], 400,
     "tokens > the model's context of n_positions=128; start a new chat"),
    ([], 400, "messages"),
    ([{"role": "user", "content": "hi"}] * 257, 400, "messages"),
    ([{"role": "tool", "content": "hi"}], 400, "messages.0.role"),
])
def test_bad_requests_are_one_line_errors(client, messages, status, says):
    assert says in error_of(client.post("/v1/explain/chat", json={"messages": messages}), status)["message"]


def test_the_view_needs_the_key_like_every_explain_route(base):
    from fastapi.testclient import TestClient
    with TestClient(create_app(base, ServerSettings(api_key="k"))) as c:
        body = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        assert error_of(c.post("/v1/explain/chat", json=body), 401)["code"] == "invalid_api_key"
        assert c.post("/v1/explain/chat", json=body, headers={"Authorization": "Bearer k"}).status_code == 200


def test_unknown_field_and_chat_off(client, base):
    from fastapi.testclient import TestClient
    r = client.post("/v1/explain/chat", json={"messages": MESSAGES, "top": 3})
    assert "unrecognized request argument supplied: top" in error_of(r, 400)["message"]
    with TestClient(create_app(base, ServerSettings(chat_template=None))) as off:
        e = error_of(off.post("/v1/explain/chat", json={"messages": MESSAGES}), 400)
    assert e["code"] == "chat_disabled" and "--chat-template none" in e["message"]


def test_the_view_honours_the_request_timeout(policy):
    """--request-timeout ends this view too (504, as every explain route)."""
    from fastapi.testclient import TestClient
    template = ModelChatTemplate.of(chat_template(policy.tokenizer), policy.tokenizer)
    with TestClient(create_app(policy, ServerSettings(chat_template=template, request_timeout=1e-6))) as c:
        e = error_of(c.post("/v1/explain/chat", json={"messages": MESSAGES}), 504)
    assert "--request-timeout" in e["message"] and e["code"] == "timeout"


@pytest.mark.parametrize("flags, says", [
    (["--dpo-beta", "0.5"], "--dpo-beta needs --reference MODEL"),
    (["--reference", "builtin", "--dpo-beta", "-1"], "--dpo-beta must be a positive number, got -1.0"),
    (["--reference", "builtin", "--dpo-beta", "nan"], "--dpo-beta must be a positive number, got nan"),
    (["--reference", "builtin"], "its vocabulary is not the served model's"),
])
def test_serve_refuses_bad_judge_flags_in_one_line(folders, capsys, flags, says):
    assert main(["serve", "--port", "0", "--model", str(folders[1]), *flags]) != 0
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err


def test_serve_refuses_a_reward_model_for_another_tokenizer(rm_folder, capsys):
    assert main(["serve", "--port", "0", "--reward-model", str(rm_folder)]) != 0      # the built-in base model
    err = capsys.readouterr().err
    assert f"--reward-model {rm_folder}: a reward model for another tokenizer (1029 tokens)" in err
    assert err.count("\n") == 1


# ---- the tab, in a real browser ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium (never `playwright install`)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        yield b
        b.close()


class Served:
    """`numgpt serve --port 0 ARGS` (the URL is on its first stderr line), stopped with Ctrl-C."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "numgpt", "serve", "--port", "0", *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        first = self.proc.stderr.readline()
        if "numgpt serve:" not in first:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {first}{self.proc.stderr.read()}")
        self.url = first.split(" on ")[1].split()[0]
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=30) == 0
        assert not any("Traceback" in line for line in self.log), "".join(self.log)


def chat_in_browser(browser, url: str, message: str, system: str = "") -> tuple:
    """Open the page, the Chat tab, send `message`; return (page, the explain request, its answer, errors)."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)      # an upper bound, not a measurement: the CI machine may be busy
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("#chat-legend .legend", state="attached")     # the page knows the model
    page.click("#tab-chat")
    assert page.is_hidden("#prompt") and page.is_visible("#chat-input")      # the chat view has its own box
    page.fill("#chat-system", system)
    page.fill("#chat-input", message)
    with page.expect_response(lambda r: r.url.endswith("/v1/explain/chat")) as answer:
        page.click("#chat-send")
    page.wait_for_selector(".turn.assistant .chat-tokens .tok")
    page.wait_for_function("() => document.body.dataset.busy === '0'")
    return page, answer.value.request.post_data_json, answer.value.json(), errors


def colour_of(p: float) -> str:
    """playground.js's colour(p), as the browser reports the hsl it set (rgb)."""
    x = max(0.0, min(1.0, 1 + np.log10(max(p, 1e-4)) / 4))
    return f"hsl({round(120 * x)}, 70%, 82%)"


def test_chat_tab_draws_each_reply_token_with_its_probability_mask_and_reward(browser, folders, rm_folder, policy,
                                                                           tmp_path):
    server = Served("--model", str(folders[1]), "--reference", str(folders[0]), "--dpo-beta", str(BETA),
                    "--reward-model", str(rm_folder))
    try:
        page, sent, view, errors = chat_in_browser(browser, server.url, "1, 2, 3,", system="You count.")
        turns = page.locator(".turn")
        assert turns.count() == 2 and turns.nth(0).inner_text().endswith("1, 2, 3,")
        assert sent["messages"][:2] == [{"role": "system", "content": "You count."},
                                        {"role": "user", "content": "1, 2, 3,"}]
        assert sent["messages"][2]["role"] == "assistant" and len(sent["messages"]) == 3
        tokens = page.locator(".turn.assistant .tok")
        assert tokens.count() == len(view["tokens"]) and view["tokens"][-1] == "<|end|>"
        assert policy.decode(view["ids"][:-1]) == sent["messages"][2]["content"]     # the streamed reply's text
        for i, (p, trained) in enumerate(zip(view["probabilities"], view["trained"])):
            token = tokens.nth(i)
            assert float(token.get_attribute("data-p")) == p
            style = token.evaluate("e => e.style.backgroundColor")
            want = page.evaluate("c => { const e = document.createElement('span'); e.style.backgroundColor = c; "
                                 "return e.style.backgroundColor; }", colour_of(p))
            assert style == want, (i, style, want)
            assert ("trained" in token.get_attribute("class").split()) == trained
            assert f"{100 * p:.2f}%" in token.get_attribute("aria-label")
        assert [r["kind"] for r in view["rewards"]] == ["reward model", "implicit DPO"]
        for r in view["rewards"]:
            shown = page.locator(f".turn.assistant .reward[data-kind='{r['kind']}'] .reward-value").inner_text()
            assert shown == f"{r['value']:.4f}"
        assert f"β {BETA}" in page.locator(".reward[data-kind='implicit DPO']").inner_text()
        assert "underlined: trained on" in page.locator("#chat-legend").inner_text()
        screenshot(page, tmp_path)
        assert page.is_disabled("#chat-system")            # the drawn turns were scored under this prompt
        page.click("#chat-reset")
        assert page.locator(".turn").count() == 0 and page.is_enabled("#chat-system")
        assert errors == []
        page.context.close()
    finally:
        server.stop()


def test_chat_tab_on_a_base_model_says_why_there_is_no_mask(browser):
    server = Served()
    try:
        page, _, view, errors = chat_in_browser(browser, server.url, "Who is there?")
        assert view["trained"] is None and page.locator(".turn.assistant .tok.trained").count() == 0
        notes = page.locator(".turn.assistant > .note:not(.token-detail)").all_inner_texts()
        assert notes == [view["trained_note"], view["reward_note"]] and "no SFT mask" in notes[0]
        last = len(view["tokens"]) - 1
        page.locator(".turn.assistant .tok").nth(last).focus()               # a token's numbers, by keyboard
        p = view["probabilities"][last]
        shown = json.dumps(view["tokens"][last], ensure_ascii=False)             # as JSON.stringify quotes it
        assert page.locator(".token-detail").inner_text() == f"token {last}: {shown}, {100 * p:.2f}%"
        page.set_viewport_size({"width": 375, "height": 800})                 # readable on a phone
        assert page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0
        assert errors == []
        page.context.close()
    finally:
        server.stop()


def screenshot(page, tmp_path: Path) -> None:
    folder = Path(os.environ.get("NUMGPT_PLAYGROUND_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "playground-chat.png"
    page.locator("#view-chat").screenshot(path=str(out), animations="disabled")
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and 5_000 < len(data) < 200_000, (out, len(data))
