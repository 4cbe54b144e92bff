"""HPKE suites of the attested channel and the encoding of the enclave's key in public_key.

Format layer: bytes in, objects out, no I/O. The attestation document's public_key field holds

    b"NAHPKE1" || suite id (1 byte) || body

- suite 0x01 ``x25519``: body is the 32-byte raw X25519 public key (field: 40 bytes);
- suite 0x02 ``mlkem768-x25519``: the hybrid key (ML-KEM-768 encapsulation key, 1184 bytes, then
  the X25519 key, 32 bytes) does not fit the NSM's 1024-byte public_key limit, so the body is the
  SHA-256 of that 1216-byte key (field: 40 bytes) and the enclave sends the full key beside the
  document; the client accepts it only if its digest matches the attested one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from nitro_attest.errors import ChannelKeyError
from nitro_attest.limits import NSM_FIELD_BYTES
from nitro_attest.wire.protocol import CHANNEL_KEY_PREFIX

MAGIC = CHANNEL_KEY_PREFIX + b"1"
X25519_KEY_BYTES = 32
MLKEM768_KEY_BYTES = 1184
HYBRID_KEY_BYTES = MLKEM768_KEY_BYTES + X25519_KEY_BYTES
DIGEST_BYTES = 32


class SuiteId(Enum):
    """The channel's suites: KEM choice; both use HKDF-SHA256 and ChaCha20-Poly1305."""

    X25519 = 0x01
    MLKEM768_X25519 = 0x02

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def hpke_suite(self) -> hpke.Suite:
        kem = hpke.KEM.X25519 if self is SuiteId.X25519 else hpke.KEM.MLKEM768_X25519
        return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)

    @classmethod
    def from_label(cls, label: str) -> SuiteId:
        for suite, name in _LABELS.items():
            if name == label:
                return suite
        raise ValueError(f"unknown suite {label!r}; choose one of {', '.join(SUITE_LABELS)}")


_LABELS = {SuiteId.X25519: "x25519", SuiteId.MLKEM768_X25519: "mlkem768-x25519"}
SUITE_LABELS = tuple(_LABELS.values())
ALL_SUITES = tuple(SuiteId)
_BODY_BYTES = {SuiteId.X25519: X25519_KEY_BYTES, SuiteId.MLKEM768_X25519: DIGEST_BYTES}

PublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
PrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


@dataclass(frozen=True, slots=True)
class AdvertisedKey:
    """What a document's public_key field says: the suite and its body (key or key digest)."""

    suite: SuiteId
    body: bytes

    @property
    def field(self) -> bytes:
        return MAGIC + bytes([self.suite.value]) + self.body


class KeyPair:
    """One HPKE key pair for one suite, made at server start and kept in memory only."""

    def __init__(self, suite: SuiteId, private: PrivateKey, public_bytes: bytes) -> None:
        self.suite = suite
        self._private = private
        self.public_bytes = public_bytes  # what the client needs to seal (full key)
        self.advertised = advertised_for(suite, public_bytes)

    @classmethod
    def generate(cls, suite: SuiteId) -> KeyPair:
        if suite is SuiteId.X25519:
            xk = x25519.X25519PrivateKey.generate()
            return cls(suite, xk, xk.public_key().public_bytes_raw())
        try:
            mk = mlkem.MLKEM768PrivateKey.generate()
        except UnsupportedAlgorithm as exc:
            raise ChannelKeyError(f"ML-KEM-768 is not available in this OpenSSL: {exc}") from None
        xk = x25519.X25519PrivateKey.generate()
        private = hpke.MLKEM768X25519PrivateKey(mk, xk)
        raw = mk.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
        return cls(suite, private, raw)

    @property
    def private(self) -> PrivateKey:
        return self._private

    def __repr__(self) -> str:  # never show key material
        return f"KeyPair({self.suite.label})"


def hybrid_unavailable() -> str | None:
    """Why the ML-KEM-768 hybrid suite cannot be used with this OpenSSL, or None when it can."""
    try:
        mlkem.MLKEM768PrivateKey.generate()
    except UnsupportedAlgorithm as exc:
        return f"ML-KEM-768 is not available in this OpenSSL ({exc})"
    return None


def advertised_for(suite: SuiteId, public_bytes: bytes) -> AdvertisedKey:
    if suite is SuiteId.X25519:
        return AdvertisedKey(suite, public_bytes)
    return AdvertisedKey(suite, hashlib.sha256(public_bytes).digest())


def parse_public_key_field(field: Any) -> AdvertisedKey:
    """Parse a document's public_key; ChannelKeyError names what is wrong."""
    if field is None:
        raise ChannelKeyError(
            "the document carries no public_key: the enclave offered no channel key"
        )
    if not isinstance(field, bytes):
        raise ChannelKeyError(f"public_key must be bytes, got {type(field).__name__}")
    if not field:
        raise ChannelKeyError("public_key is empty")
    if len(field) > NSM_FIELD_BYTES:
        raise ChannelKeyError(f"public_key is {len(field)} bytes, at most {NSM_FIELD_BYTES}")
    if not field.startswith(MAGIC) or len(field) == len(MAGIC):
        raise ChannelKeyError(
            f"public_key does not start with {MAGIC.decode()} + suite id "
            f"(got {field[: len(MAGIC) + 1].hex()}): not a nitro-attest channel key"
        )
    suite_byte = field[len(MAGIC)]
    try:
        suite = SuiteId(suite_byte)
    except ValueError:
        raise ChannelKeyError(f"public_key names unknown suite id 0x{suite_byte:02x}") from None
    body = field[len(MAGIC) + 1 :]
    want = _BODY_BYTES[suite]
    if len(body) != want:
        raise ChannelKeyError(
            f"public_key for suite {suite.label}: body is {len(body)} bytes, expected {want}"
        )
    return AdvertisedKey(suite, body)


def resolve_public_key(advertised: AdvertisedKey, offered: bytes | None) -> PublicKey:
    """Turn an attested key into a key to seal to.

    For x25519 the document holds the key itself; ``offered`` (if given) must equal it. For the
    hybrid suite ``offered`` is the full key the enclave sent beside the document and must hash to
    the attested digest.
    """
    if advertised.suite is SuiteId.X25519:
        if offered is not None and not hmac.compare_digest(offered, advertised.body):
            raise ChannelKeyError("the key sent beside the document is not the attested key")
        return x25519.X25519PublicKey.from_public_bytes(advertised.body)
    if offered is None:
        raise ChannelKeyError("suite mlkem768-x25519 needs the full key sent beside the document")
    if len(offered) != HYBRID_KEY_BYTES:
        raise ChannelKeyError(
            f"mlkem768-x25519 key is {len(offered)} bytes, expected {HYBRID_KEY_BYTES}"
        )
    if not hmac.compare_digest(hashlib.sha256(offered).digest(), advertised.body):
        raise ChannelKeyError(
            "the mlkem768-x25519 key sent beside the document does not match the attested digest"
        )
    try:
        mk = mlkem.MLKEM768PublicKey.from_public_bytes(offered[:MLKEM768_KEY_BYTES])
        xk = x25519.X25519PublicKey.from_public_bytes(offered[MLKEM768_KEY_BYTES:])
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ChannelKeyError(f"mlkem768-x25519 key is unusable: {exc}") from None
    return hpke.MLKEM768X25519PublicKey(mk, xk)
