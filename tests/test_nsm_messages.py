"""The NSM API codec: exact serde CBOR bytes (written by hand from nitro-spec.md section 2)."""

from __future__ import annotations

import cbor2
import pytest

from nitro_attest.nsm import messages as m
from nitro_attest.nsm.backend import NsmDescription, NsmError


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# Text strings used below, hex of their UTF-8 bytes.
DESCRIBE_PCR = "6b 4465736372696265504352"  # "DescribePCR"
EXTEND_PCR = "69 457874656e64504352"  # "ExtendPCR"
LOCK_PCR = "67 4c6f636b504352"  # "LockPCR"
LOCK_PCRS = "68 4c6f636b50435273"  # "LockPCRs"
ATTESTATION = "6b 4174746573746174696f6e"  # "Attestation"
INDEX = "65 696e646578"
DATA = "64 64617461"

REQUESTS = [
    (m.DescribeNsm(), "6b 44657363726962654e534d"),
    (m.GetRandom(), "69 47 65 74 52 61 6E 64 6F 6D"),
    (m.DescribePcr(16), f"a1 {DESCRIBE_PCR} a1 {INDEX} 10"),
    (m.DescribePcr(300), f"a1 {DESCRIBE_PCR} a1 {INDEX} 19 012c"),
    (m.ExtendPcr(16, b"\x01\x02\x03"), f"a1 {EXTEND_PCR} a2 {INDEX} 10 {DATA} 43 010203"),
    (m.LockPcr(17), f"a1 {LOCK_PCR} a1 {INDEX} 11"),
    (m.LockPcrs(32), f"a1 {LOCK_PCRS} a1 65 72616e6765 18 20"),
    (
        m.Attestation(),
        f"a1 {ATTESTATION} a3 69 757365725f64617461 f6 65 6e6f6e6365 f6 6a 7075626c69635f6b6579 f6",
    ),
    (
        m.Attestation(user_data=b"\xaa", nonce=b"\xbb\xcc", public_key=b""),
        f"a1 {ATTESTATION} a3 69 757365725f64617461 41 aa 65 6e6f6e6365 42 bbcc"
        " 6a 7075626c69635f6b6579 40",
    ),
]

DESCRIPTION = NsmDescription(1, 0, 0, "m", 32, (0, 1), "SHA384")
RESPONSES = [
    (m.LockPcrResponse(), LOCK_PCR),
    (m.LockPcrsResponse(), LOCK_PCRS),
    (m.ErrorResponse("InvalidIndex"), "a1 65 4572726f72 6c 496e76616c6964496e646578"),
    (
        m.DescribePcrResponse(True, b"\xaa\xbb"),
        f"a1 {DESCRIBE_PCR} a2 64 6c6f636b f5 {DATA} 42 aabb",
    ),
    (m.ExtendPcrResponse(b"\x01\x02\x03"), f"a1 {EXTEND_PCR} a1 {DATA} 43 010203"),
    (m.AttestationResponse(b"\x84"), f"a1 {ATTESTATION} a1 68 646f63756d656e74 41 84"),
    (m.GetRandomResponse(b"\x00" * 4), "a1 69 47657452616e646f6d a1 66 72616e646f6d 44 00000000"),
    (
        m.DescribeNsmResponse(DESCRIPTION),
        "a1 6b 44657363726962654e534d a7"
        " 6d 76657273696f6e5f6d616a6f72 01"
        " 6d 76657273696f6e5f6d696e6f72 00"
        " 6d 76657273696f6e5f7061746368 00"
        " 69 6d6f64756c655f6964 61 6d"
        " 68 6d61785f70637273 18 20"
        " 6b 6c6f636b65645f70637273 82 00 01"
        " 66 646967657374 66 534841333834",
    ),
]


@pytest.mark.parametrize(("request_", "hexbytes"), REQUESTS)
def test_request_bytes_and_round_trip(request_: m.Request, hexbytes: str) -> None:
    assert m.encode_request(request_) == h(hexbytes)
    assert m.decode_request(h(hexbytes)) == request_


@pytest.mark.parametrize(("response", "hexbytes"), RESPONSES)
def test_response_bytes_and_round_trip(response: m.Response, hexbytes: str) -> None:
    assert m.encode_response(response) == h(hexbytes)
    assert m.decode_response(h(hexbytes)) == response


def test_every_error_code_round_trips() -> None:
    for code in m.ERROR_CODES:
        data = m.encode_response(m.ErrorResponse(code))
        assert cbor2.loads(data) == {"Error": code}
        assert m.decode_response(data) == m.ErrorResponse(code)


@pytest.mark.parametrize("field", ["user_data", "nonce", "public_key"])
def test_attestation_field_limit(field: str) -> None:
    ok = m.Attestation(**{field: b"x" * 1024})
    assert len(m.encode_request(ok)) < 4096
    with pytest.raises(NsmError) as e:
        m.encode_request(m.Attestation(**{field: b"x" * 1025}))
    assert e.value.code == "InputTooLarge"


