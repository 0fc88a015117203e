"""The store while a server runs: a pool of connections for the statements made from the event loop (the
budget, the endpoint slots, the shared cache), the renewal of this process's leases, and what it does when the
database cannot be reached.

When a statement fails to reach the database, the store counts as down: further statements fail at once with
StoreDown (no call waits for a timeout again and again) until the renewal, tried every second, gets through.
While it is down the ledger keeps its rows in memory, cloud hops are refused, the cache is not consulted and
endpoints count their calls in this process only.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from ..accounting.budget import periods
from ..config.schema import StoreConfig
from ..errors import ConfigError
from .connect import FAILURES, UNREACHABLE, conninfo, describe, instance_name, reason
from .schema import ID_BITS, SCHEMA_VERSION, migrate

log = structlog.get_logger(__name__)


NOT_CONNECTED = "not connected yet"


class StoreDown(Exception):
    """The store cannot be reached now; the text says why, in a few words."""


class Store:
    POOL_SIZE = 8
    RETRY_S = 1.0
    RECONNECT_S = 300.0
    """psycopg-pool's: how long it retries a connection in the background before it gives that one up (the
    renewal asks for a new one every RETRY_S all the same)."""

    def __init__(self, config: StoreConfig, environ: Mapping[str, str] = os.environ):
        """Raises ConfigError (store.password_env) when the password's variable is not set."""
        self.config = config
        self.where = describe(config)
        self.conninfo = conninfo(config, environ)
        self.instance = instance_name(config)
        self.lease_s = config.lease_s
        self.timeout_s = config.timeout_s
        self.down: str | None = NOT_CONNECTED
        """Why the store cannot be reached now; None while it answers."""
        self.holds: set[int] = set()
        self.slots: set[int] = set()
        """What this process holds now, renewed with its lease."""
        self.stale_slots: set[int] = set()
        """Slots whose release could not be sent: deleted when the store is back."""
        self.unsettled: dict[int, float] = {}
        """Holds whose settling could not be sent (the store was down): hold → what to settle it at."""
        self.spent: dict[str, float] = {"today": 0.0, "this_month": 0.0}
        """The budget's periods as the store last said (for /metrics)."""
        self._pool: AsyncConnectionPool | None = None
        self._migrated = False
        self._connected: anyio.Event | None = None

    @staticmethod
    def new_id() -> int:
        return secrets.randbits(ID_BITS)

    def connect(self) -> psycopg.Connection:
        """A connection of its own (the ledger's writer thread, a report), the schema created or migrated on the
        first; raises what psycopg raises when the database cannot be reached, ConfigError when it is not a
        store this version may use."""
        conn = psycopg.connect(self.conninfo, autocommit=False)
        try:
            if not self._migrated:
                found = migrate(conn, self.where)
                if found is None or found < SCHEMA_VERSION:
                    log.info("store_schema", store=self.where, found=found, now=SCHEMA_VERSION)
                self._migrated = True
        except BaseException:
            conn.close()
            raise
        return conn

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Store]:
        """Open the pool and renew this process's leases until the block ends; then release what it holds."""
        pool = AsyncConnectionPool(self.conninfo, min_size=1, max_size=self.POOL_SIZE, open=False,
                                   timeout=self.timeout_s, kwargs={"autocommit": True}, name="mcp-tiered-store",
                                   reconnect_timeout=self.RECONNECT_S)
        await pool.open(wait=False)
        self._pool = pool
        self._connected = anyio.Event()
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(self._renew_forever)
                try:
                    yield self
                finally:
                    background.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._release_all()
                self._pool = None
                await pool.close(timeout=self.timeout_s)

    async def connected(self) -> None:
        """Wait until the store has answered once (the schema is in place)."""
        assert self._connected is not None, "only while running()"
        await self._connected.wait()

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows. Raises StoreDown at once while the store is down, and when this
        statement cannot reach it (then the store is down until the renewal gets through)."""
        if self.down is not None or self._pool is None:
            raise StoreDown(self.down or "the store is not open")
        pool = self._pool
        try:
            with anyio.fail_after(self.timeout_s):
                try:
                    return await self._run(pool, sql, params)
                except UNREACHABLE:
                    # Connections the database dropped (it restarted) fail on their next use: check the idle
                    # ones, which discards the dead, and try once more before calling the store down. Every
                    # statement sent here may run twice (the store's functions take the same id twice once).
                    await pool.check()
                    return await self._run(pool, sql, params)
        except (*FAILURES, TimeoutError) as exc:
            self._went_down(exc)
            raise StoreDown(self.down or "unreachable") from None

    async def _run(self, pool: AsyncConnectionPool, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with pool.connection(timeout=self.timeout_s) as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall() if cursor.description else []

    async def execute_shielded(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """`execute`, finished even when the caller is cancelled: a statement whose outcome must be known (a
        reservation, a release) is never abandoned halfway."""
        with anyio.CancelScope(shield=True):
            return await self.execute(sql, params)

    def _went_down(self, exc: BaseException) -> None:
        why = f"no answer within {self.timeout_s:g} s" if isinstance(exc, TimeoutError) else reason(exc)
        if self.down == NOT_CONNECTED and why != self.down:  # the first reason it cannot be reached, said once
            self.down = why
            log.error("store_unreachable", store=self.where, error=why,
                      action="local tiers keep answering; cloud hops are refused until the store answers")
        if self.down is None:
            self.down = why
            log.error("store_unreachable", store=self.where, error=self.down,
                      action="local tiers keep answering; their rows are kept in memory; cloud hops are refused")

    async def _renew_forever(self) -> None:
        while True:
            try:
                await self.renew()
            except Exception:  # a bug here must not stop the server; the next renewal tries again
                log.exception("store_renew_error", store=self.where)
            await anyio.sleep(self.RETRY_S if self.down is not None else self.lease_s / 3)

    async def renew(self) -> bool:
        """Renew this process's leases, send the settlements that waited, read the budget's spend; True when
        the store answered (and is up again if it was down)."""
        assert self._pool is not None
        try:
            with anyio.fail_after(self.timeout_s):
                if self.down is not None:  # the connections that died with the database go before trying again
                    await self._pool.check()
                async with self._pool.connection(timeout=self.timeout_s) as conn:
                    if not self._migrated:
                        await anyio.to_thread.run_sync(self._migrate_once)
                    await conn.execute("SELECT mcp_tiered_renew(%s, %s, %s)",
                                       (list(self.holds), list(self.slots), self.lease_s))
                    if stale := list(self.stale_slots):
                        await conn.execute("DELETE FROM endpoint_slots WHERE id = ANY(%s)", (stale,))
                        self.stale_slots.difference_update(stale)
                    for hold, spent in list(self.unsettled.items()):
                        await conn.execute("SELECT mcp_tiered_settle(%s, %s)", (hold, spent))
                        self.unsettled.pop(hold, None)
                        self.holds.discard(hold)
                    day, month = periods(time.time())
                    cursor = await conn.execute("SELECT period, spent FROM budget_spend WHERE period IN (%s, %s)",
                                                (day, month))
                    found = dict(await cursor.fetchall())
                    self.spent = {"today": found.get(day, 0.0), "this_month": found.get(month, 0.0)}
        except (*FAILURES, TimeoutError) as exc:
            self._went_down(exc)
            return False
        except ConfigError as exc:  # a store this version may not use (a newer schema): said once, kept down
            if self.down != str(exc):
                log.error("store_unusable", store=self.where, error=str(exc))
            self.down = str(exc)
            return False
        if self.down is not None:
            if self.down == NOT_CONNECTED:
                log.info("store_connected", store=self.where, instance=self.instance)
            else:
                log.warning("store_reachable", store=self.where, was=self.down)
            self.down = None
        if self._connected is not None and not self._connected.is_set():
            self._connected.set()
        return True

    def _migrate_once(self) -> None:
        self.connect().close()

    async def _release_all(self) -> None:
        """At shutdown: what this process still holds goes back at once, not when its lease runs out."""
        if self._pool is None or self.down is not None or not (self.holds or self.slots or self.unsettled
                                                                 or self.stale_slots):
            return
        try:
            with anyio.fail_after(self.timeout_s):
                async with self._pool.connection(timeout=self.timeout_s) as conn:
                    for hold, spent in list(self.unsettled.items()):
                        await conn.execute("SELECT mcp_tiered_settle(%s, %s)", (hold, spent))
                    await conn.execute("DELETE FROM endpoint_slots WHERE id = ANY(%s)",
                                       (list(self.slots | self.stale_slots),))
                    for hold in list(self.holds):
                        await conn.execute("SELECT mcp_tiered_settle(%s, 0)", (hold,))
        except (*FAILURES, TimeoutError) as exc:
            log.warning("store_release_failed", store=self.where, error=reason(exc),
                        action=f"what this process held is released when its lease ends ({self.lease_s:g} s)")

