"""A team on one store, as deployed: `serve --transport http` replicas and stdio servers, separate processes on
one PostgreSQL, the real anthropic SDK against the tests' Messages API, real SmolLM2 tiers and a real
llama-server. One cloud cap for all of them, a killed replica's reservation released with its lease, a
database outage that loses no row, and an endpoint's max_concurrency held across replicas."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.client import Client

from conftest import free_port, http_server, stdio_server
from counting_proxy import counting_proxy
from fake_anthropic import FakeAnthropic
from helpers import query
from llama_server_process import start_llama_server
from mcp_tiered.accounting.budget import PROMPT_TOKEN_MARGIN, periods

pytestmark = [pytest.mark.anyio, pytest.mark.model]

PRICES = (3.0, 15.0)
MAX_TOKENS = 8
BILLED = (20 * PRICES[0] + 8 * PRICES[1]) / 1e6
"""What the tests' Messages API bills every answer (20 tokens in, 8 out)."""
PROMPT_BYTES = 20 - PROMPT_TOKEN_MARGIN
"""A prompt of 4 bytes: its worst case is exactly what the answer is billed, so the cap counts whole calls."""
KEY = {"ANTHROPIC_API_KEY": "sk-test"}


def prompt(i: int) -> str:
    text = f"{i:03d}?"
    assert len(text.encode()) == PROMPT_BYTES
    return text


def team_config(tmp_path: Path, name: str, url: str, body: str, lease_s: float = 30.0) -> Path:
    """One server's own folder (its log apart from the others') with the team's config."""
    folder = tmp_path / name
    folder.mkdir()
    config = folder / "models.toml"
    config.write_text(body + f'[store]\nurl = "{url}"\nlease_s = {lease_s}\ninstance = "{name}"\n')
    return config


def cloud_tier(fake_url: str, cap_calls: float) -> str:
    return (f'[tiers.claude]\nengine = "anthropic"\ndescription = "Claude"\nmodel = "claude-test"\n'
            f'base_url = "{fake_url}"\nmax_retries = 0\nmax_tokens = {MAX_TOKENS}\n'
            f'input_price_per_mtok = {PRICES[0]}\noutput_price_per_mtok = {PRICES[1]}\n'
            f'[budget]\ndaily = {cap_calls * BILLED!r}\n')


def small_tier(smollm2: Path) -> str:
    return f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "small"\nn_ctx = 512\nmax_tokens = 8\n'


@asynccontextmanager
async def team(stack: AsyncExitStack, configs: list[Path], http: int) -> AsyncIterator[list[Client]]:
    """The first `http` configs served over HTTP, the rest over stdio; a connected SDK client for each."""
    clients = []
    for i, config in enumerate(configs):
        if i < http:
            base = await stack.enter_async_context(http_server(config, **KEY))
            clients.append(await stack.enter_async_context(Client(f"{base}/mcp")))
        else:
            clients.append(await stack.enter_async_context(stdio_server(config, **KEY)))
    yield clients


def text(result: Any) -> str:
    return result.content[0].text


async def test_five_servers_on_one_store_bill_no_more_than_the_cap_together(tmp_path: Path, store_url: str) -> None:
    results: list[Any] = []
    with FakeAnthropic(reply="4") as fake:
        configs = [team_config(tmp_path, f"s{i}", store_url, cloud_tier(fake.url, 10.5)) for i in range(5)]
        with anyio.fail_after(240):
            async with AsyncExitStack() as stack, team(stack, configs, http=3) as clients:
                async def call(i: int) -> None:
                    results.append(await clients[i % 5].call_tool("generate_claude", {"prompt": prompt(i)}))

                async with anyio.create_task_group() as tg:
                    for i in range(200):
                        tg.start_soon(call, i)
        billed = len(fake.requests)
    answered = [r for r in results if not r.is_error]
    refused = [r for r in results if r.is_error]
    assert billed == len(answered) == 10
    assert len(refused) == 190
    assert {text(r) for r in refused} == {"Error executing tool generate_claude: cloud budget: the cloud call could "
                                          "cost up to 0.0002 USD and only 0.0001 USD of the daily budget (0.00189 "
                                          "USD) is left"}
    calls = query(store_url, "SELECT outcome, count(*), sum(cloud_cost) FROM calls GROUP BY outcome ORDER BY outcome")
    assert [(outcome, n) for outcome, n, _ in calls] == [("error", 190), ("ok", 10)]
    assert query(store_url, "SELECT count(DISTINCT instance) FROM calls") == [(5,)]
    day, _ = periods(time.time())
    spent = query(store_url, "SELECT spent FROM budget_spend WHERE period = %s", (day,))[0][0]
    assert spent == pytest.approx(dict((o, c) for o, _, c in calls)["ok"]) == pytest.approx(10 * BILLED)


