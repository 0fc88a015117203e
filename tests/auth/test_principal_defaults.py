"""Who a call is from without [auth]: the local user on stdio, `key:default` for the legacy shared token (every
scope), `anonymous` on an unguarded loopback HTTP server."""

from __future__ import annotations

import getpass
import sqlite3
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import MCP_HTTP_TIMEOUT, http_server, secret, stdio_server

pytestmark = [pytest.mark.anyio, pytest.mark.model]
TOKEN = secret("legacy-shared-token-5d1e")


def config(tmp_path: Path, smollm2: Path, extra: str = "") -> Path:
    path = tmp_path / "models.toml"
    path.write_text(f'{extra}[tiers.small]\nmodel = "{smollm2}"\ndescription = "s"\nn_ctx = 512\nmax_tokens = 4\n'
                    f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n')
    return path


def principals(tmp_path: Path) -> list[tuple]:
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        return conn.execute("SELECT principal, outcome FROM calls").fetchall()


async def test_a_stdio_call_is_the_local_users(tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(60):
        async with stdio_server(config(tmp_path, smollm2)) as client:
            result = await client.call_tool("generate_small", {"prompt": "Hi", "temperature": 0})
    assert not result.is_error
    assert principals(tmp_path) == [(getpass.getuser(), "ok")]


async def test_the_legacy_token_is_the_key_default_with_every_scope(tmp_path: Path, smollm2: Path) -> None:
    path = config(tmp_path, smollm2, '[server]\nauth_token_env = "MCP_TEST_TOKEN"\n')
    with anyio.fail_after(60):
        async with http_server(path, MCP_TEST_TOKEN=TOKEN) as base, \
                httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=MCP_HTTP_TIMEOUT) as http:
            async with Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
                result = await client.call_tool("generate_small", {"prompt": "Hi", "temperature": 0})
            report = await http.get(f"{base}/report")
    assert not result.is_error and report.status_code == 200
    assert principals(tmp_path) == [("key:default", "ok")]
    assert TOKEN not in (tmp_path / "http.stderr").read_text()


async def test_an_unguarded_loopback_server_books_its_calls_to_anonymous(tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(60):
        async with http_server(config(tmp_path, smollm2)) as base, Client(f"{base}/mcp") as client:
            result = await client.call_tool("generate_small", {"prompt": "Hi", "temperature": 0})
    assert not result.is_error
    assert principals(tmp_path) == [("anonymous", "ok")]
