from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MCP_TIERED, REPO, server_env
from mcp_tiered import __version__


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "mcp_tiered", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"mcp-tiered {__version__}"


def test_check_console_script_validates_the_shipped_config(smollm2: Path, qwen: Path) -> None:
    out = subprocess.run([MCP_TIERED, "check", "--config", str(REPO / "models.toml")], capture_output=True, text=True,
                         env=server_env())
    assert out.returncode == 0, out.stderr
    assert [line.split(":")[0] for line in out.stdout.splitlines()] == [
        "ok     generate_small", "ok     generate_large", "ok     generate_cloud", "GPUs", "plan   generate_small",
        "plan   generate_large"]
    assert out.stdout.splitlines()[2].endswith("(disabled until $ANTHROPIC_API_KEY is set)")


def test_check_console_script_exits_nonzero_with_the_sentence_on_stderr(write_config) -> None:
    config = write_config('[tiers.small]\nmodel = "m.gguf"\ndescription = "x"\nn_ctx = "big"')
    out = subprocess.run([MCP_TIERED, "check", "--config", str(config)], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == 'error: tiers.small.n_ctx: must be an integer ≥ 256, got "big"'


def test_serve_refuses_to_start_on_a_bad_config(write_config) -> None:
    config = write_config("[tiers]")
    out = subprocess.run([MCP_TIERED, "serve", "--config", str(config)], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=30)
    assert out.returncode == 1
    assert "tiers: must be a table with at least one [tiers.<name>] entry, got an empty table" in out.stderr
    assert out.stdout == ""


@pytest.mark.anyio
async def test_claude_desktop_entry_runs_as_printed(small_config: Path) -> None:
    import json

    import anyio
    from mcp.client.client import Client
    from mcp.client.stdio import StdioServerParameters

    out = subprocess.run([MCP_TIERED, "config", "claude-desktop", "--config", str(small_config)],
                         capture_output=True, text=True, check=True, env=server_env())
    entry = json.loads(out.stdout)["mcpServers"]["tiered"]
    assert Path(entry["command"]).is_absolute() and entry["args"][-1] == str(small_config.resolve())
    assert "ANTHROPIC_API_KEY" in entry["env"]
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=entry["env"], cwd="/")
    with anyio.fail_after(30):
        async with Client(params) as client:
            tools = (await client.list_tools()).tools
    assert [t.name for t in tools] == ["generate_small"]


NUL_PATH = '[tiers.small]\nmodel = "/tmp/x\\u0000.gguf"\ndescription = "x"\n'
NUL_SENTENCE = 'error: tiers.small.model: a path cannot contain a NUL character, got "/tmp/x\\u0000.gguf"\n'


def test_check_refuses_a_model_path_with_a_nul_byte_in_one_sentence(write_config) -> None:
    out = subprocess.run([MCP_TIERED, "check", "--config", str(write_config(NUL_PATH))], capture_output=True,
                         text=True, timeout=30)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", NUL_SENTENCE)


def test_serve_refuses_a_model_path_with_a_nul_byte_in_one_sentence(write_config) -> None:
    out = subprocess.run([MCP_TIERED, "serve", "--config", str(write_config(NUL_PATH))], capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", NUL_SENTENCE)
