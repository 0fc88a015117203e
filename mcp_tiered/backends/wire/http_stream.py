"""One generation streamed from an HTTP engine (llama-server's own API or an OpenAI-compatible one),
shared by the engines that call one: progress, the deadline's partial text, loop stopping and every
way a stream can fail, with the API's own event format left to a `StreamReader`."""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import httpx2

from ...calls.confidence import is_repetitive
from ..base import LOOP_CHECK_EVERY, Completion, FinishReason, GenerationRequest, ToolCall
from ..pool import CallControl


MAX_EVENT_BYTES = 1 << 20
"""The longest stream line read: one token's event is a few hundred bytes, with log-probabilities a few KB."""
MAX_JSON_BYTES = 64 << 20
"""The largest JSON answer read (`/tokenize` of a 1 MB prompt is about 2 MB)."""
MAX_ERROR_BYTES = 64 << 10
"""Of an error answer, what is read for its message."""
MAX_TOOL_CALLS = 64
"""The most tool calls one answer may carry."""
MAX_CHARS_PER_TOKEN = 128
"""More text per asked-for token than any vocabulary's longest token: an endpoint that sends more is cut."""
PLAIN = {"Accept-Encoding": "identity"}
"""Bodies as sent, so that a bound on bytes read is a bound on memory (no decompression bombs)."""


class EndpointError(Exception):
    """One endpoint failed a call: a phrase such as "answered HTTP 500 at /completion (detail)"."""

    def __init__(self, phrase: str, *, status: int | None = None):
        super().__init__(phrase)
        self.status = status


def context_refusal(exc: EndpointError) -> bool:
    """Whether the endpoint refused the request because the prompt does not fit its context."""
    text = str(exc).lower()
    return exc.status in (400, 413) and ("context" in text or "too long" in text or "too many tokens" in text)


class DeadlinePassed(Exception):
    """The call's deadline passed before the engine began its answer."""


class StreamReader(ABC):
    """Reads one API's stream events: the text, log-probabilities and token count so far, and the end."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: list[float] = []
        self.tokens = 0
        self.done = False
        self.finish: FinishReason = "stop"
        self.calls: dict[int, dict[str, str]] = {}
        """Tool calls by their index, as their pieces arrive (id, name, arguments)."""
        self.prompt_tokens: float | None = None
        self.usage_tokens: float | None = None
        """The prompt and completion tokens as the engine reported them (`reported.checked` judges them);
        `tokens` is what was counted in the stream."""

    @abstractmethod
    def feed(self, event: Any) -> None:
        """Take one `data:` event (parsed JSON); raise ValueError/KeyError/TypeError if it is malformed."""

    def add_call_piece(self, piece: dict[str, Any]) -> None:
        """A piece of a streamed tool call: its index, and the first time its id and name; the arguments' text
        comes in pieces."""
        index = piece.get("index", len(self.calls))
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_TOOL_CALLS:
            raise ValueError(f"tool call index {index!r}")
        call = self.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        function = piece.get("function") or {}
        for key, value in (("id", piece.get("id")), ("name", function.get("name")),
                           ("arguments", function.get("arguments"))):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"tool call {key} is {type(value).__name__}, not text")
            if value:
                call[key] = call[key] + value if key == "arguments" else value

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}")
                     for i, c in sorted(self.calls.items()))

    def feed_done(self) -> None:
        """`data: [DONE]`, the OpenAI stream's last line."""
        raise ValueError("unexpected [DONE]")

    def ended(self) -> None:
        """The stream closed; set `done` if what was read makes a complete answer."""

    def cut(self, max_tokens: int, max_chars: int) -> None:
        """End the answer at what the call asked for, whatever the endpoint goes on sending."""
        text = "".join(self.parts)[:max_chars]
        self.parts = [text]
        self.tokens = min(self.tokens, max_tokens)
        self.done, self.finish = True, "length"


def error_detail(body: bytes) -> str:
    """The message of an error response ({"error": {"message": ...}} or its text), short."""
    try:
        data = json.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
    except (ValueError, AttributeError):
        message = None
    text = message or body.decode("utf-8", errors="replace").strip() or "no detail"
    return " ".join(text.split())[:200]


def reported(value: Any) -> float:
    """A number an engine reported, as it came (finite or not: `reported.checked` judges it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {type(value).__name__}")
    return value


async def read_bounded(response: httpx2.Response, limit: int, path: str) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise EndpointError(f"sent an answer over {limit >> 10} KiB at {path}")
    return bytes(body)


async def lines(response: httpx2.Response, path: str) -> AsyncIterator[str]:
    """The stream's lines, none longer than `MAX_EVENT_BYTES` (a longer one raises EndpointError)."""
    buffer = bytearray()
    async for chunk in response.aiter_raw():
        scanned = len(buffer)
        buffer += chunk
        while (end := buffer.find(b"\n", scanned)) >= 0:
            yield buffer[:end].rstrip(b"\r").decode("utf-8", errors="replace")
            del buffer[:end + 1]
            scanned = 0
        if len(buffer) > MAX_EVENT_BYTES:
            raise EndpointError(f"sent a stream line over {MAX_EVENT_BYTES >> 20} MiB at {path}")
    if buffer:
        yield buffer.decode("utf-8", errors="replace")


