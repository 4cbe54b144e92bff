"""CiphertextForRecipient: a CMS EnvelopedData in the exact shape real KMS returns.

tests/vectors/kms/MANIFEST.md shows two real responses; the emulator writes the primitive one, byte
for byte in layout: BER with indefinite lengths on ContentInfo, its [0], EnvelopedData and
EncryptedContentInfo (each closed by end-of-contents), EnvelopedData version 2, one
KeyTransRecipientInfo version 2 whose rid is a 32-byte subjectKeyIdentifier (SHA-256 of the
recipient's SubjectPublicKeyInfo), RSAES-OAEP with SHA-256 and MGF1-SHA-256 carrying explicit NULL
parameters, AES-256-CBC with a 16-byte IV over the PKCS#7-padded content, carried as a primitive
[0] IMPLICIT. The writer is the client's own (``kms.envelope.seal_envelope``), so what the
emulator sends and what the enclave side opens cannot drift apart. A client that reads only this
shape still has to read the chunked one.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import rsa

from nitro_attest.kms.envelope import seal_envelope
from nitro_attest.kms.envelope import subject_key_identifier as subject_key_identifier


def seal_for_recipient(
    plaintext: bytes, public_key: rsa.RSAPublicKey, *, ski: bytes | None = None
) -> bytes:
    """Encrypt ``plaintext`` to the recipient's RSA key as KMS does (one fresh AES-256 key)."""
    return seal_envelope(plaintext, public_key, subject_key_id=ski)
