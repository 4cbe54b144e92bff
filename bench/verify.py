"""Verifier speed on the real documents, as ratios measured in one run.

- floor: one bare ECDSA P-384 verify of a document's COSE signature (key and DER signature ready)
- warm:  one Verifier reused (certificates and verified links cached), full verify per document
- cold:  a fresh Verifier per document (nothing cached)
- naive: a careful verifier written plainly with cbor2 + cryptography, no caching: parse, load
         five certificates, check four links and validity, verify the COSE signature

Targets (issue 24): warm <= 1.1x floor; cold <= 1.05x naive (were 1.3x and 1.1x, issues 2, 12).
Each round runs the four over every document in a rotating order, timing each document alone; a
figure is each document's best round, averaged over the documents (the median round in brackets).
Usage: python bench/verify.py [--rounds N]
"""

from __future__ import annotations

import _bootstrap  # first: runnable as python3 bench/NAME.py from a clone

# isort: split

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

from nitro_attest.attestation.chain import aws_root_der
from nitro_attest.attestation.document import parse_document
from nitro_attest.attestation.verifier import Verifier
from nitro_attest.codec.cose import ES384, raw_to_der, sig_structure

REAL = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "real"
WARM_TARGET = 1.10
COLD_TARGET = 1.05


def load_docs() -> list[tuple[bytes, dict[str, object]]]:
    index = json.loads(_bootstrap.need_file(REAL / "index.json", "the vectors' index").read_text())
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


def per_doc(
    fns: dict[str, Callable[[int], None]], n: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """Seconds per document for each function: (best, median).

    Each round runs every function over all documents, the functions in an order that rotates
    from round to round, timing each document on its own. Best: each document's fastest round,
    averaged over documents; a busy machine's pauses then hit a few samples, not every round.
    Median: the median round's average, for comparison.
    """
    names = list(fns)
    samples = {name: [[0.0] * n for _ in range(rounds)] for name in names}
    clock = time.perf_counter
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, row = fns[name], samples[name][r]
            for i in range(n):
                t0 = clock()
                fn(i)
                row[i] = clock() - t0
    out = {}
    for name in names:
        best = sum(min(samples[name][r][i] for r in range(rounds)) for i in range(n)) / n
        median = statistics.median(sum(row) / n for row in samples[name])
        out[name] = (best, median)
    return out


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
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

    def floor(i: int) -> None:
        key, sig, msg = prepared[i]
        key.verify(sig, msg, ec.ECDSA(hashes.SHA384()))

    warm_verifier = Verifier()

    def warm(i: int) -> None:
        data, entry = docs[i]
        warm_verifier.verify(data, at="document", allow_debug=bool(entry["debug"]))

    def cold(i: int) -> None:
        data, entry = docs[i]
        Verifier().verify(data, at="document", allow_debug=bool(entry["debug"]))

    def naive(i: int) -> None:
        naive_verify(docs[i][0], root_der)

    for i in range(n):  # fill the warm cache; check that every path accepts every document
        warm(i)
        cold(i)
        naive(i)
    timed = per_doc({"floor": floor, "warm": warm, "cold": cold, "naive": naive}, n, args.rounds)
    best = {name: b for name, (b, _) in timed.items()}
    median = {name: m for name, (_, m) in timed.items()}
    print(f"{n} real documents, {args.rounds} rounds, per document: best (median)")
    for name, secs in best.items():
        med = median[name] * 1e3
        print(f"  {name:6s} {secs * 1e3:7.3f} ms ({med:7.3f})  {1 / secs:6.0f} docs/s")

    def ratio(a: str, b: str) -> str:
        return f"{best[a] / best[b]:.3f} ({median[a] / median[b]:.3f})"

    warm_ok = best["warm"] / best["floor"] <= WARM_TARGET
    cold_ok = best["cold"] / best["naive"] <= COLD_TARGET
    warm_line = f"(target <= {WARM_TARGET:.2f}) {_verdict(warm_ok)}"
    cold_line = f"(target <= {COLD_TARGET:.2f}) {_verdict(cold_ok)}"
    print(f"warm / floor = {ratio('warm', 'floor')}  {warm_line}")
    print(f"cold / naive = {ratio('cold', 'naive')}  {cold_line}")
    print(f"naive / floor = {ratio('naive', 'floor')}")


if __name__ == "__main__":
    main()