async def post_json(http: httpx2.AsyncClient, url: str, path: str, body: dict[str, Any],
                    headers: dict[str, str], seconds_left: float | None = None) -> Any:
    """POST `body` and read its JSON answer (at most `MAX_JSON_BYTES`); DeadlinePassed once `seconds_left`
    have passed."""
    with anyio.move_on_after(math.inf if seconds_left is None else seconds_left):
        try:
            async with http.stream("POST", url + path, json=body, headers={**headers, **PLAIN}) as response:
                if response.status_code != 200:
                    detail = error_detail(await read_bounded(response, MAX_ERROR_BYTES, path))
                    raise EndpointError(f"answered HTTP {response.status_code} at {path} ({detail})",
                                        status=response.status_code)
                content = await read_bounded(response, MAX_JSON_BYTES, path)
        except httpx2.HTTPError as exc:
            raise EndpointError(f"failed at {path} ({type(exc).__name__})") from exc
        try:
            return json.loads(content)
        except (ValueError, RecursionError):
            raise EndpointError(f"sent a response that is not JSON at {path}") from None
    raise DeadlinePassed(path)


async def stream_answer(http: httpx2.AsyncClient, url: str, path: str, body: dict[str, Any],
                        headers: dict[str, str], request: GenerationRequest, control: CallControl,
                        reader: StreamReader, prompt_tokens: int = 0) -> Completion:
    """POST `body` to `url + path` and read the answer as it streams. Past the call's deadline (or once
    the answer loops, with `stop_on_loop`) it returns the text so far; a failure raises EndpointError."""
    left = control.seconds_left()
    looped = answering = False
    most_chars = request.max_tokens * MAX_CHARS_PER_TOKEN
    chars = read_parts = 0
    try:
        with anyio.move_on_after(math.inf if left is None else left):
            async with http.stream("POST", url + path, json=body, headers={**headers, **PLAIN}) as response:
                answering = True
                if response.status_code != 200:
                    detail = error_detail(await read_bounded(response, MAX_ERROR_BYTES, path))
                    raise EndpointError(f"answered HTTP {response.status_code} at {path} ({detail})",
                                        status=response.status_code)
                async with aclosing(lines(response, path)) as events:
                    async for line in events:
                        if not line.startswith("data:"):
                            continue
                        payload, had = line[5:].strip(), reader.tokens
                        if payload == "[DONE]":
                            reader.feed_done()
                        else:
                            reader.feed(json.loads(payload))
                            if had == 0 and reader.tokens:
                                control.generating_since, control.phase = time.monotonic(), "generating"
                            control.tokens = reader.tokens
                            chars += sum(len(part) for part in reader.parts[read_parts:])
                            if control.on_text is not None and chars <= most_chars \
                                    and reader.tokens <= request.max_tokens:  # else cut below
                                for part in reader.parts[read_parts:]:
                                    control.on_text(part)
                            read_parts = len(reader.parts)
                        if reader.done:
                            break
                        if reader.tokens > request.max_tokens or chars > most_chars:
                            reader.cut(request.max_tokens, most_chars)  # more than was asked for
                            break
                        if (request.stop_on_loop and reader.tokens != had and reader.tokens % LOOP_CHECK_EVERY == 0
                                and reader.tokens >= 2 * LOOP_CHECK_EVERY
                                and is_repetitive("".join(reader.parts)[-1024:])):
                            looped = True
                            break
                    else:
                        reader.ended()
    except httpx2.HTTPError as exc:
        what = "broke off its stream" if answering else "failed"
        raise EndpointError(f"{what} at {path} ({type(exc).__name__})") from exc
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, ArithmeticError, RecursionError) as exc:
        raise EndpointError(f"sent a stream at {path} that is not valid events ({type(exc).__name__})") from exc
    text = "".join(reader.parts)
    if not reader.done:
        if not looped and (left is None or control.seconds_left() != 0):
            raise EndpointError(f"ended its stream at {path} before the answer was complete")
        return Completion(text.strip(), "length" if looped else "deadline", prompt_tokens, reader.tokens,
                          tuple(reader.logprobs))
    return Completion(text.strip(), reader.finish, reader.prompt_tokens or prompt_tokens,
                      reader.tokens if reader.usage_tokens is None else reader.usage_tokens, tuple(reader.logprobs),
                      tool_calls=reader.tool_calls())
