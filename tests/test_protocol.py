from __future__ import annotations

import contextlib
import struct
from typing import Any

import cbor2
import pytest

from nitro_attest.nsm.backend import NsmDescription, PcrDescription
from nitro_attest.wire import protocol
from nitro_attest.wire.protocol import (
    AttestationResponse,
    AttestRequest,
    DescribeRequest,
    DescriptionResponse,
    ErrorResponse,
    FrameTooLargeError,
    MalformedFrameError,
    ProtocolError,
    UnknownTypeError,
    UnsupportedVersionError,
)


def frame(obj: Any) -> bytes:
    return protocol.encode_frame(cbor2.dumps(obj))


def body_of(data: bytes) -> bytes:
    body, rest = protocol.split_frame(data)
    assert rest == b""
    return body


def test_attest_request_round_trip() -> None:
    req = AttestRequest(nonce=b"n" * 32, user_data=b"hello", public_key=None)
    data = req.encode()
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    decoded = protocol.decode_request(body_of(data))
    assert decoded == req
    assert cbor2.loads(data[4:]) == {
        "v": 1,
        "type": "attest",
        "nonce": b"n" * 32,
        "user_data": b"hello",
        "public_key": None,
    }


def test_describe_round_trip() -> None:
    assert protocol.decode_request(body_of(DescribeRequest().encode())) == DescribeRequest()
    nsm = NsmDescription(1, 0, 0, "i-abc-enc123", 32, (0, 1, 2), "SHA384")
    resp = DescriptionResponse(nsm=nsm, pcrs={0: PcrDescription(True, b"\x01" * 48)})
    assert protocol.decode_response(body_of(resp.encode())) == resp


def test_responses_round_trip() -> None:
    for resp in (AttestationResponse(b"\x84doc"), ErrorResponse("busy", "try later")):
        assert protocol.decode_response(body_of(resp.encode())) == resp


def test_several_frames_split_in_order() -> None:
    data = AttestRequest(nonce=b"a").encode() + DescribeRequest().encode()
    first, rest = protocol.split_frame(data)
    second, rest = protocol.split_frame(rest)
    assert rest == b""
    assert protocol.decode_request(first) == AttestRequest(nonce=b"a")
    assert protocol.decode_request(second) == DescribeRequest()


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    header = struct.pack(">I", protocol.MAX_FRAME_BYTES + 1)
    with pytest.raises(FrameTooLargeError) as info:
        protocol.decode_header(header)
    assert info.value.code == "frame_too_large"
    with pytest.raises(FrameTooLargeError):
        protocol.decode_header(b"\xff\xff\xff\xff")
    assert protocol.decode_header(struct.pack(">I", protocol.MAX_FRAME_BYTES)) == 65536


