"""The README's picture of the playground's Chat tab (docs/playground-chat.png), taken on a real chat model.

    python dev/playground_chat_screenshot.py --model runs/chat/sft/run --reference runs/chat/pretrain/run \\
        --out docs/playground-chat.png [--reward-model RM] [--message "What is 12 plus 30?"]

Starts `numgpt serve` on a free loopback port with the given judges, opens the page in Debian's headless
Chromium (never `playwright install`), sends the messages (sampled at --temperature with the page's seed), waits for each reply's
tokens, and screenshots the Chat view. tests/test_playground_chat.py checks what the tab draws; this only
takes the picture.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--reference", default=None)
    p.add_argument("--reward-model", default=None)
    p.add_argument("--system", default="")
    p.add_argument("--message", action="append", default=None, help="a user message (repeat for more turns)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0, help="sampled with the page's seed (1); 0 = greedy")
    p.add_argument("--out", default="docs/playground-chat.png")
    args = p.parse_args()
    judges = [*(["--reference", args.reference] if args.reference else []),
              *(["--reward-model", args.reward_model] if args.reward_model else [])]
    server = subprocess.Popen([sys.executable, "-m", "numgpt", "serve", "--port", "0", "--model", args.model,
                               *judges], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        first = server.stderr.readline()
        if "numgpt serve:" not in first:
            raise SystemExit(f"server did not start: {first}{server.stderr.read()}")
        screenshot(first.split(" on ")[1].split()[0], args)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


def screenshot(url: str, args: argparse.Namespace) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.set_default_timeout(300_000)
        page.goto(url + "/")
        page.wait_for_selector("#chat-legend .legend", state="attached")
        page.click("#tab-chat")
        page.fill("#max_tokens", str(args.max_tokens))
        page.eval_on_selector("#temperature", "(e, t) => { e.value = t; e.dispatchEvent(new Event('input')); }",
                              str(args.temperature))
        page.fill("#chat-system", args.system)
        for k, message in enumerate(args.message or ["What is 12 plus 30?"]):
            page.fill("#chat-input", message)
            page.click("#chat-send")
            page.wait_for_selector(f".turn.assistant >> nth={k} >> .chat-tokens .tok")
            page.wait_for_function("() => document.body.dataset.busy === '0'")
        page.locator("#view-chat").screenshot(path=args.out, animations="disabled")
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
