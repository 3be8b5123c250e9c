"""Speculative decoding benchmark: tokens/s of plain decoding, prompt lookup (--speculative ngram) and a draft
model (--speculative draft), greedy, on text where drafting applies; every speculative output is checked equal
to the plain one token for token before it is timed. Medians of --runs runs (the methods interleaved in each
run, each after a --settle pause), and each method's ratio to plain measured in the same run (the median of
those ratios), with the acceptance rate and tokens per target forward. Each drafter adapts its draft length per row (at most K,
speculative.DraftLengths); --compare-fixed adds each one drafting K every round ("ngram-fixed", "draft-fixed").
Prompt lookup drafts only where the last MIN_NGRAM (3) tokens occurred before, and a draft model only where
its likeliest token has at least DRAFT_CONFIDENCE (0.5); --compare-gates adds each without its gate, as
they drafted before 2026-12-07: "ngram-min1" from a suffix match of any length, "draft-conf0" every token.

    python bench/bench_speculative.py                           ~2-4 minutes on the 2-core machine
    python bench/bench_speculative.py --draft runs/draft/sft --runs 5 --new-tokens 64

Cases:
  chat/quote   the built-in chat model (numgpt.load("chat")) answering user messages that quote their context:
               "Repeat after me: ...", "Fix the spelling: ...", "Write this in capitals: ...", with a
               sentence of Shakespeare-like words; replies end at the chat template's end token
  chat/tasks   the same model on the synthetic tasks of numgpt/posttrain/synth.py (held-out split, every
               family: add, sub, count, reverse, next, convert, identity), as its evaluation prompts them
  chat/history the same tasks with 1-3 earlier exchanges in the conversation (synth's turns=4): the answer
               templates the reply reuses are in its context
  124M/quote   a random 124M GPT-2 saved by transformers (GPT2LMHeadModel(GPT2Config()), seed 0,
               initializer_range 0.05), prompted with the first 96 tokens of tinyshakespeare followed by
               their first 16 again (the text quoting itself); greedy, no end-of-text stop. Prompt lookup only:
               no smaller model shares its random weights' behaviour.
  quote        a model that quotes its context (--quote-model, default runs/quote/latest: the built-in
               Shakespeare model fine-tuned by dev/make_quote_model.sh to repeat a passage it has read),
               prompted with --quotes passages of tinyshakespeare's last 10% (never trained on), each
               followed by a blank line and its first 8 tokens; greedy up to the passage's end, no stop.
               Prompt lookup, and a draft model when --quote-draft exists (dev/make_quote_draft.sh: 2
               layers of 128 channels trained on the quote model's data, the same tokenizer).
               --onnx adds ONNX Runtime peers of the same weights to this case (issue 23: speculative
               decoding against ONNX Runtime's int8 GPT-2): the quote model exported by bench/export_peers.py
               as bench_decode.py's peers are (torch.onnx.export of a module with explicit KV-cache tensors,
               then onnxruntime.quantization.quantize_dynamic(weight_type=QInt8) for "ort-int8"), 2 threads,
               greedy, batch 1, each prompt prefilled then decoded to the same length as numgpt's. Their
               tokens/s are timed in the same runs, interleaved with numgpt's methods, and the table gives
               how many of their greedy tokens equal numgpt's (int8 rounds the weights, so it may differ).
The draft model (--draft, default runs/draft/sft) is what dev/make_draft_model.sh trains: 2 layers, 96
channels, the chat model's tokenizer; the draft cases are skipped (said so) when it does not exist.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import numgpt  # noqa: E402,F401  before NumPy: it asks OpenBLAS to let idle threads sleep (numgpt/machine.py)
sys.path.insert(0, str(REPO / "bench"))
from bench_inference import make_checkpoint  # noqa: E402
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

QUOTES = ("Repeat after me: {s}", "Fix the spelling: {s}", "Write this in capitals: {s}", "Say it again: {s}")
SENTENCES = ("the king and the queen walk to the castle in the morning",
             "to be or not to be that is the question",
             "a good name is better than gold and silver",
             "the cat sat on the mat and looked at the moon")


def chat_cases(lm, n_tasks: int) -> dict[str, list[list[int]]]:
    import numpy as np
    from numgpt.posttrain.chat_format import chat_template
    from numgpt.posttrain.synth import prompt_messages, synthesize

    template = chat_template(lm.tokenizer)
    quote = [template.render([{"role": "user", "content": q.format(s=s)}], add_generation_prompt=True)
             for q, s in zip(QUOTES, SENTENCES)]
    tasks = synthesize(n_tasks, rng=np.random.default_rng(0), split="heldout")
    task = [template.render(prompt_messages(t), add_generation_prompt=True) for t in tasks]
    history = [template.render(prompt_messages(t), add_generation_prompt=True)
               for t in synthesize(n_tasks, rng=np.random.default_rng(1), split="heldout", turns=4)]
    return {"chat/quote": quote, "chat/tasks": task, "chat/history": history}, template.end_id


def run_method(lm, prompts, method, draft, new_tokens, stop):
    """(seconds, tokens, stats) of greedy decoding of every prompt alone (batch 1), and the outputs;
    new_tokens: one limit for all, or a list of one per prompt."""
    from numgpt.generate import generate_ids
    from numgpt.sampling import GREEDY
    from numgpt.speculative import SpeculativeStats, speculation

    outs, total, tokens = [], SpeculativeStats(), 0
    limits = new_tokens if isinstance(new_tokens, list) else [new_tokens] * len(prompts)
    t = time.perf_counter()
    for p, new_tokens in zip(prompts, limits):
        kind, fixed = method.removesuffix("-fixed"), method.endswith("-fixed")   # -fixed: K drafts every round
        ungated = kind.endswith(("-min1", "-conf0"))                           # --compare-gates
        kind = kind.removesuffix("-min1").removesuffix("-conf0")
        gates = {"min_ngram": 1, "draft_confidence": 0.0} if ungated else {}
        spec = None if method == "plain" else speculation(kind, NUM_DRAFT, lm.config, headroom=new_tokens, adaptive=not fixed,
                                                          draft=(draft.params, draft.config) if kind == "draft" else None,
                                                          **gates)
        out = generate_ids(lm.params, lm.config, [p], max_new_tokens=new_tokens, sampling=GREEDY,
                           stop_ids=stop, speculative=spec)[0]
        outs.append(out)
        tokens += len(out)
        if spec is not None:
            total.add(spec.stats[0])
    return time.perf_counter() - t, tokens, total, outs


def bench_case(name, lm, prompts, methods, draft, args, stop, peers=None):
    """Times each of `methods` (numgpt's) and of `peers` (name -> a callable returning (seconds, tokens,
    outputs)), interleaved in each of --runs runs; prints the medians and each one's ratio to plain."""
    peers = peers or {}
    plain = run_method(lm, prompts, "plain", None, args.new_tokens, stop)[3]
    for m in methods[1:]:                                    # exactness first: the same tokens as plain
        got = run_method(lm, prompts, m, draft, args.new_tokens, stop)[3]
        assert got == plain, f"{name}: {m} differs from plain decoding"
    same = {}
    for m, peer in peers.items():                            # a peer's greedy tokens: how many equal numgpt's
        got = peer()[2]
        same[m] = sum(sum(a == b for a, b in zip(x, y)) for x, y in zip(got, plain))
    methods = methods + list(peers)
    rates = {m: [] for m in methods}
    ratios = {m: [] for m in methods}
    stats = {}
    for r in range(args.runs):
        order = methods if r % 2 == 0 else methods[::-1]
        now = {}
        for m in order:
            time.sleep(args.settle)                          # the last engine's idle threads stop spinning
            if m in peers:
                seconds, tokens, _ = peers[m]()
                st = None
            else:
                seconds, tokens, st, _ = run_method(lm, prompts, m, draft, args.new_tokens, stop)
            now[m] = tokens / seconds
            stats[m] = st
        for m in methods:
            rates[m].append(now[m])
            ratios[m].append(now[m] / now["plain"])
    tokens = sum(len(o) for o in plain)
    print(f"\n{name}: {len(prompts)} prompts, {tokens} new tokens in all (greedy, batch 1, --num-draft {NUM_DRAFT})")
    print(f"  {'method':<11} {'tokens/s':>9} {'x plain':>8} {'accepted':>9} {'tokens/forward':>15}")
    for m in methods:
        st = stats[m]
        plain_like = m == "plain" or m in peers                # one forward a token
        acc = "" if plain_like else f"{st.acceptance_rate:.1%}"
        tpf = "1.00" if plain_like else f"{st.tokens_per_forward:.2f}"
        agree = f"   greedy tokens equal to numgpt's: {same[m]}/{tokens}" if m in peers else ""
        print(f"  {m:<11} {statistics.median(rates[m]):>9.1f} {statistics.median(ratios[m]):>7.2f}x {acc:>9} {tpf:>15}{agree}")
    for m in peers:
        for ours in methods:
            if ours not in peers:
                over = statistics.median(a / b for a, b in zip(rates[ours], rates[m]))
                print(f"  {ours} / {m}: {over:.2f}x (median of the runs' ratios)")


