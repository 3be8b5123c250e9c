"""What wraps every request, as plain ASGI middleware: the body-size limit (413), the API key (401,
compared in constant time; /health and the playground page's files are open), and one log line per
request (method, route, status, tokens, time; the prompt only with --log-prompts)."""

from __future__ import annotations

import hmac
import json
import logging
import time

from .errors import error_json

log = logging.getLogger("numgpt.serve")

# open without the key: /health, and the playground's page and files (they hold no data: the page asks its
# user for the key and sends it as Authorization: Bearer on every API call; /v1 and /v1/explain stay shut)
OPEN_ROUTES = ("/health", "/", "/static/playground.js", "/static/playground.css")


def install_middleware(app, settings, metrics) -> None:
    """Outermost first: logging sees every status, including the limit's and the key's refusals."""
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(APIKey, key=settings.api_key)
    app.add_middleware(RequestLog, metrics=metrics, log_prompts=settings.log_prompts,
                       routes=route_paths(app.routes))


def route_paths(routes) -> frozenset[str]:
    """Every path the app serves, into included routers too (the metrics' route labels)."""
    out = set()
    for r in routes:
        if hasattr(r, "path"):
            out.add(r.path)
        elif hasattr(r, "original_router"):
            out |= route_paths(r.original_router.routes)
    return frozenset(out)


async def send_error(send, status: int, message: str, code: str | None, *, headers=()) -> None:
    body = json.dumps(error_json(message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, by Content-Length before reading, or while reading."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await send_error(send, 413, f"the request body is over the server's limit of {self.limit} "
                                    "bytes (--max-body-bytes)", "body_too_large")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await send_error(send, 413, f"the request body is over the server's limit of "
                                        f"{self.limit} bytes (--max-body-bytes)", "body_too_large")
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()    # after the body: the disconnect, when it comes

        return await self.app(scope, replay, send)


class APIKey:
    """With a key set, every route but OPEN_ROUTES needs `Authorization: Bearer KEY`."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, None if key is None else key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope["path"] in OPEN_ROUTES:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        token = given[7:] if given[:7].lower() == b"bearer " else b""
        if not hmac.compare_digest(token, self.key):
            return await send_error(send, 401, "a missing or wrong API key: send Authorization: Bearer KEY",
                                    "invalid_api_key", headers=[(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


class RequestLog:
    """One line per request once its response has ended; also feeds the request metrics."""

    def __init__(self, app, metrics, log_prompts: bool, routes: frozenset[str]):
        # metrics label any other path "other": a scanner's made-up paths must not grow the label set
        self.app, self.metrics, self.log_prompts, self.routes = app, metrics, log_prompts, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), [500]
        scope.setdefault("state", {})

        async def watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            took = time.monotonic() - started
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(took)
            info = scope["state"].get("log", {})
            tokens = f"{info.get('prompt_tokens', 0)}+{info.get('completion_tokens', 0)} tokens" if info else "-"
            prompt = f" prompt={info['prompt']!r}" if self.log_prompts and "prompt" in info else ""
            log.info("%s %s %d %s %.3fs%s", scope["method"], scope["path"], status[0], tokens, took, prompt)

