#!/usr/bin/env bash
# Prepare the client side: .venv with nitro-attest (the verifier and the attest client).
set -euo pipefail
NA_ROOT="$(cd "$(dirname "$0")" && pwd)"

case "${1:-}" in
    -h | --help)
        cat <<EOF
usage: ./setup-client.sh

Creates .venv (Python >= 3.11) and installs this project into it, giving .venv/bin/nitro-attest,
which ./attest.sh uses. On a fresh Ubuntu without python3-venv it installs that package when run
as root, or says what to install. Safe to run again; reinstalls when pyproject.toml changes.
EOF
        exit 0 ;;
    "") ;;
    *) echo "setup-client.sh: error: unknown option: $1 (see --help)" >&2; exit 2 ;;
esac

# shellcheck source=scripts/venv.sh
. "$NA_ROOT/scripts/venv.sh"
nitro_attest_ensure_venv "$NA_ROOT"
mkdir -p "$NA_ROOT/client"
echo "client ready: $NA_ROOT/.venv/bin/nitro-attest (activate with: source .venv/bin/activate)"
