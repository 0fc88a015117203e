"""Reaching the store: the connection string (the URL, the password from the variable the config names, a
connect timeout), how the store is named in logs and sentences (never its password), and which failures mean
"the database cannot be reached now" rather than a bug."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg.conninfo import make_conninfo

from ..config.schema import StoreConfig
from ..errors import ConfigError

UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError)
"""The database is down, cut off, restarting, or refused us: kept for later, never a crash."""
FAILURES = (psycopg.Error, OSError)
"""Everything a statement of the store may fail with (also read-only during a failover, a permission taken
away): the store counts as down until a renewal gets through; nothing is spent blind and no row is dropped."""


def conninfo(store: StoreConfig, environ: Mapping[str, str] = os.environ) -> str:
    """The libpq connection string; raises ConfigError naming store.password_env when its variable is unset."""
    assert store.url is not None
    # Keepalives and tcp_user_timeout: a connection a firewall dropped in silence fails within seconds, instead
    # of holding a statement until the kernel gives up (a quarter of an hour).
    extra: dict[str, object] = {"connect_timeout": max(1, round(store.timeout_s)), "application_name": "mcp-tiered",
                                "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 2,
                                "keepalives_count": 3, "tcp_user_timeout": round(store.timeout_s * 1000)}
    if store.password_env is not None:
        password = environ.get(store.password_env)
        if not password:
            raise ConfigError(f"store.password_env: the environment variable ${store.password_env} is not set "
                              "or empty")
        extra["password"] = password
    return make_conninfo(store.url, **extra)


def describe(store: StoreConfig) -> str:
    """The store as logs and sentences name it: user, host and database, no password and no query secrets."""
    assert store.url is not None
    parts = urlsplit(store.url)
    host = parts.hostname or (parse_qs(parts.query).get("host") or ["localhost"])[0]
    where = f"{host}:{parts.port}" if parts.port else host
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{where}{parts.path or '/'}"


def instance_name(store: StoreConfig) -> str:
    """How this process is named in the ledger: [store] instance, else <hostname>:<pid>."""
    return store.instance or f"{socket.gethostname()}:{os.getpid()}"


def reason(exc: BaseException) -> str:
    """A failure to reach the store, in a few words (libpq's first line; never the connection string)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
