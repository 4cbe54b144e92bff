"""codec.ber: the strict BER reader and writer, on KMS's real responses and on hostile bytes.

asn1crypto (dev extra) reads the same bytes as an independent check of what the reader returns.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from asn1crypto import cms as asn1_cms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nitro_attest.codec import ber
from nitro_attest.errors import FormatError
from tests.paths import KMS_VECTORS

REAL = ("kms-response-chunked.ber", "kms-response-primitive.ber")
EXPECTED = json.loads((KMS_VECTORS / "expected.json").read_text())


def _parts(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(encrypted key, IV, ciphertext) walked by hand through the decoded tree."""
    info = ber.decode(data)
    oid, explicit = info.items(2)
    assert oid.oid() == "1.2.840.113549.1.7.3"
    (env,) = explicit.expect(0, cls=ber.CONTEXT).items(1)
    version, recipients, content = env.items(3)
    assert version.integer() == 2
    (ktri,) = recipients.expect(ber.SET).items(1)
    _, rid, _, enc_key = ktri.items(4)
    assert rid.is_(0, ber.CONTEXT) and len(rid.octets()) == 32
    _, alg, body = content.items(3)
    return enc_key.octets(), alg.items(2)[1].octets(), body.expect(0, cls=ber.CONTEXT).octets()


@pytest.mark.parametrize("name", REAL)
def test_real_responses_parse_to_the_expected_parts(name: str) -> None:
    data = (KMS_VECTORS / name).read_bytes()
    key, iv, ciphertext = _parts(data)
    want = EXPECTED[name]
    assert key.hex() == want["encrypted_key"]
    assert iv.hex() == want["iv"]
    assert ciphertext.hex() == want["ciphertext"]
    assert len(iv) == 16 and len(ciphertext) % 16 == 0


@pytest.mark.parametrize("name", REAL)
def test_asn1crypto_agrees(name: str) -> None:
    data = (KMS_VECTORS / name).read_bytes()
    info = asn1_cms.ContentInfo.load(data)
    env = info["content"]
    ktri = env["recipient_infos"][0].chosen
    eci = env["encrypted_content_info"]
    key, iv, ciphertext = _parts(data)
    assert ktri["encrypted_key"].native == key
    assert eci["content_encryption_algorithm"]["parameters"].native == iv
    assert eci["encrypted_content"].native == ciphertext


@pytest.mark.parametrize("name", REAL)
def test_round_trip_keeps_the_indefinite_shape(name: str) -> None:
    data = (KMS_VECTORS / name).read_bytes()
    assert ber.encode(ber.decode(data)) == data


def test_the_writer_makes_kms_shape_that_asn1crypto_reads() -> None:
    chunked = ber.encode_chunked_octets(b"x" * 100, 32, tag=0, cls=ber.CONTEXT)
    doc = ber.encode_sequence(
        ber.encode_oid("1.2.840.113549.1.7.1"),
        ber.encode_sequence(
            ber.encode_oid("2.16.840.1.101.3.4.1.42"), ber.encode_octets(b"i" * 16)
        ),
        chunked,
        indefinite=True,
    )
    assert doc.startswith(b"\x30\x80") and doc.endswith(b"\x00\x00")
    parsed = asn1_cms.EncryptedContentInfo.load(doc)
    assert parsed["encrypted_content"].native == b"x" * 100
    assert parsed["content_encryption_algorithm"]["algorithm"].dotted == "2.16.840.1.101.3.4.1.42"
    assert ber.decode(doc).items(3)[2].octets() == b"x" * 100


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, -1, -128, -129, 2**64, -(2**64)])
def test_integers_round_trip(value: int) -> None:
    assert ber.decode(ber.encode_integer(value)).integer() == value


@pytest.mark.parametrize(
    "dotted", ["1.2.840.113549.1.1.7", "2.999.3", "0.39", "2.16.840.1.101.3.4.1.42"]
)
def test_oids_round_trip(dotted: str) -> None:
    assert ber.decode(ber.encode_oid(dotted)).oid() == dotted


def test_high_tags_round_trip() -> None:
    item = ber.decode(ber.encode_tlv(1000, b"ab", cls=ber.CONTEXT))
    assert (item.cls, item.tag, item.content) == (ber.CONTEXT, 1000, b"ab")


def test_non_minimal_long_length_is_ber_and_accepted() -> None:
    assert ber.decode(b"\x04\x82\x00\x02ab").content == b"ab"


