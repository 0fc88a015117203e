"""`[server] stateless = true`: two `serve --transport http` replicas behind a round-robin load balancer
(tests/round_robin_proxy.py, each request to the other replica), with the SDK's clients on both protocol
generations and the conformance suite; and SSE, which needs affinity, refused."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_MODERN_VERSION

from conftest import MCP_TIERED, free_port, http_server, server_env, smollm2_tier
from round_robin_proxy import RoundRobinProxy, round_robin_proxy
import test_conformance
from test_conformance import BIN, SCENARIOS

from mcp_tiered.config.schema import ServerConfig
from mcp_tiered.errors import ConfigError
from mcp_tiered.server.transports import check_transport

pytestmark = [pytest.mark.anyio]
node_env = test_conformance.node_env
"""The fixture that skips the conformance tests, saying why, when the Node tools are not installed."""

LEGACY = HANDSHAKE_PROTOCOL_VERSIONS[-1]
REFUSAL = ("server.stateless: SSE needs every request of a session to reach the process that opened it, so it "
           "cannot be served statelessly; use --transport http, or set stateless = false")
PROMPT = "What is the capital of France? Answer with the city name only."
LONG = 900
"""The tier's max_tokens: a call this long takes seconds, time to cancel it."""


def replica_configs(tmp_path: Path, smollm2: Path, stateless: bool = True) -> list[Path]:
    """The same config for each replica, each in a folder of its own (its own log and SQLite ledger, as on
    two machines)."""
    text = (f"[server]\nstateless = {str(stateless).lower()}\nprogress_interval_s = 0.5\n"
            f"[ledger]\npath = \"ledger.sqlite3\"\n" + smollm2_tier(smollm2, LONG))
    configs = []
    for name in ("replica-a", "replica-b"):
        (tmp_path / name).mkdir()
        configs.append(tmp_path / name / "models.toml")
        configs[-1].write_text(text, encoding="utf-8")
    return configs


@asynccontextmanager
async def balanced(configs: list[Path]) -> AsyncIterator[RoundRobinProxy]:
    async with http_server(configs[0]) as a, http_server(configs[1]) as b, round_robin_proxy([a, b]) as proxy:
        yield proxy


def posts_per_replica(proxy: RoundRobinProxy) -> list[int]:
    return [sum(1 for i, method, path in proxy.routed if i == replica and method == "POST" and path == "/mcp")
            for replica in range(len(proxy.counts))]


@pytest.mark.model
@pytest.mark.parametrize("mode", ["legacy", LATEST_MODERN_VERSION])
async def test_both_protocol_generations_list_and_call_across_replicas(mode: str, tmp_path: Path,
                                                                      smollm2: Path) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    with anyio.fail_after(90):
        async with balanced(replica_configs(tmp_path, smollm2)) as proxy:
            async with Client(streamable_http_client(f"{proxy.url}/mcp"), mode=mode) as client:
                version = client.protocol_version
                tools = [t.name for t in (await client.list_tools()).tools]
                first = await client.call_tool("generate_small", {"prompt": PROMPT, "temperature": 0})
                long = await client.call_tool(
                    "generate_small", {"prompt": "Write the numbers from 1 to 1000, one after another, separated by commas, without stopping.", "max_tokens": 150,
                                       "temperature": 0}, progress_callback=on_progress)
    assert version == (LEGACY if mode == "legacy" else mode)
    assert tools == ["generate_small"]
    assert not first.is_error and "Paris" in first.content[0].text
    assert not long.is_error and long.structured_content["usage"]["completion_tokens"] == 150
    assert len(progress) >= 2 and progress == sorted(set(progress))  # streamed back through the balancer
    assert all(posts_per_replica(proxy)), proxy.routed


@pytest.mark.model
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_conformance_scenario_passes_across_replicas(scenario: str, node_env: dict[str, str], tmp_path: Path,
                                                           smollm2: Path) -> None:
    with anyio.fail_after(120):
        async with balanced(replica_configs(tmp_path, smollm2)) as proxy:
            run = await anyio.run_process([str(BIN / "conformance"), "server", "--url", f"{proxy.url}/mcp",
                                           "--scenario", scenario], env=node_env, check=False)
    output = run.stdout.decode() + run.stderr.decode()
    assert run.returncode == 0, output
    assert "0 failed" in output
    assert all(proxy.counts), proxy.routed


