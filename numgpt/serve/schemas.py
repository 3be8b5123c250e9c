"""The API's request and response bodies as pydantic models: FastAPI validates every request against
them (a wrong field is a 400 that names it) and /openapi.json is generated from them.

Field names, types, ranges and defaults follow OpenAI's API reference for the legacy completions and
chat completions endpoints. numgpt's own sampling controls (top_k, repetition_penalty, min_p) are
marked "numgpt extension". Unknown fields are refused with a 400 naming them, as OpenAI itself answers
"Unrecognized request argument supplied": a misspelt `temprature` silently ignored is worse than an
error. Types are strict (JSON's 1 is not true, "5" is not 5) and numbers must be finite.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

# what a field of several accepted types takes, for the 400 message (pydantic reports each member's failure)
ACCEPTS = {"prompt": "a string, a list of strings, a list of token ids, or a list of token-id lists",
           "input": "a string, a list of strings, a list of token ids, or a list of token-id lists",
           "stop": "a string or a list of up to 4 strings", "logit_bias": "an object of token id -> number in [-100, 100]",
           "messages.*.content": 'a string or a list of text parts ({"type": "text", "text": ...}): numgpt reads text only'}

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

TokenIds = list[Annotated[int, Field(ge=0)]]
Stop = str | Annotated[list[str], Field(max_length=4)] | None
LogitBias = dict[str, Annotated[float, Field(ge=-100, le=100)]] | None


def refuse(message: str) -> PydanticCustomError:
    """A 400 that says `message` as it is (errors.validation_error prefixes the field's path)."""
    return PydanticCustomError("invalid_value", message)


def check_token_ids(ids: list, where: str) -> None:
    """A list meant as token ids: whole numbers >= 0 (true/false and 1.5 are not ids), not mixed with text."""
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int):
            kind = "a boolean" if isinstance(t, bool) else "a string" if isinstance(t, str) else type(t).__name__
            if isinstance(t, float):
                kind = "a fraction" if t != int(t) else "a float"
            raise refuse(f"{where}[{i}] is {kind} ({t!r}) in a list of token ids: token ids are whole numbers "
                         ">= 0, and a list holds either ids or strings, not both")
        if t < 0:
            raise refuse(f"{where}[{i}] is {t}: token ids are >= 0")


def check_prompt(value):
    """The prompt union's own messages (pydantic would report its first member: 'should be a valid string')."""
    return check_texts_or_ids(value, "prompt")


def check_input(value):
    """/v1/embeddings' input: the same union as a completion's prompt."""
    return check_texts_or_ids(value, "input")


def check_texts_or_ids(value, name: str):
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise refuse(f"{name} must be {ACCEPTS[name]}")
    if all(isinstance(p, list) for p in value):
        for j, ids in enumerate(value):
            check_token_ids(ids, f"{name}[{j}]")
    elif any(isinstance(p, (list, str)) for p in value):
        if not (all(isinstance(p, str) for p in value)):
            raise refuse(f"{name} mixes strings, token ids and lists: it must be {ACCEPTS[name]}")
    else:
        check_token_ids(value, name)
    return value


def check_stop(value):
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise refuse(f"stop must be {ACCEPTS['stop']}")
    if len(value) > 4:
        raise refuse(f"stop takes at most 4 strings, got {len(value)}")
    return value


def check_logit_bias(value):
    if value is not None and not isinstance(value, dict):
        raise refuse(f"logit_bias must be {ACCEPTS['logit_bias']}")
    if isinstance(value, dict):
        for key, bias in value.items():
            if isinstance(bias, bool) or not isinstance(bias, (int, float)):
                raise refuse(f"logit_bias[{key!r}] is {bias!r}: a bias is a number in [-100, 100]")
            if not -100 <= bias <= 100:
                raise refuse(f"logit_bias[{key!r}] is {bias}: a bias must be in [-100, 100]")
    return value


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class TextFormat(BaseModel):
    model_config = STRICT
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = STRICT
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True)
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the schema's name (OpenAI's rule: "
                      "letters, digits, _ and -, at most 64)")
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema", description="the JSON Schema (numgpt's supported subset: "
                                 "others are refused naming the keyword); absent = any JSON value")
    strict: bool | None = Field(None, description="accepted; numgpt always follows the schema exactly")


class JsonSchemaFormat(BaseModel):
    model_config = STRICT
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]
TAGGED = {"response_format"}      # fields whose errors' locations carry the chosen member's tag after the name


