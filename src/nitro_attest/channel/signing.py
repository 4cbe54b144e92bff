"""Sender signatures on sealed messages: who sent a secret, checked against keys in the image.

Format layer: bytes in, objects out, no I/O. A sender signs

    b"nitro-attest sender v1" 0x00 || suite id || len16(nonce) || nonce
    || SHA-384(attestation document) || SHA-256(signer's SubjectPublicKeyInfo DER)
    || len32(sealed) || sealed

with Ed25519 or ECDSA P-256/SHA-256 (DER). The label keeps the signature from meaning anything
outside this protocol; the nonce is issued by the enclave and accepted once, and the document digest
names the one document issued for it, so a signature copied onto another message, another nonce,
another enclave or the same nonce issued again after expiry never verifies (docs/channel.md).
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from nitro_attest.channel.keys import SuiteId
from nitro_attest.errors import ConfigurationError

SIGNATURE_LABEL = b"nitro-attest sender v1\x00"
KEY_ID_BYTES = 32
MAX_SIGNATURE_BYTES = 80  # Ed25519: 64; ECDSA P-256 DER: at most 72
MAX_KEY_FILE_BYTES = 16 * 1024

SenderPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
SenderPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class SenderKeyError(ConfigurationError):
    """A sender key file that is not an Ed25519 or P-256 key in PEM."""


def key_id(public_key: SenderPublicKey) -> bytes:
    """SHA-256 of the key's SubjectPublicKeyInfo DER: how a message names its signer."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def signed_bytes(
    suite: SuiteId, nonce: bytes, document_sha384: bytes, signer: bytes, sealed: bytes
) -> bytes:
    if len(document_sha384) != 48:
        raise ValueError("document_sha384 must be the 48-byte SHA-384 of the document")
    if len(signer) != KEY_ID_BYTES:
        raise ValueError(f"signer must be a {KEY_ID_BYTES}-byte key id")
    return b"".join(
        (
            SIGNATURE_LABEL,
            bytes([suite.value]),
            struct.pack(">H", len(nonce)),
            nonce,
            document_sha384,
            signer,
            struct.pack(">I", len(sealed)),
            sealed,
        )
    )


def sign(private_key: SenderPrivateKey, message: bytes) -> bytes:
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    return private_key.sign(message, ec.ECDSA(hashes.SHA256()))


def verify(public_key: SenderPublicKey, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _check_type(key: object, what: str) -> None:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP256R1):
            return
        raise SenderKeyError(f"{what} is an EC key on {key.curve.name}; use Ed25519 or P-256")
    raise SenderKeyError(f"{what} is a {type(key).__name__}; use Ed25519 or P-256")


def load_public_key(pem: bytes) -> SenderPublicKey:
    """A pinned sender key: Ed25519 or P-256, PEM SubjectPublicKeyInfo."""
    if len(pem) > MAX_KEY_FILE_BYTES:
        raise SenderKeyError(f"public key file is {len(pem)} bytes, at most {MAX_KEY_FILE_BYTES}")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SenderKeyError(f"not a PEM public key ({exc})") from None
    _check_type(key, "public key")
    assert isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey)
    return key


def load_private_key(pem: bytes) -> SenderPrivateKey:
    """A sender's signing key: Ed25519 or P-256, unencrypted PEM (PKCS#8 or SEC1)."""
    if len(pem) > MAX_KEY_FILE_BYTES:
        raise SenderKeyError(f"private key file is {len(pem)} bytes, at most {MAX_KEY_FILE_BYTES}")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SenderKeyError(f"not an unencrypted PEM private key ({exc})") from None
    _check_type(key, "private key")
    assert isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey)
    return key
