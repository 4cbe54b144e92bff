"""The yardstick for bench/cli.py: a plain cbor2 + cryptography script that verifies one real
attestation document with the same five signature checks as `nitro-attest verify --at document`
(the COSE signature, four certificate links to the pinned root), plus validity at the document's
time. Written the short way, as someone checking one document by hand would.

usage: python bench/plain_verify.py DOC ROOT_PEM
"""

import sys
from datetime import UTC, datetime
from itertools import pairwise

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding


def main() -> int:
    if len(sys.argv) != 3:
        sys.exit("usage: python3 bench/plain_verify.py DOC ROOT_PEM")
    doc_path, root_path = sys.argv[1:3]
    try:
        with open(doc_path, "rb") as f:
            data = f.read()
        with open(root_path, "rb") as f:
            root = x509.load_pem_x509_certificate(f.read())
    except OSError as exc:
        sys.exit(f"plain_verify.py: error: {exc.filename}: {exc.strerror}")
    cose = cbor2.loads(data)
    if isinstance(cose, cbor2.CBORTag):  # COSE_Sign1 may come tagged (18)
        cose = cose.value
    protected, _unprotected, payload, signature = cose
    body = cbor2.loads(payload)
    if body["cabundle"][0] != root.public_bytes(Encoding.DER):
        print("REJECTED: not the pinned root")
        return 1
    certs = [
        x509.load_der_x509_certificate(d) for d in [body["certificate"], *body["cabundle"][::-1]]
    ]
    when = datetime.fromtimestamp(body["timestamp"] / 1000, UTC)
    for child, issuer in pairwise(certs):
        child.verify_directly_issued_by(issuer)
    for cert in certs:
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            print("REJECTED: certificate not valid at the document's time")
            return 1
    key = certs[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA384()))
    print(f"{doc_path}: VERIFIED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
