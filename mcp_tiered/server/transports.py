"""Serving the MCP server: stdio, or HTTP (Streamable HTTP at /mcp, without sessions under `[server] stateless`,
or SSE) with the operations endpoints /healthz and /metrics, Host/Origin checks against DNS rebinding, and
authentication ([auth]: identities from the company's OpenID provider and named keys; auth.http.Gate)."""

from __future__ import annotations

import contextlib
import ipaddress
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
from starlette.types import ASGIApp

from ..auth.http import Gate, Unguarded
from ..auth.verifier import Verifier
from ..config.auth import AuthConfig
from ..config.schema import ServerConfig
from ..errors import ConfigError
from .http_guard import ConnectionLimits, HostOriginGuard, connection_cap, guarded_protocol, install_log_filters
from .metrics import Metrics
from .stdio import run_stdio
from ..calls.tiers import TierRegistry

log = structlog.get_logger(__name__)

Transport = Literal["stdio", "sse", "http"]
MAX_HEADER_BYTES = 96 * 1024
"""A request head may be this long (uvicorn's default is 16 KiB): an oversized bearer token then gets its 401
from the verifier rather than a bare 400 from the HTTP parser."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_token(server: ServerConfig) -> str | None:
    """The legacy shared bearer token ([server] auth_token_env), or None."""
    if server.auth_token_env is None:
        return None
    token = os.environ.get(server.auth_token_env)
    if not token:
        raise ConfigError(f"server.auth_token_env: the environment variable ${server.auth_token_env} is not set "
                          "or empty")
    return token


def http_verifier(server: ServerConfig, auth: AuthConfig, tiers: list[str], host: str) -> Verifier | None:
    """Who may call over HTTP ([auth], the legacy token), or None for an unguarded loopback server; refuses
    serving beyond this machine unguarded, in one sentence."""
    token = auth_token(server)
    if not auth.enabled and token is None:
        if not is_loopback(host):
            raise ConfigError(f"--host {host}: serving beyond this machine needs authentication; set [auth] oauth or "
                              "keys_file, or [server] auth_token_env to the name of an environment variable holding "
                              "a bearer token")
        return None
    return Verifier(auth, tiers, token)


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
             host: str, port: int, verifier: Verifier | None) -> ASGIApp:
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
    guarded = Gate(app, verifier) if verifier is not None else Unguarded(app)
    return HostOriginGuard(guarded, security.allowed_hosts, security.allowed_origins)


async def serve(mcp: MCPServer, tiers: TierRegistry, metrics: Metrics, server: ServerConfig, transport: Transport,
                host: str = "127.0.0.1", port: int = 8765, auth: AuthConfig | None = None) -> None:
    """Run until the transport ends (stdin closed, or SIGINT/SIGTERM for HTTP: uvicorn lets in-flight
    calls finish, then the models are freed and the port released)."""
    async with tiers.running():
        if transport == "stdio":
            await run_stdio(mcp)
            return
        verifier = http_verifier(server, auth or AuthConfig(), [*(t.name for t in tiers), *tiers.unavailable], host)
        app = http_app(mcp, tiers, metrics, server, transport, host, port, verifier)
        install_log_filters()
        limits = ConnectionLimits(connection_cap(server.max_connections), server.header_timeout_s,
                                  server.body_timeout_s)
        config = uvicorn.Config(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=10,
                                lifespan="on", http=guarded_protocol(limits),
                                h11_max_incomplete_event_size=MAX_HEADER_BYTES)
        http = _Server(config)
        log.info("serving", transport=transport, url=f"http://{host}:{port}" + ("/sse" if transport == "sse" else "/mcp"),
                 auth=_auth_kinds(verifier), stateless=server.stateless)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_stop_on_signal, http)
                await http.serve()
                tg.cancel_scope.cancel()
        finally:
            if verifier is not None:
                await verifier.aclose()


def _auth_kinds(verifier: Verifier | None) -> str:
    if verifier is None:
        return "none"
    kinds = [kind for kind, on in (("oauth", verifier.jwt), ("keys", verifier.keys), ("token", verifier.legacy))
             if on is not None]
    return "+".join(kinds)


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
