"""KMS's ``CiphertextForRecipient``: a CMS EnvelopedData to the enclave's RSA key, opened here.

What is accepted is exactly what KMS sends (tests/vectors/kms/MANIFEST.md) and what OpenSSL's
``cms -encrypt`` makes with the same algorithms: BER (indefinite lengths, the content primitive
or chunked), one KeyTransRecipientInfo (``rid`` a subjectKeyIdentifier of any length, or an
issuerAndSerialNumber; neither is compared, as in AWS's C SDK: the key that opens it is the
check), RSAES-OAEP with SHA-256 and MGF1-SHA-256 (hash parameters absent or NULL, the label empty),
AES-256-CBC with a 16-byte IV and PKCS#7 padding. The bytes are capped before parsing.

Two failures, kept apart on purpose: ``EnvelopeFormatError`` (a ``FormatError``) for bytes that
are not such an envelope, and ``EnvelopeKeyError`` for a well-formed envelope this key cannot
open. The latter is one error with one message whether RSA-OAEP or the padding failed, so whoever
submits envelopes learns nothing from which (no padding oracle).

``seal_envelope`` writes KMS's exact shape (the local KMS and the tests use it).
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from nitro_attest.codec import ber
from nitro_attest.errors import FormatError, UsageError, VerificationError

MAX_ENVELOPE_BYTES = 64 * 1024  # KMS plaintexts are at most 4 KiB; a private key ~2.4 KiB

ID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
ID_DATA = "1.2.840.113549.1.7.1"
RSAES_OAEP = "1.2.840.113549.1.1.7"
MGF1_OID = "1.2.840.113549.1.1.8"
P_SPECIFIED = "1.2.840.113549.1.1.9"
SHA256 = "2.16.840.1.101.3.4.2.1"
AES256_CBC = "2.16.840.1.101.3.4.1.42"

_OAEP = OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_CANNOT_OPEN = "the envelope does not open with this key (not made for it, or altered)"


class EnvelopeFormatError(FormatError):
    """The bytes are not a CMS envelope of the shape KMS sends."""


class EnvelopeKeyError(VerificationError):
    """A well-formed envelope that this private key cannot open (RSA-OAEP or padding failed:
    the same error for both)."""

    check = "kms_envelope"


def open_envelope(ciphertext_for_recipient: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """The plaintext inside KMS's ``CiphertextForRecipient`` (the raw CMS bytes, base64-decoded).

    Raises ``EnvelopeFormatError`` for malformed bytes, ``EnvelopeKeyError`` when the key cannot
    open a well-formed envelope.
    """
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise UsageError("open_envelope needs an RSA private key")
    encrypted_key, iv, content = parse_envelope(ciphertext_for_recipient)
    try:
        content_key = private_key.decrypt(encrypted_key, _OAEP)
    except ValueError:
        raise EnvelopeKeyError(_CANNOT_OPEN) from None
    if len(content_key) != 32:
        raise EnvelopeKeyError(_CANNOT_OPEN)
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(content) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise EnvelopeKeyError(_CANNOT_OPEN) from None


def parse_envelope(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(RSA-encrypted content key, IV, encrypted content) of a well-formed envelope."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EnvelopeFormatError("an envelope is bytes")
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeFormatError(f"envelope of {len(data)} bytes, more than the "
                                  f"{MAX_ENVELOPE_BYTES} allowed")
    data = bytes(data)
    parts = _kms_shape(data)
    if parts is not None:
        return parts
    try:  # the size cap bounds the item count (two bytes each at least): no tighter cap needed
        tree = ber.decode(data, max_bytes=MAX_ENVELOPE_BYTES, max_depth=16,
                          max_items=MAX_ENVELOPE_BYTES // 2)
        return _walk(tree)
    except ber.BerError as exc:
        raise EnvelopeFormatError(f"not a CMS envelope: {exc}") from None


# KMS's exact shape for a 2048-bit key, as bytes: every byte fixed but four holes (the 32-byte
# subjectKeyIdentifier, the 256-byte encrypted key, the 16-byte IV, the content). The reader and
# the walk below accept every envelope that matches it and find the same parts in it (a test
# holds the two to that on every mutation of real and sealed envelopes); anything else, or any
# doubt, goes to them, and they give the errors. Matching costs a few slices and compares where
# the full reader builds ~35 items and walks them (docs/kms.md, "Speed").
_SKI_LENGTH = 32
_KEY_LENGTH = 256
_PREFIX = bytes.fromhex(
    "3080" "06092a864886f70d010703"  # ContentInfo (indefinite), id-envelopedData
    "a080" "3080" "020102"  # [0] (indefinite), EnvelopedData (indefinite), version 2
    "3182016b" "30820167" "020102" "8020"  # SET, KeyTransRecipientInfo v2, rid [0] of 32 bytes
)
_ALGORITHM = bytes.fromhex(
    "303c" "06092a864886f70d010107" "302f"  # rsaesOaep, RSAES-OAEP-params
    "a00f" "300d" "0609608648016503040201" "0500"  # [0] hashAlgorithm sha256, NULL
    "a11c" "301a" "06092a864886f70d010108"  # [1] maskGenAlgorithm mgf1
    "300d" "0609608648016503040201" "0500"  # MGF1's sha256, NULL
    "04820100"  # encryptedKey, 256 bytes
)
_CONTENT_INFO = bytes.fromhex(
    "3080" "06092a864886f70d010701"  # EncryptedContentInfo (indefinite), id-data
    "301d" "060960864801650304012a" "0410"  # aes256-CBC, its 16-byte IV
)
_TRAILER = bytes(8)  # end-of-contents of EncryptedContentInfo, EnvelopedData, [0], ContentInfo
_KEY_AT = len(_PREFIX) + _SKI_LENGTH + len(_ALGORITHM)
_IV_AT = _KEY_AT + _KEY_LENGTH + len(_CONTENT_INFO)
_CONTENT_AT = _IV_AT + 16


def _kms_shape(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(encrypted key, IV, content) if ``data`` is exactly KMS's shape (the content a primitive
    ``[0]``, or a constructed one of primitive OCTET STRING chunks), else None."""
    if not (
        data.startswith(_PREFIX)
        and data.startswith(_ALGORITHM, len(_PREFIX) + _SKI_LENGTH)
        and data.startswith(_CONTENT_INFO, _KEY_AT + _KEY_LENGTH)
        and data.endswith(_TRAILER)
    ):
        return None
    end = len(data) - len(_TRAILER)
    pos = _CONTENT_AT
    if pos >= end:
        return None
    if data[pos] == 0x80:  # primitive [0]
        found = _definite(data, pos + 1, end)
        if found is None or found[1] != end:
            return None
        content = data[found[0] : end]
    elif data.startswith(b"\xa0\x80", pos):  # constructed [0], indefinite: chunks, then EOC
        pieces: list[bytes] = []
        pos += 2
        while not data.startswith(b"\x00\x00", pos):
            if pos >= end or data[pos] != 0x04:
                return None
            found = _definite(data, pos + 1, end)
            if found is None:
                return None
            pieces.append(data[found[0] : found[1]])
            pos = found[1]
        if pos + 2 != end:
            return None
        content = b"".join(pieces)
    else:
        return None
    if not content or len(content) % 16:
        return None
    return data[_KEY_AT : _KEY_AT + _KEY_LENGTH], data[_IV_AT:_CONTENT_AT], content


