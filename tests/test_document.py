"""Syntactic rules of the attestation document, one rejection per rule."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from nitro_attest import MalformedDocumentError, Verifier, parse_document
from nitro_attest.attestation.document import MAX_DOCUMENT_BYTES

from . import chainfactory as cf

CHAIN = cf.chain()
VERIFIER = Verifier(root_pem=CHAIN.root_pem)


def doc_with(**overrides: Any) -> bytes:
    return CHAIN.document(**overrides)


def envelope(payload: Any = None, **kw: Any) -> bytes:
    body = cbor2.dumps(cf.payload_map(CHAIN.ders)) if payload is None else payload
    return cf.sign_document(body, CHAIN.leaf_key, **kw)


def test_good_document_parses_and_verifies() -> None:
    data = doc_with()
    doc = parse_document(data)
    assert doc.kind == "enclave" and not doc.tagged and len(doc.pcrs) == 16
    assert VERIFIER.verify(data, at=cf.T0).document == doc


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"module_id": ""}, "module_id"),
        ({"module_id": 5}, "module_id"),
        ({"digest": "SHA256"}, "digest"),
        ({"timestamp": 0}, "timestamp"),
        ({"timestamp": -5}, "timestamp"),
        ({"timestamp": True}, "timestamp"),
        ({"timestamp": "1700000000000"}, "timestamp"),
        ({"timestamp": 2**63 + 5}, "out of range"),
        ({"pcrs": {}}, "1..32 entries"),
        ({"pcrs": {i: bytes(48) for i in range(33)}}, "1..32 entries"),
        ({"pcrs": {32: bytes(48)}}, "index 32"),
        ({"pcrs": {-1: bytes(48)}}, "index -1"),
        ({"pcrs": {"0": bytes(48)}}, "index '0'"),
        ({"pcrs": {0: bytes(47)}}, "47 bytes"),
        ({"pcrs": {0: bytes(49)}}, "49 bytes"),
        ({"pcrs": {0: "00" * 48}}, "must be bytes"),
        ({"pcrs": [bytes(48)]}, "pcrs must be a map"),
        ({"certificate": b""}, "certificate is 0 bytes"),
        ({"certificate": bytes(1025)}, "certificate is 1025 bytes"),
        ({"certificate": None}, "certificate must be bytes"),
        ({"cabundle": []}, "cabundle is empty"),
        ({"cabundle": [b""]}, "cabundle\\[0\\] is 0 bytes"),
        ({"cabundle": b"x"}, "cabundle must be an array"),
        ({"public_key": bytes(1025)}, "public_key is 1025 bytes"),
        ({"user_data": bytes(1025)}, "user_data is 1025 bytes"),
        ({"nonce": bytes(1025)}, "nonce is 1025 bytes"),
        ({"nonce": "abc"}, "nonce must be bytes"),
        ({"module_id": cf.DROP}, "lacks the required field 'module_id'"),
        ({"cabundle": cf.DROP}, "lacks the required field 'cabundle'"),
        ({"pcrs": cf.DROP}, "neither"),
        ({"nitrotpm_pcrs": {0: bytes(48)}}, "exactly one of"),
        ({"extra": 1}, "unexpected field 'extra'"),
    ],
)
def test_field_rules(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedDocumentError, match=message):
        parse_document(doc_with(**overrides))


def test_non_text_payload_key_rejected() -> None:
    body = cf.payload_map(CHAIN.ders)
    body[7] = "x"  # type: ignore[index]
    with pytest.raises(MalformedDocumentError, match="not a text string"):
        parse_document(envelope(cbor2.dumps(body)))


def test_optional_fields_may_be_absent_or_null() -> None:
    doc = parse_document(doc_with(nonce=cf.DROP, user_data=None, public_key=b""))
    assert doc.nonce is None and doc.user_data is None and doc.public_key == b""


def test_nitrotpm_document_is_its_own_kind() -> None:
    pcrs = {i: bytes([i + 1]) * 48 for i in range(24)}
    data = doc_with(pcrs=cf.DROP, nitrotpm_pcrs=pcrs)
    verified = VERIFIER.verify(data, at=cf.T0, expected_pcrs={4: pcrs[4]}, kind="nitrotpm")
    assert verified.document.kind == "nitrotpm"
    assert verified.document.pcr_field == "nitrotpm_pcrs"
    assert not verified.document.is_debug  # PCR0 non-zero: a measured boot (tests/test_kinds.py)


def test_duplicate_payload_key_rejected() -> None:
    body = cbor2.dumps(cf.payload_map(CHAIN.ders))
    # Re-open the map header (a9 -> aa) and append a second "digest" entry.
    duplicated = b"\xaa" + body[1:] + cbor2.dumps("digest") + cbor2.dumps("SHA384")
    with pytest.raises(MalformedDocumentError, match="Duplicate"):
        parse_document(envelope(duplicated))


def test_duplicate_pcr_index_rejected() -> None:
    pcrs = cbor2.dumps({0: bytes(48)})
    dup = b"\xa2" + pcrs[1:] + pcrs[1:]
    body = cf.payload_map(CHAIN.ders)
    encoded = cbor2.dumps(body)
    original = cbor2.dumps(body["pcrs"])
    with pytest.raises(MalformedDocumentError, match="Duplicate"):
        parse_document(envelope(encoded.replace(original, dup)))


def test_indefinite_payload_map_accepted_and_signature_covers_bytes_as_sent() -> None:
    body = cf.payload_map(CHAIN.ders)
    parts = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in body.items())
    data = envelope(b"\xbf" + parts + b"\xff")
    assert VERIFIER.verify(data, at=cf.T0).document.payload[:1] == b"\xbf"


def test_tag_in_payload_rejected() -> None:
    body = cbor2.dumps(cf.payload_map(CHAIN.ders))
    stamp = cbor2.dumps(int(cf.T0.timestamp() * 1000))
    tagged = body.replace(stamp, b"\xc2" + cbor2.dumps(stamp[1:]))  # bignum-tagged timestamp
    with pytest.raises(MalformedDocumentError, match="tags are not allowed"):
        parse_document(envelope(tagged))


@pytest.mark.parametrize("tag", [b"\xd2", b"\xd8\x12"])
def test_tag_18_accepted(tag: bytes) -> None:
    data = tag + doc_with()
    assert VERIFIER.verify(data, at=cf.T0).document.tagged


def test_other_tag_rejected() -> None:
    with pytest.raises(MalformedDocumentError):
        parse_document(b"\xd1" + doc_with())


@pytest.mark.parametrize(
    "protected",
    [b"", b"\xa1\x01\x26", b"\xa1\x01\x38\x23", b"\xa2\x01\x38\x22\x04\x41\x00", b"\xa0"],
)
def test_protected_header_other_than_es384_rejected(protected: bytes) -> None:
    with pytest.raises(MalformedDocumentError, match="protected header"):
        parse_document(envelope(protected=protected))


def test_unprotected_header_must_be_a_map() -> None:
    data = cbor2.dumps([b"\xa1\x01\x38\x22", None, b"\xa0", bytes(96)])
    with pytest.raises(MalformedDocumentError, match="unprotected header must be a map"):
        parse_document(data)


@pytest.mark.parametrize("size", [0, 64, 95, 97, 132])
def test_signature_must_be_96_bytes(size: int) -> None:
    item = cbor2.loads(doc_with())
    item[3] = bytes(size)
    with pytest.raises(MalformedDocumentError, match="96 bytes"):
        parse_document(cbor2.dumps(item))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x83\x01\x02\x03",
        b"\x85" + b"\x40" * 5,
        b"\xa0",
        b"\x84\x40\xa0\x40",
        b"\x84\x01\xa0\x40\x58\x60" + bytes(96),
    ],
)
def test_wrong_envelopes_rejected(data: bytes) -> None:
    with pytest.raises(MalformedDocumentError):
        parse_document(data)


def test_payload_must_be_a_map() -> None:
    with pytest.raises(MalformedDocumentError, match="payload must be a map"):
        parse_document(envelope(cbor2.dumps([1, 2])))


def test_payload_trailing_bytes_rejected() -> None:
    with pytest.raises(MalformedDocumentError, match="trailing"):
        parse_document(envelope(cbor2.dumps(cf.payload_map(CHAIN.ders)) + b"\x00"))


def test_size_cap_before_parsing() -> None:
    with pytest.raises(MalformedDocumentError, match="larger than"):
        parse_document(b"\x84" + bytes(MAX_DOCUMENT_BYTES))


def test_deep_nesting_rejected_without_recursion_error() -> None:
    with pytest.raises(MalformedDocumentError):
        parse_document(b"\x81" * 5000 + b"\x00")


def test_document_is_immutable() -> None:
    doc = parse_document(doc_with())
    with pytest.raises(AttributeError):
        doc.module_id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        doc.pcrs[0] = b""  # type: ignore[index]


def test_pcrs_come_back_sorted_by_index() -> None:
    pcrs = {2: bytes(48), 0: b"\x01" * 48, 1: b"\x02" * 48}
    assert list(parse_document(doc_with(pcrs=pcrs)).pcrs) == [0, 1, 2]
