"""The public_key encoding of channel keys: round trips and malformed fields."""

from __future__ import annotations

import hashlib

import pytest

from nitro_attest.channel.keys import (
    HYBRID_KEY_BYTES,
    MAGIC,
    AdvertisedKey,
    KeyPair,
    SuiteId,
    parse_public_key_field,
    resolve_public_key,
)
from nitro_attest.errors import ChannelKeyError, VerificationError


@pytest.fixture(scope="module")
def pairs() -> dict[SuiteId, KeyPair]:
    return {s: KeyPair.generate(s) for s in SuiteId}


def test_x25519_field_is_prefix_suite_and_raw_key(pairs: dict[SuiteId, KeyPair]) -> None:
    kp = pairs[SuiteId.X25519]
    field = kp.advertised.field
    assert field == MAGIC + b"\x01" + kp.public_bytes
    assert len(field) == 40
    parsed = parse_public_key_field(field)
    assert parsed == AdvertisedKey(SuiteId.X25519, kp.public_bytes)
    assert resolve_public_key(parsed, None).public_bytes_raw() == kp.public_bytes


def test_hybrid_field_commits_to_full_key(pairs: dict[SuiteId, KeyPair]) -> None:
    kp = pairs[SuiteId.MLKEM768_X25519]
    assert len(kp.public_bytes) == HYBRID_KEY_BYTES
    field = kp.advertised.field
    assert field == MAGIC + b"\x02" + hashlib.sha256(kp.public_bytes).digest()
    assert len(field) <= 1024  # fits the NSM's public_key limit, the full key would not
    parsed = parse_public_key_field(field)
    assert parsed.suite is SuiteId.MLKEM768_X25519
    resolve_public_key(parsed, kp.public_bytes)  # digest matches: usable


def test_key_pair_repr_hides_material(pairs: dict[SuiteId, KeyPair]) -> None:
    kp = pairs[SuiteId.X25519]
    assert kp.public_bytes.hex() not in repr(kp)


def test_suite_labels_round_trip() -> None:
    for suite in SuiteId:
        assert SuiteId.from_label(suite.label) is suite
    with pytest.raises(ValueError, match="unknown suite"):
        SuiteId.from_label("p256")


X_BODY = bytes(range(32))
MALFORMED = [
    ("none", None, "no public_key"),
    ("not bytes", "NAHPKE1", "must be bytes"),
    ("empty", b"", "empty"),
    ("oversize", MAGIC + b"\x01" + bytes(1017), "at most 1024"),
    ("wrong prefix", b"NAHPKE2\x01" + X_BODY, "does not start with"),
    ("lowercase prefix", b"nahpke1\x01" + X_BODY, "does not start with"),
    ("rsa der key", bytes.fromhex("30820122300d06092a864886f70d01010105000382010f00"), "does not"),
    ("magic only", MAGIC, "does not start with"),
    ("truncated magic", MAGIC[:5], "does not start with"),
    ("unknown suite 0", MAGIC + b"\x00" + X_BODY, "unknown suite id 0x00"),
    ("unknown suite 3", MAGIC + b"\x03" + X_BODY, "unknown suite id 0x03"),
    ("unknown suite ff", MAGIC + b"\xff" + X_BODY, "unknown suite id 0xff"),
    ("x25519 no body", MAGIC + b"\x01", "body is 0 bytes, expected 32"),
    ("x25519 short", MAGIC + b"\x01" + X_BODY[:31], "body is 31 bytes, expected 32"),
    ("x25519 long", MAGIC + b"\x01" + X_BODY + b"\x00", "body is 33 bytes, expected 32"),
    ("hybrid short", MAGIC + b"\x02" + X_BODY[:16], "body is 16 bytes, expected 32"),
    ("hybrid full key", MAGIC + b"\x02" + bytes(HYBRID_KEY_BYTES), "at most 1024"),
    ("hybrid sha384", MAGIC + b"\x02" + bytes(48), "body is 48 bytes, expected 32"),
]


@pytest.mark.parametrize(("field", "message"), [(f, m) for _, f, m in MALFORMED],
                         ids=[i for i, _, _ in MALFORMED])
def test_malformed_fields_refused(field: object, message: str) -> None:
    with pytest.raises(ChannelKeyError, match=message) as info:
        parse_public_key_field(field)
    assert isinstance(info.value, VerificationError)
    assert info.value.check == "channel_key"


def test_hybrid_needs_the_full_key(pairs: dict[SuiteId, KeyPair]) -> None:
    kp = pairs[SuiteId.MLKEM768_X25519]
    with pytest.raises(ChannelKeyError, match="needs the full key"):
        resolve_public_key(kp.advertised, None)
    with pytest.raises(ChannelKeyError, match="1215 bytes, expected 1216"):
        resolve_public_key(kp.advertised, kp.public_bytes[:-1])
    other = KeyPair.generate(SuiteId.MLKEM768_X25519)
    with pytest.raises(ChannelKeyError, match="does not match the attested digest"):
        resolve_public_key(kp.advertised, other.public_bytes)


def test_x25519_offered_key_must_equal_attested(pairs: dict[SuiteId, KeyPair]) -> None:
    kp = pairs[SuiteId.X25519]
    resolve_public_key(kp.advertised, kp.public_bytes)
    with pytest.raises(ChannelKeyError, match="not the attested key"):
        resolve_public_key(kp.advertised, bytes(32))


def test_hybrid_unavailable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import mlkem

    def unsupported() -> None:
        raise UnsupportedAlgorithm("ML-KEM is not supported by this backend")

    monkeypatch.setattr(mlkem.MLKEM768PrivateKey, "generate", staticmethod(unsupported))
    with pytest.raises(ChannelKeyError, match="ML-KEM-768 is not available"):
        KeyPair.generate(SuiteId.MLKEM768_X25519)
    assert KeyPair.generate(SuiteId.X25519).suite is SuiteId.X25519
