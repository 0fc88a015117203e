"""The response cache: identical temperature-0 calls are answered without touching a model."""

from __future__ import annotations

import anyio
import pytest
from mcp.client.client import Client

from conftest import ScriptedBackend
from mcp_tiered.backends import Completion
from mcp_tiered.calls.cache import ResponseCache
from mcp_tiered.calls.dispatch import Dispatcher
from mcp_tiered.server.mcp_server import build_server
from mcp_tiered.calls.tiers import Tier, TierRegistry

pytestmark = pytest.mark.anyio

DONE = Completion("42", "stop", 10, 2, (-0.01,))


def tiers(replies: int = 5) -> TierRegistry:
    return TierRegistry([Tier("small", ScriptedBackend([DONE] * replies), "s", 100, 0.2)])


def calls(registry: TierRegistry) -> int:
    return len(registry.get("small").backend.requests)


async def test_second_identical_deterministic_call_is_a_hit_that_never_reaches_the_model() -> None:
    registry = tiers()
    dispatcher = Dispatcher(registry, cache=ResponseCache())
    first = await dispatcher.generate("small", "q", temperature=0)
    second = await dispatcher.generate("small", "q", temperature=0)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.text == first.text and calls(registry) == 1


async def test_cache_false_bypasses_it() -> None:
    registry = tiers()
    dispatcher = Dispatcher(registry, cache=ResponseCache())
    await dispatcher.generate("small", "q", temperature=0)
    again = await dispatcher.generate("small", "q", temperature=0, cache=False)
    assert not again.cache_hit and calls(registry) == 2


async def test_sampled_calls_and_different_requests_are_not_hits() -> None:
    registry = tiers()
    dispatcher = Dispatcher(registry, cache=ResponseCache())
    await dispatcher.generate("small", "q")  # the tier's default temperature is 0.2
    await dispatcher.generate("small", "q")
    await dispatcher.generate("small", "q", temperature=0)
    await dispatcher.generate("small", "q", temperature=0, max_tokens=5)
    assert calls(registry) == 4


def test_least_recently_used_entry_goes_first_and_old_entries_expire() -> None:
    now = [0.0]
    cache: ResponseCache[str] = ResponseCache(max_entries=2, ttl_s=10, clock=lambda: now[0])
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"
    cache.put("c", "C")  # evicts b, the least recently used
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, "A", "C")
    now[0] = 11
    assert cache.get("a") is None and len(cache) == 1


async def test_hit_is_flagged_in_the_tool_result() -> None:
    registry = tiers()
    with anyio.fail_after(10):
        async with Client(build_server(registry, cache=ResponseCache())) as client:
            await client.call_tool("generate_small", {"prompt": "q", "temperature": 0})
            hit = await client.call_tool("generate_small", {"prompt": "q", "temperature": 0})
    assert hit.structured_content["cache_hit"] is True and hit.content[0].text == "42"
    assert calls(registry) == 1
