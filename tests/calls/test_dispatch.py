"""The dispatcher and the MCP tools on a scripted backend: argument checks, events, errors."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp.client.client import Client
from structlog.testing import capture_logs

from conftest import ScriptedBackend
from mcp_tiered.backends import Completion
from mcp_tiered.calls.dispatch import Dispatcher
from mcp_tiered.errors import BackendError, RequestError
from mcp_tiered.server.mcp_server import build_server
from mcp_tiered.calls.tiers import Tier, TierRegistry

pytestmark = pytest.mark.anyio

DONE = Completion(text="done", finish_reason="stop", prompt_tokens=12, completion_tokens=3)


def registry(*replies: Completion | Exception, max_tokens: int = 100, temperature: float = 0.2) -> TierRegistry:
    return TierRegistry([Tier("small", ScriptedBackend(list(replies)), "scripted tier", max_tokens, temperature)])


async def test_caller_limits_default_to_the_tier_settings() -> None:
    tiers = registry(DONE, max_tokens=77, temperature=0.5)
    await Dispatcher(tiers).generate("small", "hello")
    (request,) = tiers.get("small").backend.requests
    assert (request.max_tokens, request.temperature, request.stop) == (77, 0.5, ())


async def test_caller_arguments_reach_the_backend() -> None:
    tiers = registry(DONE)
    await Dispatcher(tiers).generate("small", "hello", "be brief", max_tokens=5, temperature=0, stop=["\n"])
    (request,) = tiers.get("small").backend.requests
    assert (request.system, request.max_tokens, request.temperature, request.stop) == ("be brief", 5, 0.0, ("\n",))


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        ({"max_tokens": 0}, "max_tokens: must be an integer ≥ 1, got 0"),
        ({"max_tokens": 101}, "max_tokens: must be an integer between 1 and 100 (the limit of tier small), got 101"),
        ({"temperature": "hot"}, 'temperature: must be a number between 0 and 2, got "hot"'),
        ({"temperature": 2.5}, "temperature: must be a number between 0 and 2, got 2.5"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop: must be a list of at most 4 strings, got a list of 5"),
        ({"stop": [1]}, "stop[0]: must be a string, got 1"),
        ({"max_tokens": "10"}, 'max_tokens: must be an integer ≥ 1, got "10"'),
        ({"max_tokens": True}, "max_tokens: must be an integer ≥ 1, got true"),
        ({"temperature": "0.5"}, 'temperature: must be a number between 0 and 2, got "0.5"'),
        ({"local_only": "yes"}, 'local_only: must be true or false, got "yes"'),
        ({"cache": 0}, "cache: must be true or false, got 0"),
    ],
)
async def test_bad_argument_is_refused_in_one_sentence_before_the_backend(options: dict, sentence: str) -> None:
    tiers = registry(DONE)
    with pytest.raises(RequestError) as refused:
        await Dispatcher(tiers).generate("small", "hello", **options)
    assert str(refused.value) == sentence
    assert tiers.get("small").backend.requests == []


async def test_empty_prompt_is_refused() -> None:
    with pytest.raises(RequestError, match="^prompt: is required and must be a non-empty string$"):
        await Dispatcher(registry(DONE)).generate("small", "  ")


async def test_each_call_logs_one_event_with_tokens_and_latency_but_no_prompt() -> None:
    with capture_logs() as events:
        await Dispatcher(registry(DONE)).generate("small", "my secret prompt")
    (event,) = events
    assert event["event"] == "tool_call" and event["outcome"] == "ok"
    assert (event["tool"], event["tier"], event["finish_reason"]) == ("generate_small", "small", "stop")
    assert (event["prompt_tokens"], event["completion_tokens"]) == (12, 3)
    assert event["latency_ms"] >= 0
    assert "my secret prompt" not in repr(event)


async def test_unexpected_backend_exception_becomes_a_backend_error_naming_the_tier() -> None:
    with capture_logs() as events, pytest.raises(BackendError, match="^tier small: unexpected ZeroDivisionError"):
        await Dispatcher(registry(ZeroDivisionError("boom"))).generate("small", "hello")
    assert events[0]["outcome"] == "error" and events[0]["error"] == "ZeroDivisionError"


async def test_tool_result_carries_the_answer_as_text_and_structured_content() -> None:
    with anyio.fail_after(10):
        async with Client(build_server(registry(DONE))) as client:
            result = await client.call_tool("generate_small", {"prompt": "hello"})
    assert [c.text for c in result.content] == ["done"]
    assert result.structured_content["usage"] == {"prompt_tokens": 12, "completion_tokens": 3}
    assert result.structured_content["model"] == "scripted"


async def test_backend_failure_is_an_error_result_and_the_server_keeps_serving() -> None:
    tiers = registry(BackendError("tier small: the GPU fell off"), DONE)
    with anyio.fail_after(10):
        async with Client(build_server(tiers)) as client:
            failed = await client.call_tool("generate_small", {"prompt": "hello"})
            after = await client.call_tool("generate_small", {"prompt": "hello"})
    assert failed.is_error and failed.content[0].text.endswith("tier small: the GPU fell off")
    assert not after.is_error


async def test_listing_tools_loads_no_model(small_config: Path) -> None:
    from mcp_tiered.config.load import load_config

    tiers = TierRegistry.from_config(load_config(small_config))
    with anyio.fail_after(10):
        async with Client(build_server(tiers)) as client:
            await client.list_tools()
    assert not tiers.get("small").backend.loaded


async def test_tools_list_with_many_tiers_loads_nothing(write_config, smollm2: Path) -> None:
    from mcp_tiered.config.load import load_config

    config = write_config("".join(f'[tiers.t{i}]\nmodel = "{smollm2}"\ndescription = "tier {i}"\n' for i in range(30)))
    tiers = TierRegistry.from_config(load_config(config))
    with anyio.fail_after(10):
        async with Client(build_server(tiers)) as client:
            tools = (await client.list_tools()).tools
    assert len(tools) == 30
    assert not any(tier.backend.loaded for tier in tiers)
