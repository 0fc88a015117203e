"""Every private part of the MCP Python SDK (`mcp`) that mcp-tiered uses, each behind a function named for
what it does.

`MCPServer` (the SDK's high-level server) keeps its protocol server, `mcp.server.lowlevel.Server`, in the
private `_lowlevel_server`, and has no public way to register a request handler of its own or to run that
server over streams the caller made. Both are needed here: `logging/setLevel` (server.py) and a stdio
transport that answers the lines the SDK's reader drops (stdio.py). The attribute can change in any
release: it is reached only here, written against `PINNED`, and `version_problem()` says when the installed
version is another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import installed_version, version_sentence

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server
    from mcp.server.mcpserver import MCPServer

DISTRIBUTION = "mcp"
PINNED = "2.3.0"
"""The version this module was written against: the `==` pin in pyproject.toml (a test checks it)."""


def version_problem(installed: str | None = None) -> str | None:
    """One sentence naming the pin when the installed mcp (or `installed`, for a test) is not `PINNED`;
    None when it is."""
    return version_sentence(DISTRIBUTION, PINNED, installed or installed_version(DISTRIBUTION))


def lowlevel_server(mcp: MCPServer) -> Server[Any]:
    """The low-level `Server` that `mcp` runs for every transport: the object whose `run(read, write,
    create_initialization_options())` serves a session (as `MCPServer.run_stdio_async` does) and whose
    `add_request_handler` answers a method MCPServer has no decorator for.

    Reaches into `MCPServer._lowlevel_server`, as the SDK's own in-process `Client` does: MCPServer
    publishes neither."""
    return mcp._lowlevel_server
