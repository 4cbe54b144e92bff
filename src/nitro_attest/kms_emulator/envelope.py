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

from nitro_attest.kms_emulator.ber_writer import write_definite, write_indefinite

# DER encodings of the fixed parts (OIDs, algorithm identifiers), as KMS sends them.
OID_ENVELOPED_DATA = bytes.fromhex("06092a864886f70d010703")  # 1.2.840.113549.1.7.3
OID_DATA = bytes.fromhex("06092a864886f70d010701")  # 1.2.840.113549.1.7.1
OID_AES256_CBC = bytes.fromhex("060960864801650304012a")  # 2.16.840.1.101.3.4.1.42
_SHA256_NULL = bytes.fromhex("300d06096086480165030402010500")  # sha256, NULL
_RSAES_OAEP = (
    bytes.fromhex("06092a864886f70d010107")  # rsaesOaep 1.2.840.113549.1.1.7
    + write_definite(
        0x30,
        write_definite(0xA0, _SHA256_NULL)
        + write_definite(
            0xA1,
            write_definite(0x30, bytes.fromhex("06092a864886f70d010108") + _SHA256_NULL),  # mgf1
        ),
    )
)
KEY_ENCRYPTION_ALGORITHM = write_definite(0x30, _RSAES_OAEP)
_OAEP = OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_INTEGER_2 = bytes.fromhex("020102")


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
    recipient_info = write_definite(
        0x30,
        _INTEGER_2
        + write_definite(0x80, rid)  # [0] IMPLICIT SubjectKeyIdentifier
        + KEY_ENCRYPTION_ALGORITHM
        + write_definite(0x04, encrypted_key),
    )
    encrypted_content_info = write_indefinite(
        0x30,
        OID_DATA,
        write_definite(0x30, OID_AES256_CBC + write_definite(0x04, iv)),
        write_definite(0x80, encrypted_content),  # [0] IMPLICIT, primitive
    )
    enveloped_data = write_indefinite(
        0x30, _INTEGER_2, write_definite(0x31, recipient_info), encrypted_content_info
    )
    return write_indefinite(0x30, OID_ENVELOPED_DATA, write_indefinite(0xA0, enveloped_data))
