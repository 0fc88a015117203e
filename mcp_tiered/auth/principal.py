"""Who a call is from: the principal the HTTP transport authenticated (an OpenID identity or a named key), the
local user on stdio, or `anonymous` on an unguarded loopback server; with its grants and limits."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Literal

from ..config.auth import PrincipalLimits
from .scopes import EVERYTHING, Grants

PrincipalKind = Literal["oauth", "key", "local", "anonymous"]
KEY_PREFIX = "key:"
"""A key's principal is `key:<name>`, so no identity from the provider can be taken for a key."""
ANONYMOUS = "anonymous"
NAME_CHARS = 200


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: PrincipalKind
    grants: Grants
    limits: PrincipalLimits = PrincipalLimits()


def local_user() -> Principal:
    """The user this process runs as (stdio: whoever started it)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER (a bare container)
        name = "uid-unknown"
    return Principal(name[:NAME_CHARS], "local", EVERYTHING)


UNGUARDED = Principal(ANONYMOUS, "anonymous", EVERYTHING)
"""The caller of an HTTP server without [auth] or a token (loopback only)."""
