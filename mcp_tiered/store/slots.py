"""The calls in flight on each `openai` endpoint, counted for every process of the store: a call takes a slot
in the store (mcp_tiered_take_slot, one statement) only while fewer than the endpoint's `max_concurrency` are
taken, and gives it back when it ends; a process's slots carry its lease, so a killed process's slots free
themselves. A call that finds the endpoint full waits (polling, 5 ms growing to 50 ms) within the tier's queue
time. The counts also steer the least-busy choice.

Counting in the store rather than reading each engine's own load (llama-server's /slots, vLLM's /metrics):
two processes that read "one free" at the same moment would both send, so a read load can never hold
max_concurrency; a conditional insert can, whatever the engine behind the endpoint.

While the store cannot be reached, each process counts its own calls only (and says so once).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog

from ..errors import BusyError
from .runtime import Store, StoreDown

log = structlog.get_logger(__name__)

FIRST_POLL_S, LAST_POLL_S = 0.005, 0.05


class SharedSlots:
    def __init__(self, store: Store):
        self.store = store
        self._warned = False

    async def in_flight(self, endpoints: list[str]) -> dict[str, int]:
        """Calls in flight on each endpoint, for the whole team ({} while the store is down)."""
        try:
            rows = await self.store.execute(
                "SELECT endpoint, count(*) FROM endpoint_slots WHERE endpoint = ANY(%s) "
                "AND lease_until > clock_timestamp() GROUP BY endpoint", (endpoints,))
        except StoreDown:
            return {}
        return dict(rows)

    @asynccontextmanager
    async def slot(self, tier: str, endpoint: str, cap: int, wait_s: float) -> AsyncIterator[None]:
        """Hold one of the endpoint's `cap` slots for the block; BusyError when none frees within `wait_s`."""
        store = self.store
        slot = store.new_id()
        deadline = time.monotonic() + wait_s
        delay = FIRST_POLL_S
        while True:
            try:
                rows = await store.execute_shielded(
                    "SELECT taken FROM mcp_tiered_take_slot(%s, %s, %s, %s, %s)",
                    (slot, store.instance, endpoint, cap, store.lease_s))
            except StoreDown as exc:
                store.stale_slots.add(slot)  # it may have been taken before the answer was lost
                if not self._warned:
                    self._warned = True
                    log.warning("endpoint_slots_local", store=store.where, error=str(exc), endpoint=endpoint,
                                action="max_concurrency is counted in this process only until the store is back")
                yield
                return
            if rows[0][0]:
                break
            if time.monotonic() + delay > deadline:
                raise BusyError(f"tier {tier}: {endpoint} has its {cap} calls at once (max_concurrency) from the "
                                f"team's servers, and none ended within {wait_s:.0f} s; try again shortly")
            await anyio.sleep(delay)
            delay = min(delay * 2, LAST_POLL_S)
        self._warned = False
        store.slots.add(slot)
        try:
            yield
        finally:
            store.slots.discard(slot)
            try:
                await store.execute_shielded("DELETE FROM endpoint_slots WHERE id = %s", (slot,))
            except StoreDown:
                store.stale_slots.add(slot)
