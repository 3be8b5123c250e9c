"""numgpt serve: an OpenAI-compatible HTTP server over continuous batching (the `serve` extra:
FastAPI, uvicorn, prometheus_client).

    engine.py      the model thread: slots, a bounded queue, one decode step over every running sequence
    schemas.py     request/response bodies (pydantic): validation and /openapi.json
    app.py         create_app: the engine, the routes, the error handlers and the middleware put together
    settings.py    ServerSettings: what the server is started with
    routes.py      the OpenAI routes, thin: /v1/completions, /v1/chat/completions, /v1/models, /health,
                   /metrics, /tokenize, /detokenize, /tokenizer_info
    completions.py requests -> the engine's SequenceRequests; engine events -> responses and streams
    errors.py      OpenAI's error shape, built in one place, and the handlers that answer with it
    explain_routes.py  the playground page (static/) and /v1/explain/*
    chat_explain.py    /v1/explain/chat: the Chat tab's reply tokens, probabilities, SFT mask and rewards
    judges.py      what judges a reply: a reward model, DPO's reference (handed in by the CLI)
    chat.py        the chat template: a chat model's own, or (GPT-2 has none) one explicit transcript format
    middleware.py  body limit, API key, one log line per request
    metrics.py     Prometheus metrics in the app's own registry
"""

from .app import create_app
from .settings import ServerSettings
from .chat import ChatTemplate, ModelChatTemplate, load_chat_template
from .engine import Engine, SequenceRequest
from .judges import Reference, RewardModel

__all__ = ["ServerSettings", "create_app", "ChatTemplate", "ModelChatTemplate", "load_chat_template", "Engine",
           "SequenceRequest", "Reference", "RewardModel"]
