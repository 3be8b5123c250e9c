"""Completions: an OpenAI request becomes engine work (SequenceRequests), and the engine's events become
OpenAI's response (one JSON body, or server-sent events). The routes (routes.py) only call in here; the
engine (engine.py) knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import fields

import numpy as np
from fastapi import Request
from fastapi.responses import StreamingResponse

from ..errors import NumgptError
from ..generate import STOP_WITH_CONSTRAINT, GenerationOptions, TokenLogprob, encode_prompt, sample_rng
from ..sampling import SamplingOptions
from ..speculative import SpeculativeStats
from ..structured import build_constraint
from . import schemas
from .chat import ChatTemplate, ModelChatTemplate
from .engine import Engine, Event, Finished, Generated, Prefilled, QueueFull, SequenceRequest, ShuttingDown
from .errors import APIError, error_json
from .metrics import Metrics
from .settings import ServerSettings


class Completions:
    """The server's side of /v1/completions and /v1/chat/completions for one model and engine."""

    def __init__(self, lm, settings: ServerSettings, engine: Engine, metrics: Metrics):
        self.lm, self.settings, self.engine, self.metrics = lm, settings, engine, metrics
        self.limit = min(settings.max_tokens_limit or lm.config.n_positions, lm.config.n_positions)

    # ---- the two endpoints ------------------------------------------------------------------------------

    async def complete(self, body: schemas.CompletionRequest, request: Request):
        """POST /v1/completions: a response body, or a stream."""
        self.check_model(body.model)
        prompts = self.prompt_ids(body.prompt)
        n_candidates = body.best_of or body.n
        self.check_capacity(len(prompts), n_candidates, f"{'best_of' if body.best_of else 'n'} {n_candidates} × "
                            f"{len(prompts)} prompt{'s' * (len(prompts) > 1)}")
        want_lp = body.logprobs if body.logprobs is not None else (0 if n_candidates > body.n else None)
        constraint = await asyncio.to_thread(self.constraint, body, ())   # compiling a schema may take a second
        options = self.generation_options(body, body.max_tokens, tuple(stops(body.stop)), n_candidates, constraint)
        seqs = []
        for ids in prompts:
            self.check_fits(ids, body.max_tokens)
            for j in range(n_candidates):
                seqs.append(self.sequence(options, ids, j, logprobs=want_lp,
                                          prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None
                                          else None))
        request.state.log = {"prompt_tokens": sum(map(len, prompts))}
        if self.settings.log_prompts:
            request.state.log["prompt"] = body.prompt
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return sse(self.stream_completion(body, prompts, self.open_stream(seqs), rid, created, request))
        results = await self.run(seqs, request)
        choices = []
        for i, ids in enumerate(prompts):
            group = results[i * n_candidates:(i + 1) * n_candidates]
            if n_candidates > body.n:
                group = sorted(group, key=lambda r: -mean_logprob(r))[:body.n]
            for r in group:
                choices.append(self.completion_choice(len(choices), body, ids, r))
        return {"id": rid, "object": "text_completion", "created": created, "model": self.settings.model_name,
                "choices": choices, "usage": self.usage(prompts, results, request)}

    async def chat(self, body: schemas.ChatRequest, request: Request):
        """POST /v1/chat/completions: the conversation through the chat template (the model's own, or the
        transcript), then as a completion that also ends at the template's end-of-turn token."""
        self.check_model(body.model)
        template = self.settings.chat_template
        if template is None:
            raise APIError(400, "this server has no chat template (started with --chat-template none): GPT-2 "
                           "is a base model; use /v1/completions", code="no_chat_template")
        ids = self.chat_prompt(template, body.messages)
        n_positions = self.lm.config.n_positions
        if None not in (body.max_tokens, body.max_completion_tokens) and body.max_tokens != body.max_completion_tokens:
            raise APIError(400, f"max_tokens ({body.max_tokens}) and max_completion_tokens ({body.max_completion_tokens}) "
                           "differ; give one of them (max_completion_tokens is OpenAI's current name)",
                           param="max_tokens", code="invalid_value")
        max_tokens = (body.max_completion_tokens or body.max_tokens
                      or max(1, min(self.limit, n_positions - len(ids))))
        self.check_fits(ids, max_tokens, prompt_param="messages")
        self.check_capacity(1, body.n, f"n {body.n}")
        k = (body.top_logprobs or 0) if body.logprobs else None
        constraint = await asyncio.to_thread(self.constraint, body, tuple(template.end_ids))
        turn_stops = tuple(template.stop) if constraint is None else ()   # a pattern says itself where it ends
        options = self.generation_options(body, max_tokens, turn_stops + tuple(stops(body.stop)), body.n, constraint)
        seqs = [self.sequence(options, ids, j, logprobs=k, end_ids=template.end_ids) for j in range(body.n)]
        request.state.log = {"prompt_tokens": len(ids)}
        if self.settings.log_prompts:
            request.state.log["prompt"] = self.lm.tokenizer.decode(ids)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return sse(self.stream_chat(body, ids, self.open_stream(seqs), rid, created, template, request))
        results = await self.run(seqs, request)
        choices = [{"index": j, "message": {"role": "assistant", "content": reply(r.text, template)},
                    "logprobs": self.chat_logprobs(r.tokens) if body.logprobs else None,
                    "finish_reason": r.finish_reason} for j, r in enumerate(results)]
        return {"id": rid, "object": "chat.completion", "created": created, "model": self.settings.model_name,
                "choices": choices, "usage": self.usage([ids], results, request)}

    # ---- request -> engine --------------------------------------------------------------------------------

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.settings.model_name:
            raise APIError(404, f"the model {name!r} does not exist here; this server serves "
                           f"{self.settings.model_name!r}", param="model", code="model_not_found")

    def chat_prompt(self, template: ChatTemplate | ModelChatTemplate, messages: list[schemas.Message]) -> list[int]:
        """The conversation's prompt ids; one the template refuses (a chat model's format: roles out of
        order, not ending with the user) is a 400 naming the rule."""
        try:
            return template.prompt_ids(self.lm.tokenizer, [(m.role, m.text()) for m in messages])
        except NumgptError as e:
            raise APIError(400, str(e), param="messages", code="invalid_messages") from None

    def check_ids(self, ids: Sequence[int], param: str) -> None:
        vocab_size = self.lm.config.vocab_size
        bad = [t for t in ids if t >= vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})",
                           param=param, code="invalid_token")

    def prompt_ids(self, prompt) -> list[list[int]]:
        """The request's prompt as token-id lists (one per prompt)."""
        if isinstance(prompt, str):
            return [encode_prompt(self.lm.tokenizer, prompt)]
        if not prompt:
            raise APIError(400, "prompt is an empty list: give a string, token ids, or a list of those",
                           param="prompt", code="invalid_prompt")
        if all(isinstance(p, int) for p in prompt):
            self.check_ids(prompt, "prompt")
            return [list(prompt)]
        out = []
        for p in prompt:
            if isinstance(p, str):
                out.append(encode_prompt(self.lm.tokenizer, p))
            elif not p:
                raise APIError(400, "a prompt in the list is empty", param="prompt", code="invalid_prompt")
            else:
                self.check_ids(p, "prompt")
                out.append(list(p))
        return out

    def check_capacity(self, prompts: int, per_prompt: int, what: str) -> None:
        """A request for more sequences than the server ever holds is a 400 that names the limit: a 429
        would have the client retry what can never succeed."""
        most = self.engine.max_batch + self.engine.max_queue
        if prompts * per_prompt > most:
            raise APIError(400, f"this request needs {prompts * per_prompt} sequences at once ({what}), more "
                           f"than this server ever holds: --max-batch {self.engine.max_batch} + --max-queue "
                           f"{self.engine.max_queue} = {most}; send fewer prompts or a smaller n",
                           param="prompt" if prompts > 1 else "n", code="too_many_sequences")

    def check_fits(self, ids: list[int], max_tokens: int, *, prompt_param: str = "prompt") -> None:
        """The prompt and max_tokens fit the model's context; prompt_param names the prompt's field (a chat's
        messages)."""
        n_positions = self.lm.config.n_positions
        if max_tokens > self.limit:
            raise APIError(400, f"max_tokens is {max_tokens}, above this server's limit of {self.limit}",
                           param="max_tokens", code="invalid_value")
        if len(ids) >= n_positions:     # no room for one token, whatever max_tokens says (or was left out)
            raise APIError(400, f"this model's maximum context length is {n_positions} tokens; the prompt "
                           f"({prompt_param}) has {len(ids)}, which leaves no room for a reply: shorten it",
                           param=prompt_param, code="context_length_exceeded")
        if len(ids) + max_tokens > n_positions:
            raise APIError(400, f"this model's maximum context length is {n_positions} tokens; the "
                           f"prompt has {len(ids)} and max_tokens asks for {max_tokens} more "
                           f"({len(ids) + max_tokens} in all): shorten the prompt or lower max_tokens",
                           param="max_tokens" if len(ids) < n_positions else "prompt",
                           code="context_length_exceeded")

    def generation_options(self, body: schemas.Sampling, max_tokens: int, stop: tuple[str, ...],
                           n: int, constraint=None) -> GenerationOptions:
        """The request as GenerationOptions, the library's one definition of what to generate (OpenAI's
        max_tokens is max_new_tokens, n is num_return_sequences), checked by it."""
        sampling = sampling_options(body, self.lm.config.vocab_size)
        if constraint is not None:                       # structured outputs: self.constraint(body, ...)
            sampling = dataclasses.replace(sampling, constraint=constraint)
        try:
            return GenerationOptions(max_new_tokens=max_tokens, sampling=sampling, stop=stop, seed=body.seed,
                                     num_return_sequences=n)
        except NumgptError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    def constraint(self, body: schemas.Sampling, end_ids: tuple[int, ...]):
        """The request's response_format or regex as the sampler's Constraint (None for text); a schema outside
        the subset, an invalid regex, or either with speculative decoding is a 400 naming the parameter.
        end_ids: the chat template's end of turn, which may end the text where <|endoftext|> may."""
        fmt = body.response_format
        kind = None if fmt is None else fmt.type
        param = "regex" if body.regex is not None else "response_format"
        if body.regex is not None and kind not in (None, "text"):
            raise APIError(400, f"regex and a {kind} response_format both constrain the output: give one",
                           param="regex", code="invalid_value")
        if body.regex is None and kind in (None, "text"):
            return None
        if body.stop:
            raise APIError(400, STOP_WITH_CONSTRAINT, param="stop", code="invalid_value")
        if self.engine.speculative is not None:
            raise APIError(400, f"this server decodes speculatively (--speculative), which cannot follow {param}: "
                           "drafts are not checked against it", param=param, code="unsupported_parameter")
        ends = tuple({self.lm.tokenizer.eot_id, *end_ids} - {None})
        try:
            if body.regex is not None:
                return build_constraint(self.lm.tokenizer, regex=body.regex, end_ids=ends,
                                        vocab_size=self.lm.config.vocab_size)
            if kind == "json_object":
                return build_constraint(self.lm.tokenizer, json_object_mode=True, end_ids=ends,
                                        vocab_size=self.lm.config.vocab_size)
            schema = fmt.json_schema.schema_
            return build_constraint(self.lm.tokenizer, json_schema={} if schema is None else schema, end_ids=ends,
                                    vocab_size=self.lm.config.vocab_size)
        except NumgptError as e:
            raise APIError(400, f"{param}: {e}", param=param, code="invalid_value") from None

    def sequence(self, options: GenerationOptions, ids, j: int, *, logprobs, prompt_logprobs=None,
                 end_ids: tuple[int, ...] = ()) -> SequenceRequest:
        """Sample j of a prompt as the engine's work; a seeded one draws from sample_rng(seed, j), as
        `numgpt generate --seed` does."""
        if options.sampling.greedy:
            rng = None
        elif options.seed is not None:
            rng = sample_rng(options.seed, j)
        else:
            rng = np.random.default_rng()
        return SequenceRequest(list(ids), options.max_new_tokens, options.sampling, rng=rng,
                               seeded=options.seed is not None, stop=options.stop, logprobs=logprobs,
                               prompt_logprobs=prompt_logprobs, end_ids=end_ids,
                               deadline=time.monotonic() + self.settings.request_timeout)

    def submit(self, seqs: list[SequenceRequest], deliver: list) -> list:
        try:
            return self.engine.submit(seqs, deliver)
        except QueueFull as e:
            self.metrics.rejected.inc()
            raise APIError(429, str(e), type="rate_limit_error", code="server_busy") from None
        except ShuttingDown:
            raise                         # errors.py: 503
        except NumgptError as e:
            raise APIError(400, str(e)) from None

    async def run(self, seqs: list[SequenceRequest], request: Request) -> list["Result"]:
        """Run sequences to the end (non-streamed), cancelling them if the client goes away."""
        loop = asyncio.get_running_loop()
        queues = [asyncio.Queue() for _ in seqs]
        tickets = self.submit(seqs, [lambda ev, q=q: loop.call_soon_threadsafe(q.put_nowait, ev) for q in queues])
        results = [Result() for _ in seqs]
        started = time.monotonic()
        try:
            for r, q in zip(results, queues):
                while r.finish_reason is None:
                    try:
                        ev = await asyncio.wait_for(q.get(), timeout=0.5)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            raise asyncio.CancelledError from None
                        continue
                    r.add(ev, started, self.metrics)
        finally:
            for t in tickets:
                t.cancel()
        for r in results:
            r.check()
        return results

    def open_stream(self, seqs) -> tuple[list, asyncio.Queue]:
        """Submit sequences for a streamed response (before the response starts, so that a full queue is
        still a 429): their tickets, and one queue of (sequence index, event) in arrival order."""
        loop = asyncio.get_running_loop()
        merged: asyncio.Queue = asyncio.Queue()
        tickets = self.submit(seqs, [lambda ev, i=i: loop.call_soon_threadsafe(merged.put_nowait, (i, ev))
                                     for i in range(len(seqs))])
        return tickets, merged

    # ---- engine events -> streamed responses -------------------------------------------------------------------

    async def stream_completion(self, body, prompts, stream, rid, created, request) -> AsyncIterator[str]:
        n = body.n
        results = [Result() for _ in stream[0]]
        started = time.monotonic()
        offsets = [0] * len(results)
        async for i, ev in events(stream):
            r = results[i]
            r.add(ev, started, self.metrics)
            ids = prompts[i // n]
            lp = None
            if isinstance(ev, Prefilled):
                if not body.echo:
                    continue
                text = self.lm.tokenizer.decode(ids)
                if body.logprobs is not None:
                    lp = self.logprobs_block(ids, ev.prompt_logprobs, body.logprobs, 0)
                offsets[i] = len(text)
                finish = None
            elif isinstance(ev, Generated):
                text = ev.text
                if body.logprobs is not None:
                    lp = self.logprobs_block([ev.token], [ev.logprob], body.logprobs, offsets[i])
                offsets[i] += len(text)
                finish = None
            else:
                if ev.error:
                    yield data(error_json(ev.error, type="server_error"))
                    continue
                text, finish = ev.text, openai_finish_reason(ev.reason)
            yield data({"id": rid, "object": "text_completion", "created": created,
                        "model": self.settings.model_name,
                        "choices": [{"index": i, "text": text, "logprobs": lp, "finish_reason": finish}],
                        **usage_slot(body)})
        request.state.log["completion_tokens"] = sum(len(r.tokens) for r in results)
        if body.stream_options and body.stream_options.include_usage:
            yield data({"id": rid, "object": "text_completion", "created": created,
                        "model": self.settings.model_name, "choices": [],
                        "usage": self.usage(prompts, results, request)})
        yield "data: [DONE]\n\n"

    async def stream_chat(self, body, ids, stream, rid, created, template, request) -> AsyncIterator[str]:
        results = [Result() for _ in stream[0]]
        started = time.monotonic()
        begun = [False] * len(results)

        def chunk(i, delta, finish=None, lp=None):
            return data({"id": rid, "object": "chat.completion.chunk", "created": created,
                         "model": self.settings.model_name,
                         "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}],
                         **usage_slot(body)})

        for i in range(len(results)):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for i, ev in events(stream):
            r = results[i]
            r.add(ev, started, self.metrics)
            if isinstance(ev, Prefilled):
                continue
            text = ev.text
            if template.strip_leading_space and not begun[i] and text:
                text, begun[i] = text[1:] if text.startswith(" ") else text, True
            if isinstance(ev, Generated):
                lp = self.chat_logprobs([(ev.token, ev.logprob)]) if body.logprobs else None
                if text or lp:
                    yield chunk(i, {"content": text}, lp=lp)
            elif ev.error:
                yield data(error_json(ev.error, type="server_error"))
            else:
                if text:
                    yield chunk(i, {"content": text})
                yield chunk(i, {}, finish=openai_finish_reason(ev.reason))
        request.state.log["completion_tokens"] = sum(len(r.tokens) for r in results)
        if body.stream_options and body.stream_options.include_usage:
            yield data({"id": rid, "object": "chat.completion.chunk", "created": created,
                        "model": self.settings.model_name, "choices": [],
                        "usage": self.usage([ids], results, request)})
        yield "data: [DONE]\n\n"

    # ---- response pieces -----------------------------------------------------------------------------------

    def token_text(self, t: int) -> str:
        return self.lm.tokenizer.decode([t])

    def logprobs_block(self, ids: Sequence[int], lps: Sequence[TokenLogprob | None], k: int, start: int) -> dict:
        """OpenAI's completions logprobs object for these tokens, text offsets counted from `start`."""
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": [], "token_ids": [],
               "top_logprobs_by_id": []}
        decoder, at = self.lm.tokenizer.stream_decoder(), start
        for t, lp in zip(ids, lps):
            out["tokens"].append(self.token_text(t))
            out["token_logprobs"].append(None if lp is None else lp.logprob)
            out["top_logprobs"].append(None if lp is None else {self.token_text(a): v for a, v in lp.top[:k]})
            out["text_offset"].append(at)
            out["token_ids"].append(t)
            out["top_logprobs_by_id"].append(None if lp is None else [[a, v] for a, v in lp.top[:k]])
            at += len(decoder.push(t))
        return out

    def completion_choice(self, index, body, ids, r: "Result") -> dict:
        text, lp = r.text, None
        if body.logprobs is not None:
            lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": [], "token_ids": [],
                  "top_logprobs_by_id": []}
            start = 0
            if body.echo:
                lp = self.logprobs_block(ids, r.prompt_logprobs, body.logprobs, 0)
                start = len(self.lm.tokenizer.decode(ids))
            gen = self.logprobs_block([t for t, _ in r.tokens], [x for _, x in r.tokens], body.logprobs, start)
            for key in lp:
                lp[key] += gen[key]
        if body.echo:
            text = self.lm.tokenizer.decode(ids) + text
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": r.finish_reason}

    def chat_logprobs(self, tokens: Sequence[tuple[int, TokenLogprob | None]]) -> dict:
        """OpenAI's chat logprobs object: {"content": [{token, logprob, bytes, top_logprobs}]}."""
        def entry(t, v):
            return {"token": self.token_text(t), "logprob": v, "bytes": list(self.lm.tokenizer.token_bytes(t))}
        return {"content": [dict(entry(t, lp.logprob), top_logprobs=[entry(a, v) for a, v in lp.top])
                            for t, lp in tokens if lp is not None]}

    def usage(self, prompts, results, request) -> dict:
        done = sum(len(r.tokens) for r in results)
        request.state.log["completion_tokens"] = done
        p = sum(map(len, prompts))
        out = {"prompt_tokens": p, "completion_tokens": done, "total_tokens": p + done}
        if any(r.speculative is not None for r in results):    # numgpt's extension: speculative decoding
            total = SpeculativeStats()
            for r in results:
                if r.speculative is not None:
                    total.add(r.speculative)
            out["speculative"] = total.as_dict()
        return out