def _definite(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """Where a definite length at ``pos`` puts the contents (start, stop), one or two length
    octets after the first, and the contents within ``end``; else None."""
    if pos >= end:
        return None
    first = data[pos]
    if first < 0x80:
        start, length = pos + 1, first
    elif first in (0x81, 0x82) and pos + 1 + (first & 0x7F) <= end:
        start = pos + 1 + (first & 0x7F)
        length = int.from_bytes(data[pos + 1 : start], "big")
    else:
        return None
    stop = start + length
    return (start, stop) if stop <= end else None


def _walk(root: ber.Tlv) -> tuple[bytes, bytes, bytes]:
    content_type, explicit = root.expect(ber.SEQUENCE, what="ContentInfo").items(
        2, what="ContentInfo")
    _oid(content_type, ID_ENVELOPED_DATA, "ContentInfo contentType (envelopedData)")
    (enveloped,) = explicit.expect(0, cls=ber.CONTEXT, constructed=True,
                                   what="ContentInfo content").items(1, what="[0] content")
    version, recipients, encrypted = enveloped.expect(ber.SEQUENCE, what="EnvelopedData").items(
        3, what="EnvelopedData (originatorInfo and unprotectedAttrs are not expected)")
    if version.expect(ber.INTEGER).integer(what="EnvelopedData version") not in (0, 2):
        raise ber.BerError("EnvelopedData version must be 0 or 2")
    infos = recipients.expect(ber.SET, what="recipientInfos").items(what="recipientInfos")
    if len(infos) != 1:
        raise ber.BerError(f"recipientInfos: exactly one recipient expected, found {len(infos)}")
    encrypted_key = _key_transport(infos[0])
    iv, content = _content(encrypted)
    return encrypted_key, iv, content


def _key_transport(info: ber.Tlv) -> bytes:
    version, rid, algorithm, encrypted_key = info.expect(
        ber.SEQUENCE, what="KeyTransRecipientInfo (no other recipient kind)"
    ).items(4, what="KeyTransRecipientInfo")
    number = version.expect(ber.INTEGER).integer(what="KeyTransRecipientInfo version")
    if number == 2:
        rid.expect(0, cls=ber.CONTEXT, what="rid subjectKeyIdentifier").octets()
    elif number == 0:
        rid.expect(ber.SEQUENCE, what="rid issuerAndSerialNumber").items(2)
    else:
        raise ber.BerError(f"KeyTransRecipientInfo version {number}, expected 0 or 2")
    _oaep(algorithm)
    return encrypted_key.expect(ber.OCTET_STRING, what="encryptedKey").octets()


def _oaep(algorithm: ber.Tlv) -> None:
    """RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8017 A.2.1); an empty label."""
    parts = algorithm.expect(ber.SEQUENCE, what="keyEncryptionAlgorithm").items(
        2, what="keyEncryptionAlgorithm")
    _oid(parts[0], RSAES_OAEP, "keyEncryptionAlgorithm (rsaesOaep)")
    fields = {f.tag: f for f in parts[1].expect(ber.SEQUENCE, what="RSAES-OAEP-params").items()}
    tags = [f.tag for f in parts[1].children]
    if any(f.cls != ber.CONTEXT for f in parts[1].children) or tags != sorted(set(tags)) or (
        not set(tags) <= {0, 1, 2}
    ):
        raise ber.BerError("RSAES-OAEP-params: unexpected fields")
    if 0 not in fields or 1 not in fields:
        raise ber.BerError("RSAES-OAEP-params: SHA-1 defaults; SHA-256 and MGF1-SHA-256 required")
    (hash_alg,) = fields[0].items(1, what="OAEP hashAlgorithm")
    _digest(hash_alg, "OAEP hashAlgorithm")
    (mgf,) = fields[1].items(1, what="OAEP maskGenAlgorithm")
    mgf_oid, mgf_hash = mgf.expect(ber.SEQUENCE, what="OAEP maskGenAlgorithm").items(
        2, what="OAEP maskGenAlgorithm")
    _oid(mgf_oid, MGF1_OID, "OAEP maskGenAlgorithm (mgf1)")
    _digest(mgf_hash, "MGF1 hash")
    if 2 in fields:
        (source,) = fields[2].items(1, what="OAEP pSourceAlgorithm")
        source_oid, label = source.expect(ber.SEQUENCE, what="OAEP pSourceAlgorithm").items(2)
        _oid(source_oid, P_SPECIFIED, "OAEP pSourceAlgorithm (pSpecified)")
        if label.expect(ber.OCTET_STRING, what="OAEP label").octets():
            raise ber.BerError("OAEP label must be empty")


def _digest(algorithm: ber.Tlv, what: str) -> None:
    """SHA-256's AlgorithmIdentifier, its parameters absent or NULL (KMS sends NULL, OpenSSL
    omits it)."""
    parts = algorithm.expect(ber.SEQUENCE, what=what).items(what=what)
    if not 1 <= len(parts) <= 2:
        raise ber.BerError(f"{what}: malformed AlgorithmIdentifier")
    _oid(parts[0], SHA256, f"{what} (sha256)")
    if len(parts) == 2:
        parts[1].expect(ber.NULL, what=f"{what} parameters").null()


def _content(info: ber.Tlv) -> tuple[bytes, bytes]:
    fields = info.expect(ber.SEQUENCE, what="EncryptedContentInfo").items(
        3, what="EncryptedContentInfo (the content must be present)")
    _oid(fields[0], ID_DATA, "EncryptedContentInfo contentType (data)")
    alg, iv = fields[1].expect(ber.SEQUENCE, what="contentEncryptionAlgorithm").items(
        2, what="contentEncryptionAlgorithm")
    _oid(alg, AES256_CBC, "contentEncryptionAlgorithm (aes256-CBC)")
    iv_bytes = iv.expect(ber.OCTET_STRING, what="AES-CBC IV").octets()
    if len(iv_bytes) != 16:
        raise ber.BerError(f"AES-CBC IV of {len(iv_bytes)} bytes, expected 16")
    content = fields[2].expect(0, cls=ber.CONTEXT, what="encryptedContent").octets(
        what="encryptedContent")
    if not content or len(content) % 16:
        raise ber.BerError(f"encryptedContent of {len(content)} bytes, not whole AES blocks")
    return iv_bytes, content


_OID_CONTENTS = {
    oid: ber.encode_oid(oid)[2:]  # each is shorter than 128 bytes: a two-byte header
    for oid in (ID_ENVELOPED_DATA, ID_DATA, RSAES_OAEP, MGF1_OID, P_SPECIFIED, SHA256, AES256_CBC)
}


def _oid(item: ber.Tlv, expected: str, what: str) -> None:
    if item.content == _OID_CONTENTS[expected] and item.is_(ber.OBJECT_IDENTIFIER) and (
        not item.constructed
    ):
        return  # the common case, compared as bytes; decoded below only to say what was found
    found = item.expect(ber.OBJECT_IDENTIFIER, what=what).oid(what=what)
    if found != expected:
        raise ber.BerError(f"{what}: found {found}, expected {expected}")


def subject_key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    """SHA-256 of the key's SubjectPublicKeyInfo: the 32-byte ``rid`` real KMS sends."""
    from cryptography.hazmat.primitives import serialization

    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


# What every envelope shares, encoded once: the writer only frames the four values that differ
# (key identifier, encrypted key, IV, content). 40 us of the emulator's Decrypt with Recipient
# went to re-encoding these (bench/kms_emulator.py).
_SHA256_ALGORITHM = ber.encode_sequence(ber.encode_oid(SHA256), ber.encode_null())
_OAEP_ALGORITHM = ber.encode_sequence(
    ber.encode_oid(RSAES_OAEP),
    ber.encode_sequence(
        ber.encode_tlv(0, _SHA256_ALGORITHM, cls=ber.CONTEXT, constructed=True),
        ber.encode_tlv(1, ber.encode_sequence(ber.encode_oid(MGF1_OID), _SHA256_ALGORITHM),
                       cls=ber.CONTEXT, constructed=True),
    ),
)
_VERSION_2 = ber.encode_integer(2)
_ID_DATA_OID = ber.encode_oid(ID_DATA)
_AES256_CBC_OID = ber.encode_oid(AES256_CBC)
_ID_ENVELOPED_DATA_OID = ber.encode_oid(ID_ENVELOPED_DATA)


def seal_envelope(
    plaintext: bytes,
    public_key: rsa.RSAPublicKey,
    *,
    subject_key_id: bytes | None = None,
    chunk: int | None = None,
) -> bytes:
    """An envelope of KMS's exact shape: indefinite lengths, NULL hash parameters, a 32-byte
    subjectKeyIdentifier (SHA-256 of the key's SubjectPublicKeyInfo unless given), the content
    primitive or, with ``chunk``, constructed of OCTET STRING chunks of that size."""
    if subject_key_id is None:
        subject_key_id = subject_key_identifier(public_key)
    content_key = os.urandom(32)
    iv = os.urandom(16)
    pad = 16 - len(plaintext) % 16  # PKCS#7
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    content = encryptor.update(plaintext + bytes((pad,)) * pad) + encryptor.finalize()
    recipient = ber.encode_sequence(
        _VERSION_2,
        ber.encode_octets(subject_key_id, tag=0, cls=ber.CONTEXT),
        _OAEP_ALGORITHM,
        ber.encode_octets(public_key.encrypt(content_key, _OAEP)),
    )
    body = (
        ber.encode_chunked_octets(content, chunk, tag=0, cls=ber.CONTEXT)
        if chunk
        else ber.encode_octets(content, tag=0, cls=ber.CONTEXT)
    )
    encrypted = ber.encode_sequence(
        _ID_DATA_OID,
        ber.encode_sequence(_AES256_CBC_OID, ber.encode_octets(iv)),
        body,
        indefinite=True,
    )
    enveloped = ber.encode_sequence(
        _VERSION_2, ber.encode_set(recipient), encrypted, indefinite=True)
    return ber.encode_sequence(
        _ID_ENVELOPED_DATA_OID,
        ber.encode_indefinite(0, [enveloped], cls=ber.CONTEXT),
        indefinite=True,
    )
