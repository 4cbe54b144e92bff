#!/usr/bin/env bash
# Download the AWS Nitro Enclaves root certificate and check it before trusting it.
set -euo pipefail
NA_ROOT="$(cd "$(dirname "$0")" && pwd)"
NA_PROG="get-ca.sh"
# shellcheck source=scripts/aws-common.sh
. "$NA_ROOT/scripts/aws-common.sh"

# Published by AWS (https://docs.aws.amazon.com/enclaves/latest/user/verify-root.html).
AWS_ROOT_URL="https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip"
AWS_ZIP_SHA256="8cf60e2b2efca96c6a9e71e851d00c1b6991cc09eadbe64a6a1d1b1eb9faff7c"
AWS_ROOT_FINGERPRINT="641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

usage() {
    cat <<EOF
usage: ./get-ca.sh [--url URL] [--out FILE]

Downloads AWS_NitroEnclaves_Root-G1.zip, checks the zip's SHA-256, extracts root.pem, checks
the certificate's SHA-256 fingerprint (of its DER bytes) and writes client/root.pem.
Any mismatch refuses, and leaves no client/root.pem behind.
  zip SHA-256:          $AWS_ZIP_SHA256
  root DER fingerprint: $AWS_ROOT_FINGERPRINT (always checked)

options:
  --url URL    download from a mirror (default $AWS_ROOT_URL;
               environment: NITRO_ATTEST_ROOT_URL)
  --out FILE   where to write the PEM (default client/root.pem)
  -h, --help   this help
environment:
  NITRO_ATTEST_ROOT_ZIP_SHA256   expected SHA-256 of the zip, for a mirror that re-packs it
EOF
}

url="${NITRO_ATTEST_ROOT_URL:-$AWS_ROOT_URL}"
out="$NA_ROOT/client/root.pem"
while [ $# -gt 0 ]; do
    case "$1" in
        --url) url="${2:?--url needs a value}"; shift ;;
        --out) out="${2:?--out needs a value}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) na_die "unknown option: $1 (see --help)" 2 ;;
    esac
    shift
done
zip_sha="${NITRO_ATTEST_ROOT_ZIP_SHA256-$AWS_ZIP_SHA256}"

py="$NA_PYTHON"
[ -x "$NA_ROOT/.venv/bin/python" ] && [ -z "${NITRO_ATTEST_PYTHON:-}" ] && py="$NA_ROOT/.venv/bin/python"
mkdir -p "$(dirname "$out")"
echo "downloading $url" >&2
"$py" - "$url" "$zip_sha" "$AWS_ROOT_FINGERPRINT" "$out" <<'EOF'
import base64, binascii, hashlib, http.client, io, os, re, sys, tempfile
import urllib.error, urllib.request, zipfile

url, zip_sha, fingerprint, out = sys.argv[1:5]
MAX_ZIP, MAX_PEM = 1 << 20, 64 << 10


def fail(msg):
    print(f"get-ca.sh: error: {msg}", file=sys.stderr)
    sys.exit(1)


if not re.fullmatch(r"[0-9a-fA-F]{64}", zip_sha):
    fail(f"expected zip SHA-256 must be 64 hex digits, got {zip_sha!r}")
try:
    with urllib.request.urlopen(url, timeout=60) as resp:
        length = resp.headers.get("Content-Length")
        chunks, got = [], 0
        while got <= MAX_ZIP:
            chunk = resp.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
    fail(f"download failed: {getattr(exc, 'reason', exc)}")
data = b"".join(chunks)
if len(data) > MAX_ZIP:
    fail(f"download larger than {MAX_ZIP} bytes; not the root certificate zip")
if length is not None and length.isdigit() and int(length) != len(data):
    fail(f"download truncated: got {len(data)} of {length} bytes")
digest = hashlib.sha256(data).hexdigest()
if digest != zip_sha.lower():
    fail(f"zip SHA-256 mismatch: got {digest}, expected {zip_sha.lower()}")
try:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "root.pem"]
        if len(names) != 1:
            fail(f"the zip holds {len(names)} root.pem files, expected exactly 1")
        if zf.getinfo(names[0]).file_size > MAX_PEM:
            fail("root.pem in the zip is implausibly large")
        pem = zf.read(names[0])
except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
    fail(f"not a valid zip: {exc}")
blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
if len(blocks) != 1:
    fail(f"root.pem holds {len(blocks)} certificates, expected exactly 1")
try:
    der = base64.b64decode(b"".join(blocks[0].split()), validate=True)
except binascii.Error:
    fail("root.pem is not valid PEM")
fpr = hashlib.sha256(der).hexdigest()
if fpr != fingerprint:
    fail(f"root certificate fingerprint mismatch: got {fpr}, expected {fingerprint}")
fd, tmp = tempfile.mkstemp(prefix=".root.pem.", dir=os.path.dirname(os.path.abspath(out)))
try:
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
except BaseException:
    os.unlink(tmp)
    raise
print(f"root certificate verified (SHA-256 fingerprint {fpr}) and written to {out}",
      file=sys.stderr)
EOF
