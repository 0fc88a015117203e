"""Access tokens (JWT) from the identity provider: its metadata and JWKS fetched and cached (anew after
`jwks_max_age_s`), each token verified by PyJWT (signature, `iss`, `aud`, `exp`/`nbf`/`iat` with leeway) with
the algorithms the key itself allows among those configured. A token signed with a key not in the cached set
(a rotation) makes one JWKS fetch at most every `jwks_refresh_s`, however many such tokens arrive."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2 as httpx
import jwt
import structlog

from ..config.auth import OAuthConfig

log = structlog.get_logger(__name__)

MAX_TOKEN_CHARS = 16 * 1024
"""Longer than any provider's access token; a longer one is refused before it is parsed."""
FETCH_TIMEOUT_S = 5.0
RETRY_FAILED_FETCH_S = 5.0
"""After a failed fetch (the provider unreachable), the next one waits at least this long."""

_FAMILIES = {"RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "OKP": ("EdDSA",)}
_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


class Refused(Exception):
    """A token that is not accepted: `reason` is one of a few fixed words for the log (never token text);
    `principal` the name it carries when its signature was good."""

    def __init__(self, reason: str, principal: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.principal = principal


@dataclass(frozen=True, slots=True)
class Verified:
    claims: dict[str, Any]
    principal: str
    scopes: frozenset[str]
    """The token's scopes and groups as the provider names them."""


def key_algorithms(jwk: dict[str, Any], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The configured algorithms this key can verify: its own `alg` if it names one, else its type's."""
    if isinstance(jwk.get("alg"), str):
        return (jwk["alg"],) if jwk["alg"] in allowed else ()
    kty = jwk.get("kty")
    family = (_CURVES.get(jwk.get("crv", ""), ""),) if kty == "EC" else _FAMILIES.get(kty, ())
    return tuple(a for a in allowed if a in family)


@dataclass(frozen=True, slots=True)
class _Key:
    key: Any
    algorithms: tuple[str, ...]


class JwtVerifier:
    def __init__(self, oauth: OAuthConfig, http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.oauth = oauth
        resource = oauth.resource.rstrip("/")
        self.audiences = [resource, resource + "/"]
        self._http = http
        self._clock = clock
        self._keys: dict[str | None, _Key] = {}
        self._fetched_at: float | None = None
        self._next_unknown_fetch = float("-inf")
        """A token with a key not in the set fetches it anew no earlier than this (jwks_refresh_s apart)."""
        self._retry_at = float("-inf")
        """After a failed fetch, none before this."""
        self._jwks_uri: str | None = None
        self._lock = anyio.Lock()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:  # made in the event loop that uses it
            self._http = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        return self._http

    async def probe(self) -> int:
        """How many keys the provider publishes that can verify its tokens here (for `check`); raises
        httpx.HTTPError or ValueError when its metadata or JWKS cannot be read."""
        self._jwks_uri = await self._discover()
        self._keys = await self._fetch_keys(self._jwks_uri)
        return len(self._keys)

    async def verify(self, token: str) -> Verified:
        """The token's principal and scopes, or Refused."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Refused("too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refused("malformed") from None
        alg = header.get("alg")
        if alg not in self.oauth.algorithms:
            raise Refused("algorithm not allowed")
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None)
        if alg not in key.algorithms:
            raise Refused("algorithm not allowed")
        try:
            claims = jwt.decode(token, key.key, algorithms=list(key.algorithms), audience=self.audiences,
                                issuer=self.oauth.issuer, leeway=self.oauth.leeway_s,
                                options={"require": ["exp", "iss", "aud"], "verify_signature": True})
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
            raise Refused("bad signature") from None
        except jwt.PyJWTError as exc:  # the signature was good: the claims may name the principal
            raise Refused(_claim_reason(exc), self._principal_of(_unverified_claims(token))) from None
        principal = self._principal_of(claims)
        if principal is None:
            raise Refused(f"no {self.oauth.principal_claim} claim")
        scopes = _strings(claims.get(self.oauth.scopes_claim))
        if self.oauth.groups_claim is not None:
            scopes |= _strings(claims.get(self.oauth.groups_claim))
        if missing := [s for s in self.oauth.required_scopes if s not in scopes]:
            raise Refused(f"missing required scope {missing[0]}", principal)
        return Verified(claims, principal, scopes)

    def _principal_of(self, claims: dict[str, Any] | None) -> str | None:
        value = (claims or {}).get(self.oauth.principal_claim)
        return value if isinstance(value, str) and value else None

    def _cached(self, kid: str | None) -> _Key | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self.oauth.jwks_max_age_s

    async def _key(self, kid: str | None) -> _Key:
        now = self._clock()
        if (key := self._cached(kid)) is not None and (not self._stale(now) or self._lock.locked()
                                                        or now < self._retry_at):
            return key  # a stale set still serves while it is fetched anew, or after a fetch failed
        async with self._lock:  # one fetch for every request waiting on it
            now = self._clock()
            if now >= self._retry_at:
                if self._stale(now):
                    await self._refresh(now)
                elif self._cached(kid) is None and now >= self._next_unknown_fetch:
                    self._next_unknown_fetch = now + self.oauth.jwks_refresh_s
                    await self._refresh(now)
        if (key := self._cached(kid)) is not None:
            return key
        raise Refused("unknown key" if self._fetched_at is not None else "keys unavailable")

    async def _refresh(self, now: float) -> None:
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            keys = await self._fetch_keys(self._jwks_uri)
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            self._retry_at = self._clock() + RETRY_FAILED_FETCH_S  # from the failure: a timeout takes seconds
            log.warning("jwks_unavailable", issuer=self.oauth.issuer, error=_short(exc),
                        action="tokens signed with keys not yet fetched are refused until it answers")
            return
        self._keys, self._fetched_at = keys, now
        log.info("jwks_fetched", issuer=self.oauth.issuer, keys=len(keys))

    async def _discover(self) -> str:
        """The provider's jwks_uri, from its OpenID or RFC 8414 metadata, whose `issuer` must be ours."""
        issuer = self.oauth.issuer.rstrip("/")
        scheme, _, rest = issuer.partition("://")
        host, _, path = rest.partition("/")
        candidates = [f"{issuer}/.well-known/openid-configuration",
                      f"{scheme}://{host}/.well-known/oauth-authorization-server{'/' + path if path else ''}"]
        for url in candidates:
            response = await self.http.get(url, headers={"accept": "application/json"})
            if response.status_code == 404:
                continue
            response.raise_for_status()
            metadata = response.json()
            if not isinstance(metadata, dict) or metadata.get("issuer") != self.oauth.issuer:
                raise ValueError(f"the metadata at {url} is for another issuer")
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise ValueError(f"the metadata at {url} names no jwks_uri")
            if issuer.startswith("https://") and not jwks_uri.startswith("https://"):
                raise ValueError(f"the metadata at {url} names a jwks_uri without https")
            return jwks_uri
        raise ValueError("the issuer serves no OpenID or OAuth metadata")

    async def _fetch_keys(self, uri: str) -> dict[str | None, _Key]:
        response = await self.http.get(uri, headers={"accept": "application/json"})
        response.raise_for_status()
        data = response.json()
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("the JWKS is not a JSON object with a keys list")
        keys: dict[str | None, _Key] = {}
        for jwk in data["keys"]:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            algorithms = key_algorithms(jwk, tuple(self.oauth.algorithms))
            if not algorithms:
                continue
            try:
                key = jwt.PyJWK(jwk, algorithms[0]).key
            except (jwt.PyJWTError, ValueError, TypeError):
                continue  # a key of a kind this server cannot use; the others still count
            kid = jwk.get("kid")
            keys[kid if isinstance(kid, str) else None] = _Key(key, algorithms)
        return keys


_CLAIM_REASONS = ((jwt.ExpiredSignatureError, "expired"), (jwt.ImmatureSignatureError, "not yet valid"),
                  (jwt.InvalidAudienceError, "wrong audience"), (jwt.InvalidIssuerError, "wrong issuer"),
                  (jwt.InvalidIssuedAtError, "issued in the future"), (jwt.MissingRequiredClaimError, "missing claim"))


def _claim_reason(exc: jwt.PyJWTError) -> str:
    for kind, reason in _CLAIM_REASONS:
        if isinstance(exc, kind):
            return f"missing claim {exc.claim}" if isinstance(exc, jwt.MissingRequiredClaimError) else reason
    return "malformed"


def _unverified_claims(token: str) -> dict[str, Any] | None:
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None


def _strings(value: object) -> frozenset[str]:
    """A scope claim: a space-separated string (RFC 9068) or a list of strings."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"
