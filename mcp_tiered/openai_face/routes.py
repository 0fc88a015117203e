"""`GET /v1/models` and `POST /v1/chat/completions` on the HTTP transports: the OpenAI chat API answered by the
same dispatcher as the MCP tools (arguments, cache, cascade, the ledger row committed before the answer), for the
request's principal (auth.http.Gate stands in front, as for /mcp). Every failure is one OpenAI-style error."""

from __future__ import annotations

import asyncio
import json
import time

import anyio
import structlog

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..auth.http import principal_now
from ..backends.pool import CallControl
from ..calls.dispatch import Dispatcher
from ..calls.results import GenerateResult
from ..errors import BackendError, BusyError, QuotaError, RequestError, ScopeError, TieredError
from . import chat

MODELS_PATH = "/v1/models"
CHAT_PATH = "/v1/chat/completions"
CLIENT_CHARS = 64
log = structlog.get_logger(__name__)
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
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise chat.OpenAIError(400, "the request body is not JSON") from None
            call = chat.parse(body, names)
            if call.stream:
                return _EventStream(dispatcher, call, request)
            result = await _answer(dispatcher, call, request)
        except chat.OpenAIError as exc:
            return JSONResponse(exc.body(), exc.status)
        return JSONResponse(chat.completion(result))


class _Pieces:
    """The answer's text as the engine generates it (`CallControl.on_text`, called from the engine's thread or
    the event loop), waiting for the response to send it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()
        self.parts: list[str] = []

    def put(self, text: str) -> None:
        self.parts.append(text)
        if not self.ready.is_set():
            self.loop.call_soon_threadsafe(self.ready.set)

    def take(self) -> str:
        self.ready.clear()
        count = len(self.parts)  # what an engine thread appends meanwhile stays for the next take
        text = "".join(self.parts[:count])
        del self.parts[:count]
        return text


class _Sent:
    """What of a streamed answer has gone out: the completion's text is stripped, so leading and trailing
    whitespace wait for what follows. (Engines hand on no text that a stop string later cuts:
    `CallControl.on_text`.)"""

    def __init__(self) -> None:
        self.text = self.pending = ""

    def add(self, piece: str) -> str:
        """The part of the text so far that can go out now."""
        self.pending += piece
        if not self.text:
            self.pending = self.pending.lstrip()
        ready = self.pending[:len(self.pending.rstrip())]
        self.pending = self.pending[len(ready):]
        self.text += ready
        return ready

    def rest(self, answer: str) -> str:
        """What of the final answer has not gone out (nothing, if the engine's pieces were not its text)."""
        if answer.startswith(self.text):
            return answer[len(self.text):]
        log.warning("streamed_text_differs", sent_chars=len(self.text), answer_chars=len(answer))
        return ""


class _EventStream(Response):
    """`stream: true`. A pinned tier (`<tier>:never`), whose answer nothing judges, streams its text as the
    engine generates it. Otherwise the call runs to its end first — a hop whose answer may still be judged and
    escalated is never sent as final text — then the answer that stands goes out. A call that fails before
    any text and within KEEPALIVE_S gets its own status; after that the 200 is sent, with an SSE comment every
    KEEPALIVE_S while nothing else goes out, and a failure then is an error event."""

    media_type = "text/event-stream"

    def __init__(self, dispatcher: Dispatcher, call: chat.Call, request: Request):
        super().__init__()
        self.dispatcher, self.call, self.request = dispatcher, call, request

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 (ASGI)
        outcome: dict[str, object] = {}
        pieces = _Pieces()
        control = CallControl()
        if self.call.pinned:
            control.on_text = pieces.put

        async def run() -> None:
            try:
                outcome["result"] = await _answer(self.dispatcher, self.call, self.request, control)
            except chat.OpenAIError as exc:
                outcome["error"] = exc
            finally:
                pieces.ready.set()

        async def event(body: dict[str, object]) -> None:
            await send({"type": "http.response.body", "body": b"data: " + json.dumps(body).encode() + b"\n\n",
                        "more_body": True})

        head: dict[str, object] = chat.chunk_head(self._model(None))
        started = False
        sent = _Sent()
        last_sent = time.monotonic()
        gone = False

        async def watch() -> None:  # a client that goes away cancels the call, as a cancelled MCP request does
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            tg.start_soon(watch)
            while True:
                with anyio.move_on_after(max(KEEPALIVE_S - (time.monotonic() - last_sent), 0)):
                    await pieces.ready.wait()
                finished = bool(outcome)
                if not started:
                    if finished and "error" in outcome:  # it failed fast: its own status, as without streaming
                        tg.cancel_scope.cancel()  # the watch
                        break
                    started = True
                    await send({"type": "http.response.start", "status": 200, "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no")]})
                    if self.call.pinned:
                        await event(chat.delta(head, role="assistant", content=""))
                if finished:  # what is left goes out with the answer that stands
                    tg.cancel_scope.cancel()  # the watch
                    break
                if text := sent.add(pieces.take()):
                    await event(chat.delta(head, content=text))
                elif time.monotonic() - last_sent >= KEEPALIVE_S:
                    await send({"type": "http.response.body", "body": b": working\n\n", "more_body": True})
                else:
                    continue
                last_sent = time.monotonic()
        if gone:
            return
        if not started:
            error: chat.OpenAIError = outcome["error"]  # type: ignore[assignment]
            await JSONResponse(error.body(), error.status)(scope, receive, send)
            return
        if (error := outcome.get("error")) is not None:
            events = [error.body()]  # type: ignore[attr-defined]
        elif self.call.pinned:  # the text so far went out as it came
            result: GenerateResult = outcome["result"]  # type: ignore[assignment]
            rest = sent.rest(result.text)
            events = [*([chat.delta(head, content=rest)] if rest else []),
                      *chat.closing(head, result, self.call.include_usage)]
        else:
            events = chat.chunks(outcome["result"], self.call.include_usage)  # type: ignore[arg-type]
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _model(self, result: object) -> str:
        """The chunks' `model`: the tier and model that answered, known up front for a pinned tier."""
        if isinstance(result, GenerateResult):
            return chat.model_of(result.served_by, result.model)
        if self.call.tier is not None:
            return chat.model_of(self.call.tier, self.dispatcher.tiers.get(self.call.tier).backend.model_name)
        return chat.AUTO


async def _answer(dispatcher: Dispatcher, call: chat.Call, request: Request,
                  control: CallControl | None = None) -> GenerateResult:
    client = request.headers.get("user-agent", "")[:CLIENT_CHARS] or None  # what the client says it is
    options = {"client": client, "principal": principal_now(), "dialogue": call.dialogue, **call.options}
    try:
        if call.tier is None:
            return await dispatcher.generate_routed(call.prompt, call.system, control,
                                                    tool=f"{CHAT_PATH} {call.model}", **options)
        return await dispatcher.generate(call.tier, call.prompt, call.system, control,
                                         via=f"{CHAT_PATH} {call.model}", **options)
    except TieredError as exc:
        status, kind = next(((s, k) for t, s, k in _STATUS if isinstance(exc, t)), (500, "api_error"))
        raise chat.OpenAIError(status, str(exc), kind) from None
