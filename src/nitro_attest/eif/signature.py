"""The EIF signature section: a CBOR array of {signing_certificate, signature} entries.

Both fields are serde ``Vec<u8>`` without serde_bytes, so they arrive as CBOR arrays of uints, one
per byte, never as byte strings. ``signing_certificate`` is PEM text; ``signature`` is an untagged
COSE_Sign1 whose payload is CBOR {"register_index": 0, "register_value": [48 uints of PCR0]}.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest.attestation.pcr import extend_zero
from nitro_attest.codec.cbor import CborError, strict_loads
from nitro_attest.codec.cose import (
    ALGORITHMS,
    ES256,
    ES384,
    ES512,
    CoseError,
    EcdsaAlgorithm,
    decode_sign1,
    encode_sign1,
    sig_structure,
    sign_ecdsa,
    verify_ecdsa,
)
from nitro_attest.eif.format import EifError

_CURVE_ALGORITHMS: dict[str, EcdsaAlgorithm] = {
    ec.SECP256R1.name: ES256,
    ec.SECP384R1.name: ES384,
    ec.SECP521R1.name: ES512,
}
_FIELDS = ("signing_certificate", "signature")
MAX_CERTIFICATE_SIZE = 16384
MAX_COSE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class PcrSignature:
    certificate_pem: bytes
    cose_sign1: bytes

    def certificate(self) -> x509.Certificate:
        return load_certificate(self.certificate_pem)


def parse_signature_section(data: bytes) -> PcrSignature:
    """Decode the section; exactly one entry (the PCR0 signature, the only one nitro-cli makes)."""
    try:
        entries = strict_loads(data)
    except CborError as exc:
        raise EifError(f"signature section: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise EifError("signature section: expected a non-empty CBOR array of signatures")
    if len(entries) != 1:
        raise EifError(f"signature section: {len(entries)} entries, exactly one (PCR0) supported")
    entry = entries[0]
    if not isinstance(entry, dict) or sorted(map(str, entry)) != sorted(_FIELDS):
        raise EifError("signature section: entry must be a map of signing_certificate, signature")
    return PcrSignature(
        _uint_array(entry["signing_certificate"], "signing_certificate", MAX_CERTIFICATE_SIZE),
        _uint_array(entry["signature"], "signature", MAX_COSE_SIZE),
    )


def _uint_array(value: Any, field: str, limit: int) -> bytes:
    if not isinstance(value, list):
        got = "a byte string" if isinstance(value, bytes) else type(value).__name__
        raise EifError(f"signature section: {field} must be an array of uints, got {got}")
    if not value or len(value) > limit:
        raise EifError(f"signature section: {field} has {len(value)} bytes (allowed 1..{limit})")
    if not all(type(b) is int and 0 <= b <= 255 for b in value):
        raise EifError(f"signature section: {field} holds a value that is not a byte (0..255)")
    return bytes(value)


def encode_signature_section(certificate_pem: bytes, cose_sign1: bytes) -> bytes:
    return cbor2.dumps(
        [{"signing_certificate": list(certificate_pem), "signature": list(cose_sign1)}]
    )


def load_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise EifError(
            "signature section: signing certificate is not a valid PEM certificate"
        ) from None


def pcr8(certificate: x509.Certificate) -> bytes:
    """SHA-384(0^48 || SHA-384(DER)): the DER, not the PEM text, is measured."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return extend_zero(hashlib.sha384(der).digest())


def pcr0_payload(pcr0: bytes) -> bytes:
    """The COSE payload nitro-cli signs: serde_cbor of PcrInfo{register_index, register_value}."""
    return cbor2.dumps({"register_index": 0, "register_value": list(pcr0)})


def algorithm_for(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> EcdsaAlgorithm:
    alg = _CURVE_ALGORITHMS.get(key.curve.name)
    if alg is None:
        raise EifError(f"unsupported signing key curve {key.curve.name} (P-256, P-384, P-521)")
    return alg


def check_signature(entry: PcrSignature, pcr0: bytes) -> bool:
    """COSE verification with the certificate's key, and the payload must be (0, PCR0)."""
    key = entry.certificate().public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        alg = algorithm_for(key)
        sign1 = decode_sign1(entry.cose_sign1)
    except (EifError, CoseError):
        return False
    if ALGORITHMS.get(sign1.algorithm_id) is not alg:
        return False
    if not verify_ecdsa(key, alg, sign1.to_be_signed(), sign1.signature):
        return False
    return sign1.payload == pcr0_payload(pcr0)


def sign_pcr0(key: ec.EllipticCurvePrivateKey, certificate_pem: bytes, pcr0: bytes) -> bytes:
    """Build a whole signature section for ``pcr0`` (the writer's side)."""
    alg = algorithm_for(key)
    cert_key = load_certificate(certificate_pem).public_key()
    if not isinstance(cert_key, ec.EllipticCurvePublicKey) or cert_key != key.public_key():
        raise EifError("the signing key does not match the signing certificate")
    protected = cbor2.dumps({1: alg.cose_id})
    payload = pcr0_payload(pcr0)
    # RFC 6979: a rebuild signed with the same key is byte-identical too
    sig = sign_ecdsa(key, alg, sig_structure(protected, payload), deterministic=True)
    return encode_signature_section(certificate_pem, encode_sign1(protected, payload, sig))


def validity_problem(certificate: x509.Certificate, at: dt.datetime) -> str | None:
    """None when ``at`` lies within notBefore..notAfter; otherwise a one-line reason."""
    if at.tzinfo is None:
        raise ValueError("the check time must be timezone-aware")
    before, after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if at < before:
        return (
            f"signing certificate is not valid before {before.isoformat()} (checked at "
            f"{at.isoformat()})"
        )
    if at > after:
        return f"signing certificate expired at {after.isoformat()} (checked at {at.isoformat()})"
    return None


def certificate_info(certificate: x509.Certificate) -> dict[str, Any]:
    """The SigningCertificate object of nitro-cli describe-eif (OpenSSL long names, dates as
    ASN1_TIME_print, signature as uppercase hex pairs)."""
    issuer: dict[str, str] = {}
    for attr in certificate.issuer:
        value = attr.value if isinstance(attr.value, str) else attr.value.hex()
        issuer[_long_name(attr.oid)] = value
    return {
        "IssuerName": dict(sorted(issuer.items())),
        "Algorithm": _long_name(certificate.signature_algorithm_oid),
        "NotBefore": _openssl_time(certificate.not_valid_before_utc),
        "NotAfter": _openssl_time(certificate.not_valid_after_utc),
        "Signature": ":".join(f"{b:02X}" for b in certificate.signature),
    }


_LONG_NAMES = {
    "2.5.4.3": "commonName",
    "2.5.4.6": "countryName",
    "2.5.4.7": "localityName",
    "2.5.4.8": "stateOrProvinceName",
    "2.5.4.10": "organizationName",
    "2.5.4.11": "organizationalUnitName",
    "2.5.4.5": "serialNumber",
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption",
    "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
}


def _long_name(oid: x509.ObjectIdentifier) -> str:
    return _LONG_NAMES.get(oid.dotted_string, oid.dotted_string)


def _openssl_time(when: dt.datetime) -> str:
    # ASN1_TIME_print: "Nov 27 06:24:45 2026 GMT" (day padded with a space)
    return f"{when:%b} {when.day:2d} {when:%H:%M:%S %Y} GMT"
