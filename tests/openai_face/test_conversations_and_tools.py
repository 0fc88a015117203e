"""`/v1/chat/completions` beyond one prompt, driven by the official `openai` SDK: multi-turn conversations, a
pinned tier streamed as it generates, and tool calls in OpenAI form — a round trip through the stand-in Messages
API for Claude and through a real llama-server (--jinja) with Qwen2.5-Coder, whose template has tools."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anyio
import openai
import pytest

from conftest import http_server, secret
from fake_anthropic import FakeAnthropic

pytestmark = [pytest.mark.anyio, pytest.mark.model]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}


def write(tmp_path: Path, tiers: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(f'{tiers}[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n')
    return path


def small(smollm2: Path, escalate_to: str = "") -> str:
    chain = f'escalate_to = "{escalate_to}"\n' if escalate_to else ""
    return f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "small"\nn_ctx = 1024\nmax_tokens = 32\n{chain}'


def claude(fake: FakeAnthropic) -> str:
    return (f'[tiers.claude]\nengine = "anthropic"\ndescription = "Claude"\nmodel = "claude-test"\n'
            f'base_url = "{fake.url}"\nmax_retries = 0\nmax_tokens = 64\ninput_price_per_mtok = 3.0\n'
            'output_price_per_mtok = 15.0\n')


def sdk(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def hops(tmp_path: Path) -> list[tuple]:
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        return conn.execute("SELECT calls.tool, hops.tier, hops.outcome, hops.escalation_reason FROM hops "
                            "JOIN calls ON calls.id = hops.call_id ORDER BY hops.call_id, hops.position").fetchall()


async def test_earlier_turns_of_a_conversation_reach_the_model(tmp_path: Path, smollm2: Path) -> None:
    question = {"role": "user", "content": "What is my name?"}
    earlier = [{"role": "user", "content": "My name is Ada Lovelace and I write programs."},
               {"role": "assistant", "content": "Nice to meet you, Ada Lovelace."}]
    with anyio.fail_after(90):
        async with http_server(write(tmp_path, small(smollm2))) as base, sdk(base) as client:
            alone = await client.chat.completions.create(model="small", messages=[question], max_tokens=4)
            talk = await client.chat.completions.create(model="small", messages=[*earlier, question], max_tokens=4)
    assert talk.usage.prompt_tokens >= alone.usage.prompt_tokens + 20  # the two earlier turns, with their markers
    assert talk.choices[0].message.content is not None


async def test_a_pinned_tier_streams_its_text_as_it_is_generated(tmp_path: Path, smollm2: Path) -> None:
    with FakeAnthropic(reply="one two three four five six", default="drip", drip_s=0.4) as fake:
        config = write(tmp_path, small(smollm2) + claude(fake))
        with anyio.fail_after(90):
            async with http_server(config, ANTHROPIC_API_KEY=secret("sk-test-pinned")) as base, sdk(base) as client:
                stream = await client.chat.completions.create(
                    model="claude:never", messages=[{"role": "user", "content": "Count."}], stream=True,
                    stream_options={"include_usage": True})
                texts, unfinished_at_first = [], None
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        if unfinished_at_first is None:
                            unfinished_at_first = fake.streamed == 0
                        texts.append(chunk.choices[0].delta.content)
                    last = chunk
    assert unfinished_at_first  # the first words arrived while the engine was still generating
    assert "".join(texts) == "one two three four five six" and len(texts) >= 3
    assert last.usage.completion_tokens == 8 and chunk.model == "claude/claude-test"


async def test_a_pinned_local_tiers_stream_is_the_answer_it_would_give_whole(tmp_path: Path, smollm2: Path) -> None:
    # the engine cuts the answer before its stop string: what could begin one waits until it cannot
    ask = {"model": "small:never", "temperature": 0, "max_tokens": 32, "stop": ["7, 8"], "messages": [
        {"role": "user", "content": "Write the numbers from 1 to 1000, one after another, separated by commas."}]}
    with anyio.fail_after(90):
        # without the response cache, which would answer the second call whole
        async with http_server(write(tmp_path, small(smollm2) + "[cache]\nenabled = false\n")) as base, \
                sdk(base) as client:
            whole = await client.chat.completions.create(**ask)
            stream = await client.chat.completions.create(**ask, stream=True)
            pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert whole.choices[0].message.content == "1, 2, 3, 4, 5, 6,"
    assert len(pieces) > 3 and "".join(pieces) == whole.choices[0].message.content


async def test_a_tool_call_round_trip_through_claude(tmp_path: Path, smollm2: Path) -> None:
    with FakeAnthropic(reply="It is 18 C and sunny in Paris.", tool_input={"city": "Paris"}) as fake:
        fake.script.append("tool")
        config = write(tmp_path, small(smollm2, escalate_to="claude") + claude(fake))
        asked = [{"role": "user", "content": "What is the weather in Paris?"}]
        with anyio.fail_after(90):
            async with http_server(config, ANTHROPIC_API_KEY=secret("sk-test-tools")) as base, sdk(base) as client:
                first = await client.chat.completions.create(model="small", messages=asked, tools=[WEATHER])
                call = first.choices[0].message.tool_calls[0]
                second = await client.chat.completions.create(model="small", tools=[WEATHER], messages=[
                    *asked, first.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}])
    assert first.choices[0].finish_reason == "tool_calls" and first.model == "claude/claude-test"
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("toolu_01", "get_weather",
                                                                                  {"city": "Paris"})
    assert second.choices[0].message.content == "It is 18 C and sunny in Paris."
    sent = fake.requests[1]["body"]
    assert sent["tools"][0]["name"] == "get_weather" and sent["tools"][0]["input_schema"]["required"] == ["city"]
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 C, sunny"}]}]
    # SmolLM2's in-process engine cannot use tools: each call went on to Claude, and the ledger says why
    assert hops(tmp_path) == [("/v1/chat/completions small", "small", "failed", "tools"),
                              ("/v1/chat/completions small", "claude", "answered", None)] * 2


async def test_tools_on_a_pinned_tier_that_cannot_use_them_are_one_400(tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(60):
        async with http_server(write(tmp_path, small(smollm2))) as base, sdk(base) as client:
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model="small:never", tools=[WEATHER],
                                                     messages=[{"role": "user", "content": "Weather in Oslo?"}])
    assert refused.value.body["message"] == ("tier small cannot use tools: its engine does not pass them to the model; "
                                             "call a tier whose engine does (llama-server, openai, anthropic)")


async def test_tools_reach_a_real_llama_server_through_its_chat_template(tmp_path: Path, qwen: Path) -> None:
    """The managed llama-server (--jinja) renders the tools with the model's template. (The llama.cpp vendored in
    llama-cpp-python 0.3.36 falls back to its "peg-native" format for Qwen2.5's template and parses no calls, so
    Qwen's answer comes back as text; the round trip with calls is tested through Claude above.)"""
    config = write(tmp_path, f'[tiers.coder]\nengine = "llama-server"\nmodel = "{qwen}"\ndescription = "Qwen"\n'
                             'n_ctx = 2048\nparallel = 1\nmax_tokens = 48\ntemperature = 0\n[cache]\nenabled = false\n')
    asked = [{"role": "user", "content": "What is the weather in Paris right now? Use the tool."}]
    with anyio.fail_after(300):
        async with http_server(config) as base, sdk(base) as client:
            bare = await client.chat.completions.create(model="coder", messages=asked, max_tokens=1)
            tooled = await client.chat.completions.create(model="coder", messages=asked, tools=[WEATHER])
    assert tooled.usage.prompt_tokens > bare.usage.prompt_tokens + 60  # the template's tool section and schema
    assert "get_weather" in tooled.choices[0].message.content or tooled.choices[0].message.tool_calls
    assert tooled.model_extra["mcp_tiered"]["confidence"] is None  # no log-probabilities streamed with tools
    assert [h[1:] for h in hops(tmp_path)] == [("coder", "answered", None)] * 2


