"""`mcp-tiered config <client>`: the set-up entry each MCP client reads to start this server over stdio.

`CLIENTS` is the one table: a client is its name there, a help line, a function from the `Launch` (the
command, its arguments and the API keys the config reads) to the text printed on stdout, and where that text
goes, printed on stderr. A new client is one entry. No entry ever holds a secret: an API key is a
placeholder (or, for VS Code, an input VS Code asks for and keeps itself), or left to the client's
environment.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER_NAME = "tiered"
"""The name the server is registered under in every client."""
ANTHROPIC_KEY_ENV = "ANTHROPIC_API_KEY"


@dataclass(frozen=True)
class ApiKey:
    """An API key the server reads from the environment: what it is, and what going without it means."""

    what: str
    without: str

    @property
    def placeholder(self) -> str:
        return f"<{self.what}; remove this line to {self.without}>"


ANTHROPIC = ApiKey("your Anthropic API key", "keep every call local")


@dataclass(frozen=True)
class Launch:
    """How a client starts the server: `command` with `args`, and the environment variables that hold API
    keys."""

    command: str
    args: list[str]
    keys: dict[str, ApiKey]


def server_command(config_path: Path, python: str | None = None) -> tuple[str, list[str]]:
    """The absolute path of the installed `mcp-tiered` beside this Python (else `python -m mcp_tiered`)
    and `serve --config <absolute config path>`."""
    python = os.path.abspath(python or sys.executable)
    executable = Path(python).with_name("mcp-tiered")
    command, args = (str(executable), []) if executable.exists() else (python, ["-m", "mcp_tiered"])
    return command, [*args, "serve", "--config", str(config_path.resolve())]


def key_names(config: Any) -> dict[str, ApiKey]:
    """The environment variables the config's tiers read API keys from; `ANTHROPIC_API_KEY` when the config
    names none (the key a Claude tier added later reads by default)."""
    keys: dict[str, ApiKey] = {}
    cloud = getattr(config, "cloud", None)
    if cloud is not None:
        keys[cloud.api_key_env] = ANTHROPIC
    for name, tier in config.tiers.items():
        if env := getattr(tier, "api_key_env", None):  # a Claude tier (engine = "anthropic")
            keys.setdefault(env, ANTHROPIC if getattr(tier, "engine", None) == "anthropic"
                            else ApiKey(f"the API key of tier {name}", f"go without tier {name}"))
        for endpoint in getattr(tier, "endpoints", None) or ():
            if endpoint.api_key_env:
                keys.setdefault(endpoint.api_key_env, ApiKey(f"the API key of tier {name}'s endpoints",
                                                             "call them without a key"))
    return keys or {ANTHROPIC_KEY_ENV: ANTHROPIC}


def launch(config: Any, config_path: Path) -> Launch:
    command, args = server_command(config_path)
    return Launch(command, args, key_names(config))


def _placeholders(run: Launch) -> dict[str, str]:
    return {env: key.placeholder for env, key in run.keys.items()}


def claude_desktop_entry(run: Launch) -> dict:
    """claude_desktop_config.json: `{"mcpServers": {"tiered": {command, args, env}}}`."""
    return {"mcpServers": {SERVER_NAME: {"command": run.command, "args": run.args, "env": _placeholders(run)}}}


def cursor_entry(run: Launch) -> dict:
    """~/.cursor/mcp.json (or a project's .cursor/mcp.json): the same shape as Claude Desktop's."""
    return {"mcpServers": {SERVER_NAME: {"command": run.command, "args": run.args, "env": _placeholders(run)}}}


def vscode_input_id(env: str) -> str:
    return f"{SERVER_NAME}-{env.lower().replace('_', '-')}"


def vscode_entry(run: Launch) -> dict:
    """.vscode/mcp.json: `{"inputs": [...], "servers": {"tiered": {"type": "stdio", command, args, env}}}`.
    Each key is a `promptString` input with `password: true`, referenced as `${input:<id>}`: VS Code asks
    for it when it first starts the server and keeps it itself, so no key is written into the file; left
    empty, the server goes without it."""
    inputs = [{"type": "promptString", "id": vscode_input_id(env), "password": True,
               "description": f"{env} for mcp-tiered: {key.what} (leave empty to {key.without})"}
              for env, key in run.keys.items()]
    env = {name: f"${{input:{vscode_input_id(name)}}}" for name in run.keys}
    return {"inputs": inputs, "servers": {SERVER_NAME: {
        "type": "stdio", "command": run.command, "args": run.args, "env": env}}}


def claude_code_command(run: Launch) -> list[str]:
    """The command that registers the server with Claude Code for every project:
    `claude mcp add tiered --scope user -- <command> <args...>`. No `--env`: Claude Code starts the server
    in its own environment, so a key exported there reaches it, and a placeholder would override that key.
    (`--env` would have to follow the name: the option takes several values and would swallow a name after
    it.)"""
    return ["claude", "mcp", "add", SERVER_NAME, "--scope", "user", "--", run.command, *run.args]


@dataclass(frozen=True)
class Client:
    help: str
    """The line `mcp-tiered config --help` shows."""
    build: Callable[[Launch], dict | list[str]]
    """What the client reads: a JSON document, or the arguments of a shell command."""
    where: str
    """Printed on stderr: where the text goes and what to do about the keys (`{keys}`: their names)."""

    def render(self, run: Launch) -> str:
        """The text printed on stdout: the JSON, or the command quoted for a POSIX shell."""
        entry = self.build(run)
        return shlex.join(entry) if isinstance(entry, list) else json.dumps(entry, indent=2, ensure_ascii=False)

    def note(self, run: Launch) -> str:
        return self.where.format(keys=", ".join(f"${name}" for name in run.keys))


CLIENTS: dict[str, Client] = {
    "claude-desktop": Client(
        "the claude_desktop_config.json entry", claude_desktop_entry,
        "Merge this into claude_desktop_config.json (macOS: ~/Library/Application Support/Claude/, Windows: "
        "%APPDATA%\\Claude\\, Linux: ~/.config/Claude/), put each key in place of its placeholder or remove "
        "its line, and restart Claude Desktop."),
    "claude-code": Client(
        "the `claude mcp add` command for Claude Code", claude_code_command,
        "Run this command. Claude Code starts the server in its own environment, so a key exported where claude "
        "runs ({keys}) reaches it; to give the server a key of its own, add --env NAME=VALUE right after the "
        f"name {SERVER_NAME}."),
    "vscode": Client(
        "the .vscode/mcp.json entry", vscode_entry,
        "Merge this into .vscode/mcp.json in your workspace (or your user mcp.json: 'MCP: Open User "
        "Configuration'); VS Code asks for each key when it first starts the server."),
    "cursor": Client(
        "the ~/.cursor/mcp.json entry", cursor_entry,
        "Merge this into ~/.cursor/mcp.json (every project) or .cursor/mcp.json (one project), and put each key "
        "in place of its placeholder or remove its line."),
}