NUM_DRAFT = 4


def with_variants(methods: list[str], args) -> list[str]:
    """methods, and with --compare-fixed each speculative one again drafting K every round ("-fixed"), with
    --compare-gates each without its gate ("ngram-min1", "draft-conf0")."""
    more = [f"{m}-fixed" for m in methods if m != "plain"] if args.compare_fixed else []
    if args.compare_gates:
        more += [{"ngram": "ngram-min1", "draft": "draft-conf0"}[m] for m in methods if m != "plain"]
    return methods + more


def quote_case(args) -> None:
    """The quote case (module docstring): each prompt alone, greedy up to its passage's length."""
    import numgpt
    sys.path.insert(0, str(REPO / "dev"))
    from quote_corpus import passages
    import numpy as np

    if not Path(args.quote_model).exists():
        print(f"quote model: none at {args.quote_model} (sh dev/make_quote_model.sh makes it): quote case skipped")
        return
    lm = numgpt.load(args.quote_model)
    text = Path(args.text).read_text(encoding="utf-8")
    held = passages(text[int(0.9 * len(text)):], np.random.default_rng(1), shortest=80, longest=180)
    picked = [held[i] for i in np.random.default_rng(2).choice(len(held), args.quotes, replace=False)]
    room = lm.config.n_positions
    prompts, limits = [], []
    for q in picked:
        ids = lm.encode(q)[:(room - 12) // 2]
        prompts.append(ids + lm.encode("\n\n") + ids[:8])
        limits.append(min(len(ids) - 8, room - len(prompts[-1])))       # up to the passage's end
    print(f"quote model: {args.quote_model}, n_layer={lm.config.n_layer}, n_embd={lm.config.n_embd}, "
          f"vocab {lm.config.vocab_size}; passages of {min(limits) + 8}-{max(limits) + 8} tokens")
    draft = None
    if Path(args.quote_draft).exists():
        from numgpt.lm import check_draft_model
        draft = numgpt.load(args.quote_draft)
        check_draft_model(lm, draft)
        d = draft.config
        print(f"quote draft model: {args.quote_draft}, n_layer={d.n_layer}, n_embd={d.n_embd}, the same tokenizer")
    else:
        print(f"quote draft model: none at {args.quote_draft} (sh dev/make_quote_draft.sh makes it): no draft method")
    methods = ["plain", "ngram"] + (["draft"] if draft is not None else [])
    with tempfile.TemporaryDirectory() as tmp:
        peers = (onnx_peers(Path(args.quote_model), lm.config, Path(args.onnx_dir or tmp), prompts, limits)
                 if args.onnx else None)
        bench_case("quote", lm, prompts, with_variants(methods, args), draft,
                   argparse.Namespace(**{**vars(args), "new_tokens": limits}), stop=[], peers=peers)


def onnx_peers(model: Path, config, folder: Path, prompts: list[list[int]], limits: list[int]) -> dict:
    """ONNX Runtime fp32 and int8 of `model`'s weights (export_peers; made once in `folder`) as bench_case's
    peers: each decodes every prompt alone, greedy, to its limit. config: the model's GPTConfig."""
    import itertools
    import export_peers as ep
    import numpy as np

    fp32 = ep.export_onnx(model, folder)
    paths = {"ort-fp32": fp32, "ort-int8": ep.quantize_onnx(fp32)}

    def decode(session) -> tuple[float, int, list[list[int]]]:
        outs = []
        t = time.perf_counter()
        for p, n in zip(prompts, limits):      # islice: no forward past the last token, as numgpt's decoding
            steps = itertools.islice(ep.ort_steps(session, config, np.array([p]), n), n)
            outs.append([int(s[0, 0]) for s in steps])
        return time.perf_counter() - t, sum(map(len, outs)), outs

    return {name: (lambda s=ep.ort_session(path): decode(s)) for name, path in paths.items()}


def main() -> None:
    global NUM_DRAFT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per case (default 3)")
    ap.add_argument("--new-tokens", type=int, default=48, help="new tokens per prompt at most (default 48)")
    ap.add_argument("--num-draft", type=int, default=4, help="K, tokens drafted per forward (default 4)")
    ap.add_argument("--tasks", type=int, default=7, help="synthetic tasks in chat/tasks (default 7: one per family)")
    ap.add_argument("--draft", default=str(REPO / "runs" / "draft" / "sft"),
                    help="the draft model for the chat model (dev/make_draft_model.sh; default runs/draft/sft)")
    ap.add_argument("--only", metavar="TEXT", help="run only the cases whose name contains TEXT")
    ap.add_argument("--text", default=str(SHAKESPEARE), help="the text the 124M case quotes (tinyshakespeare)")
    ap.add_argument("--no-124m", action="store_true", help="skip the random 124M case (it needs torch to make it)")
    ap.add_argument("--quote-model", default=str(REPO / "runs" / "quote" / "latest"),
                    help="the quote case's model (dev/make_quote_model.sh; skipped, said so, when missing)")
    ap.add_argument("--quote-draft", default=str(REPO / "runs" / "quote-draft" / "latest"),
                    help="the quote case's draft model (dev/make_quote_draft.sh; default runs/quote-draft/latest; "
                         "the draft method is left out, said so, when missing)")
    ap.add_argument("--quotes", type=int, default=8, help="passages the quote case repeats (default 8)")
    ap.add_argument("--compare-fixed", action="store_true",
                    help="also time each drafter drafting K every round (speculation(adaptive=False)) beside "
                         "the default, which drafts as far as its drafts have held lately")
    ap.add_argument("--compare-gates", action="store_true",
                    help="also time each drafter without its gate, as before 2026-12-07: prompt lookup from a "
                         "suffix match of any length (min_ngram=1), the draft model at every token "
                         "(draft_confidence=0)")
    ap.add_argument("--onnx", action="store_true",
                    help="add ONNX Runtime fp32 and int8 of the quote model's weights to the quote case (needs "
                         "torch, onnxscript and onnxruntime; export as bench/export_peers.py says)")
    ap.add_argument("--onnx-dir", metavar="DIR", help="keep the --onnx exports in DIR (default: a temporary folder)")
    ap.add_argument("--settle", type=float, default=0.2, metavar="S",
                    help="seconds of pause before each timed method, so that the last one's idle threads (ONNX "
                         "Runtime's spin after its runs) do not eat into the next one's time (default 0.2)")
    args = ap.parse_args()
    NUM_DRAFT = args.num_draft

    import numgpt
    chat = numgpt.load("chat")
    draft = numgpt.load(args.draft) if Path(args.draft).exists() else None
    c = chat.config
    print(f"chat model: numgpt.load('chat'), n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, "
          f"n_positions={c.n_positions}, vocab {c.vocab_size}")
    if draft is None:
        print(f"draft model: none at {args.draft} (sh dev/make_draft_model.sh makes it): draft cases skipped")
    else:
        d = draft.config
        from numgpt.lm import check_draft_model
        check_draft_model(chat, draft)
        print(f"draft model: {draft.folder}, n_layer={d.n_layer}, n_head={d.n_head}, n_embd={d.n_embd}, "
              f"n_positions={d.n_positions}, the chat model's tokenizer")
    if args.only is None or args.only in "quote":
        quote_case(args)
    if args.only == "quote":
        return
    cases, end_id = chat_cases(chat, args.tasks)
    methods = with_variants(["plain", "ngram"] + (["draft"] if draft is not None else []), args)
    for name, prompts in cases.items():
        if args.only is None or args.only in name:
            bench_case(name, chat, prompts, methods, draft, args, stop=[end_id])
    if args.no_124m or (args.only is not None and args.only not in "124M/quote"):
        return
    with tempfile.TemporaryDirectory() as tmp:
        make_checkpoint(Path(tmp))
        lm = numgpt.load(tmp)
        ids = lm.encode(Path(args.text).read_text(encoding="utf-8"))[:96]
        bench_case("124M/quote", lm, [ids + ids[:16]], with_variants(["plain", "ngram"], args), None, args, stop=[])


if __name__ == "__main__":
    main()
