"""`[auth]`: who may call what over HTTP. Identities come from the company's OpenID provider (`[auth.oauth]`:
JWT access tokens issued for this server) and from named API keys (`keys_file`, managed by `mcp-tiered keys`);
each carries scopes (auth.scopes) and limits (`[auth.limits]`, a key's own, `[auth.principals.<name>]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .amounts import Amount
from .explain import describe_value

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""The signatures a token may carry: never `none`, never HS* (a shared secret, which a public key must not be)."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _http_url(value: str, what: str) -> str:
    """An https URL (http only on this machine, where no network lies between)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL ({what}), got {describe_value(value)}")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"must be an https URL ({what}; http only on loopback), got {describe_value(value)}")
    if parts.query or parts.fragment:
        raise ValueError(f"must be a URL without a query or fragment ({what}), got {describe_value(value)}")
    return value


class PrincipalLimits(BaseModel):
    """What one principal may use; None: no limit of its own (the team's [budget] still caps cloud spend)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    """HTTP requests in any 60 s; beyond it 429 with Retry-After."""
    tokens_per_day: Annotated[int, Field(ge=1)] | None = None
    """Prompt and completion tokens of every hop of its calls in a UTC day; beyond it calls are refused."""
    cloud_daily: Amount | None = None
    cloud_monthly: Amount | None = None
    """Its share of the cloud budget (in [costs].currency), held with the same reservation as the team's."""

    def over(self, defaults: PrincipalLimits) -> PrincipalLimits:
        """These limits, with `defaults` where these set none."""
        return PrincipalLimits(**{name: getattr(self, name) if getattr(self, name) is not None
                                  else getattr(defaults, name) for name in PrincipalLimits.model_fields})


class OAuthConfig(BaseModel):
    """`[auth.oauth]`: access tokens (JWT) from the company's identity provider, issued for this server."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    issuer: Annotated[str, Field(json_schema_extra={"expect": "the identity provider's issuer URL"})]
    """The `iss` tokens carry; its metadata (/.well-known/openid-configuration or oauth-authorization-server)
    names the JWKS."""
    resource: Annotated[str, Field(json_schema_extra={"expect": "this server's MCP URL, such as https://mcp.internal/mcp"})]
    """This server's URL as clients reach it: the audience (RFC 8707 resource) tokens must be issued for, and
    the resource of its Protected Resource Metadata."""
    required_scopes: list[Annotated[str, Field(min_length=1)]] = []
    """Scopes every token must carry, as the identity provider names them (advertised in the metadata)."""
    principal_claim: Annotated[str, Field(min_length=1)] = "sub"
    """The claim that names the person or service (`sub`, `email`, `preferred_username`, `oid` …)."""
    scopes_claim: Annotated[str, Field(min_length=1)] = "scope"
    """Where the token's scopes are: a space-separated string or a list (`scp` on Entra ID)."""
    groups_claim: Annotated[str, Field(min_length=1)] | None = None
    """A claim listing the principal's groups, matched against `grants` like scopes."""
    grants: dict[str, list[str]] = {}
    """An identity provider scope or group → the mcp-tiered scopes it grants. Empty: the token's scopes are
    read as mcp-tiered scope names."""
    scopes_supported: list[Annotated[str, Field(min_length=1)]] | None = None
    """The scopes the Protected Resource Metadata advertises, which MCP clients request from the provider;
    None: required_scopes and the keys of `grants` (without grants, the mcp-tiered scope names)."""
    algorithms: list[Literal[ASYMMETRIC_ALGORITHMS]] = ["RS256", "ES256"]  # type: ignore[valid-type]
    leeway_s: Annotated[float, Field(ge=0, le=300)] = 30.0
    """Clock skew allowed on `exp`, `nbf` and `iat`."""
    jwks_refresh_s: Annotated[float, Field(ge=1, le=86400)] = 60.0
    """The least time between two JWKS fetches caused by a token signed with a key not in the cached set."""
    jwks_max_age_s: Annotated[float, Field(ge=60)] = 3600.0
    """The cached JWKS is fetched anew after this long, so rotated-out keys stop working."""

    @model_validator(mode="after")
    def _groups_need_grants(self) -> OAuthConfig:
        if self.groups_claim is not None and not self.grants:
            raise ValueError("groups_claim needs grants: a group grants only the mcp-tiered scopes that grants "
                             "maps it to (else a directory group named 'cloud' would grant the cloud scope)")
        return self

    @property
    def advertised_scopes(self) -> list[str]:
        if self.scopes_supported is not None:
            return list(self.scopes_supported)
        from ..auth.scopes import EVERY_SCOPE

        return list(dict.fromkeys([*self.required_scopes, *(self.grants or EVERY_SCOPE)]))

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        return _http_url(value, "the issuer's identifier")

    @field_validator("resource")
    @classmethod
    def _resource_url(cls, value: str) -> str:
        return _http_url(value, "this server's MCP URL")


class AuthConfig(BaseModel):
    """`[auth]`: identities on the HTTP transports. Without `oauth` and `keys_file`, [server] auth_token_env
    (one key named `default` with every scope) or nothing (loopback only) guards them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    oauth: OAuthConfig | None = None
    keys_file: Annotated[Path, Field(json_schema_extra={"expect": "a file path"})] | None = None
    """The named API keys (`mcp-tiered keys add/list/revoke`); read again whenever it changes."""
    limits: PrincipalLimits = PrincipalLimits()
    """Every principal's limits, unless its key or [auth.principals.<name>] sets its own."""
    principals: dict[str, PrincipalLimits] = {}
    """Limits of named principals (as `principal_claim` names them), over [auth.limits]."""

    @field_validator("keys_file", mode="before")
    @classmethod
    def _expand_keys_file(cls, value: Any, info: ValidationInfo) -> Any:
        from .schema import _optional_path

        return _optional_path(value, info, "a file path")

    @property
    def enabled(self) -> bool:
        return self.oauth is not None or self.keys_file is not None
