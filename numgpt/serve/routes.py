"""The OpenAI-compatible routes, thin: each validates its body (schemas.py) and hands it on to the
completions module or answers from the model's tokenizer and config.

    POST /v1/completions, /v1/chat/completions     completions.Completions
    POST /v1/embeddings                             embeddings.Embeddings
    GET  /v1/models, /health, /metrics
    POST /tokenize, /detokenize; GET /tokenizer_info    vLLM's shapes
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from ..tokenizer.files import tokenizer_config as saved_tokenizer_config
from . import schemas
from .chat import ChatTemplate, ModelChatTemplate
from .completions import Completions
from .embeddings import Embeddings

START = time.time()
ERRORS = {400: {"model": schemas.ErrorResponse}, 429: {"model": schemas.ErrorResponse}}


def openai_router(cmpl: Completions) -> APIRouter:
    """The routes over one Completions (its model, settings, engine and metrics)."""
    router = APIRouter()
    lm, settings, engine, metrics = cmpl.lm, cmpl.settings, cmpl.engine, cmpl.metrics

    @router.get("/health")
    async def health():
        return {"status": "ok", "running": engine.running, "waiting": engine.waiting}

    @router.get("/v1/models", response_model=schemas.ModelList)
    async def models():
        template = settings.chat_template
        return {"object": "list", "data": [{
            "id": settings.model_name, "object": "model", "created": int(START), "owned_by": "numgpt",
            "max_model_len": lm.config.n_positions,
            "chat_template": None if template is None else template.describe(), "adapter": settings.adapter}]}

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text():
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    @router.post("/tokenize", response_model=schemas.TokenizeResponse)
    async def tokenize(body: schemas.TokenizeRequest):
        cmpl.check_model(body.model)
        ids = lm.tokenizer.encode(body.prompt, allowed_special="all")
        strs = [lm.tokenizer.decode([t]) for t in ids] if body.return_token_strs else None
        return {"count": len(ids), "max_model_len": lm.config.n_positions, "tokens": ids, "token_strs": strs}

    @router.get("/tokenizer_info", response_model=schemas.TokenizerInfoResponse)
    async def tokenizer_info():
        return tokenizer_config(lm, settings.chat_template)

    @router.post("/detokenize", response_model=schemas.DetokenizeResponse)
    async def detokenize(body: schemas.DetokenizeRequest):
        cmpl.check_model(body.model)
        cmpl.check_ids(body.tokens, "tokens")
        return {"prompt": lm.tokenizer.decode(body.tokens)}

    @router.post("/v1/completions", response_model=schemas.CompletionResponse, responses=ERRORS)
    async def completions(body: schemas.CompletionRequest, request: Request):
        return await cmpl.complete(body, request)

    @router.post("/v1/chat/completions", response_model=schemas.ChatResponse, responses=ERRORS)
    async def chat(body: schemas.ChatRequest, request: Request):
        return await cmpl.chat(body, request)

    embeddings = Embeddings(cmpl)

    @router.post("/v1/embeddings", response_model=schemas.EmbeddingResponse, responses=ERRORS)
    async def embed(body: schemas.EmbeddingRequest, request: Request):
        return await embeddings.create(body, request)

    return router


def tokenizer_config(lm, template: ChatTemplate | ModelChatTemplate | None) -> dict:
    """transformers' tokenizer_config.json for the served tokenizer (the one numgpt writes beside a saved
    tokenizer), with model_max_length and the chat template as Jinja, as vLLM's /tokenizer_info gives it."""
    config = saved_tokenizer_config(lm.tokenizer.special_tokens,
                                    chat_template=None if template is None else template.jinja())
    config.update(model_max_length=lm.config.n_positions, vocab_size=lm.config.vocab_size)
    return config
