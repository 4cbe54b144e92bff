"""The Nitro attestation document: decode COSE_Sign1 + payload into a frozen, typed model.

Every syntactic rule of AWS's attestation_process.md is enforced as real documents show them
(docs/verifier.md lists the choices). Nothing here checks signatures or certificates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from nitro_attest.attestation.payload_layout import read_nsm_payload
from nitro_attest.codec.cbor import CborError, strict_loads
from nitro_attest.codec.cose import CoseError, CoseSign1, decode_sign1
from nitro_attest.errors import MalformedDocumentError
from nitro_attest.limits import (
    MAX_CERT_BYTES,
    MAX_DOCUMENT_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_PCRS,
    NSM_FIELD_BYTES,
)

# The NSM hands documents back in a 12 KiB response buffer; the spec caps the payload at 16 KiB.
ES384_PROTECTED = b"\xa1\x01\x38\x22"  # {1: -35}
SIGNATURE_BYTES = 96
PCR_LENGTHS = frozenset((32, 48, 64))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DocumentKind(StrEnum):
    """What produced a document: a Nitro Enclave (``pcrs``) or EC2's NitroTPM (``nitrotpm_pcrs``).

    Both are signed under the same AWS root, so a verifier must say which kind it accepts.
    """

    ENCLAVE = "enclave"
    NITROTPM = "nitrotpm"


_REQUIRED = ("module_id", "digest", "timestamp", "certificate", "cabundle")
_OPTIONAL = ("public_key", "user_data", "nonce")
_PCR_KEYS = {"pcrs": DocumentKind.ENCLAVE, "nitrotpm_pcrs": DocumentKind.NITROTPM}
_KNOWN = frozenset(_REQUIRED + _OPTIONAL + tuple(_PCR_KEYS))


@dataclass(frozen=True, slots=True)
class AttestationDocument:
    """A syntactically valid attestation document; nothing here is authenticated until a
    ``Verifier`` has checked its signature and chain (``VerifiedDocument``)."""

    module_id: str
    digest: str
    timestamp: datetime
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    kind: DocumentKind
    protected: bytes
    payload: bytes
    signature: bytes
    raw: bytes
    tagged: bool

    @property
    def pcr_field(self) -> str:
        """The payload key the PCRs came from: ``pcrs`` or ``nitrotpm_pcrs``."""
        return "pcrs" if self.kind == "enclave" else "nitrotpm_pcrs"

    @property
    def is_debug(self) -> bool:
        """Whether the measurements prove nothing; the meaning depends on the kind.

        Enclave: debug mode, which the NSM reports as PCR0 all zero (PCR3/4 stay non-zero).
        NitroTPM: no debug mode exists; the equivalent is a boot that was not measured, PCR0
        (the firmware's own measurement, extended first in every measured boot) all zero.
        Either way a document without PCR0 cannot show otherwise, so it counts as debug.
        """
        pcr0 = self.pcrs.get(0)
        return pcr0 is None or not any(pcr0)


def parse_document(data: bytes) -> AttestationDocument:
    """Decode and syntactically validate one attestation document (raw COSE_Sign1 bytes)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):  # a tuple: faster than a union
        raise MalformedDocumentError(f"document must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MalformedDocumentError(
            f"document is {len(data)} bytes, larger than the {MAX_DOCUMENT_BYTES} allowed"
        )
    try:
        sign1 = decode_sign1(data)
    except CoseError as exc:
        raise MalformedDocumentError(str(exc)) from None
    if sign1.protected != ES384_PROTECTED:
        raise MalformedDocumentError(
            "COSE protected header must be {1: -35} (ES384, bytes a1013822), "
            f"got {sign1.protected.hex() or 'empty'}"
        )
    if len(sign1.signature) != SIGNATURE_BYTES:
        raise MalformedDocumentError(
            f"COSE signature must be {SIGNATURE_BYTES} bytes (ES384 r||s), "
            f"got {len(sign1.signature)}"
        )
    if not 1 <= len(sign1.payload) <= MAX_PAYLOAD_BYTES:
        raise MalformedDocumentError(
            f"payload must be 1..{MAX_PAYLOAD_BYTES} bytes, got {len(sign1.payload)}"
        )
    fields = read_nsm_payload(sign1.payload)  # the NSM's layout: no CBOR decoder, same rules
    if fields is not None:
        module_id, timestamp_ms, timestamp, pcrs, certificate, cabundle, pk, ud, nonce, pcr_key = (
            fields
        )
        return _new_document(
            module_id, "SHA384", timestamp, timestamp_ms, MappingProxyType(pcrs), certificate,
            cabundle, pk, ud, nonce, _PCR_KEYS[pcr_key], sign1.protected, sign1.payload,
            sign1.signature, data, sign1.tagged,
        )  # fmt: skip
    try:
        body = strict_loads(sign1.payload)
    except CborError as exc:
        raise MalformedDocumentError(f"payload: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedDocumentError(f"payload must be a map, got {_kind(body)}")
    return _check_fields(body, sign1, data)


def _check_fields(body: dict[Any, Any], sign1: CoseSign1, data: bytes) -> AttestationDocument:
    if not _KNOWN.issuperset(body):  # then find the first offending key, to name it
        for key in body:
            if not isinstance(key, str):
                raise MalformedDocumentError(f"payload key {key!r} is not a text string")
            if key not in _KNOWN:
                raise MalformedDocumentError(f"payload has an unexpected field {key!r}")
    for key in _REQUIRED:
        if key not in body:
            raise MalformedDocumentError(f"payload lacks the required field {key!r}")
    pcr_keys = [key for key in _PCR_KEYS if key in body]
    if len(pcr_keys) != 1:
        raise MalformedDocumentError(
            "payload must carry exactly one of 'pcrs' and 'nitrotpm_pcrs', "
            f"got {pcr_keys or 'neither'}"
        )
    pcr_key = pcr_keys[0]

    module_id = body["module_id"]
    if not isinstance(module_id, str) or not module_id:
        raise MalformedDocumentError(f"module_id must be non-empty text, got {_show(module_id)}")
    digest = body["digest"]
    if digest != "SHA384":
        raise MalformedDocumentError(f"digest: got {_show(digest)}, expected 'SHA384'")
    timestamp_ms = body["timestamp"]
    if not _is_int(timestamp_ms) or not 0 < timestamp_ms < 2**64:
        raise MalformedDocumentError(
            f"timestamp must be a positive 64-bit integer (ms), got {_show(timestamp_ms)}"
        )
    try:
        timestamp = _EPOCH + timedelta(milliseconds=timestamp_ms)
    except OverflowError:
        raise MalformedDocumentError(f"timestamp {timestamp_ms} ms is out of range") from None

    return _new_document(
        module_id,
        digest,
        timestamp,
        timestamp_ms,
        _check_pcrs(pcr_key, body[pcr_key]),
        _check_bytes("certificate", body["certificate"], 1, MAX_CERT_BYTES),
        _check_cabundle(body["cabundle"]),
        _optional_bytes("public_key", body.get("public_key")),
        _optional_bytes("user_data", body.get("user_data")),
        _optional_bytes("nonce", body.get("nonce")),
        _PCR_KEYS[pcr_key],
        sign1.protected,
        sign1.payload,
        sign1.signature,
        data,
        sign1.tagged,
    )


# Every document is built here, without the frozen dataclass's __init__ (one
# object.__setattr__ per field): a new object and each slot set through its descriptor, half the
# time. The result is the same object the constructor makes (tests/test_payload_layout.py).
_new = object.__new__
_SETTERS = {
    name: getattr(AttestationDocument, name).__set__ for name in AttestationDocument.__slots__
}
# By name, so a reordered field cannot shift them; a field added without its setter is caught
# by that test (the built document would lack it).
_set_module_id = _SETTERS["module_id"]
_set_digest = _SETTERS["digest"]
_set_timestamp = _SETTERS["timestamp"]
_set_timestamp_ms = _SETTERS["timestamp_ms"]
_set_pcrs = _SETTERS["pcrs"]
_set_certificate = _SETTERS["certificate"]
_set_cabundle = _SETTERS["cabundle"]
_set_public_key = _SETTERS["public_key"]
_set_user_data = _SETTERS["user_data"]
_set_nonce = _SETTERS["nonce"]
_set_kind = _SETTERS["kind"]
_set_protected = _SETTERS["protected"]
_set_payload = _SETTERS["payload"]
_set_signature = _SETTERS["signature"]
_set_raw = _SETTERS["raw"]
_set_tagged = _SETTERS["tagged"]


def _new_document(
    module_id: str,
    digest: str,
    timestamp: datetime,
    timestamp_ms: int,
    pcrs: Mapping[int, bytes],
    certificate: bytes,
    cabundle: tuple[bytes, ...],
    public_key: bytes | None,
    user_data: bytes | None,
    nonce: bytes | None,
    kind: DocumentKind,
    protected: bytes,
    payload: bytes,
    signature: bytes,
    raw: bytes,
    tagged: bool,
) -> AttestationDocument:
    doc: AttestationDocument = _new(AttestationDocument)
    _set_module_id(doc, module_id)
    _set_digest(doc, digest)
    _set_timestamp(doc, timestamp)
    _set_timestamp_ms(doc, timestamp_ms)
    _set_pcrs(doc, pcrs)
    _set_certificate(doc, certificate)
    _set_cabundle(doc, cabundle)
    _set_public_key(doc, public_key)
    _set_user_data(doc, user_data)
    _set_nonce(doc, nonce)
    _set_kind(doc, kind)
    _set_protected(doc, protected)
    _set_payload(doc, payload)
    _set_signature(doc, signature)
    _set_raw(doc, raw)
    _set_tagged(doc, tagged)
    return doc


def _check_pcrs(name: str, value: Any) -> Mapping[int, bytes]:
    if not isinstance(value, dict):
        raise MalformedDocumentError(f"{name} must be a map, got {_kind(value)}")
    if not 1 <= len(value) <= MAX_PCRS:
        raise MalformedDocumentError(f"{name} must hold 1..{MAX_PCRS} entries, got {len(value)}")
    previous = -1
    in_order = True
    for index, digest in value.items():
        # type() rather than isinstance(): bool is an int subclass, and cbor2 yields exact types.
        if type(index) is not int or not 0 <= index < MAX_PCRS:
            raise MalformedDocumentError(f"{name}: index {_show(index)} outside 0..{MAX_PCRS - 1}")
        if type(digest) is not bytes:
            raise MalformedDocumentError(f"{name}[{index}] must be bytes, got {_kind(digest)}")
        if len(digest) not in PCR_LENGTHS:
            raise MalformedDocumentError(
                f"{name}[{index}] is {len(digest)} bytes, expected 32, 48 or 64"
            )
        in_order = in_order and index > previous
        previous = index
    return MappingProxyType(value if in_order else dict(sorted(value.items())))


def _check_cabundle(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise MalformedDocumentError(f"cabundle must be an array, got {_kind(value)}")
    if not value:
        raise MalformedDocumentError("cabundle is empty; it must start with the root certificate")
    for i, cert in enumerate(value):
        if not isinstance(cert, bytes) or not 1 <= len(cert) <= MAX_CERT_BYTES:
            _check_bytes(f"cabundle[{i}]", cert, 1, MAX_CERT_BYTES)  # raises, naming the entry
    return tuple(value)


def _check_bytes(name: str, value: Any, low: int, high: int) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedDocumentError(f"{name} must be bytes, got {_kind(value)}")
    if not low <= len(value) <= high:
        raise MalformedDocumentError(f"{name} is {len(value)} bytes, expected {low}..{high}")
    return value


def _optional_bytes(name: str, value: Any) -> bytes | None:
    # AWS's text says no field is null, but real documents carry null for absent optionals.
    if value is None:
        return None
    return _check_bytes(name, value, 0, NSM_FIELD_BYTES)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
