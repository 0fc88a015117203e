"""The store while a server runs: down at once after one failure (no call waits for a timeout again), back as
soon as a renewal gets through, even after an outage longer than the pool's own reconnecting."""

from __future__ import annotations

import time

import anyio
import pytest

from helpers import running_store
from mcp_tiered.store.runtime import Store, StoreDown

pytestmark = pytest.mark.anyio


async def test_after_one_failure_statements_fail_at_once_until_the_store_is_back(own_postgres) -> None:  # noqa: ANN001
    async with running_store(own_postgres.url(own_postgres.new_database()), timeout_s=2) as store:
        own_postgres.stop()
        with pytest.raises(StoreDown):
            await store.execute("SELECT 1")
        started = time.monotonic()
        with pytest.raises(StoreDown):
            await store.execute("SELECT 1")
        assert time.monotonic() - started < 0.05
        own_postgres.start()
        with anyio.fail_after(15):
            while store.down:
                await anyio.sleep(0.05)
        assert await store.execute("SELECT 1") == [(1,)]


async def test_the_store_comes_back_after_the_pool_gave_up_reconnecting(own_postgres, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(Store, "RECONNECT_S", 1.0)
    async with running_store(own_postgres.url(own_postgres.new_database()), timeout_s=1) as store:
        own_postgres.stop()
        with pytest.raises(StoreDown):
            await store.execute("SELECT 1")
        await anyio.sleep(4)  # the pool's background reconnection has given up several times
        own_postgres.start()
        with anyio.fail_after(15):
            while store.down:
                await anyio.sleep(0.05)
        assert await store.execute("SELECT 1") == [(1,)]
