"""MCP over stdio, answering every request line.

The SDK's stdio reader drops a line it cannot validate as a JSON-RPC message (a lone surrogate in a
string, params given as a list, "jsonrpc": "1.0"): a client that sent such a request would wait for its
answer forever. Here such a line gets the JSON-RPC error it deserves, with its id when it has one
(-32700 for text that is not JSON the protocol accepts, -32600 for a message that is not a valid request),
and the server goes on. Over HTTP the SDK already answers such bodies with 400.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterable, AsyncIterator
from io import TextIOWrapper

import anyio
import mcp_types as types
import structlog
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from ..compat.mcp_sdk import lowlevel_server

log = structlog.get_logger(__name__)


def refusal(line: str) -> types.JSONRPCError | None:
    """The error answer to `line` when the SDK cannot take it as a message and a client may be waiting
    for one; None for a valid message, a blank line or a notification (which is never answered)."""
    if not line.strip():
        return None
    try:
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        return None
    except ValidationError as exc:
        not_json = any(error["type"] == "json_invalid" for error in exc.errors())
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        message = None
    if isinstance(message, dict) and "method" in message and "id" not in message:
        return None
    request_id = message.get("id") if isinstance(message, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        request_id = None
    if not_json:
        error = types.ErrorData(code=types.PARSE_ERROR,
                                message="Parse error: the line is not JSON that the protocol accepts "
                                        "(invalid JSON, or a string with a lone surrogate)")
    else:
        error = types.ErrorData(code=types.INVALID_REQUEST,
                                message='Invalid request: not a JSON-RPC 2.0 message ("jsonrpc": "2.0", a method '
                                        "name, params as an object)")
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)


class _AnsweringLines:
    """The stdin lines for the SDK's reader, less those it would drop unanswered: those are answered
    here, through the same writer as every other answer."""

    def __init__(self, source: AsyncIterable[str]):
        self._source = source
        self._writer: anyio.abc.ObjectSendStream[SessionMessage] | None = None
        self._ready = anyio.Event()

    def answer_through(self, writer: anyio.abc.ObjectSendStream[SessionMessage]) -> None:
        self._writer = writer
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[str]:
        async for line in self._source:
            answer = refusal(line)
            if answer is None:
                yield line
                continue
            log.warning("stdio_message_refused", code=answer.error.code, id=answer.id)
            await self._ready.wait()
            assert self._writer is not None
            await self._writer.send(SessionMessage(answer))


class _Unowned(TextIOWrapper):
    """Text over sys.stdin's buffer that, collected, leaves the buffer open (as the SDK's own does)."""

    def close(self) -> None:
        try:
            self.detach()
        except ValueError:
            pass


async def run_stdio(mcp: MCPServer) -> None:
    """`MCPServer.run_stdio_async`, with every request line answered."""
    stdin = anyio.wrap_file(_Unowned(sys.stdin.buffer, encoding="utf-8", errors="replace"))
    lines = _AnsweringLines(stdin)
    async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]
        lines.answer_through(write_stream)
        server = lowlevel_server(mcp)  # MCPServer runs its low-level server the same way
        await server.run(read_stream, write_stream, server.create_initialization_options())
