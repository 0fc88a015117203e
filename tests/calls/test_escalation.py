"""Escalation policy on scripted backends: each reason, the caller's choices, privacy and the budget."""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import pytest

from conftest import ScriptedBackend
from fake_anthropic import FakeAnthropic
from mcp_tiered.backends import Completion
from mcp_tiered.backends.anthropic import AnthropicBackend
from mcp_tiered.backends.base import Capabilities
from mcp_tiered.accounting.budget import CloudBudget
from mcp_tiered.config.schema import AnthropicTierConfig, TokenPrices
from mcp_tiered.calls.dispatch import Dispatcher
from mcp_tiered.errors import BackendError, PromptTooLongError, RequestError
from mcp_tiered.calls.tiers import Policy, Tier, TierRegistry, Unavailable

pytestmark = pytest.mark.anyio


def answer(text: str = "42", prob: float = 0.9, finish: str = "stop") -> Completion:
    return Completion(text, finish, 10, 3, (math.log(prob),) * 3)


CLOUD_CAPABILITIES = Capabilities(prompt_leaves_machine=True, billing="tokens", token_logprobs=False)


def too_long() -> PromptTooLongError:
    return PromptTooLongError("prompt is too long for tier small", prompt_tokens=900, max_tokens=100, n_ctx=512)


def chain(small: list, large: list | None = None, cloud: list | None = None, *, min_confidence: float = 0.5,
          local_only: bool = False, truncated: bool = False, cloud_disabled: str | None = None,
          budget: CloudBudget | None = None) -> TierRegistry:
    top = "cloud" if cloud is not None or cloud_disabled else None
    tiers = [Tier("small", ScriptedBackend(small), "small", 100, 0.2,
                  Policy(escalate_to="large" if large is not None else top, local_only=local_only,
                         min_confidence=min_confidence, escalate_on_truncated=truncated))]
    if large is not None:
        tiers.append(Tier("large", ScriptedBackend(large), "large", 100, 0.2,
                          Policy(escalate_to=top, min_confidence=min_confidence)))
    if cloud is not None:
        tiers.append(Tier("cloud", ScriptedBackend(cloud, "claude", is_local=False), "cloud", 100, 1.0))
    unavailable = {"cloud": Unavailable(cloud_disabled, CLOUD_CAPABILITIES)} if cloud_disabled else {}
    return TierRegistry(tiers, unavailable=unavailable, budget=budget)


async def test_confident_answer_stays_on_the_first_tier() -> None:
    result = await Dispatcher(chain([answer(prob=0.9)], [])).generate("small", "q")
    assert (result.served_by, result.escalations, result.confidence) == ("small", [], 0.9)


async def test_low_confidence_escalates_with_the_confidence_recorded() -> None:
    result = await Dispatcher(chain([answer("41", prob=0.2)], [answer("42", prob=0.95)])).generate("small", "q")
    assert (result.text, result.served_by, result.confidence) == ("42", "large", 0.95)
    (hop,) = result.escalations
    assert (hop.from_, hop.to, hop.reason, hop.confidence) == ("small", "large", "low_confidence", 0.2)


async def test_empty_answer_escalates() -> None:
    result = await Dispatcher(chain([answer("  ")], [answer()])).generate("small", "q")
    assert [h.reason for h in result.escalations] == ["empty"]


async def test_truncated_answer_escalates_only_when_the_tier_says_so() -> None:
    kept = await Dispatcher(chain([answer(finish="length")], [answer()])).generate("small", "q")
    moved = await Dispatcher(chain([answer(finish="length")], [answer()], truncated=True)).generate("small", "q")
    assert kept.served_by == "small" and [h.reason for h in moved.escalations] == ["truncated"]


async def test_backend_failure_escalates_with_reason_error() -> None:
    result = await Dispatcher(chain([BackendError("tier small: boom")], [answer()])).generate("small", "q")
    assert [(h.reason, h.confidence) for h in result.escalations] == [("error", None)]


