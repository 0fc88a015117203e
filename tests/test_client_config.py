"""`mcp-tiered config <client>`: each client's entry printed by the real CLI, read the way that client reads
it (JSON, or a shell command split as a POSIX shell splits it), and the server started from it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from conftest import MCP_TIERED, server_env, smollm2_tier
from mcp_tiered.client_config import CLIENTS, server_command

SECRET = "sk-ant-api03-never-printed-0123456789"
PLACEHOLDER = "<your Anthropic API key; remove this line to keep every call local>"
NO_MODEL = '[tiers.small]\nmodel = "not-downloaded.gguf"\ndescription = "x"\n'


def print_entry(client: str, config: Path | str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """The real CLI, with a real-looking key in its environment that must never come out."""
    env = {"ANTHROPIC_API_KEY": SECRET, **env}
    out = subprocess.run([MCP_TIERED, "config", client, "--config", str(config)], capture_output=True, text=True,
                         env=server_env(**env), cwd=cwd, timeout=60)
    assert out.returncode == 0, out.stderr
    for value in env.values():
        assert value not in out.stdout and value not in out.stderr
    assert out.stderr.strip(), "says where the entry goes"
    return out


def as_the_client_reads_it(client: str, stdout: str) -> tuple[str, list[str], dict[str, str] | None]:
    """What the client would start: command, args, and the environment it adds (None: its own)."""
    if client == "claude-code":
        argv = shlex.split(stdout)  # one command line, as the user's shell splits it
        assert argv[:7] == ["claude", "mcp", "add", "tiered", "--scope", "user", "--"]
        return argv[7], argv[8:], None  # Claude Code starts the server in its own environment
    document = json.loads(stdout)
    if client == "vscode":
        assert set(document) == {"inputs", "servers"}
        (name, server), = document["servers"].items()
        assert server.pop("type") == "stdio"
        inputs = {i["id"]: i for i in document["inputs"]}
        assert all(i["type"] == "promptString" and i["password"] is True for i in inputs.values())
        env = {}
        for key, value in server["env"].items():  # each key is asked for: ${input:<id>}, left empty here
            assert value.startswith("${input:") and value.endswith("}") and value[8:-1] in inputs
            env[key] = ""
        server["env"] = env
    else:  # claude-desktop, cursor
        assert set(document) == {"mcpServers"}
        (name, server), = document["mcpServers"].items()
    assert name == "tiered" and set(server) == {"command", "args", "env"}
    return server["command"], server["args"], server["env"]


@pytest.mark.parametrize("client", list(CLIENTS))
def test_entry_is_the_absolute_executable_and_config_as_the_client_reads_it(client: str, tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(NO_MODEL, encoding="utf-8")
    out = print_entry(client, "models.toml", cwd=tmp_path)  # a relative --config comes out absolute
    command, args, env = as_the_client_reads_it(client, out.stdout)
    assert command == MCP_TIERED and Path(command).is_absolute()
    assert args == ["serve", "--config", str((tmp_path / "models.toml").resolve())]
    if client in ("claude-desktop", "cursor"):
        assert env == {"ANTHROPIC_API_KEY": PLACEHOLDER}
    elif client == "vscode":
        assert env == {"ANTHROPIC_API_KEY": ""}


def test_claude_desktop_entry_is_unchanged_by_the_move(write_config) -> None:
    config = write_config(NO_MODEL)
    entry = json.loads(print_entry("claude-desktop", config).stdout)
    assert entry == {"mcpServers": {"tiered": {"command": MCP_TIERED, "args": ["serve", "--config", str(config.resolve())],
                                               "env": {"ANTHROPIC_API_KEY": PLACEHOLDER}}}}


def test_claude_code_command_survives_paths_with_spaces_and_quotes(tmp_path: Path) -> None:
    folder = tmp_path / "it's a folder"
    folder.mkdir()
    (folder / "models.toml").write_text(NO_MODEL, encoding="utf-8")
    out = print_entry("claude-code", folder / "models.toml")
    assert len(out.stdout.splitlines()) == 1
    assert shlex.split(out.stdout)[-1] == str(folder / "models.toml")
    # and bash hands `claude` exactly those arguments
    argv = subprocess.run(["bash", "-c", f"claude() {{ printf '%s\\n' \"$@\"; }}; {out.stdout}"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert argv == shlex.split(out.stdout)[1:]


def test_entries_name_the_keys_the_config_reads_never_their_values(write_config) -> None:
    config = write_config(
        NO_MODEL + 'escalate_to = "remote"\n'
        '[tiers.remote]\nengine = "openai"\nmodel = "qwen"\ndescription = "a GPU box"\n'
        'endpoints = [{ url = "http://127.0.0.1:9/v1", api_key_env = "GPU_BOX_KEY" }]\n'
        '[cloud]\nmodel = "claude-sonnet-4-5"\napi_key_env = "TEAM_CLAUDE_KEY"\n')
    secrets = {"TEAM_CLAUDE_KEY": "sk-ant-team-secret-42", "GPU_BOX_KEY": "gpu-box-secret-43"}
    desktop = json.loads(print_entry("claude-desktop", config, **secrets).stdout)["mcpServers"]["tiered"]
    assert desktop["env"] == {"TEAM_CLAUDE_KEY": PLACEHOLDER,
                              "GPU_BOX_KEY": "<the API key of tier remote's endpoints; remove this line to call "
                                             "them without a key>"}
    vscode = json.loads(print_entry("vscode", config, **secrets).stdout)
    assert vscode["servers"]["tiered"]["env"] == {"TEAM_CLAUDE_KEY": "${input:tiered-team-claude-key}",
                                                  "GPU_BOX_KEY": "${input:tiered-gpu-box-key}"}
    assert {i["id"] for i in vscode["inputs"]} == {"tiered-team-claude-key", "tiered-gpu-box-key"}
    note = print_entry("claude-code", config, **secrets).stderr
    assert "$TEAM_CLAUDE_KEY" in note and "$GPU_BOX_KEY" in note


def test_claude_tiers_keys_are_named_once_each(write_config) -> None:
    config = write_config(
        NO_MODEL + 'escalate_to = "haiku"\n'
        '[tiers.haiku]\nengine = "anthropic"\ndescription = "Claude Haiku"\nmodel = "claude-haiku-4-5"\n'
        'input_price_per_mtok = 1.0\noutput_price_per_mtok = 5.0\nescalate_to = "sonnet"\n'
        '[tiers.sonnet]\nengine = "anthropic"\ndescription = "Claude Sonnet"\nmodel = "claude-sonnet-4-5"\n'
        'api_key_env = "SONNET_KEY"\n'
        '[budget]\ndaily = 5.0\nmonthly = 100.0\n')
    cursor = json.loads(print_entry("cursor", config, SONNET_KEY="sk-ant-sonnet-secret-44").stdout)
    assert cursor["mcpServers"]["tiered"]["env"] == {"ANTHROPIC_API_KEY": PLACEHOLDER, "SONNET_KEY": PLACEHOLDER}


def test_without_the_console_script_the_entry_runs_python_dash_m(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    assert server_command(config, python=str(tmp_path / "bin" / "python")) == (
        str(tmp_path / "bin" / "python"), ["-m", "mcp_tiered", "serve", "--config", str(config.resolve())])
    assert server_command(config) == (MCP_TIERED, ["serve", "--config", str(config.resolve())])


def test_an_unknown_client_is_argparse_s_error_naming_the_valid_ones() -> None:
    out = subprocess.run([MCP_TIERED, "config", "zed"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert "invalid choice: 'zed'" in out.stderr
    assert all(name in out.stderr for name in CLIENTS), out.stderr


@pytest.mark.anyio
@pytest.mark.model
@pytest.mark.parametrize("client", list(CLIENTS))
async def test_the_printed_entry_starts_the_server_and_it_answers(client: str, write_config, smollm2: Path,
                                                                   tmp_path: Path) -> None:
    config = write_config(smollm2_tier(smollm2, 16) + f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n')
    command, args, env = as_the_client_reads_it(client, print_entry(client, config).stdout)
    params = StdioServerParameters(command=command, args=args, env=server_env() if env is None else env, cwd="/")
    with (tmp_path / "server.stderr").open("w") as errlog, anyio.fail_after(60):
        async with Client(stdio_client(params, errlog=errlog)) as session:
            tools = (await session.list_tools()).tools
            result = await session.call_tool("generate_small", {"prompt": "Say hi.", "max_tokens": 4})
    assert [t.name for t in tools] == ["generate_small"]
    assert not result.is_error and result.structured_content["tier"] == "small"


def test_the_module_has_one_entry_per_client_and_the_cli_offers_each() -> None:
    out = subprocess.run([sys.executable, "-m", "mcp_tiered", "config", "--help"], capture_output=True, text=True,
                         check=True, timeout=60)
    text = " ".join(out.stdout.split())  # argparse wraps the lines
    for name, client in CLIENTS.items():
        assert name in text and client.help in text