async def events(stream) -> AsyncIterator[tuple[int, Event]]:
    """The stream's events until every sequence finished; cancels them on exit (a client that
    disconnects closes this generator)."""
    tickets, merged = stream
    open_ = len(tickets)
    try:
        while open_:
            i, ev = await merged.get()
            if isinstance(ev, Finished):
                open_ -= 1
            yield i, ev
    finally:
        for t in tickets:
            t.cancel()


class Result:
    """What one sequence produced, gathered from its events."""

    def __init__(self):
        self.text = ""
        self.tokens: list[tuple[int, TokenLogprob | None]] = []
        self.prompt_logprobs = None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.speculative = None          # the engine's SpeculativeStats, when it speculates

    def add(self, ev: Event, started: float, metrics: Metrics) -> None:
        if isinstance(ev, Prefilled):
            self.prompt_logprobs = ev.prompt_logprobs
        elif isinstance(ev, Generated):
            if not self.tokens:
                metrics.first_token.observe(time.monotonic() - started)
            self.text += ev.text
            self.tokens.append((ev.token, ev.logprob))
        else:
            self.text += ev.text
            self.finish_reason, self.error = openai_finish_reason(ev.reason), ev.error
            self.speculative = ev.speculative

    def check(self) -> None:
        if self.error:       # the engine's errors are the server's (a request's own were refused before it)
            raise APIError(500, self.error, type="server_error", code="model_error")
        if self.finish_reason == "timeout":
            raise APIError(504, "the request ran past the server's time limit (--request-timeout)",
                           type="timeout", code="timeout")


