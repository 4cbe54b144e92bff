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
