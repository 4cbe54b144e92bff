"""Mutated real documents never verify, and only ever raise VerificationError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nitro_attest import VerificationError, Verifier, parse_document

from .paths import REAL

FILES = [
    "worldcoin_20250829_indef_map.cbor",
    "blocky_20240907_max_size_fields_1024B.cbor",
    "evervault_20221013_pcr8_nonce256.cbor",
]
VERIFIER = Verifier()
# CI runs 150 examples per property; NITRO_ATTEST_FUZZ_EXAMPLES=3000 for a longer local hunt.
EXAMPLES = int(os.environ.get("NITRO_ATTEST_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _load(name: str) -> bytes:
    path = REAL / name
    if not path.exists():
        pytest.skip(f"vectors not found at {REAL}")
    return path.read_bytes()


def _equivalent(mutated: bytes, original: bytes) -> bool:
    # Wrapping the untouched document in tag 18 is the one mutation that stays genuine.
    return mutated in (original, b"\xd2" + original, b"\xd8\x12" + original)


def _assert_rejected(mutated: bytes, original: bytes) -> None:
    at = parse_document(original).timestamp
    try:
        VERIFIER.verify(mutated, at=at, allow_debug=True)
    except VerificationError:
        return
    assert _equivalent(mutated, original), "a mutated document verified"


@pytest.mark.parametrize("name", FILES)
@SETTINGS
@given(data=st.data())
def test_byte_flip(name: str, data: st.DataObject) -> None:
    original = _load(name)
    pos = data.draw(st.integers(0, len(original) - 1))
    mask = data.draw(st.integers(1, 255))
    mutated = bytearray(original)
    mutated[pos] ^= mask
    _assert_rejected(bytes(mutated), original)


@pytest.mark.parametrize("name", FILES)
@SETTINGS
@given(data=st.data())
def test_truncation(name: str, data: st.DataObject) -> None:
    original = _load(name)
    cut = data.draw(st.integers(0, len(original) - 1))
    _assert_rejected(original[:cut], original)


@pytest.mark.parametrize("name", FILES)
@SETTINGS
@given(data=st.data())
def test_insertion(name: str, data: st.DataObject) -> None:
    original = _load(name)
    pos = data.draw(st.integers(0, len(original)))
    extra = data.draw(st.binary(min_size=1, max_size=16))
    _assert_rejected(original[:pos] + extra + original[pos:], original)


@pytest.mark.parametrize("name", FILES)
@SETTINGS
@given(data=st.data())
def test_zeroed_run(name: str, data: st.DataObject) -> None:
    original = _load(name)
    pos = data.draw(st.integers(0, len(original) - 1))
    length = data.draw(st.integers(1, 64))
    end = min(len(original), pos + length)
    mutated = original[:pos] + bytes(end - pos) + original[end:]
    if mutated == original:
        return
    _assert_rejected(mutated, original)


@SETTINGS
@given(blob=st.binary(max_size=2048))
def test_random_bytes_never_crash(blob: bytes) -> None:
    with pytest.raises(VerificationError):
        VERIFIER.verify(blob)


@pytest.mark.parametrize("name", FILES)
def test_evaluate_never_raises_on_garbage(name: Path) -> None:
    original = _load(str(name))
    for cut in (0, 1, 10, 100, len(original) // 2):
        report = VERIFIER.evaluate(original[:cut])
        assert not report.verified and report.error is not None
