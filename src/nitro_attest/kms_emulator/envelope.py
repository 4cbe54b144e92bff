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

For a 32-byte identifier every byte but four holes (identifier, encrypted key, IV, content) is
fixed by the RSA key's size: ``seal_for_recipient`` writes the fixed bytes cut once per key size
from ``seal_envelope``'s own output (``_layout``) around the holes, instead of some 14 BER
encodings per answer (about 10 us hot, 25 served: docs/kms.md, "Speed"). Its output is
byte-identical to ``seal_envelope``'s with the same randomness (tests/test_kms_emulator_speed.py,
every content length 0-4096 and the three RSA sizes; tests/test_kms_emulator_redteam4.py, every
modulus length 2048-16384 bits); any other identifier length goes to ``seal_envelope`` itself.
"""

from __future__ import annotations

import functools
import os
from typing import cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from nitro_attest.codec import ber
from nitro_attest.kms.envelope import seal_envelope
from nitro_attest.kms.envelope import subject_key_identifier as subject_key_identifier

SKI_BYTES = 32
_OAEP = OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_EOC_4 = b"\x00" * 8  # EncryptedContentInfo, EnvelopedData, [0], ContentInfo


class _Placeholder:
    """Stands in for the recipient's key while ``_layout`` cuts the fixed bytes: its
    "encryption" is a marker of the key's length, which is where the real one goes."""

    def __init__(self, size: int) -> None:
        self.size = size

    def encrypt(self, plaintext: bytes, padding: object) -> bytes:
        return b"\xbb" * self.size


@functools.lru_cache(maxsize=8)
def _layout(key_bytes: int) -> tuple[bytes, bytes, bytes]:
    """The fixed bytes before the identifier, between it and the encrypted key, and between
    that and the IV, for an RSA key of ``key_bytes`` bytes: cut from ``seal_envelope``'s output
    for an empty plaintext (one 16-byte block, after the IV: ``80 10``, the block, four EOCs)."""
    ski = b"\xaa" * SKI_BYTES
    sample = seal_envelope(
        b"", cast(rsa.RSAPublicKey, _Placeholder(key_bytes)), subject_key_id=ski
    )
    at_ski = sample.index(ski)
    # the encrypted key found as the whole OCTET STRING, tag and length with it: a length whose
    # last byte is the placeholder's (443, 699, 955... bytes: 82 01 bb) would otherwise start
    # the run one byte early
    encrypted_key = ber.encode_octets(b"\xbb" * key_bytes)
    at_key = sample.index(encrypted_key, at_ski + SKI_BYTES) + len(encrypted_key) - key_bytes
    at_iv = len(sample) - len(_EOC_4) - 16 - 2 - 16
    if sample[at_iv + 16 : at_iv + 18] != b"\x80\x10" or not sample.endswith(_EOC_4):
        raise AssertionError("seal_envelope's layout changed; _layout must follow it")
    return (
        sample[:at_ski],
        sample[at_ski + SKI_BYTES : at_key],
        sample[at_key + key_bytes : at_iv],
    )


def seal_for_recipient(
    plaintext: bytes, public_key: rsa.RSAPublicKey, *, ski: bytes | None = None
) -> bytes:
    """Encrypt ``plaintext`` to the recipient's RSA key as KMS does (one fresh AES-256 key).
    ``ski``: the key's subjectKeyIdentifier when the caller has it (else computed)."""
    if ski is None:
        ski = subject_key_identifier(public_key)
    if len(ski) != SKI_BYTES:
        return seal_envelope(plaintext, public_key, subject_key_id=ski)
    key_bytes = (public_key.key_size + 7) // 8
    before_ski, before_key, before_iv = _layout(key_bytes)
    fresh = os.urandom(48)  # the content key and the IV, in one call
    content_key, iv = fresh[:32], fresh[32:]
    pad = 16 - len(plaintext) % 16  # PKCS#7
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    content = encryptor.update(plaintext + bytes((pad,)) * pad) + encryptor.finalize()
    encrypted_key = public_key.encrypt(content_key, _OAEP)
    if len(encrypted_key) != key_bytes:  # never for RSA (the modulus' length): the writer then
        return seal_envelope(plaintext, public_key, subject_key_id=ski)
    return b"".join((
        before_ski, ski, before_key, encrypted_key, before_iv, iv,
        ber.encode_octets(content, tag=0, cls=ber.CONTEXT), _EOC_4,
    ))
