"""Real MCP clients from outside the Python SDK: the official conformance suite against
`serve --transport http`, and the MCP Inspector's CLI against the stdio server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anyio
import pytest

from conftest import MCP_TIERED, REPO, http_server, server_env

TOOLS = REPO / ".tools"
BIN = TOOLS / "node_modules" / ".bin"
SCENARIOS = ["server-initialize", "ping", "tools-list", "logging-set-level", "dns-rebinding-protection"]

pytestmark = [pytest.mark.model]


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    if not (BIN / "conformance").exists() or not (BIN / "mcp-inspector").exists():
        why = (TOOLS / "UNAVAILABLE").read_text().strip() if (TOOLS / "UNAVAILABLE").exists() else "not installed"
        pytest.skip(f"the Node tools could not be installed by scripts/install_node_tools.sh ({why})")
    return server_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.anyio
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_conformance_scenario_passes(scenario: str, node_env: dict[str, str], small_tier_config: Path) -> None:
    with anyio.fail_after(120):
        async with http_server(small_tier_config) as base:
            run = await anyio.run_process([str(BIN / "conformance"), "server", "--url", f"{base}/mcp",
                                           "--scenario", scenario], env=node_env, check=False)
    output = run.stdout.decode() + run.stderr.decode()
    assert run.returncode == 0, output
    assert "0 failed" in output


def inspector(node_env: dict[str, str], config: Path, *method: str) -> dict:
    run = subprocess.run([str(BIN / "mcp-inspector"), "--cli", "-e", f"MCP_TIERED_CONFIG={config}", MCP_TIERED,
                          "serve", "--method", *method], capture_output=True, text=True, env=node_env, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_inspector_cli_lists_the_tools(node_env: dict[str, str], small_tier_config: Path) -> None:
    listed = inspector(node_env, small_tier_config, "tools/list")
    assert [tool["name"] for tool in listed["tools"]] == ["generate_small"]


def test_inspector_cli_calls_generate_small(node_env: dict[str, str], small_tier_config: Path) -> None:
    result = inspector(node_env, small_tier_config, "tools/call", "--tool-name", "generate_small", "--tool-arg",
                       "prompt=What is the capital of France? Answer with the city name only.")
    assert result["isError"] is False
    assert "Paris" in result["content"][0]["text"]
    assert result["structuredContent"]["served_by"] == "small"
