#!/usr/bin/env bash
# Run every check CI runs: ruff, mypy --strict and the test suite. Installs what it needs into .venv.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
nitro_attest_ensure_venv "$PWD" dev
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
