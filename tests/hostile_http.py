"""A loopback HTTP/1.1 server for tests whose behaviour is a function of the request: the hostile
endpoints (lying usage, endless lines, silence) that a real server cannot be made to be."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc


@dataclass
class Request:
    method: str
    path: str
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


Send = Callable[[bytes], Awaitable[None]]
Handler = Callable[[Request, Send], Awaitable[None]]


@dataclass
class HostileServer:
    handler: Handler
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    sent_bytes: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive()
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                           if line.lower().startswith("content-length:")), 0)
            while len(body) < length:
                body += await stream.receive()
            request = Request(method, path, body)
            self.requests.append(request)

            async def send(data: bytes) -> None:
                await stream.send(data)
                self.sent_bytes += len(data)

            try:
                await self.handler(request, send)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                pass  # the client went away, as it may


async def not_found(send: Send) -> None:
    await send_json(send, {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}},
                    "404 Not Found")


def head(status: str = "200 OK", kind: str = "application/json", length: int | None = None) -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n{size}Connection: close\r\n\r\n".encode()


async def send_json(send: Send, value: object, status: str = "200 OK") -> None:
    body = json.dumps(value).encode()
    await send(head(status, length=len(body)) + body)


def sse(event: dict | str) -> bytes:
    return f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode()


def chat_chunk(content: str | None = None, logprob: float | str | None = None, finish: str | None = None) -> str:
    """One chat.completion.chunk as JSON text; `logprob` may be a bare JSON constant such as "NaN"."""
    choice = {"index": 0, "delta": {"content": content} if content is not None else {}, "finish_reason": finish}
    if logprob is not None:
        choice["logprobs"] = {"content": [{"token": "t", "logprob": "LOGPROB"}]}
    return json.dumps({"choices": [choice]}).replace('"LOGPROB"', str(logprob))


async def stream_chat(send: Send, words: list[str], usage: str | None = None, logprob: float | str = -0.05) -> None:
    """A chat completion streamed word by word, then `usage` (a JSON object as text), then [DONE]."""
    await send(head(kind="text/event-stream"))
    for word in words:
        await send(sse(chat_chunk(word, logprob)))
    await send(sse(chat_chunk(finish="stop")))
    if usage is not None:
        await send(sse('{"choices": [], "usage": ' + usage + '}'))
    await send(sse("[DONE]"))


@asynccontextmanager
async def hostile_server(handler: Handler) -> AsyncIterator[HostileServer]:
    server = HostileServer(handler)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.serve)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()
