#!/usr/bin/env bash
# Set up (first run only takes long) and serve models.toml's tiers over stdio. Arguments go to
# `mcp-tiered serve`, e.g. --config PATH. Setup output goes to stderr; stdout is the MCP transport.
# llama-server is built only when the config served has a tier with engine = "llama-server".
set -euo pipefail
cd "$(dirname "$0")/.."
NEEDS=$("${PYTHON:-python3}" scripts/config_needs.py "$@" 2>/dev/null || true)
# shellcheck disable=SC2086  # NEEDS is a list of setup options
scripts/setup.sh $NEEDS
exec .venv/bin/mcp-tiered serve "$@"
