#!/usr/bin/env bash
# Ask the running enclave for an attestation document and verify it (signature, chain, PCRs,
# nonce, user data). Saves the document under client/.
set -euo pipefail
NA_ROOT="$(cd "$(dirname "$0")" && pwd)"
NA_PROG="attest.sh"
# shellcheck source=scripts/aws-common.sh
. "$NA_ROOT/scripts/aws-common.sh"

usage() {
    cat <<EOF
usage: ./attest.sh [--cid N] [--expected FILE] [--root PEM] [--simulate] [-- ATTEST-OPTIONS...]

Finds the running enclave's CID with 'nitro-cli describe-enclaves', connects to
vsock://CID:$NA_PORT, sends a random nonce and verifies the document it gets back:
  COSE ES384 signature, certificate chain to client/root.pem (./get-ca.sh), PCRs against
  client/expected-measurements.json (./build.sh --write-expected), nonce and user data.
Writes client/attestation-document.dat (base64 CBOR) and client/attestation-document-json.json.
Exit status: 0 verified, 1 rejected, 2 setup problem (no enclave, missing file).

options:
  --cid N           connect to this CID instead of asking describe-enclaves
  --expected FILE   expected PCRs (default client/expected-measurements.json; --simulate:
                    .demo/expected-measurements.json, the simulated image's PCRs run.sh wrote)
  --root PEM        trusted root (default client/root.pem; --simulate: .demo/sim/root.pem)
  --simulate        attest the simulated enclave started by ./run.sh --simulate
  -- ...            passed to 'nitro-attest attest' (e.g. -- --user-data @file --nonce HEX)
  -h, --help        this help
EOF
}

cid=""
expected=""
root=""
simulate=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --cid) cid="${2:?--cid needs a value}"; shift ;;
        --expected) expected="${2:?--expected needs a value}"; shift ;;
        --root) root="${2:?--root needs a value}"; shift ;;
        --simulate) simulate=1 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) na_die "unknown option: $1 (see --help)" 2 ;;
    esac
    shift
done

na="$(na_nitro_attest)"
if [ -z "$expected" ]; then
    if [ "$simulate" -eq 1 ]; then
        expected="$NA_DEMO_DIR/expected-measurements.json"
    else
        expected="$NA_ROOT/client/expected-measurements.json"
    fi
fi
if [ "$simulate" -eq 0 ] && [ ! -f "$expected" ]; then
    na_die "no expected measurements at ${expected#"$NA_ROOT"/}: run ./build.sh --write-expected, or put the PCRs ./build.sh printed into it" 2
fi

if [ "$simulate" -eq 1 ]; then
    sock="$NA_DEMO_DIR/enclave.sock"
    na_pid_alive "$NA_DEMO_DIR/enclave.pid" && [ -S "$sock" ] ||
        na_die "no simulated enclave is running; start it with ./run.sh --simulate" 2
    addr="unix://$sock"
    root="${root:-$NA_DEMO_DIR/sim/root.pem}"
else
    root="${root:-$NA_ROOT/client/root.pem}"
    if [ -z "$cid" ]; then
        na_need_nitro_cli
        desc="$(na_nitro_cli describe-enclaves)"
        running="$(printf '%s' "$desc" | na_running_enclave)"
        [ -n "$running" ] || na_die "no enclave is running; start one with ./build.sh and ./run.sh (check: nitro-cli describe-enclaves)" 2
        read -r cid _id flags <<<"$running"
        if [ "$flags" = "DEBUG_MODE" ]; then
            na_warn "the enclave runs in debug mode: its document has PCR0/1/2 all zero and will be rejected (restart it without --debug)"
        fi
    fi
    addr="vsock://$cid:$NA_PORT"
fi
[ -f "$root" ] || na_die "no root certificate at ${root#"$NA_ROOT"/}; run ./get-ca.sh" 2
if [ "$simulate" -eq 1 ] && [ ! -f "$expected" ]; then
    na_die "no expected measurements at ${expected#"$NA_ROOT"/}: ./run.sh --simulate writes them" 2
fi

mkdir -p "$NA_ROOT/client"
echo "attesting $addr" >&2
rc=0
"$na" attest --connect "$addr" --nonce random --expected "$expected" --root "$root" \
    --out-dir "$NA_ROOT/client" ${extra[@]+"${extra[@]}"} || rc=$?
if [ "$rc" -eq 0 ]; then
    echo "attestation verified; document saved in client/attestation-document.dat and client/attestation-document-json.json" >&2
elif [ "$rc" -eq 1 ]; then
    echo "$NA_PROG: attestation REJECTED (see the failed check above)" >&2
fi
exit "$rc"
