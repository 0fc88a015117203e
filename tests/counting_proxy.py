"""A TCP proxy in front of one endpoint that counts the generation requests in flight through it (one request
per connection, as the openai engine sends them): what the endpoint itself sees at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc

COUNTED = (b"POST /v1/chat/completions", b"POST /completion")


class CountingProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = 0
        self.in_flight = 0
        self.most = 0
        self.counted = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", self.upstream_port) as upstream:
            first = await client.receive()
            counted = first.startswith(COUNTED)
            if counted:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
                self.counted += 1
            try:
                await upstream.send(first)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_pipe, client, upstream)
                    await _pipe(upstream, client)
                    tg.cancel_scope.cancel()
            finally:
                if counted:
                    self.in_flight -= 1


async def _pipe(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
        pass


@asynccontextmanager
async def counting_proxy(upstream_port: int) -> AsyncIterator[CountingProxy]:
    proxy = CountingProxy(upstream_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy.handle)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