async def test_a_killed_replicas_reservation_is_released_after_its_lease(tmp_path: Path, store_url: str,
                                                                       smollm2: Path) -> None:
    lease_s = 2.0
    with FakeAnthropic(reply="4", slow_s=60) as fake:
        body = small_tier(smollm2) + cloud_tier(fake.url, 1.5)
        configs = [team_config(tmp_path, f"r{i}", store_url, body, lease_s) for i in range(2)]
        with anyio.fail_after(180):
            async with AsyncExitStack() as stack:
                started: list[Any] = []
                doomed = await stack.enter_async_context(http_server(configs[0], started=started,
                                                                          exit_code=-signal.SIGKILL, **KEY))
                survivor = await stack.enter_async_context(http_server(configs[1], **KEY))
                other = await stack.enter_async_context(Client(f"{survivor}/mcp"))
                fake.script.append("slow")

                async def hang() -> None:
                    async with Client(f"{doomed}/mcp") as client:
                        await client.call_tool("generate_claude", {"prompt": prompt(0)})

                async with anyio.create_task_group() as tg:
                    tg.start_soon(hang)
                    while not fake.requests:  # the call holds its reservation and waits on the cloud
                        await anyio.sleep(0.05)
                    assert query(store_url, "SELECT count(*) FROM budget_holds") == [(1,)]
                    started[0].send_signal(signal.SIGKILL)
                    killed_at = time.monotonic()
                    tg.cancel_scope.cancel()
                refused = await other.call_tool("generate_claude", {"prompt": prompt(1)})
                local = await other.call_tool("generate_small", {"prompt": "Say hi.", "temperature": 0})
                while (answer := await other.call_tool("generate_claude", {"prompt": prompt(2)})).is_error:
                    await anyio.sleep(0.2)
                waited = time.monotonic() - killed_at
                with anyio.fail_after(20):
                    await started[0].wait()
    assert refused.is_error and "of the daily budget" in text(refused)
    assert not local.is_error
    assert text(answer) == "4" and waited >= lease_s * 0.5
    day, _ = periods(time.time())
    spent = query(store_url, "SELECT spent FROM budget_spend WHERE period = %s", (day,))[0][0]
    billed_rows = query(store_url, "SELECT sum(cloud_cost) FROM calls")[0][0]
    assert spent == pytest.approx(billed_rows) == pytest.approx(BILLED)
    assert query(store_url, "SELECT count(*) FROM calls WHERE instance = 'r0'") == [(0,)]


async def test_a_database_outage_loses_no_row_and_refuses_only_the_cloud(tmp_path: Path, own_postgres,  # noqa: ANN001
                                                                        smollm2: Path) -> None:
    url = own_postgres.url(own_postgres.new_database())
    answered: list[Any] = []
    with FakeAnthropic(reply="4") as fake:
        body = small_tier(smollm2) + cloud_tier(fake.url, 100)
        configs = [team_config(tmp_path, name, url, body) for name in ("http", "stdio")]
        with anyio.fail_after(240):
            async with AsyncExitStack() as stack, team(stack, configs, http=1) as clients:
                async def local_calls(n: int) -> None:
                    for _ in range(n):
                        i = len(answered)
                        result = await clients[i % 2].call_tool("generate_small", {"prompt": f"Say {i}.",
                                                                                   "temperature": 0})
                        assert not result.is_error, text(result)
                        answered.append(result)

                await local_calls(4)
                before = [await c.call_tool("generate_claude", {"prompt": prompt(i)}) for i, c in enumerate(clients)]
                own_postgres.stop()
                await local_calls(6)
                during = [await c.call_tool("generate_claude", {"prompt": prompt(10 + i)}) for i, c in enumerate(clients)]
                own_postgres.start()
                await local_calls(4)
                # The rows kept in memory go out with the next call or within the retry time.
                while query(url, "SELECT count(*) FROM calls WHERE tool = 'generate_small'")[0][0] < len(answered):
                    await anyio.sleep(0.2)
    assert not any(r.is_error for r in before)
    assert all(r.is_error and "cloud budget: the store postgresql://" in text(r)
               and "so the budget cannot be checked and no cloud call is made" in text(r) for r in during)
    assert len(fake.requests) == 2  # nothing was spent blind
    assert query(url, "SELECT count(*) FROM calls WHERE tool = 'generate_small' AND outcome = 'ok'") == [(14,)]
    assert query(url, "SELECT outcome, count(*) FROM calls WHERE tool = 'generate_claude' GROUP BY outcome "
                      "ORDER BY outcome") == [("error", 2), ("ok", 2)]


