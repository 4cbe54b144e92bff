"""Verifier speed on the real documents, as ratios measured in one run.

- floor: one bare ECDSA P-384 verify of a document's COSE signature (key and DER signature ready)
- warm:  one Verifier reused (certificates and verified links cached), full verify per document
- cold:  a fresh Verifier per document (nothing cached)
- naive: a careful verifier written plainly with cbor2 + cryptography, no caching: parse, load
         five certificates, check four links and validity, verify the COSE signature

Targets (issue 2): warm <= 1.3x floor; cold <= 1.1x naive.
Usage: python bench/verify.py [--rounds N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest.attestation._chain import aws_root_der
from nitro_attest.attestation._cose import ES384, raw_to_der, sig_structure
from nitro_attest.attestation.document import parse_document
from nitro_attest.attestation.verifier import Verifier

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "vectors" / "real"


def load_docs() -> list[tuple[bytes, dict[str, object]]]:
    index = json.loads((REAL / "index.json").read_text())
    return [((REAL / e["file"]).read_bytes(), e) for e in index["positive"]]


def naive_verify(data: bytes, root_der: bytes) -> None:
    protected, _unprotected, payload, signature = cbor2.loads(data)
    body = cbor2.loads(payload)
    when = datetime.fromtimestamp(body["timestamp"] / 1000, UTC)  # the document's own time
    if body["cabundle"][0] != root_der:
        raise ValueError("root")
    certs = [
        x509.load_der_x509_certificate(d) for d in [body["certificate"], *body["cabundle"][::-1]]
    ]
    for child, issuer in itertools.pairwise(certs):
        child.verify_directly_issued_by(issuer)
    for cert in certs:
        if not cert.not_valid_before_utc <= when.astimezone(UTC) <= cert.not_valid_after_utc:
            raise ValueError("expired")
    key = certs[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(
        raw_to_der(signature, ES384), sig_structure(protected, payload), ec.ECDSA(hashes.SHA384())
    )


def per_call(fn: Callable[[], None], calls: int, rounds: int) -> float:
    """Median over rounds of seconds per call."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) / calls)
    return statistics.median(samples)


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    docs = load_docs()
    n = len(docs)
    root_der = aws_root_der()

    prepared = []
    for data, _ in docs:
        doc = parse_document(data)
        key = x509.load_der_x509_certificate(doc.certificate).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        prepared.append(
            (key, raw_to_der(doc.signature, ES384), sig_structure(doc.protected, doc.payload))
        )

    def floor() -> None:
        for key, sig, msg in prepared:
            key.verify(sig, msg, ec.ECDSA(hashes.SHA384()))

    warm_verifier = Verifier()

    def warm() -> None:
        for data, entry in docs:
            warm_verifier.verify(data, at="document", allow_debug=bool(entry["debug"]))

    def cold() -> None:
        for data, entry in docs:
            Verifier().verify(data, at="document", allow_debug=bool(entry["debug"]))

    def naive() -> None:
        for data, _ in docs:
            naive_verify(data, root_der)

    warm()  # fill the cache
    results = {
        "floor": per_call(floor, n, args.rounds),
        "warm": per_call(warm, n, args.rounds),
        "cold": per_call(cold, n, args.rounds),
        "naive": per_call(naive, n, args.rounds),
    }
    print(f"{n} real documents, median of {args.rounds} rounds, per document:")
    for name, secs in results.items():
        print(f"  {name:6s} {secs * 1e3:7.3f} ms   {1 / secs:8.0f} docs/s")
    warm_ratio = results["warm"] / results["floor"]
    cold_ratio = results["cold"] / results["naive"]
    print(f"warm / floor = {warm_ratio:.2f}  (target <= 1.30) {_verdict(warm_ratio <= 1.3)}")
    print(f"cold / naive = {cold_ratio:.2f}  (target <= 1.10) {_verdict(cold_ratio <= 1.1)}")
    print(f"naive / floor = {results['naive'] / results['floor']:.2f}")


if __name__ == "__main__":
    main()