async def test_a_prompt_over_every_tiers_context_is_one_400_after_each_tier_said_so(tmp_path: Path,
                                                                                    smollm2: Path) -> None:
    tiers = (f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "small"\nn_ctx = 512\nmax_tokens = 16\n'
             f'escalate_to = "large"\n[tiers.large]\nmodel = "{smollm2}"\ndescription = "large"\nn_ctx = 1024\n'
             'max_tokens = 16\n')
    with anyio.fail_after(60):
        async with http_server(write(tmp_path, tiers)) as base, sdk(base) as client:
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model="small", messages=[
                    {"role": "user", "content": "word " * 3000}])
    assert refused.value.body["message"].startswith("prompt is too long for tier large: ")
    assert hops(tmp_path) == [("/v1/chat/completions small", "small", "failed", "context"),
                              ("/v1/chat/completions small", "large", "failed", "context")]


async def test_a_client_that_leaves_a_stream_cancels_its_call(tmp_path: Path, smollm2: Path) -> None:
    with FakeAnthropic(reply="one two three four five six seven eight", default="drip", drip_s=0.5) as fake:
        config = write(tmp_path, small(smollm2) + claude(fake))
        with anyio.fail_after(90):
            async with http_server(config, ANTHROPIC_API_KEY=secret("sk-test-leave")) as base, sdk(base) as client:
                stream = await client.chat.completions.create(
                    model="claude:never", messages=[{"role": "user", "content": "Count."}], stream=True)
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        break
                await stream.close()
                with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
                    while not conn.execute("SELECT outcome FROM calls").fetchall():
                        await anyio.sleep(0.05)
                    rows = conn.execute("SELECT tool, outcome FROM calls").fetchall()
    assert rows == [("/v1/chat/completions claude:never", "cancelled")] and fake.streamed == 0
