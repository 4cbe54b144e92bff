"""CiphertextForRecipient: a CMS EnvelopedData in the exact shape real KMS returns.

tests/vectors/kms/MANIFEST.md shows two real responses; this writes the primitive one, byte for
byte in layout: BER with indefinite lengths on ContentInfo, its [0], EnvelopedData and
EncryptedContentInfo (each closed by end-of-contents), EnvelopedData version 2, one
KeyTransRecipientInfo version 2 whose rid is a 32-byte subjectKeyIdentifier (SHA-256 of the
recipient's SubjectPublicKeyInfo), RSAES-OAEP with SHA-256 and MGF1-SHA-256 carrying explicit NULL
parameters, AES-256-CBC with a 16-byte IV over the PKCS#7-padded content, carried as a primitive
[0] IMPLICIT. A client that reads only this shape still has to read the chunked one.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nitro_attest.codec.ber import (
    CONTEXT,
    encode_indefinite,
    encode_integer,
    encode_null,
    encode_octets,
    encode_oid,
    encode_sequence,
    encode_set,
    encode_tlv,
)

OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_DATA = "1.2.840.113549.1.7.1"
OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


def _explicit(tag: int, inner: bytes) -> bytes:
    return encode_tlv(tag, inner, cls=CONTEXT, constructed=True)


# The fixed parts, encoded once: RSAES-OAEP(SHA-256, MGF1(SHA-256)), both with NULL parameters as
# KMS sends them (OpenSSL omits the NULLs), and the two versions.
_SHA256_NULL = encode_sequence(encode_oid(OID_SHA256), encode_null())
KEY_ENCRYPTION_ALGORITHM = encode_sequence(
    encode_oid(OID_RSAES_OAEP),
    encode_sequence(
        _explicit(0, _SHA256_NULL),
        _explicit(1, encode_sequence(encode_oid(OID_MGF1), _SHA256_NULL)),
    ),
)
_VERSION_2 = encode_integer(2)
_DATA = encode_oid(OID_DATA)
_AES256_CBC = encode_oid(OID_AES256_CBC)
_ENVELOPED_DATA = encode_oid(OID_ENVELOPED_DATA)
_OAEP = OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def subject_key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo: 32 bytes, the length real KMS sends."""
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def seal_for_recipient(
    plaintext: bytes, public_key: rsa.RSAPublicKey, *, ski: bytes | None = None
) -> bytes:
    """Encrypt ``plaintext`` to the recipient's RSA key as KMS does (one fresh AES-256 key)."""
    content_key = os.urandom(32)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    encrypted_content = encryptor.update(padded) + encryptor.finalize()
    encrypted_key = public_key.encrypt(content_key, _OAEP)
    rid = ski if ski is not None else subject_key_identifier(public_key)
    recipient_info = encode_sequence(
        _VERSION_2,
        encode_octets(rid, tag=0, cls=CONTEXT),  # rid: [0] IMPLICIT SubjectKeyIdentifier
        KEY_ENCRYPTION_ALGORITHM,
        encode_octets(encrypted_key),
    )
    encrypted_content_info = encode_sequence(
        _DATA,
        encode_sequence(_AES256_CBC, encode_octets(iv)),
        encode_octets(encrypted_content, tag=0, cls=CONTEXT),  # [0] IMPLICIT, primitive
        indefinite=True,
    )
    enveloped_data = encode_sequence(
        _VERSION_2, encode_set(recipient_info), encrypted_content_info, indefinite=True
    )
    return encode_sequence(
        _ENVELOPED_DATA, encode_indefinite(0, [enveloped_data], cls=CONTEXT), indefinite=True
    )