def test_all_three_maximal_fields_fit() -> None:
    req = m.Attestation(user_data=b"a" * 1024, nonce=b"b" * 1024, public_key=b"c" * 1024)
    assert m.decode_request(m.encode_request(req)) == req


def test_request_size_limit() -> None:
    with pytest.raises(NsmError) as e:
        m.encode_request(m.ExtendPcr(16, b"x" * 4096))
    assert e.value.code == "InputTooLarge"
    with pytest.raises(NsmError) as e:
        m.decode_request(b"\x00" * 4097)
    assert e.value.code == "InputTooLarge"


@pytest.mark.parametrize("index", [-1, 65536, True])
def test_index_must_be_u16(index: int) -> None:
    with pytest.raises(NsmError) as e:
        m.encode_request(m.DescribePcr(index))
    assert e.value.code == "InvalidArgument"


@pytest.mark.parametrize(
    "data",
    [
        b"",  # empty
        b"\xff",  # break without an indefinite item
        h("6b 44657363726962654e534d 00"),  # trailing byte
        h("6a 4465736372696265"),  # truncated text
        cbor2.dumps("Nope"),  # unknown unit variant
        cbor2.dumps({"Error": "NoSuchCode"}),
        cbor2.dumps({"DescribePCR": {"lock": 1, "data": b""}}),  # lock not a bool
        cbor2.dumps({"DescribePCR": {"lock": True}}),  # missing field
        cbor2.dumps({"ExtendPCR": {"data": "text"}}),  # text instead of bytes
        cbor2.dumps({"A": 1, "B": 2}),  # two-entry map
        cbor2.dumps([1, 2]),
        cbor2.dumps({"DescribeNSM": {"version_major": 1}}),
    ],
)
def test_undecodable_response_is_internal_error(data: bytes) -> None:
    with pytest.raises(NsmError) as e:
        m.decode_response(data)
    assert e.value.code == "InternalError"


def test_expect_raises_nsm_error_code_and_invalid_response() -> None:
    with pytest.raises(NsmError) as e:
        m.expect(m.ErrorResponse("ReadOnlyIndex"), m.ExtendPcrResponse)
    assert e.value.code == "ReadOnlyIndex"
    with pytest.raises(NsmError) as e:
        m.expect(m.LockPcrResponse(), m.ExtendPcrResponse)
    assert e.value.code == "InvalidResponse"
    ok = m.ExtendPcrResponse(b"x")
    assert m.expect(ok, m.ExtendPcrResponse) is ok


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (cbor2.dumps("Reboot"), "InvalidOperation"),
        (cbor2.dumps({"Seal": {"x": 1}}), "InvalidOperation"),
        (cbor2.dumps({"DescribePCR": {"index": 70000}}), "InvalidArgument"),
        (cbor2.dumps({"DescribePCR": {"index": -1}}), "InvalidArgument"),
        (cbor2.dumps({"ExtendPCR": {"index": 1, "data": "t"}}), "InvalidArgument"),
        (cbor2.dumps({"Attestation": {"user_data": None}}), "InvalidArgument"),
        (b"\x1f", "InvalidArgument"),
    ],
)
def test_server_side_decode_errors(data: bytes, code: str) -> None:
    with pytest.raises(NsmError) as e:
        m.decode_request(data)
    assert e.value.code == code
    assert m.decode_request_or_error(data) == m.ErrorResponse(code)


# ---------------------------------------------------------------- property: any request round-trips

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_u16 = st.integers(0, 0xFFFF)
_field = st.none() | st.binary(max_size=1024)
_requests = st.one_of(
    st.builds(m.DescribePcr, _u16),
    st.builds(m.ExtendPcr, _u16, st.binary(max_size=4000)),
    st.builds(m.LockPcr, _u16),
    st.builds(m.LockPcrs, _u16),
    st.just(m.DescribeNsm()),
    st.just(m.GetRandom()),
    st.builds(m.Attestation, _field, _field, _field),
)


@given(_requests)
def test_any_request_round_trips_or_is_refused_as_too_large(req: m.Request) -> None:
    try:
        data = m.encode_request(req)
    except NsmError as exc:
        assert exc.code == "InputTooLarge"
        assert len(cbor2.dumps(m.request_to_cbor(req))) > 4096
        return
    assert len(data) <= 4096
    assert m.decode_request(data) == req
    assert cbor2.dumps(m.request_to_cbor(m.decode_request(data))) == data


@settings(max_examples=500)
@given(st.binary(max_size=64) | st.builds(lambda b: b"\xa1" + b, st.binary(max_size=64)))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    try:
        m.decode_response(data)
    except NsmError as exc:
        assert exc.code == "InternalError"
    for tagged in (b"\xc1\x7f", b"\xc0\x01", b"\xd8\x1e\x82\x00\x00"):  # bad datetime, fraction
        with pytest.raises(NsmError):
            m.decode_response(tagged)
    try:
        m.decode_request(data)
    except NsmError as exc:
        assert exc.code in ("InvalidArgument", "InvalidOperation")
