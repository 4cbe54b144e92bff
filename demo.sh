#!/usr/bin/env bash
# One-command local demo of the tutorial's attestation flow, with the software NSM in place of
# a Nitro Enclave: needs only python3. Creates .venv if needed, initialises a simulated NSM in
# .demo/sim/ (shared with ./run.sh --simulate), writes its expected measurements, starts the enclave server on a Unix socket, requests
# and verifies an attestation document (COSE signature, chain, PCRs, user data, nonce), then
# stops the server. Nothing is left running. Run ./demo.sh again at will.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")" && pwd)"
cd "$ROOT"
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
nitro_attest_ensure_venv "$ROOT"

NA="$ROOT/.venv/bin/nitro-attest"
DEMO="${DEMO_DIR:-.demo}"           # relative by default: keeps the socket path short
STATE="$DEMO/sim"                   # the same software NSM ./run.sh --simulate uses
SOCK="$DEMO/demo.sock"              # its own socket: never touches a ./run.sh --simulate server
EXPECTED="$DEMO/expected-measurements.json"
OUT="${DEMO_OUT_DIR:-client}"
SERVER_PID=""

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

mkdir -p "$DEMO"
if [ ! -f "$STATE/root.pem" ]; then
    echo "== 1. Initialise the software NSM in $STATE/ (its own SIMULATED root CA)"
    "$NA" sim init --state "$STATE" >/dev/null
else
    echo "== 1. Software NSM already initialised in $STATE/"
fi

echo "== 2. Expected measurements: the simulated image's PCRs (as build.sh prints) -> $EXPECTED"
"$NA" sim measurements --state "$STATE" --write-expected "$EXPECTED" | sed 's/^/   /'

SENDER_KEY="$DEMO/sender.key"       # who may deliver secrets: pinned in the enclave, PCR0 measures it
if [ ! -f "$SENDER_KEY" ]; then
    "$ROOT/.venv/bin/python" - "$SENDER_KEY" "$DEMO/sender.pub" <<'PY'
import os, sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ed25519
key = ed25519.Ed25519PrivateKey.generate()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
os.close(fd)
with open(sys.argv[2], "wb") as f:
    f.write(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
PY
fi

echo "== 3. Start the enclave server on unix://$SOCK (software NSM; pinned sender $DEMO/sender.pub)"
"$NA" serve --listen "unix://$SOCK" --nsm simulator --state "$STATE" \
    --sender-key "$DEMO/sender.pub" 2>"$DEMO/demo-server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do
    [ -S "$SOCK" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "error: the server did not start:" >&2
        cat "$DEMO/demo-server.log" >&2
        exit 2
    fi
    sleep 0.1
done
[ -S "$SOCK" ] || { echo "error: the server did not open $SOCK" >&2; exit 2; }

echo "== 4. Attest: random nonce + user data -> document -> verify against $STATE/root.pem"
set +e
"$NA" attest --connect "unix://$SOCK" --expected "$EXPECTED" --root "$STATE/root.pem" \
    --out-dir "$OUT"
rc=$?
set -e

if [ "$rc" -eq 0 ]; then
    echo "== 5. Attested channel: seal a secret to the key the verified enclave attests (HPKE)," \
        "signed with the pinned sender key"
    SECRET_FILE="$DEMO/demo-secret.txt"
    printf 'demo secret %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$SECRET_FILE"
    set +e
    "$NA" send-secret --connect "unix://$SOCK" --file "$SECRET_FILE" --expected "$EXPECTED" \
        --root "$STATE/root.pem" --suite mlkem768-x25519 --sign-with "$SENDER_KEY"
    rc=$?
    set -e
    rm -f "$SECRET_FILE"
fi

stop_server
echo "== 6. Server log (one line per request; sizes and hashes only)"
sed 's/^/   /' "$DEMO/demo-server.log"
if [ "$rc" -eq 0 ]; then
    echo "Demo complete: the document verified and the secret was delivered." \
        "Files: $OUT/attestation-document.dat, $OUT/attestation-document-json.json"
else
    echo "Demo finished with exit code $rc (see the checks above)" >&2
fi
exit "$rc"
