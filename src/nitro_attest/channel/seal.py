"""HPKE seal/open for the attested channel, with the attestation bound into HPKE's info.

info = b"nitro-attest channel v1" 0x00 || suite id || len16(nonce) || nonce
       || SHA-384(attestation document) || len16(public_key field)

so a sealed message opens only for the key, the nonce and the very document it was sealed against
(RFC 9180 base mode; HPKE's key schedule already binds the recipient key, the field and document
digest make the binding explicit and survive key reuse across documents).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag

from nitro_attest.channel.keys import AdvertisedKey, KeyPair, PublicKey, SuiteId
from nitro_attest.errors import FormatError

INFO_LABEL = b"nitro-attest channel v1\x00"
MAX_PLAINTEXT_BYTES = 60 * 1024  # sealed, it still fits the protocol's 64 KiB frame
# The client seals a fresh random key in front of the secret; the enclave acknowledges with
# HMAC-SHA256(ack_key, secret). The parent relays that acknowledgement but never sees the key, so
# it learns nothing about the secret, even a low-entropy one (a bare SHA-256 would be brute-forced).
ACK_KEY_BYTES = 32
MAX_SECRET_BYTES = MAX_PLAINTEXT_BYTES - ACK_KEY_BYTES
# enc length per suite (X25519: 32; ML-KEM-768 ciphertext 1088 + X25519 32) plus the AEAD tag.
_ENC_BYTES = {SuiteId.X25519: 32, SuiteId.MLKEM768_X25519: 1088 + 32}
TAG_BYTES = 16


class OpenError(FormatError):
    """The sealed message does not open: altered, or sealed for another key, nonce or document."""


def max_sealed_bytes(suite: SuiteId) -> int:
    return _ENC_BYTES[suite] + MAX_PLAINTEXT_BYTES + TAG_BYTES


def acknowledgement(ack_key: bytes, secret: bytes) -> bytes:
    """What the enclave returns for a delivered secret: HMAC-SHA256 keyed by the sealed ack key."""
    return hmac.new(ack_key, secret, hashlib.sha256).digest()


def split_plaintext(plaintext: bytes) -> tuple[bytes, bytes]:
    """(ack_key, secret) from an opened message; OpenError when no secret follows the key."""
    if len(plaintext) <= ACK_KEY_BYTES:
        raise OpenError("sealed message carries no secret after its acknowledgement key")
    return plaintext[:ACK_KEY_BYTES], plaintext[ACK_KEY_BYTES:]


def document_digest(document: bytes) -> bytes:
    """SHA-384 of the raw attestation document (COSE_Sign1 bytes), as bound into info."""
    return hashlib.sha384(document).digest()


def channel_info(advertised: AdvertisedKey, nonce: bytes, document_sha384: bytes) -> bytes:
    if len(document_sha384) != 48:
        raise ValueError("document_sha384 must be the 48-byte SHA-384 of the document")
    field = advertised.field
    return b"".join(
        (
            INFO_LABEL,
            bytes([advertised.suite.value]),
            struct.pack(">H", len(nonce)),
            nonce,
            document_sha384,
            struct.pack(">H", len(field)),
            field,
        )
    )


def seal(suite: SuiteId, public_key: PublicKey, secret: bytes, info: bytes) -> bytes:
    """Return enc || ciphertext (RFC 9180 single-shot base mode)."""
    if not isinstance(secret, bytes):
        raise TypeError(f"secret must be bytes, got {type(secret).__name__}")
    if not secret:
        raise ValueError("secret is empty")
    if len(secret) > MAX_PLAINTEXT_BYTES:
        raise ValueError(f"plaintext is {len(secret)} bytes, at most {MAX_PLAINTEXT_BYTES}")
    return suite.hpke_suite.encrypt(secret, public_key, info=info)


def open_sealed(keys: KeyPair, sealed: bytes, info: bytes) -> bytes:
    """Open a sealed message or raise OpenError (no detail: the AEAD cannot say which binding)."""
    if len(sealed) <= _ENC_BYTES[keys.suite] + TAG_BYTES:
        raise OpenError(f"sealed message too short ({len(sealed)} bytes)")
    if len(sealed) > max_sealed_bytes(keys.suite):
        raise OpenError(f"sealed message too long ({len(sealed)} bytes)")
    try:
        return keys.suite.hpke_suite.decrypt(sealed, keys.private, info=info)
    except (InvalidTag, ValueError):
        raise OpenError(
            "sealed message does not open: altered, or sealed for another key, nonce or document"
        ) from None
