"""COSE_Sign1 (RFC 9052) as AWS Nitro uses it: decode, build the Sig_structure, verify ECDSA.

The payload is kept as the exact bytes received: the signature covers them as sent, and real
documents since 2025 carry an indefinite-length payload map that a re-encode would change.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from nitro_attest.codec.cbor import CborError, bstr_head, strict_loads
from nitro_attest.errors import FormatError

HEADER_ALG = 1


# NamedTuples, not dataclasses: on Python 3.11 a dataclass costs about 1 ms to define, which
# every verifier process pays at start.
class EcdsaAlgorithm(NamedTuple):
    """A COSE ECDSA algorithm: its name, COSE id, curve, hash and r/s size in bytes."""

    name: str
    cose_id: int
    curve: type[ec.EllipticCurve]
    hash: type[hashes.HashAlgorithm]
    coordinate_size: int


ES256 = EcdsaAlgorithm("ES256", -7, ec.SECP256R1, hashes.SHA256, 32)
ES384 = EcdsaAlgorithm("ES384", -35, ec.SECP384R1, hashes.SHA384, 48)
ES512 = EcdsaAlgorithm("ES512", -36, ec.SECP521R1, hashes.SHA512, 66)
ALGORITHMS = {alg.cose_id: alg for alg in (ES256, ES384, ES512)}
# The signature-algorithm objects are immutable: one each, not one per verification.
_ECDSA = {alg.cose_id: ec.ECDSA(alg.hash()) for alg in ALGORITHMS.values()}
_ES384_ONLY = b"\xa1\x01\x38\x22"  # the protected header Nitro sends, {1: -35}: no need to decode


class CoseError(FormatError):
    """The bytes are not a COSE_Sign1 structure of the expected shape."""


class CoseSign1(NamedTuple):
    """A decoded COSE_Sign1; ``protected`` and ``payload`` are the bytes as received."""

    protected: bytes
    """The protected header bstr's content, exactly as received."""
    protected_header: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes
    tagged: bool

    @property
    def algorithm_id(self) -> Any:
        """The protected header's algorithm (label 1), or None."""
        return self.protected_header.get(HEADER_ALG)

    def to_be_signed(self, external_aad: bytes = b"") -> bytes:
        """The Sig_structure the signature covers."""
        return sig_structure(self.protected, self.payload, external_aad)


def _strip_tag(data: bytes) -> tuple[bytes, bool]:
    # Tag 18 in its preferred one-byte head (0xd2) or the two-byte form (0xd8 0x12).
    if data[:1] == b"\xd2":
        return data[1:], True
    if data[:2] == b"\xd8\x12":
        return data[2:], True
    return data, False


# Every Nitro document starts: array(4), bstr(4) {1: -35}, map(0), bstr with a 2-byte length.
_NITRO_HEAD = b"\x84\x44" + _ES384_ONLY + b"\xa0\x59"
_NITRO_SIGNATURE_HEAD = b"\x58\x60"  # bstr(96): ES384's r||s


def _nitro_layout(body: bytes, tagged: bool) -> CoseSign1 | None:
    """The one layout the NSM emits, sliced without a CBOR decoder; None for any other layout,
    which then goes through the strict decoder. It accepts exactly what the strict decoder would
    for this layout: the lengths must add up to the whole input. Each result has its own header
    dicts: one a caller changed must not change what later documents say."""
    if body[:8] != _NITRO_HEAD:
        return None
    end = 10 + int.from_bytes(body[8:10], "big")
    if body[end : end + 2] != _NITRO_SIGNATURE_HEAD or len(body) != end + 98:
        return None
    return CoseSign1(
        _ES384_ONLY, {HEADER_ALG: ES384.cose_id}, {}, body[10:end], body[end + 2 :], tagged
    )


