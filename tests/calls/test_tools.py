"""Requests with tools through the cascade on scripted engines: a tier whose engine cannot use tools is passed
over, an answer that calls tools is judged by its calls (not token confidence), never verified, never cached."""

from __future__ import annotations

import json
import math

import pytest

from conftest import ScriptedBackend
from mcp_tiered.backends import Completion, GenerationRequest
from mcp_tiered.backends.base import Capabilities, Dialogue, Tool, ToolCall, Turn
from mcp_tiered.calls.cache import ResponseCache
from mcp_tiered.calls.dispatch import Dispatcher
from mcp_tiered.calls.escalation import tool_call_problem
from mcp_tiered.calls.tiers import Policy, Tier, TierRegistry
from mcp_tiered.errors import ToolsUnsupportedError

pytestmark = pytest.mark.anyio

WEATHER = Tool("get_weather", "The weather in a city",
               json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))
ASKED = Dialogue((Turn("user", "Weather in Paris?"),), (WEATHER,))
TOOLS = Capabilities(tools=True)


def call(name: str = "get_weather", arguments: str = '{"city": "Paris"}', prob: float = 0.05) -> Completion:
    """An answer that calls a tool, with token log-probabilities low enough to fail any min_confidence."""
    return Completion("", "tool_calls", 40, 12, (math.log(prob),) * 12, tool_calls=(ToolCall("c1", name, arguments),))


def tiers(small: list, large: list, *, small_tools: bool = True, large_tools: bool = True,
          verify: bool = False) -> TierRegistry:
    low, high = ScriptedBackend(small), ScriptedBackend(large)
    low.capabilities = TOOLS if small_tools else Capabilities()
    high.capabilities = TOOLS if large_tools else Capabilities()
    return TierRegistry([
        Tier("small", low, "small", 100, 0.2, Policy(escalate_to="large", min_confidence=0.5,
                                                     verify_with="large" if verify else None)),
        Tier("large", high, "large", 100, 0.2)])


async def test_a_tier_whose_engine_cannot_use_tools_hands_the_call_on() -> None:
    registry = tiers([], [call()], small_tools=False)
    result = await Dispatcher(registry).generate("small", "Weather in Paris?", dialogue=ASKED)
    assert result.served_by == "large" and [e.reason for e in result.escalations] == ["tools"]
    assert result.tool_calls == [ToolCall("c1", "get_weather", '{"city": "Paris"}')]
    assert registry.get("large").backend.requests[0].dialogue == ASKED


async def test_a_valid_tool_call_is_kept_whatever_its_token_confidence() -> None:
    result = await Dispatcher(tiers([call(prob=0.01)], [])).generate("small", "Weather in Paris?", dialogue=ASKED)
    assert result.served_by == "small" and result.finish_reason == "tool_calls" and result.confidence is None


async def test_a_call_of_a_tool_the_request_does_not_have_escalates_as_tool_call() -> None:
    result = await Dispatcher(tiers([call(name="get_time")], [call()])).generate("small", "Weather?", dialogue=ASKED)
    assert result.served_by == "large" and [e.reason for e in result.escalations] == ["tool_call"]


@pytest.mark.parametrize(("arguments", "problem"), [
    ("{}", "its call of get_weather lacks the required argument city"),
    ('{"city": ', "the arguments of its call of get_weather are not JSON"),
    ('["Paris"]', "the arguments of its call of get_weather are not a JSON object"),
])
def test_tool_call_problems_name_the_call(arguments: str, problem: str) -> None:
    assert tool_call_problem(call(arguments=arguments), GenerationRequest("q", "", 10, 0.0, dialogue=ASKED)) == problem


async def test_a_text_answer_when_a_tool_call_is_required_escalates() -> None:
    required = Dialogue(ASKED.turns, ASKED.tools, "required")
    text = Completion("It is sunny.", "stop", 40, 4, (-0.01,) * 4)
    result = await Dispatcher(tiers([text], [call()])).generate("small", "Weather?", dialogue=required)
    assert [e.reason for e in result.escalations] == ["tool_call"] and result.tool_calls


async def test_with_no_tier_that_can_use_tools_the_call_is_refused_in_one_sentence() -> None:
    with pytest.raises(ToolsUnsupportedError) as refused:
        await Dispatcher(tiers([], [], small_tools=False, large_tools=False)).generate(
            "small", "Weather?", dialogue=ASKED)
    assert str(refused.value) == ("tier large cannot use tools: its engine does not pass them to the model; call a "
                                  "tier whose engine does (llama-server, openai, anthropic)")


async def test_an_answer_to_a_request_with_tools_is_not_verified() -> None:
    text = Completion("It is sunny.", "stop", 40, 4, (-0.01,) * 4)
    result = await Dispatcher(tiers([text], [], verify=True)).generate("small", "Weather?", dialogue=ASKED)
    assert result.served_by == "small" and result.verifications == []


async def test_answers_to_requests_with_tools_are_not_cached() -> None:
    registry = tiers([call(), call()], [])
    dispatcher = Dispatcher(registry, cache=ResponseCache(8))
    first = await dispatcher.generate("small", "Weather?", dialogue=ASKED, temperature=0.0)
    second = await dispatcher.generate("small", "Weather?", dialogue=ASKED, temperature=0.0)
    assert not first.cache_hit and not second.cache_hit and len(registry.get("small").backend.requests) == 2


async def test_a_conversation_reaches_the_engine_whole() -> None:
    talk = Dialogue((Turn("user", "My name is Ada."), Turn("assistant", "Hello Ada."), Turn("user", "My name?")))
    registry = tiers([Completion("Ada", "stop", 30, 2, (-0.01, -0.01))], [])
    await Dispatcher(registry).generate("small", "My name?", dialogue=talk)
    assert registry.get("small").backend.requests[0].turns() == talk.turns
