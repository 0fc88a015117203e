"""The setup options the config `mcp-tiered serve ARGS` would serve needs: `--llama-server` when one of its
tiers has engine = "llama-server". Standard library only (it runs before setup). Prints nothing for a config
it cannot read: serve then says what is wrong with it."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path


def config_path(args: list[str]) -> Path:
    """As `mcp-tiered serve` finds it: --config PATH, else $MCP_TIERED_CONFIG, else ./models.toml."""
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return Path(args[i + 1]).expanduser()
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1]).expanduser()
    return Path(os.environ.get("MCP_TIERED_CONFIG") or "models.toml").expanduser()


def needs(args: list[str]) -> list[str]:
    try:
        tiers = tomllib.loads(config_path(args).read_text(encoding="utf-8")).get("tiers", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    engines = {tier.get("engine") for tier in tiers.values() if isinstance(tier, dict)} if isinstance(tiers, dict) else set()
    return ["--llama-server"] if "llama-server" in engines else []


if __name__ == "__main__":
    print(" ".join(needs(sys.argv[1:])))
