"""The playground page in a real browser: headless Chromium from Debian (/usr/bin/chromium, `apt-get
install chromium`) driven by Playwright for Python, against a live `numgpt serve --api-key` with the
built-in model. What the page shows is checked against the API's JSON it received and against the
model and the sampler directly: probabilities are exp(logprob) to the digits shown, attention rows are
the forward's and sum to 1, the bars' kept set is process_logits', a branch's prompt ends with the
chosen token. Every test also checks that the page logged no console error and sent no request beyond
its own origin.

Never `playwright install` (it downloads a browser and fails offline): the tests launch the system
chromium by its path. Where playwright or chromium is missing they skip, saying which (and conftest.py
fails the run when playwright, a reference in references.py, is missing).

Screenshots of each view are written to a temporary folder and checked (PNG, < 200 KB); with
NUMGPT_PLAYGROUND_SCREENSHOTS=docs they are written there instead (the README's pictures:
docs/playground_{tokens,sampling,attention,bpe}.png).
"""

import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

import numgpt
from numgpt.sampling import SamplingOptions, process_logits
from numgpt.teach import STAGES, attention_weights, kvcache_counts, tokens_view

CHROMIUM = "/usr/bin/chromium"
KEY = "playground-key"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VIEWS = ("tokens", "sampling", "attention", "bpe")


def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium (never `playwright install`)")
    return CHROMIUM


@pytest.fixture(scope="module")
def sync_api():
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def lm():
    return numgpt.load()


@pytest.fixture(scope="module")
def server():
    """`numgpt serve --port 0 --api-key KEY` (the URL is on its first stderr line)."""
    proc = subprocess.Popen([sys.executable, "-m", "numgpt", "serve", "--port", "0", "--api-key", KEY],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    first = proc.stderr.readline()
    if "numgpt serve:" not in first:
        proc.kill()
        raise RuntimeError(f"server did not start: {first}{proc.stderr.read()}")
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    yield first.split(" on ")[1].split()[0]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert not any("Traceback" in line for line in log), "".join(log)


@pytest.fixture(scope="module")
def browser(sync_api):
    path = chromium_path()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--headless=new"])
        yield b
        b.close()


class Page:
    """One browser tab on the playground, recording every request, the API's answers and console errors."""

    def __init__(self, browser, url: str, width: int = 1100):
        self.url, self.origin = url, "{0.scheme}://{0.netloc}".format(urlsplit(url))
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.requests, self.errors = [], []
        self.page.on("request", lambda r: self.requests.append(r))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url + "/")
        self.page.wait_for_selector("#key-form:not([hidden])")          # the server has a key: the page asks
        self.page.fill("#key", KEY)
        self.generation = self.call("/v1/completions", lambda: self.page.click("#key-form button"))

    def call(self, path: str, action):
        """Do `action`, which makes the page call the API at `path`; wait until the page has drawn the
        answer; return (request body, response JSON)."""
        with self.page.expect_response(lambda r: urlsplit(r.url).path == path) as answer:
            self.redraw(action)
        r = answer.value
        return r.request.post_data_json, r.json()

    def redraw(self, action) -> None:
        """Do `action` and wait until the page has drawn what it asked for."""
        before = int(self.page.evaluate("() => document.body.dataset.drawn"))
        action()
        self.page.wait_for_function("b => Number(document.body.dataset.drawn) > b && document.body.dataset.busy === '0'",
                                    arg=before)

    def tab(self, view: str) -> None:
        self.redraw(lambda: self.page.click(f"#tab-{view}"))

    def set_range(self, name: str, value) -> None:
        self.page.eval_on_selector(f"#{name}", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }",
                                   str(value))

    def check_clean(self) -> None:
        """No console error; no request left the page's origin."""
        assert self.errors == []
        foreign = [r.url for r in self.requests if not r.url.startswith(self.origin + "/") and not r.url.startswith("data:")]
        assert foreign == []
        self.context.close()


@pytest.fixture
def page(browser, server):
    p = Page(browser, server)
    yield p
    p.check_clean()


def percent(text: str) -> float:
    return float(text.strip().rstrip("%"))