async def test_prompt_too_long_goes_to_the_first_tier_that_fits() -> None:
    tiers = chain([too_long()], [too_long()], [answer("cloud says 42")])
    result = await Dispatcher(tiers).generate("small", "q")
    assert result.served_by == "cloud"
    assert [(h.from_, h.to, h.reason) for h in result.escalations] == [("small", "large", "context"), ("large", "cloud", "context")]


async def test_escalate_never_keeps_the_weak_answer() -> None:
    result = await Dispatcher(chain([answer(prob=0.1)], [answer()])).generate("small", "q", escalate="never")
    assert (result.served_by, result.escalations) == ("small", [])


async def test_escalate_always_lets_the_next_tier_answer_without_asking_this_one() -> None:
    tiers = chain([answer()], [answer("from large")])
    result = await Dispatcher(tiers).generate("small", "q", escalate="always")
    assert result.text == "from large" and [h.reason for h in result.escalations] == ["requested"]
    assert tiers.get("small").backend.requests == []


async def test_failure_of_the_last_tier_returns_the_earlier_answer_with_a_note() -> None:
    result = await Dispatcher(chain([answer("41", prob=0.2)], [BackendError("tier large: out of memory")])).generate("small", "q")
    assert (result.text, result.served_by) == ("41", "small")
    assert result.escalation_note == "large failed (tier large: out of memory); this is the answer of small"


async def test_local_only_call_never_reaches_the_cloud() -> None:
    tiers = chain([answer(prob=0.1)], cloud=[answer("cloud")])
    result = await Dispatcher(tiers).generate("small", "q", local_only=True)
    assert (result.served_by, result.escalations) == ("small", [])
    assert result.escalation_note == "escalation from small to cloud (low_confidence) was not made: the call is local_only"
    assert tiers.get("cloud").backend.requests == []


async def test_local_only_tier_never_reaches_the_cloud() -> None:
    tiers = chain([answer(prob=0.1)], cloud=[answer("cloud")], local_only=True)
    result = await Dispatcher(tiers).generate("small", "q")
    assert result.served_by == "small" and "local_only" in result.escalation_note


async def test_disabled_cloud_returns_the_local_answer_with_the_reason() -> None:
    tiers = chain([answer(prob=0.1)], cloud_disabled="the cloud tier is disabled because $ANTHROPIC_API_KEY is not set")
    result = await Dispatcher(tiers).generate("small", "q")
    assert result.served_by == "small"
    assert result.escalation_note == ("escalation from small to cloud (low_confidence) was not made: "
                                      "the cloud tier is disabled because $ANTHROPIC_API_KEY is not set")


async def test_failed_call_whose_escalation_is_blocked_says_both() -> None:
    tiers = chain([too_long()], cloud_disabled="the cloud tier is disabled because $ANTHROPIC_API_KEY is not set")
    with pytest.raises(RequestError, match=r"^prompt is too long for tier small; escalation from small to cloud "
                       r"\(context\) was not made: the cloud tier is disabled"):
        await Dispatcher(tiers).generate("small", "q")


async def test_bad_escalate_value_is_one_sentence() -> None:
    with pytest.raises(RequestError, match=r'^escalate: must be one of "auto", "never", "always", got "sometimes"$'):
        await Dispatcher(chain([answer()], [answer()])).generate("small", "q", escalate="sometimes")


def budget_for(calls: int) -> CloudBudget:
    """A daily budget that holds exactly `calls` worst-case calls of prompt "q" with max_tokens 100."""
    per_call = CloudBudget.worst_case_cost(TokenPrices(), "q", "", 100)
    return CloudBudget(per_call * calls, None, "USD")


async def test_over_budget_call_is_not_made_and_the_local_answer_is_flagged() -> None:
    tiers = chain([answer(prob=0.1)], cloud=[], budget=budget_for(0))
    result = await Dispatcher(tiers).generate("small", "q")
    assert result.served_by == "small"
    assert result.escalation_note.startswith("escalation from small to cloud (low_confidence) was not made: cloud budget: "
                                             "the cloud call could cost up to ")
    assert tiers.get("cloud").backend.requests == []


