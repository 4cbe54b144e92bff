#!/usr/bin/env bash
# Terminate the enclave started by ./run.sh (or the simulated one with --simulate).
set -euo pipefail
NA_ROOT="$(cd "$(dirname "$0")" && pwd)"
NA_PROG="cleanup.sh"
# shellcheck source=scripts/aws-common.sh
. "$NA_ROOT/scripts/aws-common.sh"

usage() {
    cat <<EOF
usage: ./cleanup.sh [--enclave-id ID] [--simulate]

Terminates every running enclave ('nitro-cli terminate-enclave --all'), or only ID.
Succeeds quietly when none runs.

options:
  --enclave-id ID   terminate only this enclave
  --simulate        stop the simulated enclave started by ./run.sh --simulate (pid file in .demo/)
  -h, --help        this help
EOF
}

id=""
simulate=0
while [ $# -gt 0 ]; do
    case "$1" in
        --enclave-id) id="${2:?--enclave-id needs a value}"; shift ;;
        --simulate) simulate=1 ;;
        -h | --help) usage; exit 0 ;;
        *) na_die "unknown option: $1 (see --help)" 2 ;;
    esac
    shift
done

if [ "$simulate" -eq 1 ]; then
    pidf="$NA_DEMO_DIR/enclave.pid"
    sock="$NA_DEMO_DIR/enclave.sock"
    if na_is_sim_server "$pidf" "$sock"; then
        pid="$(cat "$pidf")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        echo "stopped the simulated enclave (pid $pid)" >&2
    elif [ -f "$pidf" ]; then
        # Never signal a process we did not start: the pid may have been reused since.
        echo "$pidf: pid $(head -c 20 "$pidf" | tr -cd '0-9') is not our nitro-attest serve" \
            "(stale pid file): removed it, signalled nothing" >&2
    fi
    rm -f "$pidf" "$sock"
    exit 0
fi

na_need_nitro_cli
desc="$(na_nitro_cli describe-enclaves)"
running="$(printf '%s' "$desc" | na_running_enclave)"
[ -n "$running" ] || exit 0
if [ -n "$id" ]; then
    na_nitro_cli terminate-enclave --enclave-id="$id"
else
    na_nitro_cli terminate-enclave --all
fi
