"""The playground page and its teaching endpoints: numgpt.teach's views over HTTP, for the page that
`GET /` serves (static/: plain HTML, CSS and JavaScript, no build step, nothing from another origin).

    GET  /                        the page (open, like its two files below: they hold no data)
    GET  /static/playground.js, /static/playground.css
    GET  /v1/explain/model        the model's shape and each token id's text (to map logprobs' texts to ids)
    POST /v1/explain/attention    {prompt, layer, head?}            -> teach.AttentionView
    POST /v1/explain/sampling     {prompt, generated?, temperature, top_k, top_p, min_p, repetition_penalty,
                                   presence_penalty, frequency_penalty, logit_bias, top} -> teach.SamplingView
    POST /v1/explain/tokens       {text}                            -> teach.TokensView (BPE step by step)
    POST /v1/explain/kvcache      {prompt_tokens, completion_tokens} -> teach.KVCacheCounts
    POST /v1/explain/chat         {messages} -> the last reply's token probabilities, SFT mask, rewards
                                  (chat_explain.py: the Chat tab)

The numbers are numgpt.teach's, computed by the model's and the sampler's own functions; the page only
draws them. The endpoints sit behind the API key like /v1/completions (middleware.OPEN_ROUTES opens the
page's files only). The model work runs in a worker thread (asyncio.to_thread) so the event loop keeps
serving; it reads the same weights as the engine's thread, which is safe: numgpt's forward never writes
its parameters. Errors are the server's: a NumgptError from teach is a 400 in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field, field_validator

from ..errors import NumgptError
from ..teach import attention_view, kvcache_counts, sampling_view, tokens_view
from .completions import sampling_options
from .errors import APIError
from .schemas import STRICT, LogitBias, TokenIds, check_logit_bias

PAGE_FILES = {"playground.js": "text/javascript; charset=utf-8", "playground.css": "text/css; charset=utf-8"}
PAGE_ROUTES = ("/", *(f"/static/{name}" for name in PAGE_FILES))   # what middleware.OPEN_ROUTES opens
KEY_MARK = "{{KEY_REQUIRED}}"   # in index.html: "true" when the server has an API key

# the page may load only its own files and talk only to its own origin (the browser enforces it)
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
                "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

Prompt = str | Annotated[TokenIds, Field(min_length=1)]
# the BPE view lists every merge of every piece: its time and its answer grow faster than the text (8 KB:
# ~0.1 s; 200 KB: ~20 s), and a page shows far less (a prompt is only encoded: 1 MiB, the body limit, is quick)
MAX_TOKENS_TEXT = 8192


class AttentionRequest(BaseModel):
    model_config = STRICT
    prompt: Prompt = Field(..., description="the text, or its token ids")
    layer: int = Field(0, ge=0)
    head: int | None = Field(None, ge=0, description="one head; omitted: every head of the layer")


class SamplingRequest(BaseModel):
    model_config = STRICT
    prompt: Prompt = Field(..., description="the prompt (text or ids); \"\" starts from <|endoftext|>")
    generated: TokenIds = Field([], description="the completion's tokens before this position (the "
                                "presence/frequency penalties count these; the repetition penalty all)")
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy")
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: LogitBias = None
    top: int = Field(10, ge=1, le=100, description="the most likely kept tokens of each stage to show")

    _logit_bias = field_validator("logit_bias", mode="before")(check_logit_bias)


class TokensRequest(BaseModel):
    model_config = STRICT
    text: str = Field(..., min_length=1, max_length=MAX_TOKENS_TEXT,
                      description=f"at most {MAX_TOKENS_TEXT} characters: every merge of every piece is shown")


class KVCacheRequest(BaseModel):
    model_config = STRICT
    prompt_tokens: int = Field(..., ge=1, description="usage.prompt_tokens of the generation")
    completion_tokens: int = Field(..., ge=0, description="usage.completion_tokens of the generation")


def explain_router(lm, settings) -> APIRouter:
    """The page and the /v1/explain endpoints for `lm` (the server's LanguageModel)."""
    router = APIRouter()
    router.include_router(page_router(settings))
    config = lm.config
    vocabulary = [lm.tokenizer.decode([i]) for i in range(config.vocab_size)]
    timeout = settings.request_timeout

    @router.get("/v1/explain/model")
    async def model():
        return {"config": {"vocab_size": config.vocab_size, "n_positions": config.n_positions,
                           "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd},
                "model": settings.model_name, "eot_id": lm.tokenizer.eot_id, "tokens": vocabulary}

    @router.post("/v1/explain/attention")
    async def attention(body: AttentionRequest):
        return await off_loop(timeout, attention_view, lm, body.prompt, layer=body.layer, head=body.head)

    @router.post("/v1/explain/sampling")
    async def sampling(body: SamplingRequest):
        options = sampling_options(body, config.vocab_size)
        return await off_loop(timeout, sampling_view, lm, body.prompt, generated=body.generated, top=body.top,
                              **options.as_mapping())

    @router.post("/v1/explain/tokens")
    async def tokens(body: TokensRequest):
        return await off_loop(timeout, tokens_view, lm.tokenizer, body.text)

    @router.post("/v1/explain/kvcache")
    async def kvcache(body: KVCacheRequest):
        try:
            return kvcache_counts(config, body.prompt_tokens, body.completion_tokens).to_json()
        except NumgptError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    return router


def page_router(settings) -> APIRouter:
    """GET / and the page's two files (open without the key: they hold no data)."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        html = _static("index.html").replace(KEY_MARK, "true" if settings.api_key is not None else "false")
        return HTMLResponse(html, headers=PAGE_HEADERS)

    @router.get("/static/{name}", include_in_schema=False)
    async def page_file(name: str):
        if name not in PAGE_FILES:
            raise APIError(404, f"no file /static/{name}: the page has {', '.join(PAGE_FILES)}", code="not_found")
        return Response(_static(name), media_type=PAGE_FILES[name], headers=PAGE_HEADERS)

    return router


async def off_loop(timeout: float, view, *args, **kwargs) -> dict:
    """A teach view computed in a worker thread (the event loop keeps serving), as JSON-ready data, within
    --request-timeout (a 504 after it; the size caps bound what the thread left behind still does)."""
    try:
        result = await asyncio.wait_for(asyncio.to_thread(view, *args, **kwargs), timeout)
    except asyncio.TimeoutError:
        raise APIError(504, "the request ran past the server's time limit (--request-timeout)",
                       type="timeout", code="timeout") from None
    return result.to_json()


def _static(name: str) -> str:
    """A page file from the package (numgpt/serve/static/, package data)."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")
