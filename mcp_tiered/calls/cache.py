"""Response cache: an identical deterministic call (temperature 0) is answered from memory, without
touching a model or the cloud. Exact match on the called tier, its model and the whole normalized
request; least recently used entries go first; optional time to live."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ResponseCache(Generic[V]):
    def __init__(self, max_entries: int = 1024, ttl_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, value = entry
        if self.ttl_s is not None and self._clock() - stored_at > self.ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def lookup(self, key: Hashable) -> V | None:
        """`get`, as the dispatcher asks every cache (the store's answers over the network: store.cache)."""
        return self.get(key)

    async def keep(self, key: Hashable, value: V) -> None:
        self.put(key, value)

    def put(self, key: Hashable, value: V) -> None:
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