def sampling_options(body, vocab_size: int) -> SamplingOptions:
    """The request's sampling fields as SamplingOptions (the one definition: the schema's fields carry
    SamplingOptions' names, test_serve checks that every option is offered): logit_bias's keys become
    token ids, temperature 0 means greedy."""
    given = {f.name: getattr(body, f.name) for f in fields(SamplingOptions) if f.name in type(body).model_fields}
    bias = []
    for key, value in (body.logit_bias or {}).items():
        if not (key.isascii() and key.isdigit()) or int(key) >= vocab_size:
            raise APIError(400, f"logit_bias key {key!r} is not a token id (0..{vocab_size - 1})",
                           param="logit_bias", code="invalid_value")
        bias.append((int(key), value))
    given.update(logit_bias=tuple(bias), do_sample=body.temperature > 0)
    try:
        return SamplingOptions.from_mapping(given)
    except NumgptError as e:
        raise APIError(400, str(e), code="invalid_value") from None


def usage_slot(body: schemas.Sampling) -> dict:
    """OpenAI's shape with stream_options.include_usage: every chunk before the usage chunk says
    "usage": null."""
    return {"usage": None} if body.stream_options and body.stream_options.include_usage else {}


def mean_logprob(r: Result) -> float:
    values = [lp.logprob for _, lp in r.tokens if lp is not None]
    return sum(values) / len(values) if values else -math.inf


def reply(text: str, template: ChatTemplate | ModelChatTemplate) -> str:
    return text[1:] if template.strip_leading_space and text.startswith(" ") else text


def stops(stop) -> list[str]:
    if stop is None:
        return []
    out = [stop] if isinstance(stop, str) else list(stop)
    if any(not s for s in out):
        raise APIError(400, "stop strings must not be empty", param="stop", code="invalid_value")
    return out


def data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def sse(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def openai_finish_reason(reason: str) -> str:
    """numgpt's finish reason (finish.FINISH_REASONS) as OpenAI's finish_reason: the end-of-text token
    is "stop" there, as a stop string is; the others keep their names."""
    return "stop" if reason == "eos" else reason
