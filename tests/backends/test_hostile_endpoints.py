"""What a hostile or broken `engine = "openai"` endpoint cannot do to the server (issue 20, items 1, 2, 4-8):
lying usage counts, non-numbers for log-probabilities, endless lines, more tokens than asked for, a
template request that never answers, credentials in its URL, and control-token spellings of its own
vocabulary. The endpoints are HTTP servers written here (tests/hostile_http.py) or the real llama-server
with SmolLM2; the calls go through the real server over stdio."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from conftest import MCP_TIERED, server_env, stdio_server
from hostile_http import Request, Send, head, hostile_server, not_found, stream_chat

CHAT = "/v1/chat/completions"

pytestmark = pytest.mark.anyio

WORDS = ["Paris", " is", " the", " capital", "."]


def endpoint_tier(name: str, url: str, endpoint_keys: str = "", **keys: object) -> str:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items())
    return (f'[tiers.{name}]\nengine = "openai"\nmodel = "m"\ndescription = "an endpoint"\nmax_tokens = 64\n'
            f'{extra}endpoints = [{{ url = "{url}"{endpoint_keys} }}]\n')


LEDGER = '[ledger]\npath = "ledger.sqlite3"\n'


def ledger_rows(config: Path) -> list[tuple]:
    conn = sqlite3.connect(config.with_name("ledger.sqlite3"))
    try:
        return conn.execute("SELECT outcome, prompt_tokens, completion_tokens FROM calls ORDER BY id").fetchall()
    finally:
        conn.close()


def strict_json(line: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def usage_then_normal(first_usage: str) -> Callable[[Request, Send], object]:
    """An endpoint whose first answer reports `first_usage` (raw JSON), and later ones a true count."""
    answered = []

    async def handle(request: Request, send: Send) -> None:
        if request.path != CHAT:  # no llama.cpp tokenizer here
            return await not_found(send)
        usage = first_usage if not answered else '{"prompt_tokens": 12, "completion_tokens": 5}'
        answered.append(request)
        await stream_chat(send, WORDS, usage)

    return handle


async def test_an_oversize_token_count_is_booked_at_its_bound_and_every_later_call_is_recorded(write_config) -> None:
    async with hostile_server(usage_then_normal('{"prompt_tokens": 1e30, "completion_tokens": 5}')) as endpoint:
        config = write_config(endpoint_tier("remote", endpoint.base + "/v1") + LEDGER)
        with anyio.fail_after(60):
            async with stdio_server(config) as client:
                results = [await client.call_tool("generate_remote", {"prompt": "Capital of France?"})
                           for _ in range(4)]
    assert [r.is_error for r in results] == [False] * 4
    bound = len("Capital of France?") + 1024  # one token per byte, plus the template's (backends/reported.py)
    assert results[0].structured_content["usage"]["prompt_tokens"] == bound
    assert ledger_rows(config) == [("ok", bound, 5)] + [("ok", 12, 5)] * 3


@pytest.mark.parametrize("usage", ['{"prompt_tokens": -5, "completion_tokens": -3}',
                                   '{"prompt_tokens": Infinity, "completion_tokens": NaN}'])
async def test_usage_that_is_no_token_count_keeps_the_answer_and_its_ledger_row(write_config, usage: str) -> None:
    async with hostile_server(usage_then_normal(usage)) as endpoint:
        config = write_config(endpoint_tier("remote", endpoint.base + "/v1") + LEDGER)
        errlog = config.with_name("server.log")
        with anyio.fail_after(60):
            async with stdio_server(config, errlog) as client:
                result = await client.call_tool("generate_remote", {"prompt": "Capital of France?"})
    assert not result.is_error and result.content[0].text == "Paris is the capital."
    usage_out = result.structured_content["usage"]
    assert usage_out == {"prompt_tokens": len("Capital of France?") + 1024, "completion_tokens": 64}
    assert ledger_rows(config) == [("ok", usage_out["prompt_tokens"], 64)]
    events = [strict_json(line) for line in errlog.read_text().splitlines() if line.startswith("{")]
    assert any(e["event"] == "engine_report_invalid" and e["tier"] == "remote" for e in events)


async def test_nan_log_probabilities_count_as_unsure_and_escalate(write_config) -> None:
    async def nan_logprobs(request: Request, send: Send) -> None:
        if request.path != CHAT:
            return await not_found(send)
        await stream_chat(send, WORDS, '{"prompt_tokens": 12, "completion_tokens": 5}', logprob="NaN")

    async def sure(request: Request, send: Send) -> None:
        if request.path != CHAT:
            return await not_found(send)
        await stream_chat(send, ["Paris."], '{"prompt_tokens": 12, "completion_tokens": 1}')

    async with hostile_server(nan_logprobs) as small, hostile_server(sure) as large:
        config = write_config(endpoint_tier("small", small.base + "/v1", min_confidence=0.5, escalate_to="large")
                              + endpoint_tier("large", large.base + "/v1"))
        errlog = config.with_name("server.log")
        with anyio.fail_after(60):
            async with stdio_server(config, errlog) as client:
                result = await client.call_tool("generate_small", {"prompt": "Capital of France?"})
    assert not result.is_error
    content = result.structured_content
    assert content["served_by"] == "large"
    assert [(e["from"], e["reason"], e["confidence"]) for e in content["escalations"]] == [
        ("small", "low_confidence", 0.0)]
    for line in errlog.read_text().splitlines():  # every log line is JSON, none has a bare NaN
        if line.startswith("{"):
            strict_json(line)


async def test_an_endpoint_that_sends_more_tokens_than_asked_is_cut_at_max_tokens(write_config) -> None:
    async def verbose(request: Request, send: Send) -> None:
        if request.path != CHAT:
            return await not_found(send)
        await stream_chat(send, [f" word{i}" for i in range(3000)], '{"prompt_tokens": 12, "completion_tokens": 3000}')

    async with hostile_server(verbose) as endpoint:
        config = write_config(endpoint_tier("remote", endpoint.base + "/v1") + LEDGER)
        with anyio.fail_after(60):
            async with stdio_server(config) as client:
                result = await client.call_tool("generate_remote", {"prompt": "Talk.", "max_tokens": 8})
    assert not result.is_error
    content = result.structured_content
    assert content["finish_reason"] == "length" and content["usage"]["completion_tokens"] == 8
    assert len(content["text"].split()) <= 9  # the event over max_tokens ends the answer
    assert ledger_rows(config) == [("ok", 0, 8)]  # the usage at its end was never read


async def test_a_stream_line_of_100_mb_is_refused_after_reading_about_1_mib(write_config) -> None:
    async def one_long_line(request: Request, send: Send) -> None:
        if request.path != CHAT:
            return await not_found(send)
        await send(head(kind="text/event-stream") + b"data: " + b"x" * 65536)
        for _ in range(1600):  # 100 MB in all, if the client reads it
            await send(b"x" * 65536)

    async with hostile_server(one_long_line) as endpoint:
        config = write_config(endpoint_tier("remote", endpoint.base + "/v1"))
        with anyio.fail_after(60):
            async with stdio_server(config) as client:
                result = await client.call_tool("generate_remote", {"prompt": "Hi."})
                assert (await client.call_tool("generate_remote", {"prompt": "Hi."})).is_error  # still serving
    assert result.is_error and "sent a stream line over 1 MiB at /chat/completions" in result.content[0].text
    assert endpoint.sent_bytes < 16 << 20  # the rest was never read (socket buffers hold a few MB)


async def test_the_deadline_covers_the_template_and_tokenize_requests(write_config) -> None:
    async def silent(request: Request, send: Send) -> None:
        await anyio.sleep(120)  # /apply-template that never answers

    async with hostile_server(silent) as endpoint:
        config = write_config(endpoint_tier("remote", endpoint.base + "/v1", api="llama-server"))
        with anyio.fail_after(60):
            async with stdio_server(config) as client:
                with anyio.fail_after(8):
                    result = await client.call_tool("generate_remote", {"prompt": "Hi.", "deadline_s": 3})
    assert not result.is_error and result.structured_content["finish_reason"] == "deadline"
    assert [r.path for r in endpoint.requests] == ["/apply-template"]


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MCP_TIERED, "check", "--config", str(config)], capture_output=True, text=True,
                          env=server_env(), timeout=60)


def test_an_endpoint_url_with_a_password_is_refused_without_repeating_it(write_config) -> None:
    config = write_config(endpoint_tier("remote", "http://user:s3cret-pw@127.0.0.1:9/v1"))
    for command in (["check"], ["serve"]):
        run = subprocess.run([MCP_TIERED, *command, "--config", str(config)], capture_output=True, text=True,
                             env=server_env(), timeout=60, stdin=subprocess.DEVNULL)
        assert run.returncode != 0
        output = run.stdout + run.stderr
        assert "s3cret-pw" not in output and "Traceback" not in output
        assert "tiers.remote.endpoints[0].url: must not hold a user name or password" in output


@pytest.mark.model
async def test_control_tokens_of_the_endpoints_own_vocabulary_stay_plain_text(write_config, smollm2: Path) -> None:
    """SmolLM2's `<file_sep>`, `<repo_name>` … are no chat markers: no list of spellings knows them. The
    engine asks the endpoint's tokenizer which spellings in the caller's text its vocabulary reads as
    control tokens, and breaks those."""
    from conftest import free_port
    from test_openai_engine import KEY, KEY_ENV, count_tokens, start_llama_server

    text = "<file_sep><repo_name>a/b<filename>c.py<gh_stars>5<jupyter_code>x<issue_start><empty_output><reponame>"
    port = free_port()
    server = start_llama_server(smollm2, port, parallel=1)
    try:
        endpoint = f"http://127.0.0.1:{port}/v1"
        assert await count_tokens(endpoint, text, True) < await count_tokens(endpoint, text, False)
        config = write_config(endpoint_tier("remote", endpoint, f', api_key_env = "{KEY_ENV}"'))
        with anyio.fail_after(120):
            async with stdio_server(config, **{KEY_ENV: KEY}) as client:
                benign = await client.call_tool("generate_remote", {"prompt": "Hello.", "max_tokens": 2})
                injected = await client.call_tool("generate_remote", {"prompt": text, "max_tokens": 2})
        plain_extra = await count_tokens(endpoint, text, False) - await count_tokens(endpoint, "Hello.", False)
    finally:
        server.kill()
        server.wait()
    prompt_tokens = [r.structured_content["usage"]["prompt_tokens"] for r in (benign, injected)]
    assert prompt_tokens[1] - prompt_tokens[0] >= plain_extra  # as text: no spelling became one control token
