#!/usr/bin/env bash
# Shared by the AWS tutorial scripts (build.sh, run.sh, attest.sh, cleanup.sh, get-ca.sh, ...).
# Sourced, not run. Every path that touches the system can be overridden by an environment
# variable so the test suite can drive the scripts without /etc, nitro-cli or a real enclave.
# shellcheck disable=SC2034 # NA_* variables are used by the scripts that source this file

# Caller sets NA_ROOT (the repo root) and NA_PROG (its own name) before sourcing.
: "${NA_ROOT:?}" "${NA_PROG:?}"

NA_ALLOCATOR="${NITRO_ATTEST_ALLOCATOR_YAML:-/etc/nitro_enclaves/allocator.yaml}"
NA_DEMO_DIR="${NITRO_ATTEST_DEMO_DIR:-$NA_ROOT/.demo}"
NA_NITRO_ENV="${NITRO_ATTEST_NITRO_ENV:-/etc/profile.d/nitro-cli-env.sh}"
NA_PYTHON="${NITRO_ATTEST_PYTHON:-python3}"
NA_PORT="${NITRO_ATTEST_PORT:-5005}"

na_die() {
    echo "$NA_PROG: error: $1" >&2
    exit "${2:-1}"
}

na_warn() {
    echo "$NA_PROG: warning: $1" >&2
}

# The nitro-attest command: NITRO_ATTEST_BIN, else the project venv's, else the one on PATH.
na_nitro_attest() {
    if [ -n "${NITRO_ATTEST_BIN:-}" ]; then
        echo "$NITRO_ATTEST_BIN"
    elif [ -x "$NA_ROOT/.venv/bin/nitro-attest" ]; then
        echo "$NA_ROOT/.venv/bin/nitro-attest"
    elif command -v nitro-attest >/dev/null 2>&1; then
        command -v nitro-attest
    else
        na_die "nitro-attest not found; run ./setup-client.sh first" 2
    fi
}

na_need_nitro_cli() {
    command -v nitro-cli >/dev/null 2>&1 && return 0
    if [ -f "$NA_NITRO_ENV" ]; then
        # shellcheck source=/dev/null
        . "$NA_NITRO_ENV" >/dev/null 2>&1 || true
        command -v nitro-cli >/dev/null 2>&1 && return 0
    fi
    na_die "nitro-cli not found; run 'USERNAME=\$USER ./setup-pvm.sh', reboot, and log in again" 2
}

# What to do about the nitro-cli errors a tutorial user meets most.
na_hint() {
    case "$1" in
        E26) echo "the enclave needs at least 4x the EIF size in memory: raise memory_mib in $NA_ALLOCATOR, restart nitro-enclaves-allocator.service, or make the image smaller" ;;
        E27) echo "the allocator reserved less memory than requested: raise memory_mib in $NA_ALLOCATOR and run 'sudo systemctl restart nitro-enclaves-allocator.service'" ;;
        E11 | E39) echo "cannot reach the enclave process: is the enclave still running (nitro-cli describe-enclaves), and is your user in the 'ne' group (log out and back in after setup-pvm.sh)?" ;;
        E20 | E21 | E22) echo "CPU configuration: check cpu_count / cpu_pool in $NA_ALLOCATOR and restart the allocator" ;;
        E29) echo "an ioctl to /dev/nitro_enclaves failed: is this instance launched with 'Nitro Enclave: Enabled' and the allocator running?" ;;
        *) ;;
    esac
}

# Run nitro-cli; its stdout is ours. On failure repeat its [ Exx ] text, add a hint, and exit with
# nitro-cli's own status (which is the error number).
na_nitro_cli() {
    local errf rc=0 code
    errf="$(mktemp)"
    nitro-cli "$@" 2>"$errf" || rc=$?
    cat "$errf" >&2
    if [ "$rc" -ne 0 ]; then
        code="$(grep -o '\[ *E[0-9][0-9]* *\]' "$errf" | head -n1 | tr -d '[] ' || true)"
        rm -f "$errf"
        echo "$NA_PROG: nitro-cli $1 failed${code:+ with [ $code ]} (exit status $rc)" >&2
        [ -n "$code" ] && [ -n "$(na_hint "$code")" ] && echo "$NA_PROG: hint: $(na_hint "$code")" >&2
        exit "$rc"
    fi
    rm -f "$errf"
}

# Value of a top-level key in allocator.yaml ("memory_mib: 512"), quotes and comments removed.
na_allocator_value() {
    [ -r "$NA_ALLOCATOR" ] || return 0
    sed -n "s/^$1:[[:space:]]*//p" "$NA_ALLOCATOR" | head -n1 | sed 's/[[:space:]]*#.*$//; s/["'\'']//g; s/[[:space:]]*$//'
}

# Number of CPUs the allocator reserves: cpu_count, or the size of cpu_pool ("2,3,6-9" -> 6).
na_allocator_cpus() {
    local count pool
    count="$(na_allocator_value cpu_count)"
    if [ -n "$count" ]; then
        echo "$count"
        return 0
    fi
    pool="$(na_allocator_value cpu_pool)"
    [ -n "$pool" ] || return 0
    "$NA_PYTHON" - "$pool" <<'EOF'
import sys
try:
    n = 0
    for part in sys.argv[1].split(","):
        lo, _, hi = part.strip().partition("-")
        first = int(lo)
        n += (int(hi) - first + 1) if hi else 1
except ValueError:
    sys.exit(f"error: cannot read cpu_pool {sys.argv[1]!r} in the allocator settings")
print(n)
EOF
}

# Smallest enclave memory (MiB) nitro-cli accepts for an EIF: 4x its size, rounded up (E26 below).
na_min_memory_mib() {
    local size
    size="$(wc -c <"$1")"
    echo $(((size * 4 + 1048575) / 1048576))
}

# From describe-enclaves JSON on stdin, print "CID ID FLAGS" of the first RUNNING enclave.
na_running_enclave() {
    "$NA_PYTHON" -c '
import json, sys
try:
    for e in json.load(sys.stdin):
        if e.get("State") == "RUNNING":
            print(int(e["EnclaveCID"]), e["EnclaveID"], e.get("Flags", "NONE"))
            break
except (ValueError, TypeError, KeyError, AttributeError):
    sys.exit("error: unexpected output from nitro-cli describe-enclaves")
'
}

na_pid_alive() {
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 1
    case "$pid" in '' | *[!0-9]*) return 1 ;; esac # digits only: "-1" would mean every process
    kill -0 "$pid" 2>/dev/null
}

# True when the pid in pid file $1 is our simulated enclave: a `nitro-attest serve` listening on
# unix://$2. A stale pid file may name a pid the system has since given to anything else.
na_is_sim_server() {
    local pid args line exe=0 serve=0 listen=0
    na_pid_alive "$1" || return 1
    pid="$(cat "$1")"
    if [ -r "/proc/$pid/cmdline" ]; then
        args="$(tr '\0' '\n' <"/proc/$pid/cmdline")"
    else
        args="$(ps -o args= -p "$pid" 2>/dev/null | tr ' ' '\n')" || return 1
    fi
    # Matched in the shell, not by `printf | grep -q`: grep -q exits at its first match, and
    # under pipefail printf's SIGPIPE then failed the check (and orphaned the server).
    while IFS= read -r line; do
        case "$line" in
            nitro-attest | */nitro-attest) exe=1 ;;
            serve) serve=1 ;;
            "unix://$2") listen=1 ;;
        esac
    done <<<"$args"
    [ "$exe" = 1 ] && [ "$serve" = 1 ] && [ "$listen" = 1 ]
}