def test_nested_constructed_chunks_join() -> None:
    chunks = [ber.encode_octets(b"b"), ber.encode_octets(b"c")]
    inner = ber.encode_indefinite(ber.OCTET_STRING, chunks)
    outer = ber.encode_indefinite(0, [ber.encode_octets(b"a"), inner], cls=ber.CONTEXT)
    assert ber.decode(outer).octets() == b"abc"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"\x04\x01ab", "trailing"),
        (b"\x04\x05ab", "truncated"),
        (b"\x30\x80\x04\x00", "truncated"),
        (b"\x04\x80\x00\x00", "indefinite length on a primitive"),
        (b"\x04\xffab", "reserved"),
        (b"\x04\x85\x00\x00\x00\x00\x01a", "length of 5 octets"),
        (b"\x00\x00", "end-of-contents"),
        (b"\x30\x04\x00\x00\x05\x00", "end-of-contents inside a definite"),
        (b"\x30\x80\x00\x01\x00\x00\x00", "malformed end-of-contents"),
        (b"\x9f\x05\x00", "high-tag form for tag 5"),
        (b"\x9f\x80\x21\x00", "leading 0x80"),
        (b"\x9f\x81\x81\x81\x81\x01\x00", "longer than 4"),
        (b"\x22\x00", "constructed INTEGER"),
        (b"\x10\x00", "primitive SEQUENCE"),
    ],
)
def test_malformed_bytes_name_what_is_wrong(data: bytes, words: str) -> None:
    with pytest.raises(ber.BerError, match=words):
        ber.decode(data)


def test_accessors_refuse_bad_values() -> None:
    with pytest.raises(ber.BerError, match="not minimally"):
        ber.decode(b"\x02\x02\x00\x01").integer()
    with pytest.raises(ber.BerError, match="empty integer"):
        ber.decode(b"\x02\x00").integer()
    with pytest.raises(ber.BerError, match="leading 0x80"):
        ber.decode(b"\x06\x03\x2a\x80\x01").oid()
    with pytest.raises(ber.BerError, match="truncated object"):
        ber.decode(b"\x06\x02\x2a\x81").oid()
    with pytest.raises(ber.BerError, match="NULL with contents"):
        ber.decode(b"\x05\x01\x00").null()
    with pytest.raises(ber.BerError, match="not OCTET STRING chunks"):
        ber.decode(b"\xa0\x80\x02\x01\x01\x00\x00").octets()
    with pytest.raises(ber.BerError, match="expected 2 item"):
        ber.decode(b"\x30\x00").items(2)
    with pytest.raises(ber.BerError, match="expected SET, found SEQUENCE"):
        ber.decode(b"\x30\x00").expect(ber.SET)


def test_caps() -> None:
    deep = b"\x30\x80" * 40 + b"\x00\x00" * 40
    with pytest.raises(ber.BerError, match="nesting deeper"):
        ber.decode(deep)
    many = ber.encode_sequence(*[ber.encode_null()] * 50)
    with pytest.raises(ber.BerError, match="more than 10 items"):
        ber.decode(many, max_items=10)
    with pytest.raises(ber.BerError, match="more than the 4 allowed"):
        ber.decode(b"\x04\x03abc", max_bytes=4)


def test_ber_error_is_a_format_error() -> None:
    assert issubclass(ber.BerError, FormatError)


@pytest.mark.parametrize("name", REAL)
def test_every_truncation_of_a_real_response_is_a_format_error(name: str) -> None:
    data = (KMS_VECTORS / name).read_bytes()
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            ber.decode(data[:cut])


def _walk(item: ber.Tlv) -> None:
    """Every accessor on every node: only BerError may come out."""
    for call in (item.octets, item.integer, item.oid, item.null, item.items):
        with contextlib.suppress(ber.BerError):
            call()
    for child in item.children:
        _walk(child)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_responses_give_format_errors_or_trees(data: st.DataObject) -> None:
    raw = bytearray((KMS_VECTORS / data.draw(st.sampled_from(REAL))).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        tree = ber.decode(bytes(raw))
    except FormatError:
        return
    _walk(tree)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_format_errors_or_trees(raw: bytes) -> None:
    try:
        tree = ber.decode(raw)
    except FormatError:
        return
    _walk(tree)
    assert _shape(ber.decode(ber.encode(tree))) == _shape(tree)  # offsets move: lengths get minimal


def _shape(item: ber.Tlv) -> object:
    return (item.cls, item.tag, item.constructed, item.indefinite, item.content,
            tuple(_shape(child) for child in item.children))
