#!/usr/bin/env bash
# Start the enclave built by ./build.sh, with the memory and CPUs the allocator reserved.
set -euo pipefail
NA_ROOT="$(cd "$(dirname "$0")" && pwd)"
NA_PROG="run.sh"
# shellcheck source=scripts/aws-common.sh
. "$NA_ROOT/scripts/aws-common.sh"

usage() {
    cat <<EOF
usage: ./run.sh [--cid N] [--memory MIB] [--cpu-count N] [--eif FILE] [--debug]
       ./run.sh --simulate [--measurements FILE]

Starts build/enclave.eif with 'nitro-cli run-enclave'. Memory and CPU count come from the
allocator's settings ($NA_ALLOCATOR: memory_mib, cpu_count or cpu_pool) unless given.
The enclave listens on vsock port $NA_PORT; ./attest.sh finds its CID with describe-enclaves.

options:
  --cid N           enclave CID, 4 or above (default 16)
  --memory MIB      enclave memory (default: memory_mib from the allocator); at least 4x the EIF
  --cpu-count N     enclave CPUs (default: the allocator's)
  --eif FILE        enclave image (default build/enclave.eif)
  --debug           debug mode (console access). Its attestation documents have all-zero PCRs
                    and FAIL verification: for troubleshooting only.
  --simulate        no Nitro hardware: start 'nitro-attest serve' on the software NSM in the
                    background (socket and pid file in .demo/); stop it with ./cleanup.sh --simulate
  --measurements F  with --simulate, the PCRs the simulated enclave reports (nitro-cli JSON)
  -h, --help        this help
EOF
}

cid=16
memory=""
cpus=""
eif="$NA_ROOT/build/enclave.eif"
debug=0
simulate=0
measurements=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cid) cid="${2:?--cid needs a value}"; shift ;;
        --memory) memory="${2:?--memory needs a value}"; shift ;;
        --cpu-count) cpus="${2:?--cpu-count needs a value}"; shift ;;
        --eif) eif="${2:?--eif needs a value}"; shift ;;
        --debug) debug=1 ;;
        --simulate) simulate=1 ;;
        --measurements) measurements="${2:?--measurements needs a value}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) na_die "unknown option: $1 (see --help)" 2 ;;
    esac
    shift
done

run_simulated() {
    local na sock="$NA_DEMO_DIR/enclave.sock" pidf="$NA_DEMO_DIR/enclave.pid" i
    na="$(na_nitro_attest)"
    mkdir -p "$NA_DEMO_DIR"
    if na_is_sim_server "$pidf" "$sock"; then
        echo "simulated enclave already running (pid $(cat "$pidf")) on unix://$sock"
        return 0
    fi
    if [ ! -f "$NA_DEMO_DIR/sim/root.pem" ]; then
        "$na" sim init --state "$NA_DEMO_DIR/sim" ${measurements:+--measurements "$measurements"} ||
            na_die "nitro-attest sim init failed"
    fi
    # The simulated image's PCRs, as build.sh keeps the real ones: what attest.sh --simulate expects.
    "$na" sim measurements --state "$NA_DEMO_DIR/sim" \
        --write-expected "$NA_DEMO_DIR/expected-measurements.json" >/dev/null ||
        na_die "nitro-attest sim measurements failed"
    rm -f "$sock"
    nohup "$na" serve --listen "unix://$sock" --nsm simulator --state "$NA_DEMO_DIR/sim" \
        >"$NA_DEMO_DIR/enclave.log" 2>&1 &
    echo $! >"$pidf"
    for i in $(seq 1 100); do
        [ -S "$sock" ] && break
        na_pid_alive "$pidf" || break
        sleep 0.1
    done
    if [ ! -S "$sock" ]; then
        na_pid_alive "$pidf" && kill "$(cat "$pidf")" 2>/dev/null
        rm -f "$pidf"
        sed 's/^/  /' "$NA_DEMO_DIR/enclave.log" >&2
        na_die "the simulated enclave did not start (log above: .demo/enclave.log)"
    fi
    echo "simulated enclave running (pid $(cat "$pidf"), after ${i} checks) on unix://$sock"
}

if [ "$simulate" -eq 1 ]; then
    run_simulated
    exit 0
fi

case "$cid" in '' | *[!0-9]*) na_die "--cid must be a number, 4 or above" 2 ;; esac
[ "$cid" -ge 4 ] || na_die "--cid must be 4 or above (0-3 are reserved)" 2
[ -f "$eif" ] || na_die "no enclave image at ${eif#"$NA_ROOT"/}; run ./build.sh first"
na_need_nitro_cli
[ -n "$memory" ] || memory="$(na_allocator_value memory_mib)"
[ -n "$cpus" ] || cpus="$(na_allocator_cpus)"
[ -n "$memory" ] || na_die "no memory_mib in $NA_ALLOCATOR; pass --memory MIB" 2
[ -n "$cpus" ] || na_die "no cpu_count/cpu_pool in $NA_ALLOCATOR; pass --cpu-count N" 2

need="$(na_min_memory_mib "$eif")"
if [ "$memory" -lt "$need" ]; then
    na_die "the EIF is $(($(wc -c <"$eif") / 1048576)) MiB, so nitro-cli needs at least $need MiB (4x) and would refuse $memory MiB with E26. Raise memory_mib in $NA_ALLOCATOR (then 'sudo systemctl restart nitro-enclaves-allocator.service') or pass --memory"
fi

desc="$(na_nitro_cli describe-enclaves)"
running="$(printf '%s' "$desc" | na_running_enclave)"
if [ -n "$running" ]; then
    na_die "an enclave is already running (CID ${running%% *}); stop it with ./cleanup.sh first"
fi

# --opt=VALUE throughout: a value starting with '-' is never read by nitro-cli as a flag
args=(run-enclave --eif-path="$eif" --memory="$memory" --cpu-count="$cpus" --enclave-cid="$cid")
if [ "$debug" -eq 1 ]; then
    na_warn "debug mode: the enclave's attestation documents have all-zero PCRs and fail verification"
    args+=(--debug-mode)
fi
na_nitro_cli "${args[@]}"
echo "enclave started with CID $cid; next: ./get-ca.sh (once) and ./attest.sh" >&2
