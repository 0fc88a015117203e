"""Principals on `serve --transport http` with named keys: their scopes (no cloud, no report), their own cloud
budgets under the team's (in the process and in the store), requests per minute, tokens per day, a revoked
key, and the ledger's attribution — with the real anthropic SDK against the tests' Messages API."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation

from conftest import MCP_HTTP_TIMEOUT, MCP_TIERED, http_server, secret, server_env
from fake_anthropic import FakeAnthropic
from mcp_tiered.accounting.budget import PROMPT_TOKEN_MARGIN
from mcp_tiered.auth.keys import add_key
from mcp_tiered.config.auth import PrincipalLimits

pytestmark = pytest.mark.anyio

PRICES = (3.0, 15.0)
BILLED = (20 * PRICES[0] + 8 * PRICES[1]) / 1e6
"""What the tests' Messages API bills every answer (20 tokens in, 8 out): with a 4-byte prompt and max_tokens 8
a call's worst case is exactly that, so a cap counts whole calls."""
KEY = {"ANTHROPIC_API_KEY": secret("sk-test-never-logged")}


def config_for(folder: Path, fake_url: str, smollm2: Path | None = None, team_calls: float = 1000,
               store_url: str | None = None, extra: str = "") -> Path:
    small = (f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "small"\nn_ctx = 512\nmax_tokens = 8\n'
             'escalate_to = "claude"\n') if smollm2 else ""
    store = f'[store]\nurl = "{store_url}"\n' if store_url else f'[ledger]\npath = "{folder / "ledger.sqlite3"}"\n'
    config = folder / "models.toml"
    config.write_text(small + f'[tiers.claude]\nengine = "anthropic"\ndescription = "Claude"\nmodel = "claude-test"\n'
                      f'base_url = "{fake_url}"\nmax_retries = 0\nmax_tokens = 8\n'
                      f'input_price_per_mtok = {PRICES[0]}\noutput_price_per_mtok = {PRICES[1]}\n'
                      f'[budget]\ndaily = {team_calls * BILLED!r}\n' + store
                      + f'[auth]\nkeys_file = "{folder / "keys.json"}"\n' + extra)
    return config


def key(folder: Path, name: str, scopes: list[str], **limits: Any) -> str:
    return secret(add_key(folder / "keys.json", name, scopes, PrincipalLimits(**limits)))


@asynccontextmanager
async def client_for(base: str, token: str, name: str = "test-client") -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=MCP_HTTP_TIMEOUT) as http, \
            Client(streamable_http_client(f"{base}/mcp", http_client=http),
                   client_info=Implementation(name=name, version="1")) as client:
        yield client