def shown_equals(text: str, probability: float) -> bool:
    """The page shows probabilities as percentages with 2 decimals: equal to exp(logprob) to those digits
    (half a unit of the last digit, plus float slack for a value that sits on the rounding boundary)."""
    return abs(percent(text) - 100 * probability) <= 0.005 + 1e-9


def screenshot(p: Page, view: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("NUMGPT_PLAYGROUND_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"playground_{view}.png"
    target = "main" if view == "tokens" else f"#view-{view}"        # the tokens with the settings above them
    p.page.locator(target).screenshot(path=str(out), animations="disabled")
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and 5_000 < len(data) < 200_000, (out, len(data))


# ---- the tokens view -----------------------------------------------------------------------------------

def test_probabilities_shown_are_exp_of_the_apis_logprobs(page, tmp_path):
    req, resp = page.generation
    assert req["echo"] is True and req["logprobs"] >= 1
    lp = resp["choices"][0]["logprobs"]
    tokens = page.page.locator("#tokens .tok")
    assert tokens.count() == len(lp["tokens"]) > len(req["prompt"])    # the prompt and the completion
    assert [tokens.nth(i).inner_text() for i in range(2)] == [t.replace("\n", "↵\n") for t in lp["tokens"][:2]]
    for i, (logprob, top) in enumerate(zip(lp["token_logprobs"], lp["top_logprobs"])):
        tokens.nth(i).focus()
        chosen = page.page.locator(f"#alternatives .chosen-p[data-index='{i}']")
        if logprob is None:
            assert i == 0 and chosen.inner_text() == "—"
            continue
        assert shown_equals(chosen.inner_text(), math.exp(logprob)), (i, chosen.inner_text(), logprob)
        alternatives = page.page.locator("#alternatives .alt")
        assert alternatives.count() == len(top)
        for k in range(alternatives.count()):
            alt = alternatives.nth(k)
            text = alt.get_attribute("data-text")
            assert shown_equals(alt.locator(".alt-p").inner_text(), math.exp(top[text])), (i, text)
    page.page.locator("#tokens .tok").nth(len(req["prompt"])).hover()
    screenshot(page, "tokens", tmp_path)


def test_keyboard_reaches_every_token_and_its_alternatives(page):
    count = page.page.locator("#tokens .tok").count()
    page.page.focus("#generate")
    reached = set()
    for _ in range(count + 20):                                 # the tabs, then each token in turn
        page.page.keyboard.press("Tab")
        index = page.page.evaluate("() => document.activeElement.classList.contains('tok') ? "
                                   "Number(document.activeElement.dataset.index) : null")
        if index is not None:
            reached.add(index)
        elif reached:
            break
    assert reached == set(range(count))
    page.page.locator("#tokens .tok").nth(3).focus()
    page.page.keyboard.press("Enter")                           # to the alternatives
    assert page.page.evaluate("() => document.activeElement.classList.contains('alt')")
    page.page.keyboard.press("Escape")                          # and back
    assert page.page.evaluate("() => document.activeElement.dataset.index") == "3"


def test_clicking_an_alternative_branches(page, lm):
    req, resp = page.generation
    root_tokens = page.page.locator("#tokens .tok").count()
    P = len(req["prompt"])
    at = P + 1                                                  # the second generated token
    page.page.locator("#tokens .tok").nth(at).hover()
    alt = page.page.locator("#alternatives .alt:not(.is-chosen):not([disabled])").first
    text = alt.get_attribute("data-text")
    body, answer = page.call("/v1/completions", alt.click)
    generated = [lm.tokenizer.decode([i]) for i in body["prompt"][P:]]
    assert body["prompt"][:P] == req["prompt"] and len(body["prompt"]) == at + 1
    assert lm.tokenizer.decode([body["prompt"][-1]]) == text   # the prompt ends with the chosen token
    assert generated[:-1] == resp["choices"][0]["logprobs"]["tokens"][P:at]
    nodes = page.page.locator("#tree .node")
    assert nodes.count() == 2
    child = page.page.locator("#tree li li .node")               # the branch, nested under the root
    assert child.count() == 1 and child.get_attribute("aria-current") == "true" and json.dumps(text) in child.inner_text()
    new = answer["choices"][0]["logprobs"]["tokens"]
    assert [page.page.locator("#tokens .tok").nth(i).get_attribute("data-index") for i in (0, at)] == ["0", str(at)]
    assert page.page.locator("#tokens .tok").count() == len(new)
    page.redraw(lambda: page.page.click("#tree > li > .node"))   # back to the root
    assert page.page.locator("#tokens .tok").count() == root_tokens
    assert page.page.locator("#tree > li > .node").get_attribute("aria-current") == "true"


# ---- the sampling view ---------------------------------------------------------------------------------

def test_sampling_bars_keep_what_the_sampler_keeps(page, lm, tmp_path):
    page.tab("sampling")
    settings = {"temperature": 0.8, "top_k": 12, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.3}
    for name, value in settings.items():
        req, view = page.call("/v1/explain/sampling", lambda: page.set_range(name, value))
    assert {k: req[k] for k in settings} == settings
    ids = req["prompt"] + req["generated"]
    options = SamplingOptions(**settings)
    logits = numgpt.forward(lm.params, lm.config, np.array([ids]))
    processed = process_logits(logits, options, previous=[ids], generated=[req["generated"]])[0]
    stages = page.page.locator("#stages .stage")
    assert [stages.nth(k).get_attribute("data-stage") for k in range(stages.count())] == list(STAGES)
    for k, stage in enumerate(view["stages"]):
        assert stages.nth(k).locator(".kept-count").inner_text() == str(stage["kept"])
    final = stages.nth(len(STAGES) - 1)
    assert int(final.locator(".kept-count").inner_text()) == int(np.isfinite(processed).sum())
    bars = final.locator(".bar")
    assert bars.count() == len(view["stages"][-1]["top"]) > 0
    for b in range(bars.count()):
        bar = bars.nth(b)
        token = int(bar.get_attribute("data-id"))
        assert bar.get_attribute("data-kept") == str(bool(np.isfinite(processed[token]))).lower()
        if np.isfinite(processed[token]):
            p = view["stages"][-1]["top"][b]["probability"]
            assert shown_equals(bar.locator(".bar-p").inner_text(), p)
    # a position in the prompt: the view follows the selector
    assert page.call("/v1/explain/sampling", lambda: page.page.select_option("#position", "3"))[0]["prompt"] == ids[:3]
    page.redraw(lambda: page.page.select_option("#position", "4"))        # after "ROMEO: I will"
    screenshot(page, "sampling", tmp_path)


# ---- the attention view --------------------------------------------------------------------------------

def test_attention_heatmap_rows_are_the_models(page, lm, tmp_path):
    page.tab("attention")
    page.redraw(lambda: page.page.select_option("#layer", "2"))
    req, view = page.call("/v1/explain/attention", lambda: page.page.select_option("#head", "1"))
    assert (req["layer"], req["head"]) == (2, 1)
    rows = page.page.eval_on_selector_all("table.heatmap tr[data-row]",
                                          "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.dataset.w))")
    shown = np.array([[float(w) for w in row] for row in rows])
    assert shown.tolist() == view["weights"][0]                 # the API's array, every digit
    np.testing.assert_allclose(shown.sum(-1), 1.0, atol=1e-6)   # float32 sums of up to T terms
    w = attention_weights(lm.params, lm.config, req["prompt"])[2, 1]
    assert np.array_equal(shown.astype(np.float32), w)
    gen = page.generation[1]["usage"]
    counts = kvcache_counts(lm.config, gen["prompt_tokens"], gen["completion_tokens"])
    kv = page.page.locator("#kvcache td").all_inner_texts()
    assert kv[:4] == [f"{counts.prompt}, {counts.generated}", f"{counts.computed:,}", f"{counts.reused:,}",
                      f"{counts.computed_without_cache:,}"]
    screenshot(page, "attention", tmp_path)


# ---- the BPE view --------------------------------------------------------------------------------------

def test_bpe_view_is_the_tokenizers_explain(page, lm, tmp_path):
    page.page.fill("#prompt", "ROMEO: Mississippi")
    page.tab("bpe")
    view = tokens_view(lm.tokenizer, "ROMEO: Mississippi")
    pieces = page.page.locator("#bpe .piece")
    assert pieces.count() == len(view.pieces)
    for k, piece in enumerate(view.pieces):
        steps = pieces.nth(k).locator(".steps > li")
        assert steps.count() == 1 + len(piece.steps)
        assert [f"merge rank {s.rank}:" in steps.nth(1 + j).inner_text() for j, s in enumerate(piece.steps)] == \
            [True] * len(piece.steps)
        assert pieces.nth(k).locator(".ids").inner_text() == "ids: " + " ".join(map(str, piece.ids))
    screenshot(page, "bpe", tmp_path)


# ---- the page as a whole -------------------------------------------------------------------------------

def test_readable_at_phone_width(browser, server):
    p = Page(browser, server, width=375)
    try:
        for view in VIEWS:
            if view != "tokens":
                p.tab(view)
            overflow = p.page.evaluate("() => document.documentElement.scrollWidth - "
                                       "document.documentElement.clientWidth")
            assert overflow <= 0, (view, overflow)              # the heatmap scrolls inside its own box
    finally:
        p.check_clean()


def test_the_page_without_a_key_server_starts_at_once(browser, tmp_path):
    """Without --api-key the page asks for nothing and works at once."""
    proc = subprocess.Popen([sys.executable, "-m", "numgpt", "serve", "--port", "0"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        url = proc.stderr.readline().split(" on ")[1].split()[0]
        context = browser.new_context()
        errors = []
        tab = context.new_page()
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.goto(url + "/")
        tab.wait_for_selector("#tokens .tok")
        assert tab.locator("#key-form").is_hidden() and errors == []
        context.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)



# ---- round 2: legends, no duplicate branch, an emptied box, the BPE of a branch ---------------------------

def swatch(page, box: str, label: str) -> str:
    return page.page.locator(f"{box} .swatch[data-label='{label}']").evaluate("e => getComputedStyle(e).backgroundColor")


def background(locator) -> str:
    return locator.evaluate("e => getComputedStyle(e).backgroundColor")


def test_legends_name_the_colours_drawn(page, lm):
    """The token colours and the heatmap have a legend drawn with the same colours (round 2: none):
    the first token (no context) wears the legend's "no context" colour, and the heatmap's top-left cell
    (token 0 attends only to itself: weight 1, the model's) wears the scale's "100%"."""
    labels = page.page.locator("#legend .swatch").evaluate_all("es => es.map(e => e.dataset.label)")
    assert labels == ["no context", "≤ 0.01%", "0.1%", "1%", "10%", "100%"]
    assert background(page.page.locator("#tokens .tok").first) == swatch(page, "#legend", "no context")
    page.tab("attention")
    corner = page.page.locator(".heatmap tr[data-row='0'] td").first
    assert float(corner.get_attribute("data-w")) == 1.0
    assert background(corner) == swatch(page, "#heatmap", "100%")
    colours = [swatch(page, "#heatmap", w) for w in ("0%", "1%", "10%", "25%", "50%", "100%")]
    assert len(set(colours)) == 6


def test_generate_again_adds_no_duplicate_and_an_empty_box_means_its_default(page, lm):
    """Generate with the same prompt, settings and seed shows the root again instead of adding a copy
    (round 2: two identical roots); an emptied max-tokens box sends its default (round 2: 0 tokens)."""
    sent = lambda: sum(urlsplit(r.url).path == "/v1/completions" for r in page.requests)   # noqa: E731
    before = sent()
    page.redraw(lambda: page.page.click("#generate"))
    assert sent() == before and page.page.locator("#tree .node").count() == 1
    page.page.fill("#max_tokens", "")
    page.page.fill("#seed", "2")
    body, answer = page.call("/v1/completions", lambda: page.page.click("#generate"))
    assert body["max_tokens"] == 12 and answer["usage"]["completion_tokens"] == 12
    assert page.page.locator("#tree > li > .node").count() == 2


def test_bpe_view_follows_the_branch_shown(page, lm):
    """After a branch, the BPE tab explains the branch's prompt (its ids as text), not the text box's."""
    req, _ = page.generation
    P = len(req["prompt"])
    page.page.locator("#tokens .tok").nth(P + 1).hover()
    alt = page.page.locator("#alternatives .alt:not(.is-chosen):not([disabled])").first
    body, _ = page.call("/v1/completions", alt.click)
    explained, view = page.call("/v1/explain/tokens", lambda: page.page.click("#tab-bpe"))
    assert explained["text"] == lm.tokenizer.decode(body["prompt"])
    assert "branch at position" in page.page.locator("#bpe-source").inner_text()
