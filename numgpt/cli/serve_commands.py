"""`numgpt serve`: start the OpenAI-compatible server (numgpt/serve/) on a model.

FastAPI, uvicorn and prometheus_client are the `serve` extra and are imported only when the command
runs. The socket is bound here, before uvicorn starts, so that a port in use is one line of error and
`--port 0` can print the free port it got.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

from ..embeddings import POOLINGS
from ..errors import NumgptError
from .inference_commands import MODEL_HELP, _add_adapter, load_draft_model, load_model
from .options import add_speculative_flags, speculative_kwargs

if TYPE_CHECKING:                                  # the serve extra's, imported where serving starts
    import uvicorn

    from ..serve.engine import Engine

SERVE_DESCRIPTION = """\
Serve a model over HTTP with OpenAI's API: POST /v1/completions and /v1/chat/completions (streamed or
not, n samples, logprobs, echo, stop strings, seeds), POST /v1/embeddings (--embedding-pooling), GET /v1/models, /health, /metrics (Prometheus),
POST /tokenize and /detokenize, GET /tokenizer_info (vLLM's shapes), and the playground page at /
(tokens, sampling, attention, BPE, and a chat whose replies show each token's probability, the tokens SFT
trains on, and a reward: --reward-model, or DPO's implicit reward with --reference). Requests share the model through continuous batching: up to
--max-batch sequences decode together, a new one joins at the next step, and more wait in a queue of
--max-queue (beyond it: 429, retry later; a request for more sequences than both hold: 400). The same
request with the same seed gives the same text whatever else runs.

Safe by default: listens on 127.0.0.1 only; with --api-key (or NUMGPT_API_KEY) every route except
/health and the page's files needs "Authorization: Bearer KEY"; bodies over --max-body-bytes get 413; prompt + max_tokens
beyond the context gets 400; requests (and the playground's views) end after --request-timeout seconds;
weights holding NaN or inf are refused at start; prompts are not logged unless --log-prompts.

Chat: a chat model (numgpt sft's, whose tokenizer files hold numgpt's chat template) is served with its
own template: the messages become its tokens, and a reply ends at its <|end|>. A base model such as GPT-2
has none, so chat conditions on a transcript ("User: ..." / "Assistant: ...", ending with "Assistant:")
and stops at the next "\\nUser:". GET /v1/models shows the template in use; --chat-template FILE.json
replaces it (the transcript's parts; 'default': the transcript as it is), --chat-template none turns chat off.
"""

SERVE_EXAMPLES = """\
examples:
  numgpt serve                                   the built-in model on http://127.0.0.1:8000
  numgpt serve --model gpt2 --max-batch 8 --api-key s3cret
  numgpt serve --port 0                          any free port (printed)
  numgpt serve --model runs/dpo --reference runs/sft --dpo-beta 0.1   the Chat tab shows DPO's implicit reward
  numgpt serve --model gpt2 --adapter runs/lora/adapter   GPT-2 with a LoRA adapter merged in
  numgpt serve --embedding-pooling last          /v1/embeddings gives the last token's hidden state
  NUMGPT_API_KEY=s3cret numgpt serve --host 0.0.0.0   reachable from other machines: keep a key
  numgpt serve --speculative ngram --num-draft 4   prompt lookup: greedy text unchanged, fewer forwards; the
                                                 response's usage.speculative says what it did

then:
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "ROMEO:", "max_tokens": 32, "temperature": 0.8, "seed": 1}'
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (continuous batching)",
                       description=SERVE_DESCRIPTION, epilog=SERVE_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help=MODEL_HELP)
    _add_adapter(p)                            # as generate's: merged as the model loads (load_model)
    p.add_argument("--model-name", default=None,
                   help="the model id clients send and /v1/models shows (default: numgpt, or --model's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health and the playground page's own "
                        "files (default: $NUMGPT_API_KEY)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (slots; default 8)")
    p.add_argument("--max-queue", type=int, default=64, help="sequences that may wait for a slot (default 64)")
    p.add_argument("--max-tokens-limit", type=int, default=None,
                   help="the largest max_tokens a request may ask (default: the model's context)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--request-timeout", type=float, default=300.0,
                   help="seconds a request may run before it is ended (default 300)")
    p.add_argument("--chat-template", default=None,
                   help="the transcript template instead of the model's own: a JSON file (or inline JSON) "
                        "replacing its parts, or 'default'; 'none' turns chat off (default: the model's own "
                        "template if it has one, else the transcript)")
    p.add_argument("--log-prompts", action="store_true", help="include prompts in the request log lines")
    p.add_argument("--embedding-pooling", choices=POOLINGS, default="mean",
                   help="/v1/embeddings' vector: the mean of the final hidden states over the input's tokens, "
                        "or the last token's (default mean)")
    add_judge_flags(p)
    add_speculative_flags(p)
    p.set_defaults(run=run_serve)


def load_draft(args: argparse.Namespace, lm, speculative: dict) -> dict:
    """ServerSettings' speculative fields: --speculative, --num-draft checked against the model's context,
    and --draft-model loaded and refused unless it shares the model's tokenizer."""
    if not speculative:
        return {}
    from ..lm import check_draft_model
    from ..speculative import check_num_draft

    if speculative.get("num_draft") is not None:
        check_num_draft(speculative["num_draft"], lm.config)
    draft = None
    if args.draft_model is not None:
        draft = load_draft_model(args.draft_model)
        check_draft_model(lm, draft)
    return {**speculative, "draft_model": draft}


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
        from ..serve import ServerSettings, create_app, load_chat_template
    except ImportError as e:
        raise NumgptError(f"numgpt serve needs the serve extra ({e.name} is missing): "
                          "pip install 'numgpt[serve]'") from None
    for name, value, low in (("--max-batch", args.max_batch, 1), ("--max-queue", args.max_queue, 0),
                             ("--max-body-bytes", args.max_body_bytes, 1), ("--port", args.port, 0)):
        if value < low:
            raise NumgptError(f"{name} must be >= {low}, got {value}")
    if args.port > 65535:
        raise NumgptError(f"--port must be at most 65535, got {args.port}")
    if args.max_tokens_limit is not None and args.max_tokens_limit < 1:
        raise NumgptError(f"--max-tokens-limit must be >= 1, got {args.max_tokens_limit}")
    if not args.request_timeout > 0:
        raise NumgptError(f"--request-timeout must be > 0 seconds, got {args.request_timeout}")
    speculative = speculative_kwargs(args)                 # checked before anything loads
    key = api_key(args.api_key, os.environ.get("NUMGPT_API_KEY"))
    template = load_chat_template(args.chat_template)
    sock = bind(args.host, args.port)
    lm = load_model(args)
    template, note = served_chat_template(args.chat_template, template, lm.tokenizer)
    name = args.model_name or (args.model if args.model else "numgpt")
    settings = ServerSettings(model_name=name, api_key=key, max_batch=args.max_batch, max_queue=args.max_queue,
                              max_tokens_limit=args.max_tokens_limit, max_body_bytes=args.max_body_bytes,
                              request_timeout=args.request_timeout, log_prompts=args.log_prompts,
                              chat_template=template, embedding_pooling=args.embedding_pooling,
                              adapter=None if args.adapter is None else str(args.adapter),
                              **load_judges(args, lm), **load_draft(args, lm, speculative))
    app = create_app(lm, settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    host, port = sock.getsockname()[:2]
    announce(host, port, name, key, loopback(args.host))
    if note:
        print(f"numgpt serve: note: {note}", file=sys.stderr, flush=True)
    server = stopping_server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5),
                            app.state.engine)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:   # uvicorn shuts down gracefully, then re-raises the signal it caught
        pass
    print("numgpt serve: stopped", file=sys.stderr)
    return 0


def stopping_server(config: "uvicorn.Config", engine: "Engine") -> "uvicorn.Server":
    """uvicorn's Server which, told to quit (Ctrl-C, SIGTERM), first asks the engine to stop: the running
    requests end at once with finish_reason "cancelled" (a stream with its last chunk and [DONE]), and
    their responses are sent within uvicorn's graceful shutdown instead of being cut by it (a bare 500 and
    a traceback). uvicorn is imported by run_serve, inside the serve extra."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            engine.stop(wait=False)
            super().handle_exit(sig, frame)

    return _Server(config)


def served_chat_template(flag: str | None, given, tokenizer):
    """(the chat template to serve, a note or None): --chat-template's when given (a note when it replaces
    the model's own), else the model's own when its tokenizer has numgpt's chat format, else `given` (the
    transcript). A model with a chat template numgpt cannot render, and no flag, is a one-line error."""
    from ..posttrain.chat_format import chat_template
    from ..serve import ModelChatTemplate

    try:
        own = chat_template(tokenizer)
    except NumgptError as e:
        if flag is None:
            why = str(e).split(";")[0]          # what is wrong, without posttrain's remedy (for training)
            raise NumgptError(f"the model's chat template cannot be served: {why}; chat over the plain transcript "
                              "with --chat-template default, or turn chat off with --chat-template none") from None
        own = None
    if own is None:
        return given, None
    if flag is None:
        return ModelChatTemplate.of(own, tokenizer), None
    what = "turns chat off" if given is None else "puts the transcript in its place"
    return given, f"the model has its own chat template; --chat-template {what}"


def api_key(flag: str | None, environment: str | None) -> str | None:
    """--api-key, else $NUMGPT_API_KEY, else None (no key). An empty key is refused: it is what
    --api-key "$KEY" gives when KEY is unset, and serving with no key by accident must not be silent."""
    for name, value in (("--api-key", flag), ("NUMGPT_API_KEY", environment)):
        if value is not None:
            if not value.strip():
                raise NumgptError(f"{name} is empty (an unset variable?): give a key, or leave it out to "
                                  "serve without one")
            return value
    return None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error (port in use, unknown host, no permission)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except socket.gaierror:
        raise NumgptError(f"--host {host}: not an address of this machine") from None
    except OSError as e:
        raise NumgptError(f"cannot listen on {host}:{port}: {e.strerror or e}"
                          + (" (another server has it: pick another --port, or 0 for any free one)"
                             if e.errno == 98 else "")) from None
    sock.set_inheritable(True)
    return sock


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def announce(host: str, port: int, name: str, key: str | None, is_loopback: bool) -> None:
    """The URL and copy-paste examples, on stderr (stdout stays clean)."""
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}"
    auth = f" -H 'Authorization: Bearer {key}'" if key else ""
    lines = [f"numgpt serve: {name} on {url}  (Ctrl-C stops)",
             "  try:", f"    curl {url}/v1/completions -H 'Content-Type: application/json'{auth} \\",
             """      -d '{"prompt": "ROMEO:", "max_tokens": 32, "temperature": 0.8, "seed": 1}'""",
             "  or, with the openai package:",
             f"    from openai import OpenAI; client = OpenAI(base_url='{url}/v1', api_key='{key or 'none'}')",
             f"    print(client.completions.create(model='{name}', prompt='ROMEO:', max_tokens=32).choices[0].text)"]
    if not is_loopback and not key:
        lines.append(f"numgpt serve: warning: listening on {host} with no API key: anyone who can reach this "
                     "machine can use it (set --api-key or NUMGPT_API_KEY)")
    print("\n".join(lines), file=sys.stderr, flush=True)


DPO_BETA = 0.1     # TRL's DPOConfig default


def add_judge_flags(p: argparse.ArgumentParser) -> None:
    """The playground Chat tab's judges of a reply: a reward model, DPO's reference."""
    p.add_argument("--reward-model", metavar="RM", default=None,
                   help="the playground's Chat tab shows this reward model's score of each reply (a `numgpt "
                        "reward train` folder, for --model's tokenizer)")
    p.add_argument("--reference", metavar="MODEL", default=None,
                   help="the Chat tab shows DPO's implicit reward of each reply, beta * (log pi - log pi_ref), "
                        "against this model (e.g. the SFT run a `numgpt dpo` run started from; same vocabulary)")
    p.add_argument("--dpo-beta", type=float, default=None, metavar="B",
                   help=f"beta of that implicit reward (default {DPO_BETA}, TRL's; needs --reference)")


def load_judges(args: argparse.Namespace, lm) -> dict:
    """ServerSettings' reward_model and reference from --reward-model, --reference and --dpo-beta (built here:
    numgpt.serve does not import posttrain), each checked against the served model's vocabulary."""
    from ..serve import Reference
    if args.dpo_beta is not None and args.reference is None:
        raise NumgptError("--dpo-beta needs --reference MODEL (the model the implicit reward compares against)")
    beta = DPO_BETA if args.dpo_beta is None else args.dpo_beta
    if not (beta > 0 and beta < float("inf")):
        raise NumgptError(f"--dpo-beta must be a positive number, got {args.dpo_beta}")
    out = {}
    if args.reference is not None:
        ref = load_model(argparse.Namespace(model=args.reference))
        if not same_vocabulary(ref.tokenizer, lm.tokenizer):
            raise NumgptError(f"--reference {args.reference}: its vocabulary is not the served model's, so it "
                              "cannot score the same tokens; give the model the served one was tuned from")
        out["reference"] = Reference(ref, beta, args.reference)
    if args.reward_model is not None:
        out["reward_model"] = reward_model(args.reward_model, lm.tokenizer)
    return out


def reward_model(folder: str, tokenizer):
    """--reward-model's RewardModel: numgpt.posttrain.reward's model, its score of one conversation."""
    from ..serve import RewardModel
    try:
        from ..posttrain.reward import check_same_tokenizer, load_reward_model
    except ImportError:
        raise NumgptError("--reward-model needs numgpt.posttrain.reward, which this numgpt does not have") from None
    rm = load_reward_model(folder)
    check_same_tokenizer(rm.tokenizer, tokenizer, f"--reward-model {folder}")
    return RewardModel(folder, lambda conversation: float(rm.score([conversation])[0]))


def same_vocabulary(a, b) -> bool:
    """Whether two tokenizers give every id the same bytes (and the same special tokens)."""
    return (a.vocab_size == b.vocab_size and a.special_tokens == b.special_tokens
            and all(a.token_bytes(i) == b.token_bytes(i) for i in range(a.vocab_size)))