def logged(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*.stderr"))


def ledger_rows(folder: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(folder / "ledger.sqlite3") as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.model
async def test_without_the_cloud_scope_no_call_reaches_the_cloud(tmp_path: Path, smollm2: Path) -> None:
    with FakeAnthropic(reply="4") as fake:
        config = config_for(tmp_path, fake.url, smollm2)
        local = key(tmp_path, "local-only", ["tools"])
        with anyio.fail_after(90):
            async with http_server(config, **KEY) as base, client_for(base, local) as client:
                always = await client.call_tool("generate_small", {"prompt": "Hi?", "escalate": "always"})
                auto = await client.call_tool("generate_small", {"prompt": "What is 17 * 23?", "min_confidence": 0.99})
                direct = await client.call_tool("generate_claude", {"prompt": "Hi?"})
        assert len(fake.requests) == 0
    assert always.is_error and "key:local-only has no cloud scope" in always.content[0].text
    assert not auto.is_error and auto.structured_content["served_by"] == "small"
    assert direct.is_error and direct.content[0].text == (
        "Error executing tool generate_claude: key:local-only may not call generate_claude: tier claude is billed per token, which needs the scope cloud")
    assert local not in logged(tmp_path)
    assert ledger_rows(tmp_path, "SELECT principal, tool, outcome FROM calls ORDER BY id") == [
        ("key:local-only", "generate_small", "error"), ("key:local-only", "generate_small", "ok"),
        ("key:local-only", "generate_claude", "error")]  # refused calls are recorded too, with their principal


async def test_without_the_report_scope_report_metrics_and_the_resource_are_refused(tmp_path: Path) -> None:
    with FakeAnthropic() as fake:
        config = config_for(tmp_path, fake.url)
        caller, reader = key(tmp_path, "caller", ["tools", "cloud"]), key(tmp_path, "reader", ["report"])
        with anyio.fail_after(60):
            async with http_server(config, **KEY) as base, httpx2.AsyncClient() as http:
                refused = {path: await http.get(f"{base}{path}", headers={"authorization": f"Bearer {caller}"})
                           for path in ("/report", "/metrics")}
                allowed = {path: await http.get(f"{base}{path}", headers={"authorization": f"Bearer {reader}"})
                           for path in ("/report", "/metrics")}
                async with client_for(base, caller) as client:
                    with pytest.raises(Exception) as resource_refused:
                        await client.read_resource("tiered://report")
                async with client_for(base, reader) as client:
                    report = await client.read_resource("tiered://report")
                    tool = await client.call_tool("generate_claude", {"prompt": "Hi?"})
    for path, answer in refused.items():
        assert answer.status_code == 403, path
        assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
    assert [a.status_code for a in allowed.values()] == [200, 200]
    assert "key:caller may not read tiered://report: it needs the scope report" in str(resource_refused.value)
    assert json.loads(report.contents[0].text)["totals"]["calls"] == 0
    assert tool.is_error and "key:reader may not call generate_claude: it needs the scope tools or tools:claude" \
        in tool.content[0].text


@pytest.mark.parametrize("where", ["process", "store"])
async def test_each_principal_is_held_to_its_own_cloud_budget_and_the_team_cap_over_both(
        tmp_path: Path, where: str, request: pytest.FixtureRequest) -> None:
    store_url = request.getfixturevalue("store_url") if where == "store" else None
    prompt = "abc?"
    assert len(prompt.encode()) + PROMPT_TOKEN_MARGIN == 20
    outcomes: dict[str, dict[str, list[bool]]] = {}
    for team_calls in (100, 10):
        folder = tmp_path / f"team-{team_calls}"
        folder.mkdir()
        with FakeAnthropic(reply="4") as fake:
            if store_url:  # each run its own day's budget: a fresh schema
                _reset_store(store_url)
            config = config_for(folder, fake.url, team_calls=team_calls, store_url=store_url)
            keys = {"alice": key(folder, "alice", ["tools", "cloud"], cloud_daily=5.5 * BILLED),
                    "bob": key(folder, "bob", ["tools", "cloud"], cloud_daily=8.5 * BILLED)}
            answered: dict[str, list[bool]] = {"alice": [], "bob": []}
            with anyio.fail_after(120):
                async with http_server(config, **KEY) as base:
                    async def calls(name: str) -> None:
                        async with client_for(base, keys[name]) as client:
                            async def one() -> None:
                                result = await client.call_tool("generate_claude", {"prompt": prompt})
                                answered[name].append(not result.is_error)

                            async with anyio.create_task_group() as tg:
                                for _ in range(20):
                                    tg.start_soon(one)

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(calls, "alice")
                        tg.start_soon(calls, "bob")
            outcomes[str(team_calls)] = answered
            assert len(fake.requests) == sum(sum(a) for a in answered.values())
        assert not [k for k in keys.values() if k in logged(folder)]
    roomy, tight = outcomes["100"], outcomes["10"]
    assert (sum(roomy["alice"]), sum(roomy["bob"])) == (5, 8)
    assert sum(tight["alice"]) <= 5 and sum(tight["bob"]) <= 8 and sum(tight["alice"]) + sum(tight["bob"]) == 10
    assert all(len(a) == 20 for run in outcomes.values() for a in run.values())


def _reset_store(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


async def test_a_revoked_key_is_refused_from_the_next_request_without_a_restart(tmp_path: Path) -> None:
    with FakeAnthropic() as fake:
        config = config_for(tmp_path, fake.url)
        token = key(tmp_path, "ci", ["report"])
        with anyio.fail_after(60):
            async with http_server(config, **KEY) as base, httpx2.AsyncClient() as http:
                auth = {"authorization": f"Bearer {token}"}
                before = await http.get(f"{base}/metrics", headers=auth)
                revoked = subprocess.run([MCP_TIERED, "keys", "revoke", "ci", "--config", str(config)],
                                         capture_output=True, text=True, timeout=30, env=server_env())
                after = await http.get(f"{base}/metrics", headers=auth)
    assert revoked.returncode == 0, revoked.stderr
    assert (before.status_code, after.status_code) == (200, 401)
    assert token not in logged(tmp_path) + revoked.stdout + revoked.stderr


async def test_requests_beyond_the_per_minute_limit_get_429_with_retry_after(tmp_path: Path) -> None:
    with FakeAnthropic() as fake:
        config = config_for(tmp_path, fake.url)
        limited, other = key(tmp_path, "limited", ["report"], requests_per_minute=3), key(tmp_path, "other", ["report"])
        with anyio.fail_after(60):
            async with http_server(config, **KEY) as base, httpx2.AsyncClient() as http:
                codes = [(await http.get(f"{base}/metrics", headers={"authorization": f"Bearer {limited}"}))
                         for _ in range(4)]
                unaffected = await http.get(f"{base}/metrics", headers={"authorization": f"Bearer {other}"})
    assert [c.status_code for c in codes] == [200, 200, 200, 429]
    assert 1 <= int(codes[-1].headers["retry-after"]) <= 60
    assert unaffected.status_code == 200


async def test_a_principal_past_its_tokens_per_day_is_refused(tmp_path: Path) -> None:
    with FakeAnthropic(reply="4") as fake:
        config = config_for(tmp_path, fake.url)
        token = key(tmp_path, "thrifty", ["tools", "cloud"], tokens_per_day=30)
        with anyio.fail_after(60):
            async with http_server(config, **KEY) as base, client_for(base, token) as client:
                answers = [await client.call_tool("generate_claude", {"prompt": "abc?"}) for _ in range(3)]
        assert len(fake.requests) == 2  # 28 tokens each: the second starts with 2 left, the third with none
    assert [a.is_error for a in answers] == [False, False, True]
    assert answers[2].content[0].text == (
        "Error executing tool generate_claude: tokens_per_day: key:thrifty has used 56 of its 30 tokens today (UTC); "
        "calls are refused until midnight UTC")


async def test_the_ledger_records_the_principal_whatever_client_name_is_sent(tmp_path: Path) -> None:
    with FakeAnthropic(reply="4") as fake:
        config = config_for(tmp_path, fake.url)
        alice, bob = key(tmp_path, "alice", ["tools", "cloud"]), key(tmp_path, "bob", ["tools", "cloud"])
        with anyio.fail_after(60):
            async with http_server(config, **KEY) as base:
                async with client_for(base, alice, name="alice-laptop") as client:
                    await client.call_tool("generate_claude", {"prompt": "abc?"})
                async with client_for(base, bob, name="alice-laptop") as client:  # bob says he is alice's client
                    await client.call_tool("generate_claude", {"prompt": "abc?"})
                    await client.call_tool("generate_claude", {"prompt": "abc?"})
    rows = ledger_rows(tmp_path, "SELECT principal, client, count(*) FROM calls GROUP BY principal, client "
                                 "ORDER BY principal")
    assert rows == [("key:alice", "alice-laptop", 1), ("key:bob", "alice-laptop", 2)]
    done = subprocess.run([MCP_TIERED, "report", "--config", str(config), "--by", "principal"], capture_output=True,
                          text=True, timeout=60, env=server_env())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["principal", "calls", "answered"]
    assert [line.split()[:3] for line in lines[1:3]] == [["key:bob", "2", "2"], ["key:alice", "1", "1"]]


async def test_tokens_and_cloud_spend_of_earlier_runs_count_after_a_restart(tmp_path: Path) -> None:
    with FakeAnthropic(reply="4") as fake:
        config = config_for(tmp_path, fake.url)
        keys = {"thrifty": key(tmp_path, "thrifty", ["tools", "cloud"], tokens_per_day=20),
                "frugal": key(tmp_path, "frugal", ["tools", "cloud"], cloud_daily=1.5 * BILLED)}
        answers: dict[str, list[bool]] = {name: [] for name in keys}
        with anyio.fail_after(60):
            for _ in range(2):
                async with http_server(config, **KEY) as base:
                    for name, token in keys.items():
                        async with client_for(base, token) as client:
                            result = await client.call_tool("generate_claude", {"prompt": "abc?"})
                            answers[name].append(result.is_error)
                            last = result
        assert len(fake.requests) == 2
    assert answers == {"thrifty": [False, True], "frugal": [False, True]}
    assert "of key:frugal's daily cloud budget" in last.content[0].text


async def test_concurrent_calls_cannot_all_start_on_the_same_tokens_left(tmp_path: Path) -> None:
    with FakeAnthropic(reply="4") as fake:
        config = config_for(tmp_path, fake.url)
        token = key(tmp_path, "thrifty", ["tools", "cloud"], tokens_per_day=30)
        with anyio.fail_after(60):
            async with http_server(config, **KEY) as base, client_for(base, token) as client:
                results = []

                async def one() -> None:
                    results.append(await client.call_tool("generate_claude", {"prompt": "abc?"}))

                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(one)
        # Each call holds its worst case (28 tokens) while it runs: the first leaves 2, so a second starts, and
        # no more until they have been counted; then 56 are used.
        assert len(fake.requests) == 2
    assert sum(not r.is_error for r in results) == 2
    assert {r.content[0].text.split(";")[0] for r in results if r.is_error} <= {
        "Error executing tool generate_claude: tokens_per_day: key:thrifty has used 0 of its 30 tokens today (UTC) "
        "and its calls in flight may use the other 56",
        "Error executing tool generate_claude: tokens_per_day: key:thrifty has used 28 of its 30 tokens today (UTC) "
        "and its calls in flight may use the other 28",
        "Error executing tool generate_claude: tokens_per_day: key:thrifty has used 56 of its 30 tokens today (UTC)"}


@pytest.mark.model
async def test_a_principal_with_one_tier_cannot_ask_for_the_next_with_escalate_always(tmp_path: Path,
                                                                                     smollm2: Path) -> None:
    with FakeAnthropic(reply="4") as fake:
        config = config_for(tmp_path, fake.url, smollm2)
        token = key(tmp_path, "small-only", ["tools:small", "cloud"])
        with anyio.fail_after(60):
            async with http_server(config, **KEY) as base, client_for(base, token) as client:
                always = await client.call_tool("generate_small", {"prompt": "Hi?", "escalate": "always"})
        assert len(fake.requests) == 0
    assert always.is_error and "key:small-only may not call tier claude itself" in always.content[0].text
