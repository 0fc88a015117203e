"""MCP authorization end to end: `serve --transport http` as a resource server of a real OpenID provider
(oidc-provider on Node, tests/oidc_provider.py), the MCP SDK's own OAuth client discovering it from a 401, and
every kind of bad token refused with 401 before anything reaches a model."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import MCP_HTTP_TIMEOUT, free_port, http_server, secret
from oidc_provider import MemoryStorage, new_private_jwks, public_jwks, running_oidc_provider, sign_token

pytestmark = pytest.mark.anyio

AGENT = {"client_id": "agent", "client_secret": secret("agent-secret-7f3a"), "scope": "tools cloud report"}
NARROW = {"client_id": "narrow", "client_secret": secret("narrow-secret-91c2"), "scope": "tools"}
CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "generate_small", "arguments": {"prompt": "hi"}}}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def remember_bearer(request: httpx2.Request) -> None:
    """The access token the SDK's client obtained, for the end-of-run search of the logs."""
    if (value := request.headers.get("authorization", "")).startswith("Bearer "):
        secret(value.removeprefix("Bearer "))


def oauth_config(folder: Path, smollm2: Path, issuer: str, resource: str) -> Path:
    config = folder / "models.toml"
    config.write_text(f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "small"\nn_ctx = 512\nmax_tokens = 8\n'
                      f'[ledger]\npath = "{folder / "ledger.sqlite3"}"\n'
                      f'[auth.oauth]\nissuer = "{issuer}"\nresource = "{resource}"\n')
    return config


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(issuer: str, audience: str, **changes: object) -> dict:
    now = int(time.time())
    return {"iss": issuer, "aud": audience, "sub": "mallory", "iat": now, "exp": now + 300, "scope": "tools",
            **changes}


def unsigned(header: dict, payload: dict, signature: bytes = b"") -> str:
    return ".".join((b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)))


def bad_tokens(jwks: dict, issuer: str, resource: str, other_resource_token: str) -> dict[str, str]:
    """Every kind of token the server must refuse, by name."""
    key = jwks["keys"][0]
    kid = key["kid"]
    forged = new_private_jwks()
    forged["keys"][0]["kid"] = kid  # the provider's kid, another key: a bad signature
    unknown = new_private_jwks()
    unknown["keys"][0]["kid"] = "rotated-in-later"
    good = claims(issuer, resource)
    public_pem = _public_pem(key)
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    hs_body = f"{b64(json.dumps(hs_header).encode())}.{b64(json.dumps(good).encode())}"
    hs_signature = hmac.new(public_pem, hs_body.encode(), hashlib.sha256).digest()
    return {
        "expired": sign_token(jwks, claims(issuer, resource, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)),
        "not yet valid": sign_token(jwks, claims(issuer, resource, nbf=int(time.time()) + 3600)),
        "wrong issuer": sign_token(jwks, claims("http://127.0.0.1:1/evil", resource)),
        "wrong audience": other_resource_token,
        "bad signature": sign_token(forged, good),
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": kid}, good),
        "HS256 with the public key": f"{hs_body}.{b64(hs_signature)}",
        "unknown kid": sign_token(unknown, good),
        "64 KB": sign_token(jwks, claims(issuer, resource, pad="x" * 65536)),
        "garbage": "not-a-token-at-all",
    }


def _public_pem(private_jwk: dict) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from jwt.algorithms import RSAAlgorithm

    public = RSAAlgorithm.from_jwk(json.dumps(public_jwks({"keys": [private_jwk]})["keys"][0]))
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.model
async def test_the_sdk_oauth_client_discovers_the_provider_from_a_401_and_calls_a_tool(tmp_path: Path,
                                                                                     smollm2: Path) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with running_oidc_provider(tmp_path, [AGENT], {resource: {"scope": AGENT["scope"]}}) as op:
        config = oauth_config(tmp_path, smollm2, op.issuer, resource)
        auth = ClientCredentialsOAuthProvider(server_url=resource, storage=MemoryStorage(),
                                              client_id=AGENT["client_id"], client_secret=AGENT["client_secret"],
                                              issuer=op.issuer)
        with anyio.fail_after(90):
            async with http_server(config, port=port) as base, \
                    httpx2.AsyncClient(auth=auth, event_hooks={"request": [remember_bearer]},
                                       timeout=MCP_HTTP_TIMEOUT) as http, \
                    Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
                result = await client.call_tool("generate_small", {"prompt": "Say hi.", "temperature": 0})
                report = await http.get(f"{base}/report")
    assert not result.is_error, result.content
    assert result.structured_content["served_by"] == "small"
    assert report.status_code == 200  # the provider granted the report scope
    import sqlite3

    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT principal, outcome FROM calls").fetchall() == [("agent", "ok")]


