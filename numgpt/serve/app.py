"""The HTTP app: OpenAI's /v1/completions and /v1/chat/completions over the continuous-batching engine,
plus /v1/embeddings, /v1/models, /health, /metrics, /tokenize, /detokenize, /tokenizer_info and the playground (/,
/v1/explain/*).

    app = create_app(numgpt.load(), ServerSettings(api_key="..."))   # an ASGI app (FastAPI)

Every error is OpenAI's body {"error": {"message", "type", "param", "code"}} with no traceback (errors.py):
400 for a request the server cannot serve (a field that fails the schema, which is named; prompt +
max_tokens beyond the context, more sequences than --max-batch + --max-queue), 401 for a missing or wrong
key, 404/405 for unknown routes, 413 for a body over the limit, 429 when every slot and the queue are full
(retry later), 500 for the model's failure or a bug (a bug is logged, not shown), 504 past
--request-timeout. The server keeps serving after any of them.

Who does what: routes.py, explain_routes.py and chat_explain.py are the routes, completions.py turns
requests into the engine's work and its events into responses, engine.py owns the model thread,
middleware.py wraps every request (body limit, key, log line).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..lm import check_draft_model
from ..model import check_finite_weights
from .chat_explain import chat_explain_router
from .completions import Completions
from .engine import Engine
from .errors import install_error_handlers
from .explain_routes import explain_router
from .metrics import Metrics
from .middleware import install_middleware
from .routes import openai_router
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def create_app(lm, settings: ServerSettings = ServerSettings(), *, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app serving `lm` (a numgpt.LanguageModel). The engine's model thread runs while the
    app is up (its lifespan). Weights holding NaN or inf are refused here, naming the tensor: served,
    they would fail every request."""
    check_finite_weights(lm.params)
    draft = settings.draft_model
    if draft is not None:
        check_draft_model(lm, draft)
    engine = engine or Engine(lm.params, lm.config, lm.tokenizer, max_batch=settings.max_batch,
                              max_queue=settings.max_queue, speculative=settings.speculative,
                              num_draft=settings.num_draft, draft=None if draft is None else (draft.params, draft.config))
    metrics = Metrics(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="numgpt", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible completions from a GPT-2 written in NumPy.")
    app.state.engine, app.state.metrics = engine, metrics
    install_error_handlers(app)
    app.include_router(openai_router(Completions(lm, settings, engine, metrics)))
    app.include_router(explain_router(lm, settings))   # the playground page and /v1/explain/*
    app.include_router(chat_explain_router(lm, settings))   # /v1/explain/chat: the page's Chat tab
    install_middleware(app, settings, metrics)
    return app


def _version() -> str:
    from .. import __version__
    return __version__