async def test_two_replicas_never_send_one_endpoint_more_than_its_max_concurrency(
        tmp_path: Path, store_url: str, smollm2: Path) -> None:
    port = free_port()
    server = start_llama_server(smollm2, port, parallel=4, key=None)
    try:
        async with counting_proxy(port) as proxy:
            body = (f'[tiers.remote]\nengine = "openai"\nmodel = "smollm2"\ndescription = "a shared box"\n'
                    f'max_tokens = 24\nmax_queue = 16\nqueue_timeout_s = 120\n'
                    f'[[tiers.remote.endpoints]]\nurl = "{proxy.url}"\nmax_concurrency = 2\n')
            configs = [team_config(tmp_path, f"r{i}", store_url, body) for i in range(2)]
            results: list[Any] = []
            with anyio.fail_after(240):
                async with AsyncExitStack() as stack, team(stack, configs, http=2) as clients:
                    async def call(i: int) -> None:
                        results.append(await clients[i % 2].call_tool(
                            "generate_remote", {"prompt": f"Count from {i} to {i + 20}.", "temperature": 0}))

                    async with anyio.create_task_group() as tg:
                        for i in range(12):
                            tg.start_soon(call, i)
    finally:
        server.kill()
        server.wait()
    assert [r.is_error for r in results] == [False] * 12, [text(r) for r in results if r.is_error]
    assert proxy.counted == 12
    assert proxy.most == 2
    assert query(store_url, "SELECT count(*) FROM endpoint_slots") == [(0,)]


async def test_the_report_of_any_replica_and_the_cli_on_the_store_agree(tmp_path: Path, store_url: str,
                                                                      smollm2: Path) -> None:
    import json
    import subprocess

    from conftest import MCP_TIERED, server_env

    body = small_tier(smollm2)
    configs = [team_config(tmp_path, f"r{i}", store_url, body) for i in range(2)]
    with anyio.fail_after(180):
        async with AsyncExitStack() as stack:
            bases = [await stack.enter_async_context(http_server(c)) for c in configs]
            for i, base in enumerate(bases * 2):
                async with Client(f"{base}/mcp") as client:
                    assert not (await client.call_tool("generate_small", {"prompt": f"Say {i}.", "temperature": 0})).is_error
            pages = []
            async with httpx2.AsyncClient() as http:
                for base in bases:
                    pages.append((await http.get(f"{base}/report")).text)
            resources = []
            for base in bases:
                async with Client(f"{base}/mcp") as client:
                    resources.append(json.loads((await client.read_resource("tiered://report")).contents[0].text))
    done = subprocess.run([MCP_TIERED, "report", "--config", str(configs[0]), "--format", "json"],
                          capture_output=True, text=True, env=server_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    cli = json.loads(done.stdout)
    assert resources[0] == resources[1] == cli
    assert cli["totals"]["calls"] == 4
    assert sorted((r["instance"], r["calls"]) for r in cli["instances"]) == [("r0", 2), ("r1", 2)]
    assert pages[0] == pages[1]
    by_server = subprocess.run([MCP_TIERED, "report", "--store", store_url, "--config", str(configs[0]),
                                "--by", "instance"], capture_output=True, text=True, env=server_env(), timeout=60)
    assert by_server.returncode == 0, by_server.stderr
    assert [line.split()[:2] for line in by_server.stdout.splitlines()[1:3]] == [["r0", "2"], ["r1", "2"]]
