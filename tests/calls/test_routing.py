"""The `generate` tool: where it starts a call (routing.pick_entry, pure) and, over stdio with real models,
that it starts long code on large and a one-word lookup on small, then escalates as usual."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from conftest import ScriptedBackend, stdio_server
from mcp_tiered.backends import Completion
from mcp_tiered.calls.dispatch import Dispatcher
from mcp_tiered.errors import RequestError
from mcp_tiered.calls.routing import Candidate, Route, features, pick_entry
from mcp_tiered.calls.tiers import Policy, Tier, TierRegistry

pytestmark = pytest.mark.anyio

SMALL, LARGE = Candidate("small", 512, 2048), Candidate("large", 1024, 4096)
LOOKUP = "What is the capital of France? Answer with the city name only."
CODE = ("Refactor this Python function so that it streams the file instead of reading it whole, and explain "
        "the change:\n```python\ndef count(path):\n    data = open(path).read()\n    return len(data.split())\n```\n"
        + "# padding the prompt like a real code review would\n" * 40)


def route(prompt: str, *, max_tokens: int | None = None, deadline_s: float | None = None,
          candidates=(SMALL, LARGE)) -> Route:  # noqa: ANN001
    chosen = pick_entry(features(prompt), list(candidates), max_tokens, deadline_s)
    assert chosen is not None
    return chosen


@pytest.mark.parametrize("prompt", ["What is 17 * 23?", "Write a Python function that reverses a list.",
                                    "Explain step by step why the sky is blue.", "x" * 2500])
def test_code_arithmetic_steps_and_long_prompts_start_on_large(prompt: str) -> None:
    assert route(prompt).tier == "large"


@pytest.mark.parametrize("prompt", [LOOKUP, "Is Paris in France? Answer yes or no.", "Rewrite politely: give me the file"])
def test_short_lookups_and_rewrites_start_on_small(prompt: str) -> None:
    chosen = route(prompt)
    assert chosen.tier == "small" and chosen.why.endswith("→ small")


def test_a_long_answer_starts_on_large_and_says_why() -> None:
    assert route(LOOKUP, max_tokens=400).why == "the prompt shows max_tokens 400 → large"


def test_max_tokens_over_a_tiers_limit_skips_that_tier() -> None:
    chosen = route(LOOKUP, max_tokens=800)
    assert chosen.tier == "large" and chosen.why.startswith("max_tokens 800 is over the limit of small")
    assert pick_entry(features(LOOKUP), [SMALL, LARGE], 2000, None) is None


def test_a_prompt_that_does_not_fit_small_starts_where_it_fits() -> None:
    assert route(LOOKUP * 120, candidates=(Candidate("small", 64, 512), LARGE)).tier == "large"


def test_a_tight_deadline_starts_on_the_fastest_tier_even_for_code() -> None:
    chosen = route("Write a Python function that reverses a list.", deadline_s=2)
    assert chosen.tier == "small" and "a deadline of 2 s favours the fastest tier" in chosen.why


def test_a_full_queue_moves_the_call_to_a_tier_with_room() -> None:
    full_small = Candidate("small", 512, 2048, waiting=8, max_queue=8)
    chosen = route(LOOKUP, candidates=(full_small, LARGE))
    assert chosen.tier == "large" and "small's queue is full" in chosen.why
    full_large = Candidate("large", 1024, 4096, waiting=8, max_queue=8)
    assert route("What is 17 * 23?", candidates=(SMALL, full_large)).tier == "small"


def test_one_tier_takes_every_call() -> None:
    assert route("Write a Python function.", candidates=(SMALL,)).tier == "small"


async def test_generate_records_its_choice_and_the_tool_name(tmp_path: Path) -> None:
    from mcp_tiered.accounting.ledger import Ledger

    done = Completion("4", "stop", 5, 1, (-0.01,))
    tiers = TierRegistry([Tier("small", ScriptedBackend([done]), "s", 100, 0.2, Policy(escalate_to="large")),
                          Tier("large", ScriptedBackend([done]), "l", 100, 0.2)])
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        result = await Dispatcher(tiers, ledger=ledger).generate_routed("What is 2 + 2?")
    finally:
        ledger.close()
    assert (result.tier, result.served_by) == ("large", "large")
    assert result.routing == "the prompt shows arithmetic → large"
    import sqlite3

    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT tool, tier FROM calls").fetchall() == [("generate", "large")]


async def test_generate_refuses_max_tokens_over_every_limit_in_one_sentence_and_records_it(tmp_path: Path) -> None:
    import sqlite3

    from mcp_tiered.accounting.ledger import Ledger

    tiers = TierRegistry([Tier("small", ScriptedBackend([]), "s", 100, 0.2, Policy(escalate_to="large")),
                          Tier("large", ScriptedBackend([]), "l", 200, 0.2)])
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        with pytest.raises(RequestError, match=r"^max_tokens: must be an integer between 1 and 200 \(the largest "
                                               r"limit of the tiers generate may use\), got 500$"):
            await Dispatcher(tiers, ledger=ledger).generate_routed("q", max_tokens=500, client="agent")
    finally:
        ledger.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT tool, outcome, client FROM calls").fetchall() == [("generate", "error", "agent")]


@pytest.mark.model
async def test_generate_starts_long_code_on_large_and_a_lookup_on_small(write_config, smollm2: Path,
                                                                        qwen: Path) -> None:
    config = write_config(f"""
[tiers.small]
model = "{smollm2}"
description = "small"
n_ctx = 2048
max_tokens = 64
escalate_to = "large"

[tiers.large]
model = "{qwen}"
description = "large"
n_ctx = 4096
max_tokens = 64
""")
    with anyio.fail_after(180):
        async with stdio_server(config) as client:
            lookup = await client.call_tool("generate", {"prompt": LOOKUP, "temperature": 0})
            code = await client.call_tool("generate", {"prompt": CODE, "temperature": 0, "max_tokens": 32})
    assert not lookup.is_error and not code.is_error
    assert (lookup.structured_content["tier"], lookup.structured_content["served_by"]) == ("small", "small")
    assert "Paris" in lookup.structured_content["text"]
    assert lookup.structured_content["routing"].endswith("→ small")
    assert code.structured_content["tier"] == "large" and code.structured_content["served_by"] == "large"
    assert code.structured_content["routing"].startswith("the prompt shows code, several steps")
