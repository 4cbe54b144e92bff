#!/usr/bin/env bash
# One-command local demo of the tutorial's attestation flow, with the software NSM in place of
# a Nitro Enclave: needs only python3. Creates .venv if needed, initialises a simulated NSM in
# .demo/sim/ (shared with ./run.sh --simulate), writes its expected measurements, starts the
# enclave server on a Unix socket, requests and verifies an attestation document (COSE
# signature, chain, PCRs, user data, nonce), delivers a secret over the attested channel, then
# runs AWS KMS's Recipient flow against a local KMS (nitro-attest kms emulator) through
# nitro-attest proxy as the parent. Nothing is left running. Run ./demo.sh again at will.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")" && pwd)"
cd "$ROOT"
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
nitro_attest_ensure_venv "$ROOT" kms-emulator   # the local KMS serves on uvloop

NA="$ROOT/.venv/bin/nitro-attest"
DEMO="${DEMO_DIR:-.demo}"           # relative by default: keeps the socket path short
STATE="$DEMO/sim"                   # the same software NSM ./run.sh --simulate uses
SOCK="$DEMO/demo.sock"              # its own socket: never touches a ./run.sh --simulate server
EXPECTED="$DEMO/expected-measurements.json"
OUT="${DEMO_OUT_DIR:-client}"
SERVER_PID=""
KMS_PID=""
PROXY_PID=""

stop_pid() {  # stop one process this script started, by its pid
    local pid="$1"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}
stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}
stop_all() {
    stop_server
    stop_pid "$PROXY_PID"
    stop_pid "$KMS_PID"
    PROXY_PID=""
    KMS_PID=""
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Step 6: AWS KMS's Recipient flow on this machine. The local KMS trusts the software NSM's root;
# the key's policy is generated from the image's measurements (`kms policy`); the parent
# encrypts; the enclave's `kms decrypt` reaches the KMS only through `nitro-attest proxy` (the
# parent's role) with TLS ending in the enclave, and gets the plaintext out of the envelope only
# its own RSA key opens. A second image (other PCR0) asks for the same secret and is refused.
KMS="$DEMO/kms"
ACCOUNT="111122223333"
PARENT_ROLE="arn:aws:iam::$ACCOUNT:role/demo-parent"
ENCLAVE_ROLE="arn:aws:iam::$ACCOUNT:role/demo-enclave"

wait_port() {  # wait_port PORT PID LOG: until 127.0.0.1:PORT accepts, or PID died
    local port="$1" pid="$2" log="$3"
    for _ in $(seq 1 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: it did not start:" >&2
            cat "$log" >&2
            return 2
        fi
        sleep 0.1
    done
    echo "error: nothing listens on 127.0.0.1:$port" >&2
    return 2
}

kms_step() {
    local py="$ROOT/.venv/bin/python" ports kms_port proxy_port other="$DEMO/sim-other"
    echo "== 6. AWS KMS with attestation: local KMS, key policy bound to the image, Recipient" \
        "flow through the parent's proxy"
    mkdir -p "$KMS"
    chmod 700 "$KMS"
    # credentials (the parent's and the enclave's roles), a test CA and the KMS's certificate
    "$py" - "$KMS" <<'PY' || return 2
import datetime as dt, ipaddress, json, os, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization as s
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

kms = Path(sys.argv[1])
def write(name, data, mode=0o600):
    path = kms / name
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.write(fd, data)
    os.close(fd)
creds = [
    {"AccessKeyId": "AKIADEMOPARENT000001", "SecretAccessKey": os.urandom(20).hex(),
     "Arn": "arn:aws:iam::111122223333:role/demo-parent"},
    {"AccessKeyId": "ASIADEMOENCLAVE00001", "SecretAccessKey": os.urandom(20).hex(),
     "SessionToken": os.urandom(16).hex(),
     "Arn": "arn:aws:sts::111122223333:assumed-role/demo-enclave/i-0demo"},
]
write("credentials.json", json.dumps(creds).encode())
now = dt.datetime.now(dt.UTC)
def cert(subject, issuer, key, signer, ca):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return b.sign(signer, hashes.SHA256()).public_bytes(s.Encoding.PEM)
ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nitro-attest demo CA")])
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
write("ca.pem", cert(ca_name, ca_name, ca_key, ca_key, True), 0o644)
write("kms.pem", cert(name, ca_name, key, ca_key, False), 0o644)
write("kms.key", key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
PY
    # a second image: the same simulated enclave with another PCR0
    if [ ! -f "$other/root.pem" ]; then
        "$py" - "$EXPECTED" "$KMS/other-measurements.json" <<'PY' || return 2
import json, sys
data = json.load(open(sys.argv[1]))
data["Measurements"]["PCR0"] = "b0" * 48
json.dump(data, open(sys.argv[2], "w"))
PY
        "$NA" sim init --state "$other" --measurements "$KMS/other-measurements.json" \
            >/dev/null || return 2
    fi
    "$NA" kms policy --measurements "$EXPECTED" --principal "$ENCLAVE_ROLE" \
        --admin "$PARENT_ROLE" --encryptor "$PARENT_ROLE" >"$KMS/policy.json" || return 2
    echo "   key policy from the image's measurements (kms policy) -> $KMS/policy.json"

    ports="$("$py" -c 'import socket
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    kms_port="$(echo "$ports" | sed -n 1p)"
    proxy_port="$(echo "$ports" | sed -n 2p)"
    rm -rf "$KMS/state"
    "$NA" kms emulator --listen "127.0.0.1:$kms_port" --state "$KMS/state" \
        --credentials "$KMS/credentials.json" --root "$STATE/root.pem" --root "$other/root.pem" \
        --tls-cert "$KMS/kms.pem" --tls-key "$KMS/kms.key" 2>"$KMS/kms.log" &
    KMS_PID=$!
    echo "$KMS_PID" >"$KMS/kms.pid"
    wait_port "$kms_port" "$KMS_PID" "$KMS/kms.log" || return 2
    echo "   local KMS on https://127.0.0.1:$kms_port (trusts the simulator's roots)"
    "$NA" proxy --listen "tcp://127.0.0.1:$proxy_port" --to "tcp://127.0.0.1:$kms_port" \
        2>"$KMS/proxy.log" &
    PROXY_PID=$!
    echo "$PROXY_PID" >"$KMS/proxy.pid"
    wait_port "$proxy_port" "$PROXY_PID" "$KMS/proxy.log" || return 2
    echo "   parent's proxy on tcp://127.0.0.1:$proxy_port -> the KMS (it sees only TLS bytes)"

    # the parent (key administrator and encryptor, never decryptor) creates the key, encrypts
    "$py" - "$KMS" "$kms_port" <<'PY' || return 2
import base64, http.client, json, ssl, sys
from datetime import UTC, datetime
from pathlib import Path
from nitro_attest.kms.sigv4 import Credentials, sign_request

kms, port = Path(sys.argv[1]), int(sys.argv[2])
parent = json.loads((kms / "credentials.json").read_text())[0]
creds = Credentials(parent["AccessKeyId"], parent["SecretAccessKey"])
conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                   context=ssl.create_default_context(cafile=str(kms / "ca.pem")))
def call(op, params):
    body = json.dumps(params).encode()
    headers = [("Host", f"127.0.0.1:{port}"), ("Content-Type", "application/x-amz-json-1.1"),
               ("X-Amz-Target", f"TrentService.{op}")]
    headers += sign_request("POST", "/", [], headers, body, creds, region="us-east-1",
                            service="kms", when=datetime.now(UTC))
    conn.request("POST", "/", body, dict(headers))
    answer = conn.getresponse()
    out = json.loads(answer.read())
    if answer.status != 200:
        sys.exit(f"{op}: {out['__type']}: {out['message']}")
    return out
policy = (kms / "policy.json").read_text()
key = call("CreateKey", {"Policy": policy, "Description": "demo"})["KeyMetadata"]
secret = b"database password: correct horse battery staple"
blob = call("Encrypt", {"KeyId": key["KeyId"], "Plaintext": base64.b64encode(secret).decode()})
(kms / "secret.blob").write_bytes(base64.b64decode(blob["CiphertextBlob"]))
print(f"   parent: CreateKey {key['Arn']}, Encrypt -> {kms / 'secret.blob'}")
PY

    local enclave_env
    enclave_env="$("$py" -c 'import json, sys
e = json.load(open(sys.argv[1]))[1]
print(e["AccessKeyId"], e["SecretAccessKey"], e["SessionToken"])' "$KMS/credentials.json")"
    read -r ak sk tok <<<"$enclave_env"
    local common=(--region us-east-1 --endpoint "https://127.0.0.1:$kms_port"
        --via "tcp://127.0.0.1:$proxy_port" --ca-bundle "$KMS/ca.pem" --nsm simulator)
    local out
    out="$(AWS_ACCESS_KEY_ID="$ak" AWS_SECRET_ACCESS_KEY="$sk" AWS_SESSION_TOKEN="$tok" \
        "$NA" kms decrypt --ciphertext-blob "$KMS/secret.blob" "${common[@]}" --state "$STATE")" \
        || { echo "error: the enclave's kms decrypt failed" >&2; return 1; }
    echo "   enclave (this image): kms decrypt with a Recipient document ->" \
        "$("$py" -c 'import base64, json, sys
print(base64.b64decode(json.loads(sys.stdin.read())["Plaintext"]).decode())' <<<"$out")"
    local refused
    if refused="$(AWS_ACCESS_KEY_ID="$ak" AWS_SECRET_ACCESS_KEY="$sk" AWS_SESSION_TOKEN="$tok" \
        "$NA" kms decrypt --ciphertext-blob "$KMS/secret.blob" "${common[@]}" \
        --state "$other" 2>&1 >/dev/null)"; then
        echo "error: the other image got the secret" >&2
        return 1
    fi
    echo "   enclave (other image, PCR0 b0b0...): refused: ${refused#nitro-attest: }"
    stop_pid "$PROXY_PID"
    stop_pid "$KMS_PID"
    PROXY_PID=""
    KMS_PID=""
    echo "   KMS log:"
    grep -v -E " INFO (Started|Waiting|Application|Uvicorn|Shutting|Finished)" "$KMS/kms.log" \
        | sed 's/^/     /'

    return 0
}

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

if [ "$rc" -eq 0 ]; then
    set +e
    kms_step
    rc=$?
    set -e
    stop_all
fi

echo "== 7. Server log (one line per request; sizes and hashes only)"
sed 's/^/   /' "$DEMO/demo-server.log"
if [ "$rc" -eq 0 ]; then
    echo "Demo complete: the document verified, the secret was delivered, and KMS released its" \
        "secret to this image only." \
        "Files: $OUT/attestation-document.dat, $OUT/attestation-document-json.json"
else
    echo "Demo finished with exit code $rc (see the checks above)" >&2
fi
exit "$rc"
