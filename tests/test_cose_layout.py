"""The COSE_Sign1 fast path (the NSM's one layout, sliced) gives exactly what the strict decoder
gives, and hands every other layout to the strict decoder."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nitro_attest.codec.cose import CoseError, _nitro_layout, decode_sign1

from .paths import REAL


def _documents() -> list[bytes]:
    index = json.loads((REAL / "index.json").read_text())
    return [(REAL / e["file"]).read_bytes() for e in index["positive"]]


def _strict(data: bytes) -> tuple[bytes, dict[int, int], dict[int, int], bytes, bytes]:
    protected, unprotected, payload, signature = cbor2.loads(data)
    return protected, cbor2.loads(protected), unprotected, payload, signature


@pytest.mark.parametrize("data", _documents())
def test_real_documents_take_the_fast_path_with_the_strict_result(data: bytes) -> None:
    fast = _nitro_layout(data, False)
    assert fast is not None
    assert tuple(fast)[:5] == _strict(data)
    assert decode_sign1(data) == fast


def test_other_layouts_fall_back_to_the_strict_decoder() -> None:
    data = _documents()[0]
    assert _nitro_layout(data + b"\x00", False) is None  # trailing byte: strict decoder refuses
    with pytest.raises(CoseError):
        decode_sign1(data + b"\x00")
    assert _nitro_layout(data[:-1], False) is None  # truncated
    with pytest.raises(CoseError):
        decode_sign1(data[:-1])
    # The same item with the payload length in 4 bytes: not the fast layout, still well formed.
    protected, _, payload, signature = cbor2.loads(data)
    wide = b"\x84\x44" + protected + b"\xa0\x5a" + len(payload).to_bytes(4, "big") + payload
    wide += b"\x58\x60" + signature
    assert _nitro_layout(wide, False) is None
    assert decode_sign1(wide).payload == payload


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=4000), st.integers(min_value=0, max_value=255))
def test_a_changed_byte_never_makes_the_paths_disagree(position: int, value: int) -> None:
    data = bytearray(_documents()[0])
    position %= len(data)
    data[position] = value
    changed = bytes(data)
    fast = _nitro_layout(changed, False)
    try:
        strict = _strict(changed)
    except Exception:
        assert fast is None
        return
    if fast is not None:
        assert tuple(fast)[:5] == strict


# sig_structure and raw_to_der are written by hand (no CBOR encoder, no ints): their bytes must be
# exactly what cbor2 and cryptography's encode_dss_signature give, at every length boundary.
_SIZES = (0, 1, 23, 24, 255, 256, 4096, 65535, 65536)


@pytest.mark.parametrize("size", _SIZES)
def test_sig_structure_is_cbor2s_encoding(size: int) -> None:
    from nitro_attest.codec.cose import sig_structure

    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for protected in (b"", b"\xa1\x01\x38\x22", bytes(30)):
        for aad in (b"", b"aad", bytes(300)):
            expected = cbor2.dumps(["Signature1", protected, aad, payload])
            assert sig_structure(protected, payload, aad) == expected


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(("ES256", "ES384", "ES512")), st.data())
def test_raw_to_der_is_encode_dss_signature(name: str, data: st.DataObject) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from nitro_attest.codec.cose import ALGORITHMS, raw_to_der

    alg = next(a for a in ALGORITHMS.values() if a.name == name)
    n = alg.coordinate_size
    edge = st.sampled_from((bytes(n), b"\x80" + bytes(n - 1), bytes(n - 1) + b"\x01", b"\xff" * n))
    r = data.draw(st.one_of(edge, st.binary(min_size=n, max_size=n)))
    s = data.draw(st.one_of(edge, st.binary(min_size=n, max_size=n)))
    expected = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
    assert raw_to_der(r + s, alg) == expected


def test_raw_to_der_refuses_a_wrong_length() -> None:
    from nitro_attest.codec.cose import ES384, raw_to_der

    with pytest.raises(CoseError, match="96 bytes"):
        raw_to_der(bytes(95), ES384)


def test_each_decoded_document_has_its_own_protected_header() -> None:
    """A caller that changes one decoded header must not change what later decodes report."""
    from nitro_attest.codec.cose import HEADER_ALG, decode_sign1

    raw = _documents()[0]
    first = decode_sign1(raw)
    first.protected_header[HEADER_ALG] = -7
    second = decode_sign1(raw)
    assert second.protected_header[HEADER_ALG] == -35 and second.algorithm_id == -35
    assert first.protected_header is not second.protected_header


@pytest.mark.parametrize("n", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32])
def test_bstr_head_is_the_shortest_head_cbor2_writes(n: int) -> None:
    from nitro_attest.codec.cbor import bstr_head

    head = bstr_head(n)
    if n < 70000:  # small enough to let cbor2 encode it
        assert head == cbor2.dumps(b"\x00" * n)[: len(cbor2.dumps(b"\x00" * n)) - n]
    else:  # the 4- and 8-byte forms, by their definition (RFC 8949 3.1)
        width = 4 if n < 2**32 else 8
        assert head == bytes((0x5A if width == 4 else 0x5B,)) + n.to_bytes(width, "big")
