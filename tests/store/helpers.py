"""Opening stores in the tests' own process: each Store is what one server process holds (its own pool, its
own instance name, its own leases)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg

from mcp_tiered.config.schema import StoreConfig
from mcp_tiered.store.runtime import Store


@asynccontextmanager
async def running_store(url: str, **settings: Any) -> AsyncIterator[Store]:
    store = Store(StoreConfig(url=url, **settings))
    async with store.running():
        with anyio.fail_after(15):
            await store.connected()
        yield store


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def read_only(url: str, on: bool) -> None:
    """The database turns read-only (a demoted primary, a standby behind the primary's name) or writable again;
    its sessions are ended, so every process reconnects and sees it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        db = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f"ALTER DATABASE {db} {'SET default_transaction_read_only = on' if on else 'RESET default_transaction_read_only'}")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                     "pg_backend_pid()", (db,))
