#!/usr/bin/env bash
# Install Debian's PostgreSQL server programs (initdb, postgres) for the store's tests, idempotently: the tests
# start a cluster of their own in a temporary folder, so no database service is set up or used. Exits 0 when it
# cannot (not Debian, not root and no password-less sudo, no network): the tests then skip and say why, reading
# the reason from .tools/POSTGRES_UNAVAILABLE.
set -uo pipefail
exec 1>&2
cd "$(dirname "$0")/.."
mkdir -p .tools
found() { command -v initdb >/dev/null && command -v postgres >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
if found; then rm -f .tools/POSTGRES_UNAVAILABLE; exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "no apt-get: install PostgreSQL's server programs (initdb, postgres) yourself" > .tools/POSTGRES_UNAVAILABLE; exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
  echo "PostgreSQL is missing and installing it needs root (or password-less sudo)" > .tools/POSTGRES_UNAVAILABLE; exit 0
fi
echo "[postgres] installing Debian's postgresql for the store's tests"
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -q postgresql > .tools/apt-postgres.log 2>&1; then
  "${SUDO[@]}" apt-get update -q >> .tools/apt-postgres.log 2>&1
  "${SUDO[@]}" apt-get install -y -q postgresql >> .tools/apt-postgres.log 2>&1
fi
if found; then rm -f .tools/POSTGRES_UNAVAILABLE
else echo "apt-get could not install postgresql (see .tools/apt-postgres.log)" > .tools/POSTGRES_UNAVAILABLE; fi
exit 0