async def test_every_bad_token_is_refused_with_401_and_nothing_reaches_a_model(tmp_path: Path, smollm2: Path) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    other = f"http://127.0.0.1:{port}/other"
    jwks = new_private_jwks()
    resources = {resource: {"scope": "tools"}, other: {"scope": "tools"}}
    with running_oidc_provider(tmp_path, [NARROW], resources, jwks=jwks) as op:
        config = oauth_config(tmp_path, smollm2, op.issuer, resource)
        tokens = {name: secret(token) for name, token in bad_tokens(
            jwks, op.issuer, resource, op.token(NARROW["client_id"], NARROW["client_secret"], other, "tools")).items()}
        answers: dict[str, httpx2.Response] = {}
        with anyio.fail_after(90):
            async with http_server(config, port=port) as base, httpx2.AsyncClient() as http:
                good = secret(op.token(NARROW["client_id"], NARROW["client_secret"], resource, "tools"))
                assert (await http.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                        headers={**HEADERS, "authorization": f"Bearer {good}"})).status_code != 401
                fetched = op.jwks_requests()
                for name, token in tokens.items():
                    answers[name] = await http.post(f"{base}/mcp", json=CALL,
                                                    headers={**HEADERS, "authorization": f"Bearer {token}"})
                for _ in range(5):  # more tokens signed with the unknown key: no more JWKS fetches
                    await http.post(f"{base}/mcp", json=CALL,
                                    headers={**HEADERS, "authorization": f"Bearer {tokens['unknown kid']}"})
                missing = await http.post(f"{base}/mcp", json=CALL, headers=HEADERS)
                health = (await http.get(f"{base}/healthz")).json()
                unknown_kid_fetches = op.jwks_requests() - fetched
    metadata = f'resource_metadata="http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"'
    for name, answer in {**answers, "no token": missing}.items():
        assert answer.status_code == 401, name
        assert 'error="invalid_token"' in answer.headers["www-authenticate"] and \
            metadata in answer.headers["www-authenticate"], name
    assert unknown_kid_fetches == 1
    assert health["tiers"]["small"]["loaded"] is False
    log = (tmp_path / "http.stderr").read_text()
    reasons = [json.loads(line)["reason"] for line in log.splitlines() if '"auth_refused"' in line]
    assert {"expired", "not yet valid", "wrong issuer", "wrong audience", "bad signature", "algorithm not allowed",
            "unknown key", "too large", "malformed"} <= set(reasons)
    assert not [name for name, token in {**tokens, "good": good}.items() if token in log]


async def test_the_protected_resource_metadata_names_the_issuer_and_the_scopes(tmp_path: Path, smollm2: Path) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with running_oidc_provider(tmp_path, [NARROW], {resource: {"scope": "tools"}}) as op:
        config = oauth_config(tmp_path, smollm2, op.issuer, resource)
        with anyio.fail_after(60):
            async with http_server(config, port=port) as base, httpx2.AsyncClient() as http:
                metadata = (await http.get(f"{base}/.well-known/oauth-protected-resource/mcp")).json()
    assert metadata["resource"] == resource
    assert metadata["authorization_servers"] == [op.issuer]
    assert metadata["scopes_supported"] == ["tools", "cloud", "report"]


def test_check_reads_the_providers_keys_and_says_when_it_cannot(tmp_path: Path, smollm2: Path) -> None:
    import subprocess

    from conftest import MCP_TIERED, server_env

    resource = "http://127.0.0.1:9/mcp"
    with running_oidc_provider(tmp_path, [NARROW], {resource: {"scope": "tools"}}) as op:
        config = oauth_config(tmp_path, smollm2, op.issuer, resource)
        found = subprocess.run([MCP_TIERED, "check", "--config", str(config)], capture_output=True, text=True,
                               timeout=120, env=server_env())
    gone = subprocess.run([MCP_TIERED, "check", "--config", str(config)], capture_output=True, text=True,
                          timeout=120, env=server_env())
    assert f"ok     auth: issuer {op.issuer}, 1 signing key for RS256, ES256" in found.stdout.splitlines()
    assert found.returncode == 0, found.stdout
    assert gone.returncode == 1
    assert [line for line in gone.stdout.splitlines() if "auth:" in line][0].startswith(
        f"error  auth: the identity provider {op.issuer} cannot be read (")
