#!/usr/bin/env bash
# Set up (first run only takes long) and serve models.toml's tiers over stdio. Arguments go to
# `mcp-tiered serve`, e.g. --config PATH. Setup output goes to stderr; stdout is the MCP transport.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/mcp-tiered serve "$@"
