"""numgpt serve: an OpenAI-compatible HTTP server over continuous batching (the `serve` extra:
FastAPI, uvicorn, prometheus_client).

    engine.py      the model thread: slots, a bounded queue, one decode step over every running sequence
    schemas.py     request/response bodies (pydantic): validation and /openapi.json
    app.py         create_app: the engine, the routes, the error handlers and the middleware put together
    settings.py    ServerSettings: what the server is started with
    routes.py      the OpenAI routes, thin: /v1/completions, /v1/chat/completions, /v1/models, /health,
                   /metrics, /tokenize, /detokenize, /tokenizer_info
    completions.py requests -> the engine's SequenceRequests; engine events -> responses and streams
    embeddings.py  /v1/embeddings: inputs -> batches run on the engine's model thread -> vectors
    errors.py      OpenAI's error shape, built in one place, and the handlers that answer with it
    explain_routes.py  the playground page (static/) and /v1/explain/*
    chat_explain.py    /v1/explain/chat: the Chat tab's reply tokens, probabilities, SFT mask and rewards
    judges.py      what judges a reply: a reward model, DPO's reference (handed in by the CLI)
    chat.py        the chat template: a chat model's own, or (GPT-2 has none) one explicit transcript format
    middleware.py  body limit, API key, one log line per request
    metrics.py     Prometheus metrics in the app's own registry
"""

import importlib

# name -> the module that defines it; imported on first use (PEP 562), so `numgpt.serve.chat` (the transcript
# template `numgpt chat --transcript` uses) and the engine load without FastAPI, which only app.py needs
_EXPORTS = {"create_app": "app", "ServerSettings": "settings", "ChatTemplate": "chat", "ModelChatTemplate": "chat",
            "load_chat_template": "chat", "Engine": "engine", "SequenceRequest": "engine", "Reference": "judges",
            "RewardModel": "judges"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'numgpt.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
