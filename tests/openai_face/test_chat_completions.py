"""`/v1/models` and `/v1/chat/completions` on `serve --transport http`, driven by the official `openai` SDK: the
models, `auto` and a pinned tier through the same dispatcher as the MCP tools (the ledger row names the route),
the extension field, and each failure as the OpenAI error the SDK raises."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import anyio
import openai
import pytest

from conftest import http_server, secret
from mcp_tiered.auth.keys import add_key
from mcp_tiered.config.auth import PrincipalLimits

pytestmark = [pytest.mark.anyio, pytest.mark.model]


def config_for(tmp_path: Path, smollm2: Path, auth: str = "") -> Path:
    path = tmp_path / "models.toml"
    path.write_text(f'{auth}[tiers.small]\nmodel = "{smollm2}"\ndescription = "small"\nn_ctx = 512\nmax_tokens = 16\n'
                    f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n')
    return path


def sdk(base: str, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


def ledger(tmp_path: Path) -> list[tuple]:
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        return conn.execute("SELECT tool, tier, served_by, principal, outcome FROM calls ORDER BY id").fetchall()


async def test_the_models_are_auto_each_tier_and_each_tier_pinned(tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(60):
        async with http_server(config_for(tmp_path, smollm2)) as base, sdk(base) as client:
            models = await client.models.list()
    assert [m.id for m in models.data] == ["auto", "small", "small:never"]


async def test_auto_and_a_pinned_tier_answer_through_the_dispatcher(tmp_path: Path, smollm2: Path) -> None:
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}]
    with anyio.fail_after(90):
        async with http_server(config_for(tmp_path, smollm2)) as base, sdk(base) as client:
            auto = await client.chat.completions.create(model="auto", messages=messages, temperature=0)
            pinned = await client.chat.completions.create(model="small:never", messages=messages, max_tokens=4,
                                                          temperature=0)
    assert auto.object == "chat.completion" and auto.choices[0].message.content
    assert auto.model == "small/SmolLM2-135M-Instruct.Q4_1"
    assert auto.usage.completion_tokens > 0 and auto.usage.total_tokens == auto.usage.prompt_tokens + \
        auto.usage.completion_tokens
    assert auto.model_extra["mcp_tiered"]["served_by"] == "small"
    assert pinned.usage.completion_tokens <= 4
    assert ledger(tmp_path) == [("/v1/chat/completions auto", "small", "small", "anonymous", "ok"),
                                ("/v1/chat/completions small:never", "small", "small", "anonymous", "ok")]


async def test_each_mistake_is_one_openai_error_with_its_sentence(tmp_path: Path, smollm2: Path) -> None:
    user = [{"role": "user", "content": "Hi"}]
    with anyio.fail_after(90):
        async with http_server(config_for(tmp_path, smollm2)) as base, sdk(base) as client:
            with pytest.raises(openai.NotFoundError) as unknown:
                await client.chat.completions.create(model="gpt-4o", messages=user)
            with pytest.raises(openai.BadRequestError) as too_long:
                await client.chat.completions.create(model="small", messages=[
                    {"role": "user", "content": "word " * 2000}])
            with pytest.raises(openai.BadRequestError) as several:
                await client.chat.completions.create(model="small", messages=user, n=2)
            with pytest.raises(openai.BadRequestError) as conversation:
                await client.chat.completions.create(model="small", messages=[
                    *user, {"role": "assistant", "content": "Hello"}])
            with pytest.raises(openai.BadRequestError) as bias:
                await client.chat.completions.create(model="small", messages=user, logit_bias={"1": 5})
    assert unknown.value.body["message"] == ("model: 'gpt-4o' is not a model here; valid models are auto, small, "
                                             "small:never")
    assert re.fullmatch(r"prompt is too long for tier small: \d+ prompt tokens \+ max_tokens 16 exceed its context "
                        r"window of 512 tokens; shorten the prompt or lower max_tokens", too_long.value.body["message"])
    assert several.value.body["message"] == "n: only 1 is supported, got 2"
    assert conversation.value.body["message"] == "messages: must end with a user or tool message, not assistant"
    assert bias.value.body["message"] == "logit_bias: is not supported"


async def test_identities_scopes_and_limits_hold_as_on_mcp(tmp_path: Path, smollm2: Path) -> None:
    keys = tmp_path / "keys.json"
    caller = secret(add_key(keys, "caller", ["tools"], PrincipalLimits(requests_per_minute=2)))
    reader = secret(add_key(keys, "reader", ["report"]))
    user = [{"role": "user", "content": "Hi"}]
    with anyio.fail_after(90):
        async with http_server(config_for(tmp_path, smollm2, f'[auth]\nkeys_file = "{keys}"\n')) as base, \
                sdk(base, "mcpt_not-a-key") as stranger, sdk(base, reader) as reading, sdk(base, caller) as calling:
            with pytest.raises(openai.AuthenticationError):
                await stranger.chat.completions.create(model="small", messages=user)
            with pytest.raises(openai.PermissionDeniedError) as refused:
                await reading.chat.completions.create(model="small", messages=user)
            answered = await calling.chat.completions.create(model="small", messages=user, max_tokens=2)
            await calling.models.list()
            with pytest.raises(openai.RateLimitError):
                await calling.models.list()
    assert refused.value.body["message"] == ("key:reader may not call generate_small: it needs the scope tools or "
                                             "tools:small")
    assert answered.choices[0].message.content is not None
    assert [row[3:] for row in ledger(tmp_path)] == [("key:reader", "error"), ("key:caller", "ok")]


async def test_a_stream_ends_with_the_usage_chunk_and_done(tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(60):
        async with http_server(config_for(tmp_path, smollm2)) as base, sdk(base) as client:
            stream = await client.chat.completions.create(
                model="small", messages=[{"role": "user", "content": "Say hi."}], temperature=0, stream=True,
                stream_options={"include_usage": True})
            events = [chunk async for chunk in stream]
            whole = await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "Say hi."}],
                                                         temperature=0)
    assert all(e.object == "chat.completion.chunk" for e in events)
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == whole.choices[0].message.content
    assert events[-1].choices == [] and events[-1].usage.total_tokens == whole.usage.total_tokens
    assert [e.choices[0].finish_reason for e in events if e.choices][-1] == whole.choices[0].finish_reason


async def test_a_streamed_escalation_sends_only_the_final_tiers_text_with_keepalives_meanwhile(
        tmp_path: Path, smollm2: Path) -> None:
    from fake_anthropic import FakeAnthropic

    with FakeAnthropic(reply="Cloud answer: Paris.", default="slow", slow_s=12) as fake:
        path = tmp_path / "models.toml"
        path.write_text(f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "small"\nn_ctx = 512\nmax_tokens = 8\n'
                        'min_confidence = 0.999\nescalate_to = "claude"\n'
                        f'[tiers.claude]\nengine = "anthropic"\ndescription = "Claude"\nmodel = "claude-test"\n'
                        f'base_url = "{fake.url}"\nmax_retries = 0\nmax_tokens = 8\ninput_price_per_mtok = 3.0\n'
                        f'output_price_per_mtok = 15.0\n[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n')
        comments: list[float] = []
        events: list[dict] = []
        with anyio.fail_after(90):
            async with http_server(path, ANTHROPIC_API_KEY=secret("sk-test-stream")) as base:
                import httpx2

                async with httpx2.AsyncClient(timeout=60) as http:
                    started = time.monotonic()
                    async with http.stream("POST", f"{base}/v1/chat/completions", json={
                            "model": "small", "messages": [{"role": "user", "content": "Capital of France?"}],
                            "stream": True, "stream_options": {"include_usage": True}}) as response:
                        status = response.status_code
                        async for line in response.aiter_lines():
                            if line.startswith(":"):
                                comments.append(time.monotonic() - started)
                            elif line.startswith("data: ") and line != "data: [DONE]":
                                events.append(json.loads(line.removeprefix("data: ")))
                    ended = time.monotonic() - started
        assert len(fake.requests) == 1
    assert status == 200
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "Cloud answer: Paris."  # the small tier's answer never went out
    gaps = [b - a for a, b in zip([0.0, *comments], [*comments, ended])]
    assert comments and max(gaps) <= 10.0, gaps
    assert events[-1]["usage"] == {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}
    assert events[-2]["mcp_tiered"]["escalations"][0]["to"] == "claude"
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT prompt_tokens, completion_tokens FROM hops WHERE tier = 'claude'").fetchall() == [
            (20, 8)]


async def test_a_streamed_call_that_is_refused_at_once_gets_its_own_status(tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(60):
        async with http_server(config_for(tmp_path, smollm2)) as base, sdk(base) as client:
            with pytest.raises(openai.BadRequestError) as too_long:
                await client.chat.completions.create(model="small", stream=True, messages=[
                    {"role": "user", "content": "word " * 2000}])
    assert too_long.value.status_code == 400
