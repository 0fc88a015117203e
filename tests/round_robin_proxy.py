"""A minimal round-robin HTTP/1.1 load balancer for tests: each request (not each connection) goes to the
next upstream in turn, over a fresh upstream connection, and its response streams back as it arrives
(Content-Length, chunked, or read-to-close bodies; SSE included). A client that goes away mid-response
closes the upstream connection too, as a real load balancer does. `counts[i]` is how many requests
upstream i received; `routed` the (upstream, method, path) of each."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream, SocketAttribute

MAX_HEAD = 64 * 1024
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}


class _Reader:
    """Buffered reads from a byte stream: a line, a head, an exact count, or what is there."""

    def __init__(self, stream: ByteStream):
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False

    async def _fill(self) -> bool:
        try:
            self.buffer += await self.stream.receive()
            return True
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            self.eof = True
            return False

    async def until(self, delimiter: bytes) -> bytes | None:
        """Up to and including `delimiter`; None at the end of the stream (or beyond MAX_HEAD)."""
        while (at := self.buffer.find(delimiter)) < 0:
            if len(self.buffer) > MAX_HEAD or not await self._fill():
                return None
        chunk = bytes(self.buffer[:at + len(delimiter)])
        del self.buffer[:at + len(delimiter)]
        return chunk

    async def some(self, at_most: int) -> bytes:
        """What is buffered or arrives next (at most `at_most` bytes); b"" at the end of the stream."""
        if not self.buffer and not await self._fill():
            return b""
        chunk = bytes(self.buffer[:at_most])
        del self.buffer[:at_most]
        return chunk


def _parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    start, *lines = head[:-4].split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return start, headers


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for k, v in headers if k == name), None)


async def _forward_body(reader: _Reader, writer: ByteStream, headers: list[tuple[bytes, bytes]],
                        to_close: bool) -> bool:
    """Copy one message body as it arrives; False if it was cut short. `to_close`: no length nor chunks,
    the body runs to the end of the stream."""
    if b"chunked" in (_header(headers, b"transfer-encoding") or b"").lower():
        while True:
            size_line = await reader.until(b"\r\n")
            if size_line is None:
                return False
            await writer.send(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:  # the last chunk, then trailers up to an empty line
                while (line := await reader.until(b"\r\n")) not in (None, b"\r\n"):
                    await writer.send(line)
                if line is None:
                    return False
                await writer.send(b"\r\n")
                return True
            left = size + 2  # the chunk and its CRLF
            while left:
                chunk = await reader.some(left)
                if not chunk:
                    return False
                await writer.send(chunk)
                left -= len(chunk)
    length = _header(headers, b"content-length")
    left = int(length) if length is not None else (-1 if to_close else 0)
    while left:
        chunk = await reader.some(left if left > 0 else 65536)
        if not chunk:
            return left < 0
        await writer.send(chunk)
        left -= len(chunk) if left > 0 else 0
    return True


class RoundRobinProxy:
    def __init__(self, upstreams: list[str]):
        self.upstreams = [(urlsplit(u).hostname or "127.0.0.1", urlsplit(u).port or 80) for u in upstreams]
        self.counts = [0] * len(upstreams)
        self.routed: list[tuple[int, str, str]] = []
        self._next = itertools.cycle(range(len(upstreams)))
        self.url = ""

    async def _serve_connection(self, client: ByteStream) -> None:
        async with client:
            reader = _Reader(client)
            try:
                while (head := await reader.until(b"\r\n\r\n")) is not None:
                    if not await self._serve_request(head, reader, client):
                        return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return  # either side went away: close this connection, as a load balancer would

    async def _serve_request(self, head: bytes, reader: _Reader, client: ByteStream) -> bool:
        """Forward one request and its response; False when the client connection must close."""
        start, headers = _parse_head(head)
        method, path, _ = start.decode("latin-1").split(" ", 2)
        index = next(self._next)
        self.counts[index] += 1
        self.routed.append((index, method, path))
        forwarded = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
        try:
            upstream = await anyio.connect_tcp(*self.upstreams[index])
        except OSError:
            await client.send(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            return _header(headers, b"connection") != b"close"
        async with upstream:
            await upstream.send(start + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in forwarded)
                                + b"connection: close\r\n\r\n")
            if not await _forward_body(reader, upstream, headers, to_close=False):
                return False
            return await self._relay_response(method, _Reader(upstream), reader, client)

    async def _relay_response(self, method: str, upstream: _Reader, reader: _Reader, client: ByteStream) -> bool:
        head = await upstream.until(b"\r\n\r\n")
        if head is None:
            await client.send(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            return True
        start, headers = _parse_head(head)
        status = int(start.split(b" ")[1])
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        framed = no_body or _header(headers, b"content-length") is not None or \
            b"chunked" in (_header(headers, b"transfer-encoding") or b"").lower()
        kept = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
        await client.send(start + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in kept)
                          + (b"" if framed else b"connection: close\r\n") + b"\r\n")
        if no_body:
            return True
        complete = False
        async with anyio.create_task_group() as tg:
            async def watch_client() -> None:
                # The client sends nothing more until this response ends; its end of stream means it went
                # away, and closing the upstream connection tells the replica so.
                while await reader._fill():
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(watch_client)
            complete = await _forward_body(upstream, client, headers, to_close=not framed)
            tg.cancel_scope.cancel()
        return complete and framed and not reader.eof


@asynccontextmanager
async def round_robin_proxy(upstreams: list[str]) -> AsyncIterator[RoundRobinProxy]:
    """A RoundRobinProxy over the `upstreams` (base URLs) on a free loopback port; `.url` is its base URL."""
    proxy = RoundRobinProxy(upstreams)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.url = f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy._serve_connection)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