@pytest.mark.model
async def test_without_stateless_a_handshake_era_client_loses_its_session_on_the_other_replica(
        tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(60):
        async with balanced(replica_configs(tmp_path, smollm2, stateless=False)) as proxy:
            with pytest.raises(ExceptionGroup) as failed:
                async with Client(streamable_http_client(f"{proxy.url}/mcp"), mode="legacy") as client:
                    for _ in range(6):  # one of two requests reaches the replica that did not open the session
                        await client.list_tools()
    assert failed.group_contains(MCPError, match="^Session not found$", depth=None)


@pytest.mark.model
async def test_without_stateless_a_2026_client_still_works_across_replicas(tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(60):
        async with balanced(replica_configs(tmp_path, smollm2, stateless=False)) as proxy:
            async with Client(streamable_http_client(f"{proxy.url}/mcp"), mode=LATEST_MODERN_VERSION) as client:
                tools = [t.name for t in (await client.list_tools()).tools]
                result = await client.call_tool("generate_small", {"prompt": PROMPT, "temperature": 0})
    assert tools == ["generate_small"] and not result.is_error
    assert all(posts_per_replica(proxy)), proxy.routed


async def cancel_a_call(client: Client, max_tokens: int) -> bool:
    """Start a generate_small call and cancel it (as the SDK client does) once it is generating; False if it
    answered first."""
    generating = anyio.Event()
    answered = False

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if message and "generating" in message:
            generating.set()

    async with anyio.create_task_group() as tg:
        async def call() -> None:
            nonlocal answered
            await client.call_tool("generate_small", {"prompt": "Write the numbers from 1 to 1000, one after another, separated by commas, without stopping.",
                                                      "max_tokens": max_tokens, "temperature": 0},
                                   progress_callback=on_progress)
            answered = True
            generating.set()

        tg.start_soon(call)
        await generating.wait()
        tg.cancel_scope.cancel()
    return not answered


async def call_outcome(configs: list[Path]) -> tuple[int, str, int]:
    """The replica that ran the one call, its outcome and completion tokens, once its log has them."""
    while True:
        for replica, config in enumerate(configs):
            for line in (config.parent / "http.stderr").read_text().splitlines():
                if '"tool_call"' in line:
                    event = json.loads(line)
                    return replica, event["outcome"], event["completion_tokens"]
        await anyio.sleep(0.1)


@pytest.mark.model
async def test_a_2026_client_cancels_by_closing_its_response_on_whichever_replica_runs_the_call(
        tmp_path: Path, smollm2: Path) -> None:
    configs = replica_configs(tmp_path, smollm2)
    with anyio.fail_after(60):
        async with balanced(configs) as proxy:
            async with Client(streamable_http_client(f"{proxy.url}/mcp"), mode=LATEST_MODERN_VERSION) as client:
                assert await cancel_a_call(client, LONG)
                replica, outcome, tokens = await call_outcome(configs)
    assert outcome == "cancelled" and tokens < LONG
    assert proxy.routed[0] == (replica, "POST", "/mcp")


@pytest.mark.model
async def test_a_stateless_handshake_era_call_runs_to_its_end_when_cancelled(tmp_path: Path, smollm2: Path) -> None:
    configs = replica_configs(tmp_path, smollm2)
    with anyio.fail_after(60):
        async with balanced(configs) as proxy:
            async with Client(streamable_http_client(f"{proxy.url}/mcp"), mode="legacy") as client:
                assert await cancel_a_call(client, 300)
                replica, outcome, tokens = await call_outcome(configs)
    assert outcome == "ok"  # answered: notifications/cancelled reached a transport of its own and was dropped
    assert [method for _, method, _ in proxy.routed] == ["POST"] * 4  # initialize, initialized, call, cancelled
    assert proxy.routed[2][0] == replica


def test_stateless_with_sse_is_refused_in_one_sentence() -> None:
    with pytest.raises(ConfigError) as refused:
        check_transport(ServerConfig(stateless=True), "sse")
    assert refused.value.problems == [REFUSAL]


def test_serve_sse_with_stateless_exits_with_the_sentence(tmp_path: Path, smollm2: Path) -> None:
    config = replica_configs(tmp_path, smollm2)[0]
    out = subprocess.run([MCP_TIERED, "serve", "--config", str(config), "--transport", "sse",
                          "--port", str(free_port())], capture_output=True, text=True, timeout=60, env=server_env())
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == f"error: {REFUSAL}"
