"""The OpenID provider the auth tests run (tests/oidc_provider.py): its discovery, its JWT access tokens for a
resource, and the MCP SDK's own client-credentials OAuth client getting one by discovery from a 401."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import jwt
import pytest
import uvicorn
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from oidc_provider import MemoryStorage, new_private_jwks, public_jwks, running_oidc_provider

RESOURCE = "http://127.0.0.1:8931/mcp"
OTHER = "http://other.example/api"
CLIENT = {"client_id": "agent", "client_secret": "agent-secret", "scope": "mcp:tools mcp:admin"}
RESOURCES = {RESOURCE: {"scope": "mcp:tools"}, OTHER: {"scope": "mcp:tools mcp:admin"}}


def verify(token: str, jwks: dict, issuer: str, audience: str) -> dict:
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    return jwt.decode(token, key.key, algorithms=[header["alg"]], issuer=issuer, audience=audience)


@pytest.mark.parametrize("well_known", ["openid-configuration", "oauth-authorization-server"])
def test_discovery_names_the_issuer_and_its_jwks_uri(tmp_path: Path, well_known: str) -> None:
    with running_oidc_provider(tmp_path, [CLIENT], RESOURCES) as op:
        metadata = httpx2.get(f"{op.issuer}/.well-known/{well_known}").json()
        assert metadata["issuer"] == op.issuer
        assert metadata["jwks_uri"] == f"{op.issuer}/jwks"
        assert metadata["token_endpoint"] == f"{op.issuer}/token"
        assert "client_credentials" in metadata["grant_types_supported"]
        assert httpx2.get(metadata["jwks_uri"]).json() == public_jwks(op.jwks)


def test_token_for_a_resource_is_a_jwt_for_that_audience(tmp_path: Path) -> None:
    with running_oidc_provider(tmp_path, [CLIENT], RESOURCES, ttl_s=120) as op:
        token = op.token("agent", "agent-secret", OTHER, scope="mcp:tools mcp:admin")
        claims = verify(token, public_jwks(op.jwks), op.issuer, OTHER)
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "at+jwt", "kid": op.jwks["keys"][0]["kid"]}
    assert claims["scope"] == "mcp:tools mcp:admin"
    assert claims["sub"] == claims["client_id"] == "agent"
    assert claims["exp"] - claims["iat"] == 120


def test_scopes_the_resource_does_not_allow_are_left_out(tmp_path: Path) -> None:
    with running_oidc_provider(tmp_path, [CLIENT], RESOURCES) as op:
        token = op.token("agent", "agent-secret", RESOURCE, scope="mcp:tools mcp:admin")
        assert verify(token, public_jwks(op.jwks), op.issuer, RESOURCE)["scope"] == "mcp:tools"


def test_audience_and_alg_follow_the_resource(tmp_path: Path) -> None:
    resources = {RESOURCE: {"scope": "mcp:tools", "audience": "urn:mcp-tiered", "alg": "ES256"}}
    with running_oidc_provider(tmp_path, [CLIENT], resources, jwks=new_private_jwks(("RSA", "EC"))) as op:
        token = op.token("agent", "agent-secret", RESOURCE, scope="mcp:tools")
        assert verify(token, public_jwks(op.jwks), op.issuer, "urn:mcp-tiered")["scope"] == "mcp:tools"
    assert jwt.get_unverified_header(token)["kid"] == op.jwks["keys"][1]["kid"]


def test_an_unknown_resource_is_refused(tmp_path: Path) -> None:
    with running_oidc_provider(tmp_path, [CLIENT], RESOURCES) as op:
        response = op.request_token("agent", "agent-secret", "http://unknown.example/mcp", scope="mcp:tools")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


def test_jwks_requests_are_counted(tmp_path: Path) -> None:
    with running_oidc_provider(tmp_path, [CLIENT], RESOURCES) as op:
        assert op.jwks_requests() == 0
        httpx2.get(f"{op.issuer}/jwks")
        httpx2.get(f"{op.issuer}/jwks")
        assert op.jwks_requests() == 2


def test_the_provider_is_stopped_and_reaped(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        with running_oidc_provider(tmp_path, [CLIENT], RESOURCES) as op:
            raise RuntimeError("the test failed")
    assert op.process.returncode is not None


@asynccontextmanager
async def serving(app: Starlette, sock: socket.socket) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            await anyio.sleep(0.01)
        try:
            yield
        finally:
            server.should_exit = True
    sock.close()


@pytest.mark.anyio
async def test_the_sdk_client_gets_a_token_by_discovery_from_a_401(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    resource = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    metadata_url = str(build_resource_metadata_url(AnyHttpUrl(resource)))
    with running_oidc_provider(tmp_path, [CLIENT], {resource: {"scope": "mcp:tools"}}) as op:
        seen_claims: list[dict] = []

        async def mcp(request: Request) -> JSONResponse:
            authorization = request.headers.get("authorization", "")
            if not authorization.startswith("Bearer "):
                return JSONResponse({"error": "invalid_token"}, 401,
                                    headers={"WWW-Authenticate": f'Bearer resource_metadata="{metadata_url}"'})
            seen_claims.append(verify(authorization.removeprefix("Bearer "), public_jwks(op.jwks), op.issuer, resource))
            return JSONResponse({"ok": True})

        # The issuer as a plain string: AnyHttpUrl(op.issuer) would add a trailing slash that the SDK then finds
        # different from the metadata's issuer.
        prm = create_protected_resource_routes(AnyHttpUrl(resource), [op.issuer], scopes_supported=["mcp:tools"])
        app = Starlette(routes=[*prm, Route("/mcp", mcp, methods=["POST"])])
        sent: list[tuple[str, str, bytes]] = []

        async def record(request: httpx2.Request) -> None:
            sent.append((request.method, str(request.url), request.content))

        auth = ClientCredentialsOAuthProvider(server_url=resource, storage=MemoryStorage(), client_id="agent",
                                              client_secret="agent-secret", scope="mcp:tools", issuer=op.issuer)
        with anyio.fail_after(30):
            async with serving(app, sock), httpx2.AsyncClient(auth=auth, event_hooks={"request": [record]}) as client:
                first = await client.post(resource, json={})
                second = await client.post(resource, json={})
    assert first.status_code == second.status_code == 200
    assert [(method, url) for method, url, _ in sent] == [
        ("POST", resource), ("GET", metadata_url), ("GET", f"{op.issuer}/.well-known/oauth-authorization-server"),
        ("POST", f"{op.issuer}/token"), ("POST", resource), ("POST", resource)]
    form = httpx2.QueryParams(sent[3][2].decode())
    assert dict(form) == {"grant_type": "client_credentials", "resource": resource, "scope": "mcp:tools"}
    assert seen_claims[0]["aud"] == resource and seen_claims[0]["scope"] == "mcp:tools"
    assert seen_claims[0] == seen_claims[1]
