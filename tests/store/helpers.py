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
