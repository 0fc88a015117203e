"""The one TokenVerifier the SDK's bearer middleware asks: a named API key (the keys file, or the legacy
[server] auth_token_env as the key `default`), else an access token from the identity provider. A refusal is
logged with its reason and, when known, the principal; never the token."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

import structlog
from mcp.server.auth.provider import AccessToken
from pydantic import ConfigDict

from ..accounting.ledger import visible
from ..config.auth import AuthConfig, PrincipalLimits
from .jwt_tokens import JwtVerifier, Refused
from .keys import TOKEN_PREFIX, KeyFile, default_key
from .principal import ANONYMOUS, KEY_PREFIX, NAME_CHARS, Principal
from .scopes import Grants, scope_problem

log = structlog.get_logger(__name__)


class PrincipalToken(AccessToken):
    """The SDK's AccessToken with the principal it stands for."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    principal: Any


class Verifier:
    def __init__(self, auth: AuthConfig, tiers: Iterable[str], legacy_token: str | None = None):
        self.auth = auth
        self.tiers = tuple(tiers)
        self.keys = KeyFile(auth.keys_file, self.tiers) if auth.keys_file is not None else None
        self.jwt = JwtVerifier(auth.oauth) if auth.oauth is not None else None
        self.legacy = default_key(legacy_token) if legacy_token else None
        self._legacy_token = legacy_token.encode() if legacy_token else None

    async def aclose(self) -> None:
        if self.jwt is not None:
            await self.jwt.aclose()

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            principal, expires_at, claims = await self._principal(token)
        except Refused as exc:
            log.warning("auth_refused", reason=exc.reason,
                        principal=None if exc.principal is None else visible(exc.principal[:NAME_CHARS]))
            return None
        return PrincipalToken(token=token, client_id=principal.name, scopes=list(principal.grants.scopes),
                              expires_at=expires_at, subject=principal.name, claims=claims, principal=principal)

    async def _principal(self, token: str) -> tuple[Principal, int | None, dict[str, Any] | None]:
        if self._legacy_token is not None and hmac.compare_digest(token.encode(), self._legacy_token):
            return self._with_limits(self.legacy.principal()), None, None
        if token.startswith(TOKEN_PREFIX) or self.jwt is None:
            entry = self.keys.lookup(token) if self.keys is not None else None
            if entry is None:
                raise Refused("unknown key")
            return self._with_limits(entry.principal()), None, None
        verified = await self.jwt.verify(token)
        name = visible(verified.principal[:NAME_CHARS])
        if name.startswith(KEY_PREFIX) or name == ANONYMOUS:  # a key's or an unguarded server's name
            raise Refused("reserved principal name", name)
        principal = Principal(name, "oauth", self.grants(verified.scopes), self.limits_of(name))
        exp = verified.claims.get("exp")
        # The SDK's middleware refuses a token past expires_at with no leeway: give it ours.
        expires_at = int(exp + self.auth.oauth.leeway_s) if isinstance(exp, int | float) else None
        return principal, expires_at, {"iss": verified.claims.get("iss"), "sub": verified.claims.get("sub")}

    def grants(self, provider_scopes: frozenset[str]) -> Grants:
        """The mcp-tiered scopes the provider's scopes and groups grant ([auth.oauth] grants, else by name)."""
        mapping = self.auth.oauth.grants if self.auth.oauth is not None else {}
        if mapping:
            scopes = {s for given in provider_scopes for s in mapping.get(given, ())}
        else:
            scopes = {s for s in provider_scopes if scope_problem(s, self.tiers) is None}
        return Grants.of(scopes)

    def limits_of(self, name: str) -> PrincipalLimits:
        own = self.auth.principals.get(name)
        return own.over(self.auth.limits) if own is not None else self.auth.limits

    def _with_limits(self, principal: Principal) -> Principal:
        """A key's own limits over [auth.principals.<key:name>] and [auth.limits]."""
        limits = principal.limits.over(self.limits_of(principal.name))
        return Principal(principal.name, principal.kind, principal.grants, limits)
