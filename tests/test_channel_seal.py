"""HPKE seal/open with the attestation bound into info.

Threat model (docs/threat-model.md): a message the parent altered, or sealed for another key, nonce
or document, does not open.
"""

from __future__ import annotations

import pytest

from nitro_attest.channel.keys import KeyPair, SuiteId, resolve_public_key
from nitro_attest.channel.seal import (
    MAX_PLAINTEXT_BYTES,
    OpenError,
    channel_info,
    document_digest,
    max_sealed_bytes,
    open_sealed,
    seal,
)

NONCE = b"n" * 32
DOC = document_digest(b"document bytes")


@pytest.fixture(scope="module", params=list(SuiteId), ids=lambda s: s.label)
def keys(request: pytest.FixtureRequest) -> KeyPair:
    suite: SuiteId = request.param
    return KeyPair.generate(suite)


def _seal(keys: KeyPair, secret: bytes, nonce: bytes = NONCE, doc: bytes = DOC) -> bytes:
    pub = resolve_public_key(keys.advertised, keys.public_bytes)
    return seal(keys.suite, pub, secret, channel_info(keys.advertised, nonce, doc))


def test_round_trip(keys: KeyPair) -> None:
    sealed = _seal(keys, b"the secret")
    assert b"the secret" not in sealed
    assert open_sealed(keys, sealed, channel_info(keys.advertised, NONCE, DOC)) == b"the secret"


def test_two_seals_differ(keys: KeyPair) -> None:
    assert _seal(keys, b"s") != _seal(keys, b"s")  # fresh encapsulation each time


@pytest.mark.parametrize("what", ["nonce", "document", "key"])
def test_binding_mismatch_does_not_open(keys: KeyPair, what: str) -> None:
    sealed = _seal(keys, b"secret")
    nonce, doc, opener = NONCE, DOC, keys
    if what == "nonce":
        nonce = b"m" * 32
    elif what == "document":
        doc = document_digest(b"another document")
    else:
        opener = KeyPair.generate(keys.suite)
    with pytest.raises(OpenError, match="does not open"):
        open_sealed(opener, sealed, channel_info(opener.advertised, nonce, doc))


def test_info_names_the_suite_field() -> None:
    a, b = KeyPair.generate(SuiteId.X25519), KeyPair.generate(SuiteId.X25519)
    assert channel_info(a.advertised, NONCE, DOC) != channel_info(b.advertised, NONCE, DOC)


@pytest.mark.parametrize("position", [0, 40, -1])
def test_tampered_does_not_open(keys: KeyPair, position: int) -> None:
    sealed = bytearray(_seal(keys, b"secret" * 10))
    sealed[position] ^= 0x01
    with pytest.raises(OpenError):
        open_sealed(keys, bytes(sealed), channel_info(keys.advertised, NONCE, DOC))


def test_size_limits(keys: KeyPair) -> None:
    info = channel_info(keys.advertised, NONCE, DOC)
    with pytest.raises(OpenError, match="too short"):
        open_sealed(keys, b"", info)
    with pytest.raises(OpenError, match="too long"):
        open_sealed(keys, bytes(max_sealed_bytes(keys.suite) + 1), info)
    with pytest.raises(ValueError, match="empty"):
        _seal(keys, b"")
    with pytest.raises(ValueError, match="at most"):
        _seal(keys, bytes(MAX_PLAINTEXT_BYTES + 1))
    largest = _seal(keys, bytes(MAX_PLAINTEXT_BYTES))
    assert len(largest) == max_sealed_bytes(keys.suite)
    assert open_sealed(keys, largest, info) == bytes(MAX_PLAINTEXT_BYTES)


def test_info_needs_a_sha384_digest(keys: KeyPair) -> None:
    with pytest.raises(ValueError, match="48-byte"):
        channel_info(keys.advertised, NONCE, b"raw document, not its digest")


def test_acknowledgement_is_keyed_and_plaintext_needs_a_secret() -> None:
    from nitro_attest.channel.seal import ACK_KEY_BYTES, acknowledgement, split_plaintext

    key_a, key_b = b"a" * ACK_KEY_BYTES, b"b" * ACK_KEY_BYTES
    assert acknowledgement(key_a, b"pin 1234") != acknowledgement(key_b, b"pin 1234")
    assert split_plaintext(key_a + b"s") == (key_a, b"s")
    with pytest.raises(OpenError, match="no secret"):
        split_plaintext(key_a)
