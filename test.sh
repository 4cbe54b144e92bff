#!/usr/bin/env bash
# Run every check CI runs: ruff, mypy --strict and the test suite. Installs what it needs into .venv.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
nitro_attest_ensure_venv "$PWD" dev
# The service tests start real redis-server processes on free loopback ports (Debian's package).
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing redis-server with apt-get (for the service tests)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "error: redis-server is missing; run: sudo apt-get install -y redis-server" >&2
        exit 2
    fi
fi
PY=.venv/bin/python

echo "== ruff"
"$PY" -m ruff check src tests bench
echo "== import-linter (layers, no cycles; contracts in pyproject.toml)"
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache
echo "== mypy --strict"
"$PY" -m mypy --strict src
echo "== pytest"
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