class Sampling(BaseModel):
    """The sampling fields both endpoints share."""

    model_config = STRICT

    model: str | None = Field(None, description="the served model's id (GET /v1/models); may be omitted")
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16, description="completions per prompt")
    stop: Stop = Field(None, description="up to 4 strings that end a completion; they may span tokens")
    seed: int | None = Field(None, ge=0, le=2**63 - 1,
                             description="same request + same seed = same text, whatever else the server runs")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: LogitBias = Field(None, description="token id (as a string) -> bias in [-100, 100] added to "
                                  "its logit")
    user: str | None = None
    top_k: int = Field(0, ge=0, description="numgpt extension: keep the k most likely tokens (0 = off)")
    repetition_penalty: float = Field(1.0, gt=0, le=10,
                                      description="numgpt extension: CTRL's penalty on repeated tokens (1 = off)")
    min_p: float = Field(0.0, ge=0, le=1, description="numgpt extension: min-p filter (0 = off)")
    response_format: ResponseFormat | None = Field(
        None, description='{"type": "text"}, {"type": "json_object"} (any JSON object) or {"type": "json_schema", '
        '"json_schema": {"name": ..., "schema": {...}}}: the output follows it (structured outputs)')
    regex: str | None = Field(None, description="numgpt extension: the whole completion matches this regular "
                              "expression (as Python's re.fullmatch); not with a json response_format")

    _stop = field_validator("stop", mode="before")(check_stop)
    _logit_bias = field_validator("logit_bias", mode="before")(check_logit_bias)


class CompletionRequest(Sampling):
    """POST /v1/completions"""

    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(
        ..., description="a string, a list of strings, token ids, or a list of token-id lists")
    max_tokens: int = Field(16, ge=0, description="0 with echo scores the prompt without generating")
    best_of: int | None = Field(None, ge=1, le=16, description="candidates per prompt; the n with the highest "
                                "mean log-probability per token are returned")
    logprobs: int | None = Field(None, ge=0, le=20, description="log-probabilities of the chosen token and this "
                                 "many alternatives")
    echo: bool = Field(False, description="return the prompt too, with its log-probabilities when logprobs is set")
    suffix: None = Field(None, description="not supported: GPT-2 does not insert text")

    _prompt = field_validator("prompt", mode="before")(check_prompt)

    @field_validator("suffix", mode="before")
    @classmethod
    def _no_suffix(cls, value):
        if value is not None:
            raise refuse("suffix is not supported: GPT-2 only continues text (it does not insert it); "
                         "send the prompt alone")
        return value

    @model_validator(mode="after")
    def _best_of_at_least_n(self) -> "CompletionRequest":
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be >= n ({self.n})")
        if self.best_of is not None and self.best_of > self.n and self.stream:
            raise ValueError("best_of > n cannot be streamed (the best are known only at the end)")
        return self


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampling):
    """POST /v1/chat/completions"""

    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="deprecated by OpenAI for max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20, description="needs logprobs: true")

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> "ChatRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's shape)"""

    model_config = STRICT
    model: str | None = None
    prompt: str
    add_special_tokens: bool = Field(True, description="GPT-2 adds none (no BOS/EOS around a prompt), so "
                                     "true and false give the same ids; accepted as vLLM does")
    return_token_strs: bool = Field(False, description="also return each token's text")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class TokenizerInfoResponse(BaseModel):
    """GET /tokenizer_info (vLLM's shape): transformers' tokenizer_config.json for this tokenizer, with the
    chat template as Jinja (what lm-evaluation-harness's remote tokenizer reads)."""

    model_config = ConfigDict(extra="allow")
    tokenizer_class: str


class DetokenizeRequest(BaseModel):
    """POST /detokenize (vLLM's shape)"""

    model_config = STRICT
    model: str | None = None
    tokens: TokenIds


class DetokenizeResponse(BaseModel):
    prompt: str


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings (OpenAI's shape; the pooling is the server's --embedding-pooling)"""

    model_config = STRICT
    model: str | None = Field(None, description="the served model's id (GET /v1/models); may be omitted")
    input: str | list[str] | TokenIds | list[TokenIds] = Field(
        ..., description="a string, a list of strings, token ids, or a list of token-id lists")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector's little-endian float32 bytes, base64-encoded")
    dimensions: int | None = Field(None, description="not supported: GPT-2's vectors have n_embd dimensions")
    user: str | None = None

    _input = field_validator("input", mode="before")(check_input)


# ---- responses (documented in /openapi.json; the routes build them as plain dicts for speed) ----------

class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]
    token_ids: list[int] = Field(description="numgpt extension: each token's id (OpenAI's texts are ambiguous "
                                 "for byte fragments, which all show as U+FFFD)")
    top_logprobs_by_id: list[list[tuple[int, float]] | None] = Field(
        description="numgpt extension: top_logprobs as [id, logprob] pairs, most likely first")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class SpeculativeUsage(BaseModel):
    """numgpt's extension of usage (`numgpt serve --speculative`): what speculative decoding did for the
    request's sequences together (numgpt/speculative.py, SpeculativeStats)."""

    drafted: int
    accepted: int
    acceptance_rate: float
    target_forwards: int
    tokens: int
    tokens_per_forward: float


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    speculative: SpeculativeUsage | None = None     # numgpt's extension, when the server speculated

    @model_serializer(mode="wrap")
    def _without_absent_extension(self, handler):
        """`speculative` only where the server decoded speculatively (as in a stream's usage chunk), not
        as null in every plain server's usage."""
        data = handler(self)
        if data.get("speculative") is None:
            data.pop("speculative", None)
        return data


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: dict | None
    finish_reason: str | None


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="the floats, or their base64 (encoding_format)")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int
    chat_template: dict[str, bool | str | list[str]] | None
    adapter: str | None = None          # numgpt's extension: the LoRA adapter merged in (`serve --adapter`)


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
