#!/usr/bin/env bash
# Install Debian's chromium for the test of the live /report page (headless), idempotently. Exits 0 when it
# cannot (not Debian, not root and no password-less sudo, no network): the test then skips and says why,
# reading the reason from .tools/CHROMIUM_UNAVAILABLE.
set -uo pipefail
exec 1>&2
cd "$(dirname "$0")/.."
mkdir -p .tools
if command -v chromium >/dev/null; then rm -f .tools/CHROMIUM_UNAVAILABLE; exit 0; fi
if ! command -v apt-get >/dev/null; then echo "no apt-get: install chromium yourself" > .tools/CHROMIUM_UNAVAILABLE; exit 0; fi
if [ "$(id -u)" = 0 ]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
  echo "chromium is missing and installing it needs root (or password-less sudo)" > .tools/CHROMIUM_UNAVAILABLE; exit 0
fi
echo "[browser] installing Debian's chromium for the /report page test"
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -q chromium > .tools/apt.log 2>&1; then
  "${SUDO[@]}" apt-get update -q >> .tools/apt.log 2>&1
  "${SUDO[@]}" apt-get install -y -q chromium >> .tools/apt.log 2>&1
fi
if command -v chromium >/dev/null; then rm -f .tools/CHROMIUM_UNAVAILABLE
else echo "apt-get could not install chromium (see .tools/apt.log)" > .tools/CHROMIUM_UNAVAILABLE; fi
exit 0
