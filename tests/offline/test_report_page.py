"""The live report on the HTTP transport (/report: headless Chromium renders its chart and tables, and a second
load shows new calls) and the cost per MCP client (two clients by their clientInfo names, split exactly)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation

from conftest import MCP_TIERED, REPO, http_server, server_env
from mcp_tiered.accounting.ledger import CallRecord, HopRecord, connect, insert

pytestmark = [pytest.mark.anyio, pytest.mark.model]

DAY_S = 86400.0


@pytest.fixture
def config(write_config, smollm2: Path, tmp_path: Path) -> Path:
    path = write_config(f"""
[tiers.small]
model = "{smollm2}"
description = "small"
n_ctx = 1024
max_tokens = 8

[ledger]
path = "{tmp_path / 'ledger.sqlite3'}"

[costs.tiers.small]
power_watts = 100
hardware_cost = 500
""")
    # Two days of earlier traffic, so that the report projects a month and draws its break-even chart.
    conn = connect(tmp_path / "ledger.sqlite3")
    now = time.time()
    insert(conn, [CallRecord(now - 2 * DAY_S + i * 3600, "generate_small", "small", "small", "small", "ok", 40_000,
                             8_000, 1.0, hops=(HopRecord(0, "small", "small", "answered", None, 40_000, 8_000,
                                                         0.0, 1.0, 0.03, 0.00001),), client="earlier")
                  for i in range(40)])
    conn.close()
    return path


async def call_as(base: str, name: str, times: int) -> None:
    async with Client(streamable_http_client(f"{base}/mcp"), client_info=Implementation(name=name, version="1")) as c:
        for i in range(times):
            result = await c.call_tool("generate_small", {"prompt": f"Say {name} {i}.", "cache": False})
            assert not result.is_error


def chromium_or_skip() -> str:
    browser = shutil.which("chromium")
    if browser is None:
        why = (REPO / ".tools" / "CHROMIUM_UNAVAILABLE")
        pytest.skip(f"no chromium: {why.read_text().strip() if why.exists() else 'scripts/install_browser.sh has not run'}")
    return browser


def render(browser: str, url: str, screenshot: Path) -> str:
    """The page's DOM after Chromium has loaded and laid it out, and a screenshot of it."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={screenshot.parent / 'chromium-profile'}", "--window-size=1200,1600"]
    subprocess.run([browser, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    return subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120,
                          check=True).stdout


async def test_the_live_page_renders_the_chart_and_both_tables_and_shows_new_calls(config: Path, tmp_path: Path) -> None:
    browser = chromium_or_skip()
    with anyio.fail_after(300):
        async with http_server(config) as base:
            await call_as(base, "ide-agent", 2)
            first = await anyio.to_thread.run_sync(render, browser, f"{base}/report", tmp_path / "first.png")
            await call_as(base, "ide-agent", 3)
            second = await anyio.to_thread.run_sync(render, browser, f"{base}/report", tmp_path / "second.png")
    assert 'id="break-even-chart"' in first and first.count("<polyline") == 2
    assert '<table id="tiers">' in first and '<table id="clients">' in first
    assert '<meta http-equiv="refresh" content="10">' in first
    assert (tmp_path / "first.png").stat().st_size > 10_000  # laid out and drawn, not a blank page

    def row(dom: str, client: str) -> str:
        start = dom.index(f"<td>{client}</td>")
        return dom[start:dom.index("</tr>", start)]

    assert row(first, "ide-agent").startswith("<td>ide-agent</td><td>2</td>")
    assert row(second, "ide-agent").startswith("<td>ide-agent</td><td>5</td>")
    assert row(second, "earlier").startswith("<td>earlier</td><td>40</td>")


async def test_the_page_takes_the_same_token_as_metrics(config: Path) -> None:
    text = config.read_text() + '\n[server]\nauth_token_env = "REPORT_TOKEN"\n'
    config.write_text(text)
    with anyio.fail_after(120):
        async with http_server(config, REPORT_TOKEN="s3cret") as base:
            async with httpx2.AsyncClient() as http:
                refused = await http.get(f"{base}/report")
                metrics = await http.get(f"{base}/metrics")
                allowed = await http.get(f"{base}/report", headers={"Authorization": "Bearer s3cret"})
    assert refused.status_code == metrics.status_code == 401
    assert allowed.status_code == 200 and allowed.headers["content-type"].startswith("text/html")


async def test_two_clients_are_split_exactly_by_their_client_info_names(config: Path) -> None:
    with anyio.fail_after(300):
        async with http_server(config) as base:
            await call_as(base, "claude-desktop", 2)
            await call_as(base, "cursor", 3)
    done = subprocess.run([MCP_TIERED, "report", "--config", str(config), "--by", "client", "--format", "json"],
                          capture_output=True, text=True, env=server_env(), check=True)
    clients = {c["client"]: c for c in json.loads(done.stdout)["clients"]}
    assert {name: (c["calls"], c["answered"]) for name, c in clients.items()} == {
        "claude-desktop": (2, 2), "cursor": (3, 3), "earlier": (40, 40)}
    assert clients["cursor"]["energy_cost"] > 0 and clients["earlier"]["prompt_tokens"] == 40 * 40_000
    table = subprocess.run([MCP_TIERED, "report", "--config", str(config), "--by", "client"], capture_output=True,
                           text=True, env=server_env(), check=True).stdout
    assert [line.split()[0] for line in table.splitlines()[1:4]] == ["earlier", "cursor", "claude-desktop"]
