"""The OpenAI chat completions API's request and response, as mcp-tiered reads and writes them: a request becomes
one dispatcher call (its model: `auto`, a tier, or `<tier>:never`), the result one `chat.completion`. Pure:
no I/O. What is not supported yet is refused in one sentence, never ignored."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..calls.results import GenerateResult
from ..config.explain import explain

AUTO = "auto"
PINNED = ":never"
"""`<tier>:never`: that tier answers, without escalation."""
NEUTRAL = {"top_p": 1, "frequency_penalty": 0, "presence_penalty": 0, "n": 1, "logprobs": False,
           "parallel_tool_calls": None, "seed": None, "response_format": {"type": "text"}}
"""Parameters clients send with their neutral value: accepted at that value only."""


class OpenAIError(Exception):
    """One OpenAI-style error: the HTTP status, the sentence, its type and the parameter it is about."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    stop: str | list[str] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None


@dataclass(frozen=True)
class Call:
    """What the dispatcher is asked: the tier (None: `auto`), the prompt and the options."""

    model: str
    tier: str | None
    prompt: str
    system: str
    options: dict[str, Any]
    stream: bool = False
    include_usage: bool = False


def parse(body: object, tiers: list[str]) -> Call:
    """The request as a dispatcher call; OpenAIError (400, one sentence) for anything it cannot be."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] != neutral:
            raise OpenAIError(400, f"{name}: only {json.dumps(neutral)} is supported (for now), got "
                              f"{json.dumps(body[name])[:100]}", param=name)
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise OpenAIError(400, explain(exc, ChatRequest)[0]) from None
    unsupported = sorted(set(request.model_extra or {}) - set(NEUTRAL))
    if request.stream_options is not None and not request.stream:
        raise OpenAIError(400, "stream_options: is only allowed with stream = true", param="stream_options")
    if unsupported:
        raise OpenAIError(400, f"{unsupported[0]}: is not supported", param=unsupported[0])
    system = "\n\n".join(m.text for m in request.messages if m.role in ("system", "developer"))
    turns = [m for m in request.messages if m.role not in ("system", "developer")]
    if len(turns) != 1 or turns[0].role != "user":
        raise OpenAIError(400, "messages: conversations with assistant or tool turns are not supported yet; send "
                          "system messages and one user message", param="messages")
    if request.max_tokens is not None and request.max_completion_tokens is not None \
            and request.max_tokens != request.max_completion_tokens:
        raise OpenAIError(400, "max_tokens and max_completion_tokens differ; send one of them", param="max_tokens")
    options: dict[str, Any] = {}
    if (limit := request.max_completion_tokens or request.max_tokens) is not None:
        options["max_tokens"] = limit
    if request.temperature is not None:
        options["temperature"] = float(request.temperature)
    if request.stop is not None:
        options["stop"] = [request.stop] if isinstance(request.stop, str) else request.stop
    tier = model_tier(request.model, tiers, options)
    return Call(request.model, tier, turns[0].text, system, options, request.stream,
                bool(request.stream_options and request.stream_options.include_usage))


def model_tier(model: str, tiers: list[str], options: dict[str, Any]) -> str | None:
    """The tier a model name asks for (None: auto); `<tier>:never` sets escalate=never in `options`."""
    if model == AUTO:
        return None
    name = model.removesuffix(PINNED)
    if name in tiers:
        if model.endswith(PINNED):
            options["escalate"] = "never"
        return name
    raise OpenAIError(404, f"model: {model!r} is not a model here; valid models are "
                      f"{', '.join(model_names(tiers))}", param="model", code="model_not_found")


def model_names(tiers: list[str]) -> list[str]:
    return [AUTO, *tiers, *(tier + PINNED for tier in tiers)]


def _usage(result: GenerateResult) -> dict[str, int]:
    usage = result.usage
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def _finish(result: GenerateResult) -> str:
    return "stop" if result.finish_reason == "stop" else "length"


def _extension(result: GenerateResult) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True, exclude={"text"})


def completion(result: GenerateResult) -> dict[str, Any]:
    """The result as a `chat.completion`; `mcp_tiered` carries what the MCP tool's result carries."""
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": int(time.time()),
        "model": f"{result.served_by}/{result.model}",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": _finish(result), "logprobs": None}],
        "usage": _usage(result), "mcp_tiered": _extension(result),
    }


def chunks(result: GenerateResult, include_usage: bool) -> list[dict[str, Any]]:
    """The answer that stands as `chat.completion.chunk` events: the role, the text, the finish reason (with the
    extension), and with include_usage a last chunk with no choices and the usage."""
    head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": f"{result.served_by}/{result.model}"}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "delta": {"content": result.text}, "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(result)}],
               "mcp_tiered": _extension(result)}]
    if include_usage:
        events.append({**head, "choices": [], "usage": _usage(result)})
    return events
