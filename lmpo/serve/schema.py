"""The request bodies of the API, as OpenAI's chat completions API defines them, and their limits.

Fields lmpo cannot honour are refused with a message that says so (``tools``, ``logprobs``, a penalty or
``logit_bias``); fields that change nothing here are accepted and ignored (``user``, ``metadata``, ``store``); any other
field is an unrecognized argument, as OpenAI answers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from lmpo.data.corpus import Turn

IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "modalities", "reasoning_effort")
UNSUPPORTED = {"tools": "tools are not supported (a Support model's lookups run on the server)",
               "tool_choice": "tools are not supported", "functions": "functions are not supported",
               "function_call": "functions are not supported", "audio": "audio is not supported",
               "prediction": "predicted outputs are not supported", "web_search_options": "web search is not supported",
               "top_logprobs": "logprobs are not supported"}
Number = StrictFloat  # an int too (as a float); not a bool or a string ("temperature: Input should be a valid number")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (server settings)."""

    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_message_chars: int = 16_000
    max_tokens: int = 256  # the largest max_tokens a request may ask for
    default_max_tokens: int = 64
    max_n: int = 8
    max_stop: int = 4


class StrictModel(BaseModel):
    """Unknown fields are errors; numbers and strings are not converted from other types."""

    model_config = ConfigDict(extra="forbid")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def lone_surrogate(data: Any) -> str | None:
    """Where in parsed JSON a string (or a key) holds a lone surrogate (``"messages.0.content"``), or None. JSON's
    ``\\ud800`` escapes can spell one, but it is no Unicode character: no tokenizer encodes it and no UTF-8 response
    can echo it. Walked without recursion (the JSON may be nested as deep as the parser allows)."""
    todo: list[tuple[str, Any]] = [("", data)]
    while todo:
        where, value = todo.pop()
        if isinstance(value, str) and not _encodable(value):
            return where or "the body"
        if isinstance(value, dict):
            for key, item in value.items():
                if not _encodable(key):
                    return f"a key of {where}" if where else "a key"
                todo.append((f"{where}.{key}" if where else key, item))
        elif isinstance(value, list):
            todo.extend((f"{where}.{i}" if where else str(i), item) for i, item in enumerate(value))
    return None


class RequestBody(StrictModel):
    """A request's whole body: every string valid Unicode, checked before any field."""

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        where = lone_surrogate(data)
        if where is not None:
            raise ValueError(f"{where}: not valid Unicode (a lone surrogate such as \\ud800)")
        return data


class TextPart(StrictModel):
    type: Literal["text"]
    text: StrictStr


class Message(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None
    tool_call_id: StrictStr | None = None

    def text(self) -> str:
        """The message's text (its text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(StrictModel):
    include_usage: StrictBool = False


class ResponseFormat(StrictModel):
    type: Literal["text"]


class ChatRequest(RequestBody):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="allow")  # checked by _fields: ignored, refused or unrecognized

    model: StrictStr
    messages: list[Message] = Field(min_length=1)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, gt=0, le=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    n: StrictInt | None = Field(None, ge=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=-(2**63), lt=2**63)
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    frequency_penalty: Number | None = Field(None, ge=-2, le=2)
    presence_penalty: Number | None = Field(None, ge=-2, le=2)
    logprobs: StrictBool | None = None
    logit_bias: dict[str, Any] | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _fields(self) -> ChatRequest:
        for key in (self.model_extra or {}):
            if key in UNSUPPORTED:
                raise ValueError(UNSUPPORTED[key])
            if key not in IGNORED:
                raise ValueError(f"Unrecognized request argument supplied: {key}")
        if self.frequency_penalty or self.presence_penalty:
            raise ValueError("frequency_penalty and presence_penalty are not supported (leave them out or 0)")
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    def stops(self) -> tuple[str, ...]:
        """The stop strings (a single string is one)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def check(self, limits: Limits) -> None:
        """The server's limits on this request; a ``ValueError`` names the one exceeded."""
        if len(self.messages) > limits.max_messages:
            raise ValueError(f"messages: at most {limits.max_messages} messages")
        for i, m in enumerate(self.messages):
            if len(m.text()) > limits.max_message_chars:
                raise ValueError(f"messages[{i}]: longer than {limits.max_message_chars} characters")
            if m.role in ("user", "tool") and not m.text().strip():  # an assistant may have said nothing (as OpenAI)
                raise ValueError(f"messages[{i}]: the content is empty")
        if not any(m.role not in ("system", "developer") for m in self.messages):
            raise ValueError("messages: need a user message (system messages alone say nothing to answer)")
        asked = self.max_completion_tokens or self.max_tokens
        if asked is not None and asked > limits.max_tokens:
            raise ValueError(f"max_tokens: at most {limits.max_tokens} (this server's limit)")
        if (self.n or 1) > limits.max_n:
            raise ValueError(f"n: at most {limits.max_n} (this server's limit)")
        stops = self.stops()
        if len(stops) > limits.max_stop or any(not s or len(s) > 64 for s in stops):
            raise ValueError(f"stop: at most {limits.max_stop} non-empty strings of at most 64 characters")

    def turns(self) -> list[Turn]:
        """The conversation as lmpo turns (system and developer messages dropped: lmpo's models have none)."""
        return [Turn(m.role, m.text().strip()) for m in self.messages  # type: ignore[arg-type]
                if m.role not in ("system", "developer")]


class FeedbackRequest(RequestBody):
    """``POST /v1/feedback``: a rating of one choice of a served completion."""

    completion_id: StrictStr = Field(min_length=1, max_length=128)
    choice: StrictInt = Field(0, ge=0, le=1023)
    rating: Literal["up", "down"] | None = None
    score: StrictInt | None = Field(None, ge=1, le=5)
    comment: StrictStr | None = Field(None, max_length=4000)

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.rating is None and self.score is None:
            raise ValueError("give a rating (up or down), a score (1-5), or both")
        return self
