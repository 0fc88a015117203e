"""`mcp-tiered serve` as a subprocess, driven by the MCP SDK's stdio client."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import jsonschema
import pytest

from conftest import REPO, stdio_server
from mcp_tiered.config.load import load_config

pytestmark = [pytest.mark.anyio, pytest.mark.model]

PARIS = "What is the capital of France? Answer with the city name only."


async def test_tools_list_has_one_generate_tool_per_tier_with_output_schema(tmp_path: Path, smollm2: Path) -> None:
    config = REPO / "models.toml"
    # No API key in the server's environment: the Anthropic tier is left out.
    tiers = {name: tier for name, tier in load_config(config).tiers.items() if tier.engine != "anthropic"}
    with anyio.fail_after(30):
        async with stdio_server(config, tmp_path / "stderr.log") as client:
            tools = (await client.list_tools()).tools
    assert [t.name for t in tools] == ["generate", *(f"generate_{name}" for name in tiers)]
    router, *tools = tools
    assert router.input_schema["properties"]["max_tokens"]["maximum"] == max(t.max_tokens for t in tiers.values())
    assert router.output_schema == tools[0].output_schema and "picks" in router.annotations.title
    for tool in tools:
        tier = tiers[tool.name.removeprefix("generate_")]
        assert tool.description == tier.description
        assert {"text", "tier", "model", "finish_reason", "usage", "latency_ms"} <= set(tool.output_schema["properties"])
        assert tool.input_schema["required"] == ["prompt"]
        assert tool.input_schema["properties"]["max_tokens"]["maximum"] == tier.max_tokens
        assert tool.annotations.read_only_hint is True
        assert tool.annotations.open_world_hint is False


async def test_generate_small_answers_paris_with_structured_content_matching_schema(small_config: Path) -> None:
    with anyio.fail_after(60):
        async with stdio_server(small_config) as client:
            (tool,) = (await client.list_tools()).tools
            result = await client.call_tool("generate_small", {"prompt": PARIS, "temperature": 0})
    assert not result.is_error
    assert "Paris" in result.content[0].text
    jsonschema.validate(result.structured_content, tool.output_schema)
    assert result.structured_content["text"] == result.content[0].text
    assert result.structured_content["tier"] == "small"
    assert result.structured_content["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert result.structured_content["finish_reason"] == "stop"
    assert result.structured_content["usage"]["completion_tokens"] > 0


async def test_temperature_zero_gives_the_same_text_twice(small_config: Path) -> None:
    args = {"prompt": "Name three colours of the rainbow.", "temperature": 0, "max_tokens": 48, "cache": False}
    with anyio.fail_after(60):
        async with stdio_server(small_config) as client:
            first = await client.call_tool("generate_small", args)
            second = await client.call_tool("generate_small", args)
    assert not first.is_error
    assert first.content[0].text == second.content[0].text


async def test_too_long_prompt_is_an_error_and_the_next_call_succeeds(small_config: Path) -> None:
    with anyio.fail_after(60):
        async with stdio_server(small_config) as client:
            too_long = await client.call_tool("generate_small", {"prompt": "word " * 2000})
            after = await client.call_tool("generate_small", {"prompt": PARIS, "temperature": 0})
    assert too_long.is_error
    assert "prompt is too long for tier small" in too_long.content[0].text
    assert "context window of 1024 tokens" in too_long.content[0].text
    assert not after.is_error and "Paris" in after.content[0].text


async def test_out_of_range_max_tokens_is_an_error_and_the_next_call_succeeds(small_config: Path) -> None:
    with anyio.fail_after(60):
        async with stdio_server(small_config) as client:
            bad = await client.call_tool("generate_small", {"prompt": PARIS, "max_tokens": 100_000})
            after = await client.call_tool("generate_small", {"prompt": PARIS, "temperature": 0})
    assert bad.is_error
    assert bad.content[0].text.endswith(
        "max_tokens: must be an integer between 1 and 256 (the limit of tier small), got 100000"
    )
    assert not after.is_error and "Paris" in after.content[0].text


async def test_missing_model_file_is_an_error_result_and_other_tiers_keep_serving(write_config, smollm2: Path) -> None:
    config = write_config(
        f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "ok"\n'
        '[tiers.broken]\nmodel = "gone.gguf"\ndescription = "its file is missing"\n'
    )
    with anyio.fail_after(60):
        async with stdio_server(config) as client:
            broken = await client.call_tool("generate_broken", {"prompt": PARIS})
            small = await client.call_tool("generate_small", {"prompt": PARIS, "temperature": 0})
    assert broken.is_error
    assert f"tiers.broken.model: model file not found: {config.parent}/gone.gguf" in broken.content[0].text
    assert not small.is_error


async def test_server_logs_one_json_event_per_call_on_stderr_without_prompt_text(small_config: Path, tmp_path: Path) -> None:
    errlog = tmp_path / "server.stderr"
    secret = "Xylophone-7781"
    with anyio.fail_after(60):
        async with stdio_server(small_config, errlog) as client:
            await client.call_tool("generate_small", {"prompt": f"Repeat: {secret}", "max_tokens": 16})
    lines = errlog.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every stderr line is a JSON object
    calls = [e for e in events if e["event"] == "tool_call"]
    assert len(calls) == 1
    assert calls[0]["tool"] == "generate_small" and calls[0]["tier"] == "small"
    assert {"prompt_tokens", "completion_tokens", "latency_ms", "finish_reason"} <= set(calls[0])
    assert secret not in errlog.read_text()


@pytest.mark.parametrize(
    ("arguments", "sentence"),
    [
        ({"prompt": 123}, "prompt: must be a string, got 123"),
        ({"prompt": "Hi.", "system": ["a"]}, "system: must be a string, got a list of 1"),
        ({"prompt": "Hi.", "max_tokens": "10"}, 'max_tokens: must be an integer ≥ 1, got "10"'),
        ({"prompt": "Hi.", "max_tokens": True}, "max_tokens: must be an integer ≥ 1, got true"),
    ],
)
async def test_a_wrongly_typed_argument_is_one_sentence(small_config: Path, arguments: dict, sentence: str) -> None:
    with anyio.fail_after(60):
        async with stdio_server(small_config) as client:
            result = await client.call_tool("generate_small", arguments)
    assert result.is_error
    assert result.content[0].text == f"Error executing tool generate_small: {sentence}"
