"""The HTTP transports' gate, built from the SDK's pieces: its bearer backend asks our Verifier, its
RequireAuthMiddleware answers 401/403 with `WWW-Authenticate` (naming the Protected Resource Metadata, which
is served here for [auth.oauth]), and the principal's requests per minute are held to its limit (429 with
Retry-After). Every path but /healthz and the metadata needs a principal; /report and /metrics the `report`
scope. The principal is set for the request (`current_principal`), which the SDK carries into the tool call."""

from __future__ import annotations

import json
from contextvars import ContextVar

from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from pydantic import AnyHttpUrl
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .limits import RequestRate, retry_after
from .principal import UNGUARDED, Principal, local_user
from .scopes import REPORT
from .verifier import PrincipalToken, Verifier

OPEN_PATHS = frozenset({"/healthz"})
REPORT_PATHS = frozenset({"/report", "/metrics"})

current_principal: ContextVar[Principal | None] = ContextVar("mcp_tiered_principal", default=None)
_LOCAL = local_user()


def principal_now() -> Principal:
    """Who the call being served is from: the request's principal, or (stdio, a direct call) the local user."""
    return current_principal.get() or _LOCAL


class Unguarded:
    """An HTTP server without [auth] or a token (loopback only): every call is `anonymous`'s."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = current_principal.set(UNGUARDED)
        try:
            await self.app(scope, receive, send)
        finally:
            current_principal.reset(token)


class Gate:
    def __init__(self, app: ASGIApp, verifier: Verifier, rate: RequestRate | None = None):
        oauth = verifier.auth.oauth
        self.metadata_url = build_resource_metadata_url(AnyHttpUrl(oauth.resource)) if oauth else None
        # The URLs as configured, not as AnyHttpUrl spells them: an SDK client compares the issuer with the
        # provider's metadata, and sends the resource, character for character.
        self.metadata: list[Route] = create_protected_resource_routes(
            oauth.resource, [oauth.issuer], oauth.advertised_scopes, resource_name="mcp-tiered") if oauth else []
        self.rate = rate or RequestRate()
        self._signed_in = _SignedIn(app, self.rate)
        self._tools = RequireAuthMiddleware(self._signed_in, [], self.metadata_url)
        self._report = RequireAuthMiddleware(self._signed_in, [REPORT], self.metadata_url)
        backend = BearerAuthBackend(verifier)  # the Verifier checks the audience itself
        self.app = AuthenticationMiddleware(AuthContextMiddleware(self._route), backend=backend,
                                            on_error=_bad_credentials)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # not served: refused rather than let past the checks
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self._signed_in.app(scope, receive, send)
            return
        if scope["path"] in OPEN_PATHS:
            await self._signed_in.app(scope, receive, send)
            return
        for route in self.metadata:
            if route.matches(scope)[0] is Match.FULL:
                await route.handle(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self._report if scope["path"] in REPORT_PATHS else self._tools
        await guard(scope, receive, send)


class _SignedIn:
    """Behind RequireAuthMiddleware: a principal is known. Holds it to its requests per minute and makes it
    the request's principal."""

    def __init__(self, app: ASGIApp, rate: RequestRate):
        self.app, self.rate = app, rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        assert isinstance(user, AuthenticatedUser) and isinstance(user.access_token, PrincipalToken)
        principal: Principal = user.access_token.principal
        wait = self.rate.admit(principal.name, principal.limits.requests_per_minute)
        if wait is not None:
            await _send_json(send, 429, {"error": "rate_limited", "error_description":
                                         f"{principal.limits.requests_per_minute} requests per minute is the limit "
                                         f"of {principal.name}; retry in {retry_after(wait)} s"},
                             [(b"retry-after", retry_after(wait).encode())])
            return
        token = current_principal.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            current_principal.reset(token)


def _bad_credentials(conn, exc):  # noqa: ANN001, ANN202 (starlette's on_error signature)
    from starlette.responses import JSONResponse

    return JSONResponse({"error": "invalid_request", "error_description": "malformed Authorization header"}, 400)


async def _send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})
