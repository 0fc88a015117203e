"""One generation streamed from an HTTP engine (llama-server's own API or an OpenAI-compatible one),
shared by the engines that call one: progress, the deadline's partial text, loop stopping and every
way a stream can fail, with the API's own event format left to a `StreamReader`."""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from typing import Any

import anyio
import httpx2

from ..confidence import is_repetitive
from .base import LOOP_CHECK_EVERY, Completion, FinishReason, GenerationRequest
from .pool import CallControl


class EndpointError(Exception):
    """One endpoint failed a call: a phrase such as "answered HTTP 500 at /completion (detail)"."""

    def __init__(self, phrase: str, *, status: int | None = None):
        super().__init__(phrase)
        self.status = status


class StreamReader(ABC):
    """Reads one API's stream events: the text, log-probabilities and token count so far, and the end."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: list[float] = []
        self.tokens = 0
        self.done = False
        self.finish: FinishReason = "stop"
        self.prompt_tokens: int | None = None

    @abstractmethod
    def feed(self, event: Any) -> None:
        """Take one `data:` event (parsed JSON); raise ValueError/KeyError/TypeError if it is malformed."""

    def feed_done(self) -> None:
        """`data: [DONE]`, the OpenAI stream's last line."""
        raise ValueError("unexpected [DONE]")

    def ended(self) -> None:
        """The stream closed; set `done` if what was read makes a complete answer."""


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


async def post_json(http: httpx2.AsyncClient, url: str, path: str, body: dict[str, Any],
                    headers: dict[str, str]) -> Any:
    try:
        response = await http.post(url + path, json=body, headers=headers)
    except httpx2.HTTPError as exc:
        raise EndpointError(f"failed at {path} ({type(exc).__name__})") from exc
    if response.status_code != 200:
        raise EndpointError(f"answered HTTP {response.status_code} at {path} ({error_detail(response.content)})",
                            status=response.status_code)
    try:
        return response.json()
    except ValueError:
        raise EndpointError(f"sent a response that is not JSON at {path}") from None


async def stream_answer(http: httpx2.AsyncClient, url: str, path: str, body: dict[str, Any],
                        headers: dict[str, str], request: GenerationRequest, control: CallControl,
                        reader: StreamReader, prompt_tokens: int = 0) -> Completion:
    """POST `body` to `url + path` and read the answer as it streams. Past the call's deadline (or once
    the answer loops, with `stop_on_loop`) it returns the text so far; a failure raises EndpointError."""
    left = control.seconds_left()
    looped = answering = False
    try:
        with anyio.move_on_after(math.inf if left is None else left):
            async with http.stream("POST", url + path, json=body, headers=headers) as response:
                answering = True
                if response.status_code != 200:
                    detail = error_detail(await response.aread())
                    raise EndpointError(f"answered HTTP {response.status_code} at {path} ({detail})",
                                        status=response.status_code)
                async for line in response.aiter_lines():
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
                    if reader.done:
                        break
                    if (request.stop_on_loop and reader.tokens != had and reader.tokens % LOOP_CHECK_EVERY == 0
                            and reader.tokens >= 2 * LOOP_CHECK_EVERY and is_repetitive("".join(reader.parts)[-1024:])):
                        looped = True
                        break
                else:
                    reader.ended()
    except httpx2.HTTPError as exc:
        what = "broke off its stream" if answering else "failed"
        raise EndpointError(f"{what} at {path} ({type(exc).__name__})") from exc
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise EndpointError(f"sent a stream at {path} that is not valid events ({type(exc).__name__})") from exc
    text = "".join(reader.parts)
    if not reader.done:
        if not looped and (left is None or control.seconds_left() != 0):
            raise EndpointError(f"ended its stream at {path} before the answer was complete")
        return Completion(text.strip(), "length" if looped else "deadline", prompt_tokens, reader.tokens,
                          tuple(reader.logprobs))
    return Completion(text.strip(), reader.finish, reader.prompt_tokens or prompt_tokens, reader.tokens,
                      tuple(reader.logprobs))
