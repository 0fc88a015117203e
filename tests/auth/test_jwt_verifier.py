"""JwtVerifier against a provider this test serves itself (metadata and JWKS over real HTTP, and a provider
that stops answering): stale keys keep serving while the provider is away, reserved principal names are
refused, the audience matches with or without its trailing slash."""

from __future__ import annotations

import time

import anyio
import pytest

from mcp_tiered.auth.jwt_tokens import FETCH_TIMEOUT_S, JwtVerifier
from mcp_tiered.auth.verifier import Verifier
from mcp_tiered.config.auth import AuthConfig, OAuthConfig
from oidc_provider import TinyProvider, sign_token, tiny_provider

pytestmark = pytest.mark.anyio


RESOURCE = "http://127.0.0.1:9/mcp"


def token(provider: TinyProvider, **changes: object) -> str:
    now = int(time.time())
    return sign_token(provider.jwks, {"iss": provider.issuer, "aud": RESOURCE, "sub": "alice", "exp": now + 300,
                                      "iat": now, "scope": "tools", **changes})


async def test_stale_keys_keep_serving_while_the_provider_does_not_answer() -> None:
    clock = [0.0]
    async with tiny_provider() as provider:
        verifier = JwtVerifier(OAuthConfig(issuer=provider.issuer, resource=RESOURCE), clock=lambda: clock[0])
        try:
            assert (await verifier.verify(token(provider))).principal == "alice"
            provider.hang = True
            clock[0] += 2 * 3600  # past jwks_max_age_s: the set is fetched anew, and that fetch times out
            done: list[float] = []
            started = time.monotonic()

            async def verify() -> None:
                assert (await verifier.verify(token(provider))).principal == "alice"
                done.append(time.monotonic() - started)

            with anyio.fail_after(FETCH_TIMEOUT_S + 5):
                async with anyio.create_task_group() as tg:
                    for _ in range(6):
                        tg.start_soon(verify)
        finally:
            await verifier.aclose()
    # one request waited for the fetch's timeout; the others were answered from the stale set at once
    assert sorted(done)[4] < 1.0 and max(done) < FETCH_TIMEOUT_S + 2


@pytest.mark.parametrize("name", ["key:ci-bot", "anonymous"])
async def test_a_provider_identity_cannot_take_a_reserved_principal_name(name: str) -> None:
    async with tiny_provider() as provider:
        verifier = Verifier(AuthConfig(oauth=OAuthConfig(issuer=provider.issuer, resource=RESOURCE)), ["small"])
        try:
            assert await verifier.verify_token(token(provider, sub=name)) is None
            assert (await verifier.verify_token(token(provider))).client_id == "alice"
        finally:
            await verifier.aclose()


@pytest.mark.parametrize("audience", [RESOURCE, RESOURCE + "/"])
async def test_the_audience_matches_with_or_without_its_trailing_slash(audience: str) -> None:
    async with tiny_provider() as provider:
        verifier = JwtVerifier(OAuthConfig(issuer=provider.issuer, resource=RESOURCE))
        try:
            assert (await verifier.verify(token(provider, aud=audience))).principal == "alice"
        finally:
            await verifier.aclose()
