"""The response cache in the store (shared_cache = true): one process's temperature-0 answer serves the same
call in another; entries expire and are trimmed; a store that cannot be reached is a miss, never a failure."""

from __future__ import annotations

import pytest

from conftest import ScriptedBackend
from helpers import query, running_store
from mcp_tiered.backends import Completion
from mcp_tiered.calls.dispatch import Dispatcher
from mcp_tiered.calls.tiers import Tier, TierRegistry
from mcp_tiered.store.cache import PRUNE_EVERY, SharedCache

pytestmark = pytest.mark.anyio

DONE = Completion("42", "stop", 10, 2, (-0.01,))


def tiers() -> TierRegistry:
    return TierRegistry([Tier("small", ScriptedBackend([DONE] * 5), "s", 100, 0.2)])


async def test_a_call_answered_by_one_process_is_a_hit_in_another(store_url: str) -> None:
    async with running_store(store_url) as a, running_store(store_url) as b:
        first_tiers, second_tiers = tiers(), tiers()
        first = await Dispatcher(first_tiers, cache=SharedCache(a)).generate("small", "q", temperature=0)
        second = await Dispatcher(second_tiers, cache=SharedCache(b)).generate("small", "q", temperature=0)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.model_dump(exclude={"cache_hit", "latency_ms"}) == first.model_dump(exclude={"cache_hit", "latency_ms"})
    assert len(second_tiers.get("small").backend.requests) == 0


async def test_an_entry_older_than_its_ttl_is_not_served(store_url: str) -> None:
    async with running_store(store_url) as store:
        cache = SharedCache(store, ttl_s=60)
        dispatcher = Dispatcher(tiers(), cache=cache)
        await dispatcher.generate("small", "q", temperature=0)
        query(store_url, "UPDATE response_cache SET stored = stored - 61")
        again = await dispatcher.generate("small", "q", temperature=0)
    assert not again.cache_hit


async def test_the_table_is_trimmed_to_max_entries_least_recently_used_first(store_url: str) -> None:
    async with running_store(store_url) as store:
        cache = SharedCache(store, max_entries=3)
        dispatcher = Dispatcher(TierRegistry([Tier("small", ScriptedBackend([DONE] * PRUNE_EVERY), "s", 100, 0.2)]),
                                cache=cache)
        for i in range(PRUNE_EVERY):
            await dispatcher.generate("small", f"q{i}", temperature=0)
    assert query(store_url, "SELECT count(*) FROM response_cache") == [(3,)]


async def test_a_store_that_cannot_be_reached_is_a_miss_and_the_tier_answers(own_postgres) -> None:  # noqa: ANN001
    url = own_postgres.url(own_postgres.new_database())
    async with running_store(url) as store:
        registry = tiers()
        dispatcher = Dispatcher(registry, cache=SharedCache(store))
        await dispatcher.generate("small", "q", temperature=0)
        own_postgres.stop()
        again = await dispatcher.generate("small", "q", temperature=0)
    assert not again.cache_hit and again.text == "42"
    assert len(registry.get("small").backend.requests) == 2
