"""The OpenAI chat completions API's request and response, as mcp-tiered reads and writes them: a request becomes
one dispatcher call (its model: `auto`, a tier, or `<tier>:never`), the result one `chat.completion`. Pure:
no I/O. What is not supported yet is refused in one sentence, never ignored."""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..backends.base import Dialogue, Tool, ToolCall, Turn
from ..calls.results import GenerateResult
from ..config.explain import explain

AUTO = "auto"
PINNED = ":never"
"""`<tier>:never`: that tier answers, without escalation (and with `stream`, its tokens go out as they come)."""
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "top_p": (1,), "frequency_penalty": (0,), "presence_penalty": (0,), "n": (1,), "logprobs": (False,),
    "parallel_tool_calls": (None, True), "seed": (None,), "response_format": ({"type": "text"},)}
"""Parameters clients send with their neutral value: accepted at those values only."""
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What a tool call's id may be (the Messages API's own rule): never a control-token spelling."""
MAX_STOP = 4


class OpenAIError(Exception):
    """One OpenAI-style error: the HTTP status, the sentence, its type and the parameter it is about."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Function(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str


class _ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: _Function


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    """A participant's name: accepted, not passed to the model (chat templates have no place for it)."""
    refusal: None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part["text"] for part in self.content)
        return self.content or ""


class _FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: Literal[False] | None = Field(None, json_schema_extra={
        "expect": "false (strict schemas are not enforced; a call's required arguments are checked)"})


class _ToolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: _FunctionSpec


