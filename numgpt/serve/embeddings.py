"""POST /v1/embeddings: an OpenAI request becomes batches of token ids, each embedded on the engine's model
thread, and the vectors become OpenAI's response (floats, or base64 of little-endian float32 as OpenAI
sends them). The vectors are numgpt.embeddings': the final hidden states after ln_f, pooled as the server
was started (--embedding-pooling mean|last).

Where the forward runs: on the engine's model thread, one batch per loop (Engine.call), not on the
request's worker thread. The model thread already keeps both cores busy with decode steps; a second forward
beside it would have two multithreaded BLAS products competing for the same two cores (each slower than
alone, OpenBLAS's spinning threads making it worse: threads.py). Through Engine.call a batch runs with the
cores to itself, and the running sequences take a decode step between two batches of a long request;
embeddings.BATCH_TOKENS bounds how long one batch holds them up.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from functools import partial

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from ..embeddings import check_finite_vectors, check_pooling, embed_batch, plan_batches
from . import schemas
from .completions import Completions
from .errors import APIError

MAX_INPUTS = 2048      # inputs per request: OpenAI's own limit


class Embeddings:
    """The server's side of /v1/embeddings, over the model, settings and engine of a Completions."""

    def __init__(self, cmpl: Completions):
        self.cmpl, self.lm, self.settings, self.engine = cmpl, cmpl.lm, cmpl.settings, cmpl.engine
        self.pooling = check_pooling(self.settings.embedding_pooling)

    async def create(self, body: schemas.EmbeddingRequest, request: Request) -> JSONResponse:
        """The response body (built here, not validated again: a request may carry 2048 vectors)."""
        self.cmpl.check_model(body.model)
        if body.dimensions is not None:
            raise APIError(400, f"dimensions is not supported: GPT-2's embeddings have the model's width, "
                           f"{self.lm.config.n_embd} dimensions, and cannot be shortened; leave dimensions out",
                           param="dimensions", code="invalid_value")
        seqs = self.input_ids(body.input)
        tokens = sum(map(len, seqs))
        request.state.log = {"prompt_tokens": tokens}
        vectors = await self.run(seqs)                              # [n, C]
        data = [{"object": "embedding", "index": i, "embedding": encoded(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": self.settings.model_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def input_ids(self, value: str | list) -> list[list[int]]:
        """The request's input as token-id lists, each checked: not empty, in the vocabulary, within the
        context (a 400 naming the input)."""
        single = isinstance(value, str) or (bool(value) and all(isinstance(t, int) for t in value))
        items = [value] if single else value
        if not items:
            raise APIError(400, "input is an empty list: give a string, token ids, or a list of those",
                           param="input", code="invalid_input")
        if len(items) > MAX_INPUTS:
            raise APIError(400, f"input holds {len(items)} items, more than {MAX_INPUTS} per request: send "
                           "them in several requests", param="input", code="invalid_input")
        return [self.one_input(item, "input" if single else f"input[{k}]") for k, item in enumerate(items)]

    def one_input(self, item: str | list[int], name: str) -> list[int]:
        if not item:
            raise APIError(400, f"{name} is empty: an embedding needs at least one token",
                           param="input", code="invalid_input")
        if isinstance(item, str):
            ids = self.lm.encode(item)
        else:
            self.cmpl.check_ids(item, "input")
            ids = list(item)
        n_positions = self.lm.config.n_positions
        if len(ids) > n_positions:
            raise APIError(400, f"{name} has {len(ids)} tokens, beyond this model's maximum context length of "
                           f"{n_positions} tokens: shorten it", param="input", code="context_length_exceeded")
        return ids

    async def run(self, seqs: Sequence[list[int]]) -> np.ndarray:
        """The vectors [n, C], each batch of plan_batches run on the model thread; the request's time limit
        (--request-timeout) applies, and the batches not yet run are dropped when it passes."""
        arrays = [np.asarray(s, np.int64) for s in seqs]
        plan = plan_batches([len(s) for s in arrays])
        futures = [self.engine.call(partial(embed_batch, self.lm.params, self.lm.config,
                                            [arrays[i] for i in pick], self.pooling)) for pick in plan]
        try:
            parts = await asyncio.wait_for(asyncio.gather(*map(asyncio.wrap_future, futures)),
                                           timeout=self.settings.request_timeout)
        except asyncio.TimeoutError:
            raise APIError(504, "the request ran past the server's time limit (--request-timeout)",
                           type="timeout", code="timeout") from None
        finally:
            for f in futures:
                f.cancel()
        out = np.empty((len(arrays), self.lm.config.n_embd), np.float32)   # [n, C]
        for pick, part in zip(plan, parts):
            out[pick] = part
        check_finite_vectors(out, self.lm.params)
        return out


def encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A vector as OpenAI sends it: floats, or the base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