def decode_sign1(data: bytes) -> CoseSign1:
    """Decode an untagged or tag-18 COSE_Sign1; any other shape raises CoseError."""
    body, tagged = _strip_tag(data)
    fast = _nitro_layout(body, tagged)
    if fast is not None:
        return fast
    try:
        item = strict_loads(body)
    except CborError as exc:
        raise CoseError(f"COSE_Sign1: {exc}") from None
    if not isinstance(item, list) or len(item) != 4:
        got = f"array of {len(item)}" if isinstance(item, list) else type(item).__name__
        raise CoseError(f"COSE_Sign1: expected an array of 4 items, got {got}")
    protected, unprotected, payload, signature = item
    if not isinstance(protected, bytes):
        raise CoseError(f"COSE_Sign1: protected header must be bytes, got {_kind(protected)}")
    if not isinstance(unprotected, dict):
        raise CoseError(f"COSE_Sign1: unprotected header must be a map, got {_kind(unprotected)}")
    if not isinstance(payload, bytes):
        raise CoseError(f"COSE_Sign1: payload must be a byte string, got {_kind(payload)}")
    if not isinstance(signature, bytes):
        raise CoseError(f"COSE_Sign1: signature must be a byte string, got {_kind(signature)}")
    if protected == _ES384_ONLY:
        header = {HEADER_ALG: ES384.cose_id}
    elif protected:
        try:
            header = strict_loads(protected)
        except CborError as exc:
            raise CoseError(f"COSE_Sign1: protected header: {exc}") from None
        if not isinstance(header, dict):
            raise CoseError(f"COSE_Sign1: protected header must encode a map, got {_kind(header)}")
    else:
        header = {}
    return CoseSign1(protected, header, unprotected, payload, signature, tagged)


_SIG1_HEAD = b"\x84\x6aSignature1"  # array(4), text(10) "Signature1"


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The CBOR Sig_structure for COSE_Sign1: ["Signature1", protected, external_aad, payload].

    Written directly (the bytes cbor2.dumps gives, tests/test_cose_layout.py): one join instead of a
    CBOR encoder, on the path of every verification."""
    return b"".join(
        (
            _SIG1_HEAD,
            bstr_head(len(protected)),
            protected,
            bstr_head(len(external_aad)),
            external_aad,
            bstr_head(len(payload)),
            payload,
        )
    )


def _der_integer(magnitude: bytes) -> bytes:
    """A DER INTEGER of a non-negative big-endian number: no leading zero bytes, one 0x00 when
    the top bit is set (it would read as negative)."""
    digits = magnitude.lstrip(b"\0") or b"\0"
    if digits[0] & 0x80:
        digits = b"\0" + digits
    return b"\x02" + bytes((len(digits),)) + digits


def raw_to_der(signature: bytes, alg: EcdsaAlgorithm) -> bytes:
    """COSE's raw r||s to the DER form cryptography verifies (encode_dss_signature's bytes,
    built directly: no round trip through two Python ints)."""
    n = alg.coordinate_size
    if len(signature) != 2 * n:
        raise CoseError(f"{alg.name} signature must be {2 * n} bytes, got {len(signature)}")
    body = _der_integer(signature[:n]) + _der_integer(signature[n:])
    size = len(body)  # at most 2 * (66 + 3) for P-521: one length byte, long form past 127
    return (b"\x30" + bytes((size,)) if size < 0x80 else b"\x30\x81" + bytes((size,))) + body


def der_to_raw(signature: bytes, alg: EcdsaAlgorithm) -> bytes:
    """A DER ECDSA signature as COSE's fixed-size r||s."""
    r, s = decode_dss_signature(signature)
    n = alg.coordinate_size
    return r.to_bytes(n, "big") + s.to_bytes(n, "big")


def verify_ecdsa(
    key: ec.EllipticCurvePublicKey, alg: EcdsaAlgorithm, message: bytes, signature: bytes
) -> bool:
    """True when the raw r||s ``signature`` over ``message`` verifies under ``key``."""
    if not isinstance(key.curve, alg.curve):
        return False
    try:
        key.verify(raw_to_der(signature, alg), message, _ECDSA[alg.cose_id])
    except (InvalidSignature, CoseError):
        return False
    return True


def sign_ecdsa(
    key: ec.EllipticCurvePrivateKey,
    alg: EcdsaAlgorithm,
    message: bytes,
    *,
    deterministic: bool = False,
) -> bytes:
    """Sign ``message``; return COSE's raw r||s form. ``deterministic``: RFC 6979 nonces, so the
    same key and message give the same signature (reproducible signed EIFs)."""
    ecdsa = ec.ECDSA(alg.hash(), deterministic_signing=deterministic)
    return der_to_raw(key.sign(message, ecdsa), alg)


def encode_sign1(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    """An untagged COSE_Sign1 with an empty unprotected map, as the NSM emits it."""
    return cbor2.dumps([protected, {}, payload, signature])


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