async def test_concurrent_escalations_never_overrun_the_budget() -> None:
    """20 concurrent escalations, a budget for 5: at most 5 requests reach the (real SDK → local) cloud."""
    budget = budget_for(5)
    with FakeAnthropic() as fake:
        cloud = AnthropicBackend("cloud", AnthropicTierConfig(engine="anthropic", description="c", model="claude-test",
                                                             base_url=fake.url, max_retries=0), api_key="sk-test")
        small = ScriptedBackend([answer(prob=0.1) for _ in range(20)])
        tiers = TierRegistry([Tier("small", small, "small", 100, 0.2, Policy(escalate_to="cloud", min_confidence=0.5)),
                              Tier("cloud", cloud, "cloud", 100, 1.0)], budget=budget)
        dispatcher = Dispatcher(tiers)
        results = []

        async def one() -> None:
            results.append(await dispatcher.generate("small", "q"))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(one)
        await cloud.aclose()
    assert len(fake.requests) <= 5
    assert sum(r.served_by == "cloud" for r in results) == len(fake.requests)
    assert all("cloud budget" in r.escalation_note for r in results if r.served_by == "small")
    assert budget.spent()["today"] > 0


async def test_later_failure_and_blocked_cloud_are_both_told() -> None:
    tiers = chain([answer("41", prob=0.2)], [BackendError("tier large: out of memory")],
                  cloud_disabled="the cloud tier is disabled because $ANTHROPIC_API_KEY is not set")
    result = await Dispatcher(tiers).generate("small", "q")
    assert result.served_by == "small"
    assert result.escalation_note == (
        "large failed (tier large: out of memory); this is the answer of small; escalation from large to cloud "
        "(error) was not made: the cloud tier is disabled because $ANTHROPIC_API_KEY is not set"
    )


async def test_busy_tier_escalates_with_reason_busy() -> None:
    from mcp_tiered.errors import BusyError

    result = await Dispatcher(chain([BusyError("tier small is busy")], [answer("from large")])).generate("small", "q")
    assert (result.served_by, [h.reason for h in result.escalations]) == ("large", ["busy"])


async def test_no_escalation_once_the_deadline_has_passed_the_partial_answer_stays() -> None:
    tiers = chain([answer("partial", prob=0.1, finish="deadline")], [answer("never asked")])
    tiers.get("small").backend.delay_s = 0.2
    result = await Dispatcher(tiers).generate("small", "q", deadline_s=0.1)
    assert (result.text, result.served_by, result.finish_reason) == ("partial", "small", "deadline")
    assert result.escalations == [] and tiers.get("large").backend.requests == []
    assert result.escalation_note == ("escalation from small to large (low_confidence) was not made: "
                                      "the call's deadline had passed")


LOOP = "L'Étoile, la Cité, la Nation, " + "la Femme, " * 60


async def test_an_answer_stuck_in_a_loop_escalates_as_repetitive_despite_high_confidence() -> None:
    result = await Dispatcher(chain([answer(LOOP, prob=0.95, finish="length")], [answer("Paris")])).generate("small", "q")
    assert result.text == "Paris"
    assert [(e.from_, e.reason) for e in result.escalations] == [("small", "repetitive")]


async def test_long_answers_that_merely_have_structure_are_not_repetitive() -> None:
    counting = ", ".join(str(i) for i in range(1, 200))
    prose = Path(__file__).with_name("test_escalation.py").read_text()[:2000]
    for text in (counting, prose):
        result = await Dispatcher(chain([answer(text, prob=0.95)], [answer("never asked")])).generate("small", "q")
        assert result.served_by == "small" and result.escalations == []


async def test_escalate_on_repetition_false_keeps_the_loop() -> None:
    tiers = TierRegistry([
        Tier("small", ScriptedBackend([answer(LOOP, prob=0.95)]), "small", 100, 0.2,
             Policy(escalate_to="large", escalate_on_repetition=False)),
        Tier("large", ScriptedBackend([answer("Paris")]), "large", 100, 0.2),
    ])
    result = await Dispatcher(tiers).generate("small", "q")
    assert result.served_by == "small" and result.text == LOOP
