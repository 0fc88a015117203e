"""Escalation end to end: `mcp-tiered serve` with real local models (SmolLM2 → Qwen2.5-Coder 1.5B → cloud),
a local Messages API server as the cloud, and the MCP SDK's stdio client."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from conftest import stdio_server
from fake_anthropic import FakeAnthropic

pytestmark = [pytest.mark.anyio, pytest.mark.model]

PARIS = "What is the capital of France? Answer with the city name only."


def two_tiers(write_config, small_model: Path, large: Path, *, min_confidence: float = 0.0, small_n_ctx: int = 1024,
              cloud_url: str | None = None) -> Path:
    text = f"""
[tiers.small]
model = "{small_model}"
description = "small"
n_ctx = {small_n_ctx}
max_tokens = 64
escalate_to = "large"
min_confidence = {min_confidence}

[tiers.large]
model = "{large}"
description = "large"
n_ctx = 2048
max_tokens = 64
"""
    if cloud_url:
        text += f'escalate_to = "cloud"\nmin_confidence = 0.999\n[cloud]\nmodel = "claude-test"\nbase_url = "{cloud_url}"\nmax_retries = 0\n'
    return write_config(text)


async def call(config: Path, arguments: dict, **env: str):
    with anyio.fail_after(120):
        async with stdio_server(config, **env) as client:
            return await client.call_tool("generate_small", arguments)


async def test_low_confidence_on_small_escalates_to_large(write_config, smollm2: Path, qwen: Path) -> None:
    result = await call(two_tiers(write_config, smollm2, qwen, min_confidence=0.999), {"prompt": PARIS, "temperature": 0})
    content = result.structured_content
    assert not result.is_error and content["served_by"] == "large" and "Paris" in content["text"]
    (hop,) = content["escalations"]
    assert (hop["from"], hop["to"], hop["reason"]) == ("small", "large", "low_confidence")
    assert 0 < hop["confidence"] < 0.999


async def test_prompt_too_long_for_small_goes_to_large(write_config, smollm2: Path, qwen: Path) -> None:
    prompt = "Here is a list of words: " + "apple " * 500 + "\nHow many times does the word apple appear? Guess."
    result = await call(two_tiers(write_config, smollm2, qwen, small_n_ctx=512), {"prompt": prompt, "temperature": 0})
    content = result.structured_content
    assert content["served_by"] == "large"
    assert [(h["reason"], h["confidence"]) for h in content["escalations"]] == [("context", None)]


async def test_empty_answer_on_small_escalates(write_config, smollm2: Path, qwen: Path) -> None:
    # SmolLM2 answers "The capital of France is Paris."; stopping at "The" leaves it empty.
    result = await call(two_tiers(write_config, smollm2, qwen), {"prompt": PARIS, "temperature": 0, "stop": ["The"]})
    assert [h["reason"] for h in result.structured_content["escalations"]] == ["empty"]
    assert result.structured_content["served_by"] == "large"


async def test_failing_small_tier_escalates_with_reason_error(write_config, tmp_path: Path, qwen: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    result = await call(two_tiers(write_config, broken, qwen), {"prompt": PARIS, "temperature": 0})
    content = result.structured_content
    assert [h["reason"] for h in content["escalations"]] == ["error"]
    assert content["served_by"] == "large" and "Paris" in content["text"]


async def test_chain_reaches_the_cloud_and_back(write_config, smollm2: Path, qwen: Path) -> None:
    with FakeAnthropic(reply="Paris") as fake:
        config = two_tiers(write_config, smollm2, qwen, min_confidence=0.999, cloud_url=fake.url)
        result = await call(config, {"prompt": PARIS, "temperature": 0}, ANTHROPIC_API_KEY="sk-test")
    content = result.structured_content
    assert (content["served_by"], content["model"], content["text"], content["confidence"]) == ("cloud", "claude-test", "Paris", None)
    assert [(h["from"], h["to"]) for h in content["escalations"]] == [("small", "large"), ("large", "cloud")]
    assert len(fake.requests) == 1


def small_to_cloud(write_config, smollm2: Path, cloud_url: str | None = None) -> Path:  # noqa: ANN001
    """SmolLM2 that always wants to escalate (min_confidence 0.999) straight to the cloud."""
    base_url = f'base_url = "{cloud_url}"\n' if cloud_url else ""
    return write_config(f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "small"\nn_ctx = 1024\nmax_tokens = 16\n'
                        f'escalate_to = "cloud"\nmin_confidence = 0.999\n[cloud]\nmodel = "claude-test"\n{base_url}')


async def test_local_only_calls_never_reach_the_cloud(write_config, smollm2: Path) -> None:
    with FakeAnthropic() as fake:
        config = small_to_cloud(write_config, smollm2, fake.url)
        with anyio.fail_after(120):
            async with stdio_server(config, ANTHROPIC_API_KEY="sk-test") as client:
                results = [await client.call_tool("generate_small", {"prompt": f"Say the number {i}.", "local_only": True})
                           for i in range(20)]
    assert len(fake.requests) == 0
    assert all(r.structured_content["served_by"] == "small" for r in results)
    assert all("the call is local_only" in r.structured_content["escalation_note"] for r in results)


async def test_without_api_key_startup_says_so_once_and_results_carry_the_reason(write_config, smollm2: Path, tmp_path: Path) -> None:
    config = small_to_cloud(write_config, smollm2)
    errlog = tmp_path / "stderr.log"
    with anyio.fail_after(120):
        async with stdio_server(config, errlog) as client:
            tools = [t.name for t in (await client.list_tools()).tools]
            results = [await client.call_tool("generate_small", {"prompt": PARIS}) for _ in range(2)]
    events = [json.loads(line) for line in errlog.read_text().splitlines()]
    assert [e["reason"] for e in events if e["event"] == "tier_unavailable"] == [
        "the cloud tier is disabled because $ANTHROPIC_API_KEY is not set"
    ]
    assert tools == ["generate_small"]
    for result in results:
        assert result.structured_content["served_by"] == "small"
        assert result.structured_content["escalation_note"].endswith("$ANTHROPIC_API_KEY is not set")


async def test_generate_cloud_tool_is_listed_when_a_key_is_set(write_config, smollm2: Path) -> None:
    with FakeAnthropic(reply="Paris") as fake:
        config = write_config(f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "s"\n[cloud]\nmodel = "claude-test"\nbase_url = "{fake.url}"\n')
        with anyio.fail_after(60):
            async with stdio_server(config, ANTHROPIC_API_KEY="sk-test") as client:
                tools = {t.name: t for t in (await client.list_tools()).tools}
                result = await client.call_tool("generate_cloud", {"prompt": PARIS})
    assert list(tools) == ["generate_small", "generate_cloud"]
    assert tools["generate_cloud"].annotations.open_world_hint is True
    assert (result.structured_content["served_by"], result.content[0].text) == ("cloud", "Paris")


async def test_cloud_errors_are_error_results_and_the_server_keeps_serving(write_config, smollm2: Path) -> None:
    with FakeAnthropic(reply="Paris") as fake:
        fake.script.extend(["401", "malformed"])
        config = write_config(f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "s"\n[cloud]\nmodel = "claude-test"\n'
                              f'base_url = "{fake.url}"\nmax_retries = 0\n')
        with anyio.fail_after(60):
            async with stdio_server(config, ANTHROPIC_API_KEY="sk-test") as client:
                unauthorized = await client.call_tool("generate_cloud", {"prompt": PARIS})
                malformed = await client.call_tool("generate_cloud", {"prompt": PARIS})
                fine = await client.call_tool("generate_cloud", {"prompt": PARIS})
    assert unauthorized.is_error and unauthorized.content[0].text.endswith(
        "cloud: the Anthropic API rejected the API key (HTTP 401); check $ANTHROPIC_API_KEY")
    assert malformed.is_error and "not a valid Messages API answer" in malformed.content[0].text
    assert not fine.is_error and fine.content[0].text == "Paris"


@pytest.mark.parametrize("mode", ["reset", "cut"])
async def test_a_cloud_stream_broken_mid_answer_leaves_the_local_answer_with_a_note(write_config, smollm2: Path,
                                                                                   mode: str) -> None:
    with FakeAnthropic(reply="Partial cloud answer", default=mode) as fake:
        config = small_to_cloud(write_config, smollm2, fake.url)
        result = await call(config, {"prompt": PARIS, "temperature": 0}, ANTHROPIC_API_KEY="sk-test")
    content = result.structured_content
    assert not result.is_error
    assert (content["served_by"], content["finish_reason"]) == ("small", "stop") and "Paris" in content["text"]
    assert [(h["to"], h["reason"]) for h in content["escalations"]] == [("cloud", "low_confidence")]
    assert content["escalation_note"].startswith("cloud failed (cloud: ")
    assert content["escalation_note"].endswith("this is the answer of small")
