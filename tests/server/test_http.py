"""`mcp-tiered serve --transport http|sse`: real MCP SDK clients over Streamable HTTP and SSE, the
DNS-rebinding checks, the bearer token, /healthz, /metrics and a clean shutdown on SIGTERM."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from conftest import MCP_TIERED, free_port, http_server, secret, server_env

pytestmark = [pytest.mark.anyio, pytest.mark.model]

TOKEN = secret("test-token-4f1c")
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


async def test_streamable_http_lists_calls_and_reports_progress(small_tier_config: Path) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    with anyio.fail_after(60):
        async with http_server(small_tier_config) as base, Client(f"{base}/mcp") as client:
            tools = [t.name for t in (await client.list_tools()).tools]
            result = await client.call_tool(
                "generate_small", {"prompt": "Write the numbers from 1 to 1000, one after another, separated by commas, without stopping.", "max_tokens": 250,
                                   "temperature": 0}, progress_callback=on_progress)
    assert tools == ["generate_small"]
    assert not result.is_error and result.structured_content["usage"]["completion_tokens"] == 250
    assert len(progress) >= 2 and progress == sorted(set(progress))


async def test_sse_lists_calls_and_reports_progress(small_tier_config: Path) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    with anyio.fail_after(60):
        async with http_server(small_tier_config, "sse") as base, Client(sse_client(f"{base}/sse")) as client:
            tools = [t.name for t in (await client.list_tools()).tools]
            result = await client.call_tool(
                "generate_small", {"prompt": "Write the numbers from 1 to 1000, one after another, separated by commas, without stopping.", "max_tokens": 250,
                                   "temperature": 0}, progress_callback=on_progress)
    assert tools == ["generate_small"]
    assert not result.is_error
    assert len(progress) >= 2 and progress == sorted(set(progress))


async def test_foreign_host_or_origin_is_rejected(small_tier_config: Path) -> None:
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with anyio.fail_after(60):
        async with http_server(small_tier_config) as base, httpx2.AsyncClient() as http:
            host = await http.post(f"{base}/mcp", json=INIT, headers={**headers, "host": "evil.example"})
            origin = await http.post(f"{base}/mcp", json=INIT, headers={**headers, "origin": "http://evil.example"})
            local = await http.post(f"{base}/mcp", json=INIT, headers={**headers, "origin": base})
    assert host.status_code in (400, 421) and origin.status_code == 403
    assert local.status_code == 200


def test_binding_beyond_loopback_without_a_token_refuses_to_start(small_tier_config: Path) -> None:
    out = subprocess.run([MCP_TIERED, "serve", "--config", str(small_tier_config), "--transport", "http",
                          "--host", "0.0.0.0", "--port", str(free_port())],
                         capture_output=True, text=True, timeout=30, env=server_env())
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: --host 0.0.0.0: serving beyond this machine needs authentication; set "
                                  "[auth] oauth or keys_file, or [server] auth_token_env to the name of an "
                                  "environment variable holding a bearer token")


def calls_counted(metrics_text: str) -> float:
    match = re.search(r'^mcp_tiered_calls_total\{outcome="ok",tier="small"\} (\S+)$', metrics_text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_token_is_required_and_refused_requests_never_reach_a_model(write_config, smollm2: Path) -> None:
    config = write_config(f'[server]\nauth_token_env = "MCP_TEST_TOKEN"\n[tiers.small]\nmodel = "{smollm2}"\n'
                          'description = "s"\nn_ctx = 1024\nmax_tokens = 32\n')
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "generate_small", "arguments": {"prompt": "hi"}}}
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    good = {"authorization": f"Bearer {TOKEN}"}
    with anyio.fail_after(60):
        async with http_server(config, MCP_TEST_TOKEN=TOKEN) as base:
            async with httpx2.AsyncClient() as http:
                missing = await http.post(f"{base}/mcp", json=call, headers=headers)
                wrong = await http.post(f"{base}/mcp", json=call, headers={**headers, "authorization": "Bearer nope"})
                health = await http.get(f"{base}/healthz")
                unauthorized_metrics = await http.get(f"{base}/metrics")
                before = (await http.get(f"{base}/metrics", headers=good)).text
                async with httpx2.AsyncClient(headers=good) as authed, \
                        Client(streamable_http_client(f"{base}/mcp", http_client=authed)) as client:
                    result = await client.call_tool("generate_small", {"prompt": "Say hi.", "temperature": 0})
                after = (await http.get(f"{base}/metrics", headers=good)).text
    assert (missing.status_code, wrong.status_code, unauthorized_metrics.status_code) == (401, 401, 401)
    assert health.status_code == 200 and health.json()["tiers"]["small"]["loaded"] is False
    assert calls_counted(before) == 0 and "mcp_tiered_model_loaded{tier=\"small\"} 0.0" in before
    assert not result.is_error
    assert calls_counted(after) == 1
    assert 'mcp_tiered_call_latency_seconds_count{tier="small"} 1.0' in after
    assert TOKEN not in (config.parent / "http.stderr").read_text()


async def test_sigint_lets_the_call_in_flight_finish_then_exits_cleanly(small_tier_config: Path) -> None:
    import signal

    processes: list = []
    results = []

    async def call(client: Client) -> None:
        results.append(await client.call_tool("generate_small", {
            "prompt": "Write the numbers from 1 to 1000, one after another, separated by commas, without stopping.",
            "max_tokens": 200, "temperature": 0}))

    with anyio.fail_after(60):
        async with http_server(small_tier_config, started=processes) as base:
            try:
                async with Client(streamable_http_client(f"{base}/mcp", terminate_on_close=False)) as client:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call, client)
                        await anyio.sleep(1.0)  # generating now (~2 s in all)
                        processes[0].send_signal(signal.SIGINT)
            except* httpx2.TransportError:
                pass  # the client's streams break when the server goes away: expected after a shutdown
    events = [json.loads(line) for line in (small_tier_config.parent / "http.stderr").read_text().splitlines()]
    names = [(e["event"], e.get("outcome"), e.get("completion_tokens")) for e in events]
    stop = names.index(("shutting_down", None, None))
    assert ("tool_call", "ok", 200) in names[stop:]  # the call in flight finished after the signal


HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def test_host_and_origin_must_match_exactly_not_by_prefix(small_tier_config: Path) -> None:
    with anyio.fail_after(60):
        async with http_server(small_tier_config) as base, httpx2.AsyncClient() as http:
            port = base.rsplit(":", 1)[1]
            host = await http.post(f"{base}/mcp", json=INIT, headers={**HEADERS, "host": f"127.0.0.1:{port}@evil.com"})
            origin = await http.post(f"{base}/mcp", json=INIT,
                                     headers={**HEADERS, "origin": f"http://127.0.0.1:{port}.evil.com"})
            exact = await http.post(f"{base}/mcp", json=INIT, headers={**HEADERS, "origin": f"http://127.0.0.1:{port}"})
    assert (host.status_code, origin.status_code, exact.status_code) == (421, 403, 200)


async def test_a_token_sent_in_the_query_string_never_reaches_the_log(write_config, smollm2: Path) -> None:
    config = write_config(f'[server]\nauth_token_env = "MCP_TEST_TOKEN"\n[tiers.small]\nmodel = "{smollm2}"\n'
                          'description = "s"\n')
    with anyio.fail_after(60):
        async with http_server(config, MCP_TEST_TOKEN=TOKEN) as base, httpx2.AsyncClient() as http:
            refused = await http.post(f"{base}/mcp?token={TOKEN}", json=INIT, headers=HEADERS)
    log = (config.parent / "http.stderr").read_text()
    assert refused.status_code == 401
    assert TOKEN not in log
    assert '"POST /mcp HTTP/1.1\\" 401' in log  # the access log line is there, without its query


def limited_config(write_config, smollm2: Path) -> Path:  # noqa: ANN001
    return write_config(f'[server]\nheader_timeout_s = 1\nbody_timeout_s = 2\n[tiers.small]\nmodel = "{smollm2}"\n'
                        'description = "s"\n')


async def test_idle_connections_beyond_the_open_file_limit_do_not_starve_the_server(write_config, smollm2: Path) -> None:
    config = limited_config(write_config, smollm2)
    idle: list[anyio.abc.SocketStream] = []
    with anyio.fail_after(90):
        async with http_server(config, prefix=("prlimit", "--nofile=1024:1024", "--")) as base:
            port = int(base.rsplit(":", 1)[1])
            try:
                for _ in range(1100):
                    idle.append(await anyio.connect_tcp("127.0.0.1", port))
                async with Client(streamable_http_client(f"{base}/mcp")) as client:
                    tools = [t.name for t in (await client.list_tools()).tools]
            finally:
                for stream in idle:
                    await stream.aclose()
    log = (config.parent / "http.stderr").read_text().splitlines()
    assert tools == ["generate_small"]
    assert len(log) < 50, f"{len(log)} log lines"


async def _closed_within(stream: anyio.abc.SocketStream, seconds: float, drip: bytes) -> float:
    """Send `drip` one byte every 0.3 s until the server closes the connection; the seconds that took."""
    started = anyio.current_time()
    with anyio.fail_after(seconds):
        for byte in drip:
            try:
                await stream.send(bytes([byte]))
                with anyio.move_on_after(0.3):
                    if not await stream.receive():
                        break
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError, OSError):
                break
        else:
            raise AssertionError("the server kept the connection open")
    return anyio.current_time() - started


@pytest.mark.parametrize("phase", ["header", "body"])
async def test_a_slow_request_is_cut_off(write_config, smollm2: Path, phase: str) -> None:
    config = limited_config(write_config, smollm2)
    with anyio.fail_after(60):
        async with http_server(config) as base:
            port = int(base.rsplit(":", 1)[1])
            head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json, text/event-stream\r\n"
                    "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                if phase == "header":
                    took = await _closed_within(stream, 10, head + b"x" * 1000)
                else:
                    await stream.send(head)
                    took = await _closed_within(stream, 10, b"x" * 1000)
    assert took < (1 if phase == "header" else 2) + 1.5