class _NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class _NamedTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: _NamedFunction


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
    tools: list[_ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | _NamedTool | None = None


@dataclass(frozen=True)
class Call:
    """What the dispatcher is asked: the tier (None: `auto`), the prompt (the last user message), the whole
    conversation when it is more than that, and the options."""

    model: str
    tier: str | None
    prompt: str
    system: str
    options: dict[str, Any]
    dialogue: Dialogue | None = None
    stream: bool = False
    include_usage: bool = False

    @property
    def pinned(self) -> bool:
        """Nothing judges the first tier's answer: with `stream`, it goes out as it is generated."""
        return self.options.get("escalate") == "never"


def parse(body: object, tiers: list[str]) -> Call:
    """The request as a dispatcher call; OpenAIError (400, one sentence) for anything it cannot be."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    for name, neutral in NEUTRAL.items():
        if name in body and not any(_same(body[name], value) for value in neutral):
            allowed = " or ".join(json.dumps(value) for value in neutral)
            raise OpenAIError(400, f"{name}: only {allowed} is supported, got {json.dumps(body[name])[:100]}",
                              param=name)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop)):
        raise OpenAIError(400, f"stop: must be a string or a list of at most {MAX_STOP} strings, got "
                          f"{json.dumps(stop)[:80]}", param="stop")
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("none", "auto", "required") and not (
            isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict)
            and isinstance(choice["function"].get("name"), str)):
        raise OpenAIError(400, 'tool_choice: must be "none", "auto", "required" or {"type": "function", "function": '
                          f'{{"name": ...}}}}, got {json.dumps(choice)[:80]}', param="tool_choice")
    for i, message in enumerate(body.get("messages") if isinstance(body.get("messages"), list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else part
                raise OpenAIError(400, f"messages[{i}].content[{j}]: only text parts ({{\"type\": \"text\", \"text\": "
                                  f"...}}) are supported, got {json.dumps(kind)[:40]}", param="messages")
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise OpenAIError(400, explain(exc, ChatRequest)[0].replace("a table", "a JSON object")) from None
    unsupported = sorted(set(request.model_extra or {}) - set(NEUTRAL))
    if request.stream_options is not None and not request.stream:
        raise OpenAIError(400, "stream_options: is only allowed with stream = true", param="stream_options")
    if unsupported:
        raise OpenAIError(400, f"{unsupported[0]}: is not supported", param=unsupported[0])
    system = "\n\n".join(m.text for m in request.messages if m.role in ("system", "developer"))
    turns = conversation(request.messages)
    tools = tools_of(request)
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
    prompt = next(t.content for t in reversed(turns) if t.role == "user")
    dialogue = None if len(turns) == 1 and tools is None else Dialogue(turns, *(tools or ((), "auto")))
    return Call(request.model, tier, prompt, system, options, dialogue, request.stream,
                bool(request.stream_options and request.stream_options.include_usage))


def _same(sent: object, value: object) -> bool:
    """Equal as JSON values: 1 and 1.0 are, false and 0 are not."""
    return sent == value and isinstance(sent, bool) == isinstance(value, bool)


def conversation(messages: list[_Message]) -> tuple[Turn, ...]:
    """The messages after the system ones as turns: they include a user message and end with a user or tool
    message; an assistant message's tool calls are answered, each once, by the tool messages that follow it."""
    turns: list[Turn] = []
    unanswered: dict[str, int] = {}
    """The calls of the last assistant message with calls that no tool message has answered yet."""
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role in ("system", "developer"):
            continue
        if message.role != "assistant" and message.tool_calls:
            raise OpenAIError(400, f"{where}.tool_calls: only assistant messages carry tool calls", param="messages")
        if message.role != "tool" and message.tool_call_id is not None:
            raise OpenAIError(400, f"{where}.tool_call_id: only tool messages answer tool calls", param="messages")
        if message.role == "tool":
            if message.tool_call_id not in unanswered:
                raise OpenAIError(400, f"{where}.tool_call_id: must name an unanswered tool call of the assistant "
                                  f"message before it, got {json.dumps(message.tool_call_id)}", param="messages")
            del unanswered[message.tool_call_id]
        elif unanswered:
            call, at = next(iter(unanswered.items()))
            raise OpenAIError(400, f"{where}: the tool call {call} of messages[{at}] has no tool message answering it "
                              "before this one", param="messages")
        calls = tuple(_tool_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(message.tool_calls or ()))
        unanswered = {c.id: i for c in calls} or unanswered
        turns.append(Turn(message.role, message.text, calls, message.tool_call_id or ""))  # type: ignore[arg-type]
    if unanswered:
        call, at = next(iter(unanswered.items()))
        raise OpenAIError(400, f"messages: the tool call {call} of messages[{at}] has no tool message answering it",
                          param="messages")
    if not any(t.role == "user" for t in turns):
        raise OpenAIError(400, "messages: must include a user message", param="messages")
    if turns[-1].role not in ("user", "tool"):
        raise OpenAIError(400, f"messages: must end with a user or tool message, not {turns[-1].role}",
                          param="messages")
    return tuple(turns)


def _tool_call(call: _ToolCall, where: str) -> ToolCall:
    if not CALL_ID.fullmatch(call.id):
        raise OpenAIError(400, f"{where}.id: must be 1 to 128 letters, digits, _ or -, got {json.dumps(call.id)[:80]}",
                          param="messages")
    try:
        arguments = json.loads(call.function.arguments)
    except (ValueError, RecursionError):
        arguments = None
    if not isinstance(arguments, dict):
        raise OpenAIError(400, f"{where}.function.arguments: must be a JSON object as text", param="messages")
    return ToolCall(call.id, call.function.name, call.function.arguments)


def tools_of(request: ChatRequest) -> tuple[tuple[Tool, ...], Literal["auto", "none", "required"]] | None:
    """The request's tools and tool_choice (a named function: that tool alone, and it must be called)."""
    if request.tool_choice is not None and not request.tools:
        raise OpenAIError(400, "tool_choice: is only allowed with tools", param="tool_choice")
    if not request.tools:
        return None
    tools: list[Tool] = []
    for i, spec in enumerate(request.tools):
        function = spec.function
        if not TOOL_NAME.fullmatch(function.name):
            raise OpenAIError(400, f"tools[{i}].function.name: must be 1 to 64 letters, digits, _ or -, got "
                              f"{json.dumps(function.name)[:80]}", param="tools")
        schema = function.parameters
        required = schema.get("required", [])
        if schema.get("type", "object") != "object" or not isinstance(schema.get("properties", {}), dict) \
                or not isinstance(required, list) or not all(isinstance(name, str) for name in required):
            raise OpenAIError(400, f"tools[{i}].function.parameters: must be a JSON Schema of type object, with "
                              "properties an object and required a list of names", param="tools")
        try:
            parameters = json.dumps(schema, ensure_ascii=False)  # as written: neutralize reads the text
        except (ValueError, RecursionError):
            raise OpenAIError(400, f"tools[{i}].function.parameters: is nested too deeply", param="tools") from None
        tools.append(Tool(function.name, function.description, parameters))
    if len({t.name for t in tools}) != len(tools):
        raise OpenAIError(400, "tools: two tools have the same name", param="tools")
    choice = request.tool_choice or "auto"
    if isinstance(choice, _NamedTool):
        named = [t for t in tools if t.name == choice.function.name]
        if not named:
            raise OpenAIError(400, f"tool_choice: {choice.function.name!r} is not one of the tools "
                              f"({', '.join(t.name for t in tools)})", param="tool_choice")
        return tuple(named), "required"
    return tuple(tools), choice


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
    if result.tool_calls:
        return "tool_calls"
    return "stop" if result.finish_reason == "stop" else "length"


def _tool_calls(result: GenerateResult) -> list[dict[str, Any]]:
    return [{"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in result.tool_calls]


def _extension(result: GenerateResult) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True, exclude={"text"})


def completion(result: GenerateResult) -> dict[str, Any]:
    """The result as a `chat.completion`; `mcp_tiered` carries what the MCP tool's result carries."""
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": int(time.time()),
        "model": model_of(result.served_by, result.model),
        "choices": [{"index": 0, "message": {
            "role": "assistant", "content": result.text or (None if result.tool_calls else ""),
            **({"tool_calls": _tool_calls(result)} if result.tool_calls else {})},
            "finish_reason": _finish(result), "logprobs": None}],
        "usage": _usage(result), "mcp_tiered": _extension(result),
    }


def chunk_head(model: str) -> dict[str, Any]:
    """What every chunk of one streamed answer carries; `model` as in `model_of`."""
    return {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}


def model_of(tier: str, model: str) -> str:
    return f"{tier}/{model}"


def delta(head: dict[str, Any], **content: Any) -> dict[str, Any]:
    return {**head, "choices": [{"index": 0, "delta": content, "finish_reason": None}]}


def closing(head: dict[str, Any], result: GenerateResult, include_usage: bool) -> list[dict[str, Any]]:
    """The chunks after the text: the tool calls, the finish reason (with the extension), and with
    include_usage a last chunk with no choices and the usage."""
    events = [delta(head, tool_calls=[{"index": i, **call} for i, call in enumerate(_tool_calls(result))])] \
        if result.tool_calls else []
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(result)}],
                   "mcp_tiered": _extension(result)})
    if include_usage:
        events.append({**head, "choices": [], "usage": _usage(result)})
    return events


def chunks(result: GenerateResult, include_usage: bool) -> list[dict[str, Any]]:
    """The answer that stands, whole, as `chat.completion.chunk` events."""
    head = chunk_head(model_of(result.served_by, result.model))
    return [delta(head, role="assistant", content=""), *([delta(head, content=result.text)] if result.text else []),
            *closing(head, result, include_usage)]