def test_encode_refuses_oversized_payload() -> None:
    with pytest.raises(FrameTooLargeError):
        protocol.encode_frame(b"x" * (protocol.MAX_FRAME_BYTES + 1))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", MalformedFrameError),  # short header
        (b"\x00\x00", MalformedFrameError),
        (b"\x00\x00\x00\x00", MalformedFrameError),  # empty frame
        (b"\x00\x00\x00\x10abc", MalformedFrameError),  # truncated body
    ],
)
def test_bad_frames(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        protocol.split_frame(data)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\xff\xfe\xfd", "bad_frame"),  # not CBOR
        (cbor2.dumps([1, 2]), "bad_frame"),  # not a map
        (cbor2.dumps({1: 2, "v": 1, "type": "attest"}), "bad_frame"),  # non-text key
        (cbor2.dumps({"type": "attest"}), "bad_frame"),  # no version
        (cbor2.dumps({"v": "1", "type": "attest"}), "bad_frame"),
        (cbor2.dumps({"v": True, "type": "attest"}), "bad_frame"),
        (cbor2.dumps({"v": 1}), "bad_frame"),  # no type
        (cbor2.dumps({"v": 1, "type": "attest"}) + b"\x00", "bad_frame"),  # trailing bytes
        (b"\xa3\x61v\x01\x64type\x66attest\x61v\x01", "bad_frame"),  # duplicate key
        (b"\x81" * 50 + b"\x01", "bad_frame"),  # deep nesting
        (cbor2.dumps({"v": 2, "type": "attest"}), "unsupported_version"),
        (cbor2.dumps({"v": 1, "type": "launch-missiles"}), "unknown_type"),
        (cbor2.dumps({"v": 1, "type": "attest", "nonce": "text"}), "bad_request"),
        (cbor2.dumps({"v": 1, "type": "attest", "nonse": b"x"}), "bad_request"),
        (cbor2.dumps({"v": 1, "type": "attest", "nonce": b"x" * 1025}), "bad_request"),
        (cbor2.dumps({"v": 1, "type": "describe", "pcrs": [1]}), "bad_request"),
    ],
)
def test_malformed_requests_raise_typed_errors(body: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_request(body)
    assert info.value.code == code
    assert code in protocol.ERROR_CODES


def test_version_mismatch_names_both_versions() -> None:
    with pytest.raises(UnsupportedVersionError, match=r"version 7.*speaks 1"):
        protocol.decode_body(cbor2.dumps({"v": 7, "type": "attest"}))


def test_unknown_response_type() -> None:
    with pytest.raises(UnknownTypeError):
        protocol.decode_response(cbor2.dumps({"v": 1, "type": "attest"}))


def test_missing_document_in_response() -> None:
    with pytest.raises(ProtocolError, match="document"):
        protocol.decode_response(cbor2.dumps({"v": 1, "type": "attestation"}))


def test_error_for_keeps_code_and_message() -> None:
    resp = protocol.error_for(FrameTooLargeError("too big"))
    assert resp == ErrorResponse("frame_too_large", "too big")


def test_registering_a_new_request_type_makes_it_decodable() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass(frozen=True)
    class PingRequest(protocol.Request):
        TYPE: ClassVar[str] = "test-ping"

        def to_fields(self) -> dict[str, Any]:
            return {}

        @classmethod
        def from_fields(cls, obj: Any) -> PingRequest:
            return cls()

    protocol.register_request(PingRequest)
    try:
        assert protocol.decode_request(body_of(PingRequest().encode())) == PingRequest()
        with pytest.raises(ValueError, match="already registered"):
            protocol.register_request(PingRequest)
    finally:
        del protocol.REQUEST_TYPES["test-ping"]


def test_frame_of_random_bytes_never_escapes_as_other_error() -> None:
    import random

    rng = random.Random(4)
    for _ in range(500):
        body = rng.randbytes(rng.randrange(1, 64))
        with contextlib.suppress(ProtocolError):
            protocol.decode_request(body)


def test_tags_are_refused() -> None:
    tagged = cbor2.dumps({"v": 1, "type": "attest", "nonce": cbor2.CBORTag(2, b"\x01")})
    with pytest.raises(MalformedFrameError):
        protocol.decode_request(tagged)


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 4600, 65000])
def test_attestation_response_encoding_is_what_cbor2_writes(size: int) -> None:
    # AttestationResponse.encode builds its bytes from a constant prefix (the server's hot path);
    # it must stay byte for byte the generic encoding of the same map.
    document = bytes(range(256)) * (size // 256) + bytes(size % 256)
    generic = frame({"v": protocol.PROTOCOL_VERSION, "type": "attestation", "document": document})
    assert AttestationResponse(document).encode() == generic
    assert protocol.decode_response(body_of(generic)) == AttestationResponse(document)


def test_attestation_response_too_large_for_a_frame_is_refused() -> None:
    with pytest.raises(FrameTooLargeError):
        AttestationResponse(bytes(protocol.MAX_FRAME_BYTES)).encode()


def test_attest_request_with_an_extra_field_is_refused_by_name() -> None:
    body = cbor2.dumps({"v": 1, "type": "attest", "nonce": b"n", "sneaky": 1})
    with pytest.raises(ProtocolError, match=r"unexpected field.*sneaky"):
        protocol.decode_request(body)


# --- the attest layout read without a CBOR decoder (protocol.decode_attest_layout) ---------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_NULLS = {"nonce": None, "user_data": None, "public_key": None}
_FIELD = st.one_of(st.none(), st.binary(max_size=40), st.binary(min_size=1000, max_size=1100))


def _strict(body: bytes) -> object:
    """What the strict path makes of ``body``: the request, or the error's type and text."""
    try:
        return protocol.decode_request(body)
    except protocol.ProtocolError as exc:
        return (type(exc), str(exc))


def _layout(body: bytes) -> object:
    try:
        return protocol.decode_attest_layout(body)
    except protocol.ProtocolError as exc:
        return (type(exc), str(exc))


@settings(max_examples=300, deadline=None)
@given(_FIELD, _FIELD, _FIELD)
def test_attest_layout_reads_what_clients_send_as_the_strict_decoder_does(
    nonce: bytes | None, user_data: bytes | None, public_key: bytes | None
) -> None:
    fields = {"nonce": nonce, "user_data": user_data, "public_key": public_key}
    body = cbor2.dumps({"v": protocol.PROTOCOL_VERSION, "type": "attest", **fields})
    got = _layout(body)
    assert got is not None  # the layout every client writes is taken
    assert got == _strict(body)  # the same request, or the same refusal (a field over its cap)


@settings(max_examples=1500, deadline=None)
@given(_FIELD, _FIELD, _FIELD, st.data())
def test_attest_layout_never_accepts_what_the_strict_decoder_reads_otherwise(
    nonce: bytes | None, user_data: bytes | None, public_key: bytes | None, data: st.DataObject
) -> None:
    # The parent rewrites the request: flipped, inserted, dropped or appended bytes. The layout
    # reader either steps aside (None: the strict decoder decides) or gives the strict result.
    fields = {"nonce": nonce, "user_data": user_data, "public_key": public_key}
    body = bytearray(cbor2.dumps({"v": protocol.PROTOCOL_VERSION, "type": "attest", **fields}))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body)))
        action = data.draw(st.sampled_from(("flip", "insert", "drop", "append", "truncate")))
        if action == "flip" and at < len(body):
            body[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            body[at:at] = bytes([data.draw(st.integers(0, 255))])
        elif action == "drop" and at < len(body):
            del body[at]
        elif action == "append":
            body += data.draw(st.binary(min_size=1, max_size=3))
        elif action == "truncate":
            del body[at:]
    got = _layout(bytes(body))
    if got is not None:
        assert got == _strict(bytes(body))


@pytest.mark.parametrize(
    "body",
    [
        # keys in another order, a duplicate key, an indefinite byte string, a 4-byte length,
        # version 2, another type, a trailing byte: all left to the strict decoder
        cbor2.dumps({"v": 1, "type": "attest", "user_data": None, "nonce": None, "public_key": 0}),
        bytes.fromhex("a6617601647479706566617474657374656e6f6e6365f6656e6f6e6365f6")
        + bytes.fromhex("69757365725f64617461f66a7075626c69635f6b6579f6"),
        bytes.fromhex("a5617601647479706566617474657374656e6f6e63655f4161ff")
        + bytes.fromhex("69757365725f64617461f66a7075626c69635f6b6579f6"),
        bytes.fromhex("a5617601647479706566617474657374656e6f6e63655a0000000161")
        + bytes.fromhex("69757365725f64617461f66a7075626c69635f6b6579f6"),
        cbor2.dumps({"v": 2, "type": "attest", **_NULLS}),
        cbor2.dumps({"v": 1, "type": "attesT", **_NULLS}),
        cbor2.dumps({"v": 1, "type": "attest", **_NULLS}) + b"\x00",
    ],
)
def test_attest_layout_steps_aside_for_other_shapes(body: bytes) -> None:
    assert protocol.decode_attest_layout(body) is None
