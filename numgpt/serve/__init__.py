"""numgpt serve: an OpenAI-compatible HTTP server over continuous batching (the `serve` extra:
FastAPI, uvicorn, prometheus_client).

    engine.py      the model thread: slots, a bounded queue, one decode step over every running sequence
    schemas.py     request/response bodies (pydantic): validation and /openapi.json
    app.py         the routes: /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics,
                   /tokenize, /detokenize; errors in OpenAI's shape
    chat.py        the chat template (GPT-2 has none: one explicit transcript format)
    middleware.py  body limit, API key, one log line per request
    metrics.py     Prometheus metrics in the app's own registry
"""

from .app import ServerSettings, create_app
from .chat import ChatTemplate, load_chat_template
from .engine import Engine, SequenceRequest

__all__ = ["ServerSettings", "create_app", "ChatTemplate", "load_chat_template", "Engine", "SequenceRequest"]
