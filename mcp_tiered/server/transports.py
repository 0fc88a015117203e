"""Serving the MCP server: stdio, or HTTP (Streamable HTTP at /mcp, without sessions under `[server] stateless`,
or SSE) with the operations endpoints /healthz and /metrics, Host/Origin checks against DNS rebinding, and a
bearer token."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import os
import signal
from collections.abc import Iterator
from typing import Literal

import anyio
import structlog
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config.schema import ServerConfig
from ..errors import ConfigError
from .http_guard import ConnectionLimits, HostOriginGuard, connection_cap, guarded_protocol, install_log_filters
from .metrics import Metrics
from .stdio import run_stdio
from ..calls.tiers import TierRegistry

log = structlog.get_logger(__name__)

Transport = Literal["stdio", "sse", "http"]
OPEN_PATHS = frozenset({"/healthz"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_token(server: ServerConfig, host: str) -> str | None:
    """The bearer token HTTP requests must carry, or None; refuses an unsafe setup in one sentence."""
    if server.auth_token_env is None:
        if not is_loopback(host):
            raise ConfigError(f"--host {host}: serving beyond this machine needs a bearer token; set "
                              "[server] auth_token_env to the name of an environment variable holding it")
        return None
    token = os.environ.get(server.auth_token_env)
    if not token:
        raise ConfigError(f"server.auth_token_env: the environment variable ${server.auth_token_env} is not set "
                          "or empty")
    return token


class BearerAuth:
    """Every HTTP request except /healthz needs `Authorization: Bearer <token>`; others get 401
    before reaching MCP (so no model ever runs for them)."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = json.dumps({"error": "unauthorized",
                                   "message": "missing or wrong Authorization: Bearer token"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def check_transport(server: ServerConfig, transport: Transport) -> None:
    """Refuses, in one sentence, a `[server]` setting the transport cannot honour."""
    if server.stateless and transport == "sse":
        raise ConfigError("server.stateless: SSE needs every request of a session to reach the process that opened "
                          "it, so it cannot be served statelessly; use --transport http, or set stateless = false")


def security_settings(server: ServerConfig, host: str, port: int) -> TransportSecuritySettings:
    """The Host and Origin values allowed (`"host:*"`: any port)."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *server.allowed_hosts]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*", *server.allowed_origins]
    if not is_loopback(host) and host not in ("0.0.0.0", "::"):
        hosts.append(f"{host}:{port}")
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


def http_app(mcp: MCPServer, tiers: TierRegistry, metrics: Metrics, server: ServerConfig, transport: Transport,
             host: str, port: int, token: str | None) -> ASGIApp:
    @mcp.custom_route("/healthz", methods=["GET"])
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "tiers": {
            tier.name: {"loaded": tier.backend.loaded, "local": not tier.capabilities.prompt_leaves_machine} for tier in tiers}})

    @mcp.custom_route("/metrics", methods=["GET"])
    async def prometheus(_: Request) -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    check_transport(server, transport)
    security = security_settings(server, host, port)
    limit = server.max_request_body_bytes
    if transport == "sse":
        app = mcp.sse_app(transport_security=security, max_request_body_size=limit, host=host)
    else:
        # stateless: each POST gets a transport of its own and no Mcp-Session-Id (the SDK serves the
        # 2026-07-28 protocol that way in either mode), so any replica can answer any request.
        app = mcp.streamable_http_app(transport_security=security, max_request_body_size=limit, host=host,
                                      stateless_http=server.stateless)
    return HostOriginGuard(BearerAuth(app, token) if token else app, security.allowed_hosts, security.allowed_origins)


async def serve(mcp: MCPServer, tiers: TierRegistry, metrics: Metrics, server: ServerConfig, transport: Transport,
                host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run until the transport ends (stdin closed, or SIGINT/SIGTERM for HTTP: uvicorn lets in-flight
    calls finish, then the models are freed and the port released)."""
    async with tiers.running():
        if transport == "stdio":
            await run_stdio(mcp)
            return
        token = auth_token(server, host)
        app = http_app(mcp, tiers, metrics, server, transport, host, port, token)
        install_log_filters()
        limits = ConnectionLimits(connection_cap(server.max_connections), server.header_timeout_s,
                                  server.body_timeout_s)
        config = uvicorn.Config(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=10,
                                lifespan="on", http=guarded_protocol(limits))
        http = _Server(config)
        log.info("serving", transport=transport, url=f"http://{host}:{port}" + ("/sse" if transport == "sse" else "/mcp"),
                 auth="bearer" if token else "none", stateless=server.stateless)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, http)
            await http.serve()
            tg.cancel_scope.cancel()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would re-raise SIGTERM after its shutdown and kill the process before the models are
        # freed; _stop_on_signal asks it to stop instead, so serve() returns and cleanup runs.
        yield


async def _stop_on_signal(http: uvicorn.Server) -> None:
    """The first SIGINT/SIGTERM stops accepting and gives in-flight calls timeout_graceful_shutdown (10 s);
    a second one stops at once. Either way serve() returns, and the models are freed."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for received in signals:
            log.info("shutting_down", signal=signal.Signals(received).name, now=http.should_exit)
            http.force_exit = http.should_exit
            http.should_exit = True
