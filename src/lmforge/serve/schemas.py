"""Request and response bodies of the OpenAI-compatible API (pydantic models).

Requests are strict: a field this server does not know (``tools``, ``logit_bias``, ``response_format``,
...) is refused with a 400 naming it rather than silently ignored, types are not coerced (``"5"`` is not
an integer, ``true`` is not a number), NaN and infinities are refused, and every number has a range.
Fields that the API defines but this server only supports at their default (``presence_penalty``,
``frequency_penalty``, ``echo``) are refused at any other value. ``top_k`` and ``min_p`` are extensions
(as in vLLM). Limits that depend on the model or the server's settings (prompt length, ``max_tokens``,
``n``) are checked in app.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SEED = 2**63 - 1
MAX_STOP = 4  # stop strings per request (OpenAI's limit)

# JSON schemas of the fields validated by hand (``Any`` + a validator), for /openapi.json
_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
PROMPT_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
        _IDS,
        {"type": "array", "minItems": 1, "items": _IDS},
    ]
}
STOP_SCHEMA = {
    "anyOf": [
        {"type": "null"},
        {"type": "string", "minLength": 1, "maxLength": 256},
        {
            "type": "array",
            "maxItems": MAX_STOP,
            "items": {"type": "string", "minLength": 1, "maxLength": 256},
        },
    ]
}


class Strict(BaseModel):
    """Base of every request body: unknown fields, coercion and NaN refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(Strict):
    include_usage: bool = False  # a last chunk with ``usage`` and no choices


def _only_zero(name: str, v: float) -> float:
    if v != 0:
        raise ValueError(f"{name} is not supported (only 0)")
    return v


class Sampling(Strict):
    """Fields shared by completions and chat completions."""

    model: str = Field(max_length=512)
    max_tokens: int | None = Field(None, ge=0)  # further capped by the server's limit and the context
    temperature: float = Field(1.0, ge=0, le=2)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=1_000_000)  # extension
    min_p: float | None = Field(None, ge=0, le=1)  # extension
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Any = Field(None, validate_default=True, json_schema_extra=STOP_SCHEMA)  # str or up to 4 strings
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # choice i samples with seed + i
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = Field(None, max_length=512)  # accepted, unused

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> list[str]:
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else v
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("expected a non-empty string or a list of non-empty strings")
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(len(s) > 256 for s in stops):
            raise ValueError("stop strings are at most 256 characters")
        return stops

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _penalty(cls, v: float, info: Any) -> float:
        return _only_zero(info.field_name, v)


class CompletionRequest(Sampling):
    """``POST /v1/completions``."""

    prompt: Any = Field(json_schema_extra=PROMPT_SCHEMA)  # str, [str], [id], or [[id]]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=5)  # alternatives per token (0 = the chosen token only)
    echo: bool = False

    @field_validator("echo")
    @classmethod
    def _echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> list[str] | list[list[int]]:
        return prompt_list(v)


class ContentPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class EmbeddingRequest(Strict):
    """``POST /v1/embeddings``."""

    model: str = Field(max_length=512)
    input: Any = Field(json_schema_extra=PROMPT_SCHEMA)  # str, [str], [id], or [[id]]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = Field(None, max_length=512)

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> list[str] | list[list[int]]:
        return prompt_list(v)


def prompt_list(v: Any) -> list[str] | list[list[int]]:
    """A prompt (or embedding input) as a non-empty list of strings or of token-id lists."""

    def ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(type(t) is int for t in x)

    if isinstance(v, str):
        return [v]
    if ids(v):
        return [v]
    if isinstance(v, list) and v and all(isinstance(s, str) for s in v):
        return v
    if isinstance(v, list) and v and all(ids(x) for x in v):
        return v
    raise ValueError(
        "expected a string, a non-empty list of strings, a non-empty list of token ids, "
        "or a list of non-empty lists of token ids"
    )


# -- responses -------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lmforge"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage
