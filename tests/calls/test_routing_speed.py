"""The `generate` tool's routing reads the whole prompt (issue 20, item 3): its features take time linear in
the prompt's length whatever the text, and they are read off the event loop, so a 1 MB prompt being routed
holds up no other call."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import smollm2_tier, stdio_server
from mcp_tiered.calls.routing import features

# The characters the cue patterns start, repeat and end on: runs of these are where a pattern that
# backtracks goes quadratic.
TRICKY = st.lists(st.sampled_from([*"\n\t ;(){}=>1+2x%#`", "first ", "then ", "def ", "code "]),
                  min_size=1, max_size=40).map("".join)


def seconds_per_char(unit: str, size: int) -> float:
    text = (unit * (size // len(unit) + 1))[:size]
    best = min(_timed(text) for _ in range(3))
    return best / size


def _timed(text: str) -> float:
    started = time.perf_counter()
    features(text)
    return time.perf_counter() - started


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TRICKY)
def test_reading_a_prompts_features_takes_time_linear_in_its_length(unit: str) -> None:
    # Linear: the time per character stays put from 64 KB to 1 MB (quadratic would multiply it by 16).
    assert seconds_per_char(unit, 1 << 20) < 4 * seconds_per_char(unit, 1 << 16) + 2e-8


@pytest.mark.anyio
@pytest.mark.model
async def test_another_call_is_answered_while_a_1_mb_prompt_is_routed(write_config, smollm2: Path) -> None:
    config = write_config(smollm2_tier(smollm2, 64) + 'escalate_to = "large"\n'
                          + smollm2_tier(smollm2, 64).replace("tiers.small", "tiers.large"))
    huge = "\n" * (1 << 20) + "Say hi."  # 20 000 newlines took 34 s to route, with every other call waiting
    done: dict[str, float] = {}
    with anyio.fail_after(120):
        async with stdio_server(config) as client:
            async def routed() -> None:
                await client.call_tool("generate", {"prompt": huge, "max_tokens": 8})
                done["routed"] = time.monotonic()

            async with anyio.create_task_group() as tg:
                tg.start_soon(routed)
                await anyio.sleep(0.2)  # the 1 MB request is on its way and being routed
                started = time.monotonic()
                refused = await client.call_tool("generate_small", {"prompt": "Hi.", "max_tokens": 0})
                answered = time.monotonic()
    assert refused.is_error and "max_tokens" in refused.content[0].text
    assert answered - started < 0.5 and answered < done["routed"]
