"""The response cache in the store ([store] shared_cache = true): one process's temperature-0 answer serves the
same call in every other. The key is a digest of the same exact key the in-process cache uses (the called tier,
its model, the whole normalized request); entries older than `ttl_s` are not served, and beyond `max_entries`
the least recently used go. A store that cannot be reached is a miss: the call is served by the tiers."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Hashable
from itertools import count

import pydantic
import structlog

from ..calls.results import GenerateResult
from .runtime import Store, StoreDown

log = structlog.get_logger(__name__)

PRUNE_EVERY = 64
"""Puts between two trims of the table to `max_entries`."""


def digest(key: Hashable) -> str:
    """The key's text is its repr: tuples of strings, numbers, booleans and frozen dataclasses of those, the
    same in every process and version that builds the same key."""
    return hashlib.sha256(repr(key).encode()).hexdigest()


class SharedCache:
    def __init__(self, store: Store, max_entries: int = 1024, ttl_s: float | None = None):
        self.store = store
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._puts = count(1)

    async def lookup(self, key: Hashable) -> GenerateResult | None:
        now = time.time()
        try:
            rows = await self.store.execute(
                "UPDATE response_cache SET used = %s WHERE key = %s AND (%s::float8 IS NULL OR stored >= %s) "
                "RETURNING value", (now, digest(key), self.ttl_s, now - (self.ttl_s or 0)))
        except StoreDown:
            return None
        if not rows:
            return None
        try:
            return GenerateResult.model_validate_json(rows[0][0])
        except (pydantic.ValidationError, ValueError):  # written by another version: served afresh
            return None

    async def keep(self, key: Hashable, value: GenerateResult) -> None:
        now = time.time()
        try:
            await self.store.execute(
                "INSERT INTO response_cache (key, value, stored, used) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, stored = EXCLUDED.stored, used = EXCLUDED.used",
                (digest(key), value.model_dump_json(), now, now))
            if next(self._puts) % PRUNE_EVERY == 0:
                await self.store.execute(
                    "DELETE FROM response_cache WHERE key IN (SELECT key FROM response_cache ORDER BY used DESC "
                    "OFFSET %s)", (self.max_entries,))
        except StoreDown:
            return
