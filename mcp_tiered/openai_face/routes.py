"""`GET /v1/models` and `POST /v1/chat/completions` on the HTTP transports: the OpenAI chat API answered by the
same dispatcher as the MCP tools (arguments, cache, cascade, the ledger row committed before the answer), for the
request's principal (auth.http.Gate stands in front, as for /mcp). Every failure is one OpenAI-style error."""

from __future__ import annotations

import json
import time

import anyio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..auth.http import principal_now
from ..calls.dispatch import Dispatcher
from ..errors import BackendError, BusyError, QuotaError, RequestError, ScopeError, TieredError
from . import chat

MODELS_PATH = "/v1/models"
CHAT_PATH = "/v1/chat/completions"
CLIENT_CHARS = 64
KEEPALIVE_S = 5.0
"""While a streamed call's tiers work and judge, an SSE comment goes out this often."""
_STATUS = ((ScopeError, 403, "permission_error"), (QuotaError, 429, "rate_limit_error"),
           (RequestError, 400, "invalid_request_error"), (BusyError, 503, "server_error"),
           (BackendError, 502, "api_error"))
"""A dispatcher failure → its HTTP status and OpenAI error type (the first that matches)."""


def add_routes(mcp, dispatcher: Dispatcher) -> None:  # noqa: ANN001 (an MCPServer)
    names = [tier.name for tier in dispatcher.tiers]

    @mcp.custom_route(MODELS_PATH, methods=["GET"])
    async def models(_: Request) -> Response:
        created = int(time.time())
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "mcp-tiered"}
            for name in chat.model_names(names)]})

    @mcp.custom_route(CHAT_PATH, methods=["POST"])
    async def chat_completions(request: Request) -> Response:
        try:
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                raise chat.OpenAIError(400, "the request body is not JSON") from None
            call = chat.parse(body, names)
            if call.stream:
                return _EventStream(dispatcher, call, request)
            result = await _answer(dispatcher, call, request)
        except chat.OpenAIError as exc:
            return JSONResponse(exc.body(), exc.status)
        return JSONResponse(chat.completion(result))


class _EventStream(Response):
    """`stream: true`: the call runs to its end first — a hop whose answer may still be judged and escalated is
    never sent as final text — then the answer that stands goes out as chunks. A call that fails within
    KEEPALIVE_S gets its own status; after that the 200 is sent, with an SSE comment every KEEPALIVE_S while
    the tiers work, and a failure then is an error event."""

    media_type = "text/event-stream"

    def __init__(self, dispatcher: Dispatcher, call: chat.Call, request: Request):
        super().__init__()
        self.dispatcher, self.call, self.request = dispatcher, call, request

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 (ASGI)
        outcome: dict[str, object] = {}
        done = anyio.Event()

        async def run() -> None:
            try:
                outcome["result"] = await _answer(self.dispatcher, self.call, self.request)
            except chat.OpenAIError as exc:
                outcome["error"] = exc
            finally:
                done.set()

        started = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.move_on_after(KEEPALIVE_S):
                await done.wait()
            if not done.is_set() or "result" in outcome:
                started = True
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no")]})
            while not done.is_set():
                await send({"type": "http.response.body", "body": b": working\n\n", "more_body": True})
                with anyio.move_on_after(KEEPALIVE_S):
                    await done.wait()
        if "error" in outcome and not started:  # it failed fast: its own status, as without streaming
            error: chat.OpenAIError = outcome["error"]  # type: ignore[assignment]
            await JSONResponse(error.body(), error.status)(scope, receive, send)
            return
        events = [error.body()] if (error := outcome.get("error")) is not None else chat.chunks(
            outcome["result"], self.call.include_usage)  # type: ignore[arg-type]
        body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _answer(dispatcher: Dispatcher, call: chat.Call, request: Request):  # noqa: ANN202
    client = request.headers.get("user-agent", "")[:CLIENT_CHARS] or None  # what the client says it is
    options = {"client": client, "principal": principal_now(), **call.options}
    try:
        if call.tier is None:
            return await dispatcher.generate_routed(call.prompt, call.system, tool=f"{CHAT_PATH} {call.model}",
                                                    **options)
        return await dispatcher.generate(call.tier, call.prompt, call.system, via=f"{CHAT_PATH} {call.model}",
                                         **options)
    except TieredError as exc:
        status, kind = next((s, k) for t, s, k in _STATUS if isinstance(exc, t)) if any(
            isinstance(exc, t) for t, _, _ in _STATUS) else (500, "api_error")
        raise chat.OpenAIError(status, str(exc), kind) from None
